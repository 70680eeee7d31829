package main

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/focusenglish/progress-sync/replication/push"
)

func TestBackfillETAIsNoLessThanTheRateLimitAllows(t *testing.T) {
	const sustained = 1.9 // 20/10s: a burst of 1, 19 requests per 10 s after it
	for _, tc := range []struct {
		name                  string
		total, done, batches  int
		requests              int
		sustained             float64
		elapsed, want, within time.Duration
	}{
		// Before any batch: a read and an update per 100 students.
		{name: "at the start", total: 5000, sustained: sustained, want: 52631 * time.Millisecond, within: time.Millisecond},
		// The first batches went out at once (the burst): the rate limit, not the pace, decides.
		{name: "after a fast start", total: 5000, done: 200, batches: 2, requests: 4, sustained: sustained, elapsed: time.Second,
			want: 50526 * time.Millisecond, within: time.Millisecond},
		// Nothing to update: one read per batch.
		{name: "reads only", total: 5000, done: 1000, batches: 10, requests: 10, sustained: sustained, elapsed: 5 * time.Second,
			want: 21052 * time.Millisecond, within: time.Millisecond},
		// HubSpot slower than the limit: the pace so far decides.
		{name: "slow HubSpot", total: 5000, done: 1000, batches: 10, requests: 20, sustained: sustained, elapsed: 100 * time.Second,
			want: 400 * time.Second, within: time.Second},
		{name: "no limit", total: 300, done: 100, batches: 1, requests: 2, elapsed: 2 * time.Second, want: 4 * time.Second, within: 100 * time.Millisecond},
		{name: "done", total: 300, done: 300, batches: 3, requests: 6, sustained: sustained, elapsed: time.Second, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reqs := &requestCounter{}
			reqs.n.Store(int64(tc.requests))
			p := &progress{total: tc.total, done: tc.done, batches: tc.batches, requests: reqs, sustained: tc.sustained,
				started: time.Now().Add(-tc.elapsed)}
			if got := p.eta(); got < tc.want-tc.within || got > tc.want+tc.within {
				t.Errorf("eta = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestBackfillProgressSaysHowItEnded(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, "backfill progress: done"},
		{context.Canceled, "backfill progress: stopped"},
	} {
		logger, hook := test.NewNullLogger()
		p := newProgress(io.Discard, 100, &requestCounter{}, 1.9, time.Hour, logrus.NewEntry(logger))
		// Students added after the count at the start raise the total.
		p.add(push.Result{Students: 100})
		p.add(push.Result{Students: 50})
		p.finish(tc.err)
		last := hook.LastEntry()
		if last == nil || last.Message != tc.want || last.Data["students_total"] != 150 || last.Data["students_done"] != 150 {
			t.Errorf("after %v, the last line is %+v, want %q with 150 of 150", tc.err, last, tc.want)
		}
	}
}

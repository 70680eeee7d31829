package telemetry

import (
	"testing"
	"time"
)

func TestRecentKeepsTheLastHourAndTheRateWindow(t *testing.T) {
	start := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	r := recent{on: true, window: 10 * time.Second}
	for _, tc := range []struct {
		waits           []time.Duration
		median, slowest time.Duration
	}{
		{nil, 0, 0},
		{[]time.Duration{3 * time.Second, time.Second, 2 * time.Second}, 2 * time.Second, 3 * time.Second},
		{[]time.Duration{5 * time.Second, time.Second}, time.Second, 5 * time.Second},
	} {
		r.flushed(tc.waits)
		r.sample(start, 7)
		s := r.samples[len(r.samples)-1]
		if s.Flushed != len(tc.waits) || s.Median != tc.median || s.Slowest != tc.slowest || s.Pending != 7 {
			t.Errorf("after pushes waiting %v: sample %+v, want median %s slowest %s", tc.waits, s, tc.median, tc.slowest)
		}
	}
	// Samples older than an hour go.
	r.sample(start.Add(History+time.Second), 1)
	if len(r.samples) != 1 || r.samples[0].Pending != 1 {
		t.Errorf("after an hour, samples = %+v, want only the newest", r.samples)
	}
	// Requests older than the window go.
	for i := range 5 {
		r.request(start.Add(time.Duration(i) * 4 * time.Second)) // 0, 4, 8, 12, 16 s
	}
	if len(r.requests) != 3 {
		t.Errorf("requests kept = %d, want the 3 of the last 10 s", len(r.requests))
	}
}

func TestNothingIsKeptWithoutThePage(t *testing.T) {
	m := New()
	m.Request("batch/update", 200, time.Millisecond)
	m.Flushed(3, 2, []time.Duration{time.Second}, []time.Duration{time.Second})
	if len(m.recent.requests) != 0 || len(m.recent.latencies) != 0 {
		t.Errorf("kept %d requests and %d latencies without KeepRecent", len(m.recent.requests), len(m.recent.latencies))
	}
}

func TestTotalsReadWhatMetricsServe(t *testing.T) {
	m := New()
	m.KeepRecent(10 * time.Second)
	m.Request("batch/update", 200, time.Millisecond)
	m.Request("batch/read", 429, time.Millisecond)
	m.RateLimited("TEN_SECONDLY_ROLLING")
	m.Flushed(3, 2, []time.Duration{time.Second}, []time.Duration{time.Second})
	tot, err := m.Totals()
	if err != nil {
		t.Fatal(err)
	}
	if tot.Requests != 2 || tot.ContactsUpdated != 2 || tot.RateLimited["TEN_SECONDLY_ROLLING"] != 1 || tot.RateLimited["DAILY"] != 0 {
		t.Errorf("totals = %+v", tot)
	}
	if n := m.RequestsInWindow(); n != 2 {
		t.Errorf("requests within 10 s = %d, want 2", n)
	}
}

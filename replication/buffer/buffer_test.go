package buffer

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/replication/state"
)

// These tests need no database: memJournal keeps what state.Journal would (its SQL has tests
// of its own in package state).

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// memJournal is a Journal in memory, with state.Journal's rules: a student's row holds its
// latest version, a push removes it only at the version pushed, the checkpoint never moves
// back.
type memJournal struct {
	mu         sync.Mutex
	pending    map[uuid.UUID]state.PendingStudent
	checkpoint pglogrepl.LSN
	fail       error // the next write fails with it
}

func newMemJournal() *memJournal { return &memJournal{pending: map[uuid.UUID]state.PendingStudent{}} }

func (j *memJournal) failNext(err error) { j.mu.Lock(); j.fail = err; j.mu.Unlock() }

func (j *memJournal) takeFailure() error {
	err := j.fail
	j.fail = nil
	return err
}

func (j *memJournal) Load(context.Context) (state.Checkpoint, []state.PendingStudent, error) {
	pending := j.load()
	j.mu.Lock()
	defer j.mu.Unlock()
	return state.Checkpoint{LSN: j.checkpoint}, pending, nil
}

func (j *memJournal) Checkpoint(context.Context) (state.Checkpoint, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return state.Checkpoint{LSN: j.checkpoint}, nil
}

func (j *memJournal) RecordChanges(_ context.Context, students []uuid.UUID, at time.Time, version int64, end pglogrepl.LSN) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.takeFailure(); err != nil {
		return err
	}
	for _, id := range students {
		p, ok := j.pending[id]
		if !ok {
			p = state.PendingStudent{ID: id, First: at}
		}
		p.Last, p.Version = at, version
		j.pending[id] = p
	}
	j.checkpoint = max(j.checkpoint, end)
	return nil
}

func (j *memJournal) AdvanceCheckpoint(_ context.Context, end pglogrepl.LSN) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.takeFailure(); err != nil {
		return err
	}
	j.checkpoint = max(j.checkpoint, end)
	return nil
}

func (j *memJournal) RemovePushed(_ context.Context, students []uuid.UUID, versions []int64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.takeFailure(); err != nil {
		return err
	}
	for i, id := range students {
		if p, ok := j.pending[id]; ok && p.Version == versions[i] {
			delete(j.pending, id)
		}
	}
	return nil
}

// load is what a restarted process reads back.
func (j *memJournal) load() []state.PendingStudent {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []state.PendingStudent
	for _, p := range j.pending {
		out = append(out, p)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID.String() < out[b].ID.String() })
	return out
}

func setup(t *testing.T) (*memJournal, *clock, Options) {
	t.Helper()
	c := &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
	return newMemJournal(), c, Options{Debounce: 3 * time.Second, MaxDelay: 30 * time.Second, Now: c.Now}
}

func students(n int) []uuid.UUID {
	out := make([]uuid.UUID, n)
	for i := range out {
		out[i] = uuid.New()
	}
	return out
}

func TestDebounceAndMaxDelay(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	s := students(2)
	busy, quiet := s[0], s[1]
	if err := b.Add(ctx, []uuid.UUID{busy, quiet}, 100); err != nil {
		t.Fatal(err)
	}
	// busy changes every second for 40 s: the debounce keeps moving, the max delay does not.
	var takenAt time.Duration
	var quietTaken bool
	for i := 1; i <= 40; i++ {
		c.advance(time.Second)
		for _, e := range b.Due(100) {
			switch e.Student {
			case quiet:
				if i != 3 {
					t.Errorf("quiet student due after %ds, want 3s", i)
				}
				quietTaken = true
			case busy:
				if takenAt == 0 {
					takenAt = time.Duration(i) * time.Second
				}
			}
		}
		if err := b.Add(ctx, []uuid.UUID{busy}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if !quietTaken {
		t.Fatal("quiet student never due")
	}
	if takenAt != 30*time.Second {
		t.Fatalf("busy student due after %s, want the 30s max delay", takenAt)
	}
}

func TestDoneKeepsStudentsChangedDuringThePush(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	s := students(3)
	if err := b.Add(ctx, s, 10); err != nil {
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	taken := b.Due(100)
	if len(taken) != 3 {
		t.Fatalf("took %d, want 3", len(taken))
	}
	if again := b.Due(100); len(again) != 0 {
		t.Fatalf("in-flight students taken twice: %v", again)
	}
	// s[0] changes while its push is in flight.
	if err := b.Add(ctx, s[:1], 20); err != nil {
		t.Fatal(err)
	}
	if err := b.Done(ctx, taken); err != nil {
		t.Fatal(err)
	}
	if b.Len() != 1 {
		t.Fatalf("%d students left, want the one that changed again", b.Len())
	}
	c.advance(3 * time.Second)
	if got := b.Due(100); len(got) != 1 || got[0].Student != s[0] {
		t.Fatalf("due = %v, want s[0]", got)
	}
	if rows := len(j.load()); rows != 1 {
		t.Fatalf("%d pending rows stored, want 1", rows)
	}
}

func TestRetryWaits(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	if err := b.Add(ctx, students(5), 0); err != nil {
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	taken := b.Due(2)
	if len(taken) != 2 {
		t.Fatalf("took %d, want the batch limit 2", len(taken))
	}
	b.Retry(taken, time.Minute)
	rest := b.Due(100)
	if len(rest) != 3 {
		t.Fatalf("took %d, want the 3 not retried", len(rest))
	}
	b.Retry(rest, time.Minute)
	if at, ok := b.NextDue(); !ok || !at.Equal(c.Now().Add(time.Minute)) {
		t.Fatalf("next due %v %v, want in a minute", at, ok)
	}
	c.advance(time.Minute)
	if got := b.Due(100); len(got) != 5 {
		t.Fatalf("after the wait took %d, want 5", len(got))
	}
}

func TestReopenRestoresPending(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	s := students(4)
	if err := b.Add(ctx, s, pglogrepl.LSN(0x16B3748)); err != nil {
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	if err := b.Done(ctx, b.Due(1)); err != nil {
		t.Fatal(err)
	}

	// A crash: a new process reads the same journal back.
	b2 := New(j, opts, j.load())
	if b2.Len() != 3 {
		t.Fatalf("reloaded %d pending, want 3", b2.Len())
	}
	if got := b2.Due(100); len(got) != 3 {
		t.Fatalf("reloaded students due: %d, want 3", len(got))
	}
	// Versions continue past the stored ones, so a later change is never mistaken for an
	// earlier one.
	var stored int64
	for _, p := range j.load() {
		stored = max(stored, p.Version)
	}
	if err := b2.Add(ctx, s[1:2], 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range j.load() {
		if p.ID == s[1] && p.Version <= stored {
			t.Fatalf("version after reload = %d, stored before %d", p.Version, stored)
		}
	}
}

func TestQueueHoldsOneItemPerStudent(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	s := students(50)
	for i := 0; i < 40; i++ {
		if err := b.Add(ctx, s, 0); err != nil {
			t.Fatal(err)
		}
		c.advance(100 * time.Millisecond)
	}
	if b.queue.Len() != 50 {
		t.Fatalf("queue holds %d items for 50 students changed 40 times each", b.queue.Len())
	}
	if n := b.DueCount(100); n != 0 {
		t.Fatalf("%d due during the debounce", n)
	}
	c.advance(3 * time.Second)
	if n := b.DueCount(20); n != 20 {
		t.Fatalf("DueCount(20) = %d", n)
	}
	if n := b.DueCount(100); n != 50 {
		t.Fatalf("DueCount(100) = %d", n)
	}
	if got := b.Due(100); len(got) != 50 || b.queue.Len() != 0 {
		t.Fatalf("took %d, %d left queued", len(got), b.queue.Len())
	}
}

func TestDueTimes(t *testing.T) {
	s := time.Second
	every2s := func(until time.Duration) []time.Duration {
		var out []time.Duration
		for d := time.Duration(0); d <= until; d += 2 * s {
			out = append(out, d)
		}
		return out
	}
	cases := []struct {
		name    string
		changes []time.Duration // when the student changed, from the start
		retry   time.Duration   // >0: the push at the first due time fails and waits this long
		want    time.Duration   // when it is due, from the start
	}{
		{name: "one change waits the debounce", changes: []time.Duration{0}, want: 3 * s},
		{name: "a change inside the debounce moves it on", changes: []time.Duration{0, 2 * s}, want: 5 * s},
		{name: "a student who never stops is due at the max delay", changes: every2s(40 * s), want: 30 * s},
		{name: "a failed push waits out its retry", changes: []time.Duration{0}, retry: time.Minute, want: 3*s + time.Minute},
		{name: "a retry shorter than the debounce of a new change", changes: []time.Duration{0}, retry: s / 2, want: 3*s + s/2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			j, c, opts := setup(t)
			start := c.Now()
			b := New(j, opts, nil)
			id := students(1)
			for _, at := range tc.changes {
				c.advance(at - c.Now().Sub(start))
				if err := b.Add(ctx, id, 0); err != nil {
					t.Fatal(err)
				}
			}
			next, ok := b.NextDue()
			if !ok {
				t.Fatal("nothing due")
			}
			if tc.retry > 0 {
				c.advance(next.Sub(c.Now()))
				got := b.Due(1)
				if len(got) != 1 {
					t.Fatalf("not due at %s", next.Sub(start))
				}
				b.Retry(got, tc.retry)
				next, _ = b.NextDue()
			}
			if d := next.Sub(start); d != tc.want {
				t.Fatalf("due after %s, want %s", d, tc.want)
			}
		})
	}
}

func TestAFailedWriteChangesNothing(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	b := New(j, opts, nil)
	j.failNext(errors.New("database went away"))
	if err := b.Add(ctx, students(3), 42); err == nil {
		t.Fatal("Add reported success for a write that failed")
	}
	if _, ok := b.NextDue(); ok || b.Len() != 0 || j.checkpoint != 0 {
		t.Fatalf("a failed write left %d students and checkpoint %s", b.Len(), j.checkpoint)
	}
	// A push whose removal fails keeps its students, due again at once.
	s := students(2)
	if err := b.Add(ctx, s, 43); err != nil {
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	taken := b.Due(100)
	j.failNext(errors.New("database went away"))
	if err := b.Done(ctx, taken); err == nil {
		t.Fatal("Done reported success for a removal that failed")
	}
	if got := b.Due(100); len(got) != 2 || len(j.load()) != 2 {
		t.Fatalf("after a failed removal %d due, %d stored; want both kept", len(got), len(j.load()))
	}
}

func TestNextHandsOutWork(t *testing.T) {
	ctx := context.Background()
	t.Run("a full batch goes at once, whatever the linger", func(t *testing.T) {
		j, c, opts := setup(t)
		b := New(j, opts, nil)
		if err := b.Add(ctx, students(5), 0); err != nil {
			t.Fatal(err)
		}
		c.advance(3 * time.Second)
		got, err := b.Next(ctx, 5, time.Hour)
		if err != nil || len(got) != 5 {
			t.Fatalf("Next = %d, %v; want the 5 due", len(got), err)
		}
	})
	t.Run("a partial batch goes once it has lingered", func(t *testing.T) {
		j, c, opts := setup(t)
		b := New(j, opts, nil)
		if err := b.Add(ctx, students(3), 0); err != nil {
			t.Fatal(err)
		}
		c.advance(3*time.Second + time.Minute)
		got, err := b.Next(ctx, 100, time.Minute)
		if err != nil || len(got) != 3 {
			t.Fatalf("Next = %d, %v; want the 3 that lingered", len(got), err)
		}
	})
	t.Run("an Add wakes a waiting Next", func(t *testing.T) {
		j, _, opts := setup(t)
		opts.Debounce, opts.MaxDelay = 0, 0
		b := New(j, opts, nil)
		got := make(chan []Entry, 1)
		go func() {
			e, _ := b.Next(ctx, 100, -1)
			got <- e
		}()
		if err := b.Add(ctx, students(2), 0); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-got:
			if len(e) != 2 {
				t.Fatalf("Next = %d, want 2", len(e))
			}
		case <-time.After(30 * time.Second):
			t.Fatal("Next still waiting 30 s after an Add made students due")
		}
	})
	t.Run("a stop ends the wait", func(t *testing.T) {
		j, _, opts := setup(t)
		b := New(j, opts, nil)
		stopped, stop := context.WithCancel(ctx)
		stop()
		if got, err := b.Next(stopped, 100, time.Second); !errors.Is(err, context.Canceled) || len(got) != 0 {
			t.Fatalf("Next after a stop = %v, %v", got, err)
		}
	})
}

func TestResumeTakesOverWhatAnotherInstanceRecorded(t *testing.T) {
	ctx := context.Background()
	j, c, opts := setup(t)
	s := students(4)
	standby := New(j, opts, nil) // loaded while nothing was pending
	// The instance holding the slot records four students, then pushes two of them.
	holder := New(j, opts, nil)
	if err := holder.Add(ctx, s, 77); err != nil {
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	if err := holder.Done(ctx, holder.Due(2)); err != nil {
		t.Fatal(err)
	}
	// Meanwhile the standby had recorded nothing of its own but one stale student.
	stale := students(1)
	standby.entries[stale[0]] = &entry{id: stale[0], first: c.Now(), last: c.Now(), version: 1, index: -1}
	standby.schedule(standby.entries[stale[0]])
	if err := standby.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if standby.Len() != 2 {
		t.Fatalf("after resuming the standby holds %d students, want the 2 still pending", standby.Len())
	}
	if got := standby.Due(100); len(got) != 2 {
		t.Fatalf("%d due after resuming, want 2", len(got))
	}
	if lsn, err := standby.Checkpoint(ctx); err != nil || lsn != 77 {
		t.Fatalf("checkpoint %s, %v", lsn, err)
	}
	// Its own next change gets a version above every stored one.
	if err := standby.Add(ctx, s[3:], 0); err != nil {
		t.Fatal(err)
	}
	for _, p := range j.load() {
		if p.ID == s[3] && p.Version <= 1 {
			t.Fatalf("version %d after resuming", p.Version)
		}
	}
}

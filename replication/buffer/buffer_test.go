package buffer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

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

func setup(t *testing.T) (*pgxpool.Pool, *clock, Options) {
	t.Helper()
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := state.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	c := &clock{now: time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)}
	return db, c, Options{Slot: "s", Debounce: 3 * time.Second, MaxDelay: 30 * time.Second, Now: c.Now}
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
	db, c, opts := setup(t)
	b, _, err := Open(ctx, db, opts)
	if err != nil {
		t.Fatal(err)
	}
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
	db, c, opts := setup(t)
	b, _, _ := Open(ctx, db, opts)
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
	var rows int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM progress_sync.pending`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Fatalf("%d pending rows stored, want 1", rows)
	}
}

func TestRetryWaits(t *testing.T) {
	ctx := context.Background()
	db, c, opts := setup(t)
	b, _, _ := Open(ctx, db, opts)
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

func TestReopenRestoresPendingAndCheckpoint(t *testing.T) {
	ctx := context.Background()
	db, c, opts := setup(t)
	b, lsn, _ := Open(ctx, db, opts)
	if lsn != 0 {
		t.Fatalf("fresh checkpoint %s", lsn)
	}
	s := students(4)
	if err := b.Add(ctx, s, pglogrepl.LSN(0x16B3748)); err != nil {
		t.Fatal(err)
	}
	if err := b.Advance(ctx, pglogrepl.LSN(0x16B3700)); err != nil { // never moves back
		t.Fatal(err)
	}
	c.advance(3 * time.Second)
	if err := b.Done(ctx, b.Due(1)); err != nil {
		t.Fatal(err)
	}

	// A crash: a new process opens the same state.
	b2, lsn, err := Open(ctx, db, opts)
	if err != nil {
		t.Fatal(err)
	}
	if lsn != pglogrepl.LSN(0x16B3748) {
		t.Fatalf("checkpoint %s, want 0/16B3748", lsn)
	}
	if b2.Len() != 3 {
		t.Fatalf("reloaded %d pending, want 3", b2.Len())
	}
	if got := b2.Due(100); len(got) != 3 {
		t.Fatalf("reloaded students due: %d, want 3", len(got))
	}
	// Versions continue past the stored ones, so a later change is never mistaken for an
	// earlier one.
	if err := b2.Add(ctx, s[1:2], 0); err != nil {
		t.Fatal(err)
	}
	var v int64
	if err := db.QueryRow(ctx, `SELECT max(version) FROM progress_sync.pending`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	if v <= 1 {
		t.Fatalf("version after reload = %d", v)
	}
}

func TestQueueHoldsOneItemPerStudent(t *testing.T) {
	ctx := context.Background()
	db, c, opts := setup(t)
	b, _, _ := Open(ctx, db, opts)
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

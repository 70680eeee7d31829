package flush

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

// fakePusher answers with a scripted error per call and remembers what it was given.
type fakePusher struct {
	mu     sync.Mutex
	errs   []error
	pushed [][]uuid.UUID
}

func (f *fakePusher) Push(_ context.Context, students []metrics.Student) (push.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if len(f.errs) > 0 {
		err, f.errs = f.errs[0], f.errs[1:]
	}
	ids := make([]uuid.UUID, len(students))
	for i, s := range students {
		ids[i] = s.ID
	}
	f.pushed = append(f.pushed, ids)
	return push.Result{Students: len(students), Updated: len(students)}, err
}

// clock is the buffer's time, moved by the test.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return time.Now().Add(c.offset) }

// passDebounce moves the buffer's clock past every due time.
func (c *clock) passDebounce() { c.mu.Lock(); c.offset += time.Minute; c.mu.Unlock() }

func setup(t *testing.T, n int) (*pgxpool.Pool, *buffer.Buffer, []uuid.UUID, *clock) {
	t.Helper()
	ctx := context.Background()
	db := pg.NewPool(t)
	dbURL := db.Config().ConnString()
	store, err := state.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: n, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
	}
	c := &clock{}
	buf, _, err := buffer.Open(ctx, store, "s", buffer.Options{Debounce: time.Second, MaxDelay: time.Second, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return db, buf, ids, c
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func TestFlushInBatchesAndRemoveOnlyWhatWasPushed(t *testing.T) {
	ctx := context.Background()
	db, buf, ids, c := setup(t, 250)
	p := &fakePusher{errs: []error{nil, errors.New("HubSpot 503")}}
	f := New(buf, db, p, Options{Log: quietLog()})
	if err := buf.Add(ctx, ids, 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if n, err := f.FlushDue(ctx); err != nil || n != 100 {
		t.Fatalf("first batch: %d, %v", n, err)
	}
	if n, err := f.FlushDue(ctx); err == nil || n != 0 {
		t.Fatalf("failing batch: %d, %v", n, err)
	}
	if got := buf.Len(); got != 150 {
		t.Fatalf("%d pending after one good and one failed batch, want 150", got)
	}
	// The failed batch waits its backoff; the rest go on.
	if n, err := f.FlushDue(ctx); err != nil || n != 50 {
		t.Fatalf("third batch: %d, %v", n, err)
	}
	for i, batch := range p.pushed {
		if len(batch) > push.MaxBatch {
			t.Fatalf("batch %d has %d students", i, len(batch))
		}
	}
}

func TestDailyLimitPausesPushes(t *testing.T) {
	ctx := context.Background()
	db, buf, ids, c := setup(t, 10)
	p := &fakePusher{errs: []error{fmt.Errorf("update contacts: %w", hubspot.ErrDailyLimit)}}
	f := New(buf, db, p, Options{Log: quietLog(), DailyLimitPause: time.Hour})
	if err := buf.Add(ctx, ids, 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if _, err := f.FlushDue(ctx); !errors.Is(err, hubspot.ErrDailyLimit) {
		t.Fatalf("err = %v, want the daily limit", err)
	}
	if at, ok := buf.NextDue(); !ok || at.Sub(c.now()) < 59*time.Minute {
		t.Fatalf("next due %v, want in about an hour", at)
	}
	if got := buf.Len(); got != 10 {
		t.Fatalf("%d pending, want all 10 kept", got)
	}
	if len(p.pushed) != 1 {
		t.Fatalf("%d pushes, want 1", len(p.pushed))
	}
}

func TestDeletedStudentsLeaveTheBuffer(t *testing.T) {
	ctx := context.Background()
	db, buf, _, c := setup(t, 1)
	p := &fakePusher{}
	f := New(buf, db, p, Options{Log: quietLog()})
	if err := buf.Add(ctx, []uuid.UUID{uuid.New()}, 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if n, err := f.FlushDue(ctx); err != nil || n != 1 {
		t.Fatalf("%d, %v", n, err)
	}
	if buf.Len() != 0 || len(p.pushed) != 0 {
		t.Fatalf("pending %d, pushes %d: a deleted student needs neither", buf.Len(), len(p.pushed))
	}
}

func TestHiddenRowsHoldEveryPush(t *testing.T) {
	ctx := context.Background()
	db, buf, ids, c := setup(t, 30)
	p := &fakePusher{}
	var mu sync.Mutex
	hidden := errors.New("row-level security hides public.users")
	visibility := func(context.Context) error { mu.Lock(); defer mu.Unlock(); return hidden }
	f := New(buf, db, p, Options{Log: quietLog(), Visibility: visibility, HiddenRetry: time.Second})
	if err := buf.Add(ctx, ids, 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if n, err := f.FlushDue(ctx); !errors.Is(err, hidden) || n != 0 {
		t.Fatalf("flush while rows are hidden: %d, %v", n, err)
	}
	if len(p.pushed) != 0 || buf.Len() != 30 || !f.RowsHidden() {
		t.Fatalf("pushes %d, pending %d, hidden %v: nothing may be pushed or forgotten", len(p.pushed), buf.Len(), f.RowsHidden())
	}
	mu.Lock()
	hidden = nil
	mu.Unlock()
	c.passDebounce()
	if n, err := f.FlushDue(ctx); err != nil || n != 30 {
		t.Fatalf("flush once visible: %d, %v", n, err)
	}
	if buf.Len() != 0 || f.RowsHidden() {
		t.Fatalf("pending %d, hidden %v after the fix", buf.Len(), f.RowsHidden())
	}
}

func TestStudentsHiddenAfterTheCheckStayInTheBuffer(t *testing.T) {
	ctx := context.Background()
	db, buf, ids, c := setup(t, 5)
	p := &fakePusher{}
	// The check before the batch passes; the metrics then miss a student, and the second
	// check finds rows hidden: the missing student is not taken for a deleted one.
	var mu sync.Mutex
	calls := 0
	visibility := func(context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			return nil
		}
		return errors.New("rows hidden")
	}
	f := New(buf, db, p, Options{Log: quietLog(), Visibility: visibility})
	if err := buf.Add(ctx, append(ids, uuid.New()), 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if n, err := f.FlushDue(ctx); err == nil || n != 0 {
		t.Fatalf("flush with an absent student and hidden rows: %d, %v", n, err)
	}
	if buf.Len() != 6 || len(p.pushed) != 0 {
		t.Fatalf("%d pending, %d pushes: want all 6 kept and nothing pushed", buf.Len(), len(p.pushed))
	}
}

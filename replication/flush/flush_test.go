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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/metrics/model/modeltest"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/condition"
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
	gone   [][]uuid.UUID
}

func (f *fakePusher) Forget(_ context.Context, gone []uuid.UUID) (push.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gone = append(f.gone, gone)
	return push.Result{}, nil
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
	store, err := state.Open(ctx, db, model.Builtin(model.Default).Students)
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
	f := New(buf, replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, p, Options{Log: quietLog()})
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
	// That push went through: the failure is over, and the failed batch is due again at
	// once instead of waiting out its backoff.
	if n, err := f.FlushDue(ctx); err != nil || n != 100 {
		t.Fatalf("the failed batch after a good one: %d, %v", n, err)
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
	f := New(buf, replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, p, Options{Log: quietLog(), DailyLimitPause: time.Hour})
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
	f := New(buf, replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, p, Options{Log: quietLog()})
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

// togglingSource hides rows while hidden is set, as a complete view does when row-level
// security hides them.
type togglingSource struct {
	inner  Source
	mu     sync.Mutex
	hidden bool
}

func (s *togglingSource) ForStudents(ctx context.Context, ids []uuid.UUID) ([]metrics.Student, error) {
	s.mu.Lock()
	hidden := s.hidden
	s.mu.Unlock()
	if hidden {
		return nil, &replication.HiddenRowsError{Tables: []replication.HiddenTable{{Table: "public.users", Role: "r", Why: "hidden", Fix: "CREATE POLICY"}}}
	}
	return s.inner.ForStudents(ctx, ids)
}

func TestHiddenRowsHoldEveryPush(t *testing.T) {
	ctx := context.Background()
	db, buf, ids, c := setup(t, 30)
	p := &fakePusher{}
	src := &togglingSource{inner: replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, hidden: true}
	f := New(buf, src, p, Options{Log: quietLog(), HiddenRetry: time.Second})
	if err := buf.Add(ctx, ids, 0); err != nil {
		t.Fatal(err)
	}
	c.passDebounce()
	if n, err := f.FlushDue(ctx); !errors.As(err, new(*replication.HiddenRowsError)) || n != 0 {
		t.Fatalf("flush while rows are hidden: %d, %v", n, err)
	}
	if len(p.pushed) != 0 || buf.Len() != 30 || !f.RowsHidden() {
		t.Fatalf("pushes %d, pending %d, hidden %v: nothing may be pushed or forgotten", len(p.pushed), buf.Len(), f.RowsHidden())
	}
	if at, ok := buf.NextDue(); !ok || at.Before(c.now().Add(time.Second/2)) {
		t.Fatalf("held students due again at %v, want after the hidden retry", at)
	}
	src.mu.Lock()
	src.hidden = false
	src.mu.Unlock()
	c.passDebounce()
	if n, err := f.FlushDue(ctx); err != nil || n != 30 {
		t.Fatalf("flush once visible: %d, %v", n, err)
	}
	if buf.Len() != 0 || f.RowsHidden() {
		t.Fatalf("pending %d, hidden %v after the fix", buf.Len(), f.RowsHidden())
	}
}

// A push that fails for a reason that lasts raises its condition, which says so in one line;
// the database's conditions end with the next batch recorded. (HubSpot's end with any answer
// HubSpot accepts, which the service hears from the client.)
func TestAFailedPushRaisesItsCondition(t *testing.T) {
	_, unreachable := pgconn.Connect(context.Background(), "postgres://u@127.0.0.1:1/db?connect_timeout=1")
	for _, tc := range []struct {
		name string
		err  error
		want condition.Kind
	}{
		{"key revoked", fmt.Errorf("update contacts: %w", hubspot.ErrUnauthorized), condition.KeyRefused},
		{"HubSpot out of reach", fmt.Errorf("update contacts: %w", errors.Join(hubspot.ErrUnavailable, io.ErrUnexpectedEOF)), condition.HubSpotUnreachable},
		{"read-only", fmt.Errorf("record: %w", &pgconn.PgError{Code: "25006"}), condition.DatabaseReadOnly},
		{"database out of reach", fmt.Errorf("record: %w", unreachable), condition.DatabaseUnreachable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			db, buf, ids, c := setup(t, 5)
			logger, hook := test.NewNullLogger()
			conds := condition.NewSet(logrus.NewEntry(logger))
			p := &fakePusher{errs: []error{tc.err, tc.err}}
			f := New(buf, replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, p, Options{Log: quietLog(), Conditions: conds})
			if err := buf.Add(ctx, ids, 0); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				c.passDebounce()
				if _, err := f.FlushDue(ctx); err == nil {
					t.Fatal("the push failed, the flush did not")
				}
			}
			if !conds.Holds(tc.want) || len(hook.AllEntries()) != 1 || hook.LastEntry().Message != tc.want.Notice() || buf.Len() != 5 {
				t.Fatalf("holds %v, %d lines (%v), pending %d: want the condition said once, every student kept",
					conds.Holding(), len(hook.AllEntries()), hook.LastEntry(), buf.Len())
			}
			c.passDebounce()
			if n, err := f.FlushDue(ctx); err != nil || n != 5 {
				t.Fatalf("flush once it passed: %d, %v", n, err)
			}
			database := tc.want == condition.DatabaseReadOnly || tc.want == condition.DatabaseUnreachable
			if database && conds.Holds(tc.want) {
				t.Fatal("the batch was recorded, and the database's condition holds still")
			}
		})
	}
}

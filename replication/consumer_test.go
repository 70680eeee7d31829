package replication

import (
	"context"
	"errors"
	"io"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
)

// fakeSink remembers what the consumer recorded, in order.
type fakeSink struct {
	mu       sync.Mutex
	students map[uuid.UUID]pglogrepl.LSN // student -> end of the first write naming it
	named    map[uuid.UUID]int           // student -> writes naming it
	ends     []pglogrepl.LSN             // every position recorded, by Add or Advance
}

func (s *fakeSink) Add(_ context.Context, students []uuid.UUID, end pglogrepl.LSN) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range students {
		s.named[id]++
		if _, ok := s.students[id]; !ok {
			s.students[id] = end
		}
	}
	s.ends = append(s.ends, end)
	return nil
}

func (s *fakeSink) Advance(_ context.Context, end pglogrepl.LSN) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ends = append(s.ends, end)
	return nil
}

// Checkpoint is the furthest position recorded, as the sync state keeps it.
func (s *fakeSink) Checkpoint(context.Context) (pglogrepl.LSN, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Max(append([]pglogrepl.LSN{0}, s.ends...)), nil
}

func (s *fakeSink) Resume(context.Context) error { return nil }

func (s *fakeSink) has(id uuid.UUID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.students[id]
	return ok
}

func (s *fakeSink) times(id uuid.UUID) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.named[id]
}

func (s *fakeSink) last() pglogrepl.LSN {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ends) == 0 {
		return 0
	}
	return s.ends[len(s.ends)-1]
}

// newSourceDB is a database with the publication, two students (ada studies B1 viajes,
// bob A1 trabajo), one module of ada's course, an unpublished table, and no slot yet.
func newSourceDB(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	db := pg.NewPool(t)
	dbURL := db.Config().ConnString()
	if _, err := Setup(ctx, db, Names{Slot: "progress_sync", Publication: "progress_sync"}, defaultModel(), ""); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		`INSERT INTO auth.users (id) VALUES ('` + ada + `'), ('` + bob + `')`,
		`INSERT INTO users (id, email, name, language_level, course_goal) VALUES ('` + ada + `', 'ada@example.com', 'Ada', 'B1', 'viajes'), ('` + bob + `', 'bob@example.com', 'Bob', 'A1', 'trabajo')`,
		`INSERT INTO course_modules (id, course_level, course_goal, order_index, title) VALUES ('b1-viajes-m1', 'B1', 'viajes', 1, 'M')`,
		`CREATE TABLE unpublished (x int)`,
	} {
		if _, err := db.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	return db, dbURL
}

func quietLog() *logrus.Entry {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return logrus.NewEntry(l)
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30 s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func currentLSN(t *testing.T, db *pgxpool.Pool) pglogrepl.LSN {
	t.Helper()
	var text string
	if err := db.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&text); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(text)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// newSink is an empty fakeSink.
func newSink() *fakeSink {
	return &fakeSink{students: map[uuid.UUID]pglogrepl.LSN{}, named: map[uuid.UUID]int{}}
}

// runConsumer runs a consumer of the test slot and publication into sink, connected as
// db and dbURL say, until the returned stop, which returns what Run returned.
func runConsumer(t *testing.T, db *pgxpool.Pool, dbURL string, sink Sink) (*Consumer, func() error) {
	t.Helper()
	c := NewConsumer(db, sink, Options{DatabaseURL: dbURL, Names: Names{Slot: "progress_sync", Publication: "progress_sync"}, Model: defaultModel(),
		StatusInterval: 200 * time.Millisecond, Log: quietLog()})
	return c, inBackground(t, func(ctx context.Context) error { return c.Run(ctx, 0) })
}

// inBackground runs run until the returned stop (or the test's end), which returns what run
// returned.
func inBackground(t *testing.T, run func(ctx context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestConsumerLoadsThenStreamsIntoTheSink(t *testing.T) {
	db, dbURL := newSourceDB(t)
	sink := newSink()
	c, stop := runConsumer(t, db, dbURL, sink)

	// A first start loads every student from the new slot's snapshot.
	a, b := uuid.MustParse(ada), uuid.MustParse(bob)
	waitFor(t, "first load", func() bool { return sink.has(a) && sink.has(b) })
	waitFor(t, "streaming", c.Streaming)
	loadedAt := sink.last()

	// A change names its student; a lesson added to a course names the course's students.
	later := uuid.New()
	for _, s := range []string{
		`INSERT INTO auth.users (id) VALUES ('` + later.String() + `')`,
		`INSERT INTO users (id, email, name, language_level, course_goal) VALUES ('` + later.String() + `', 'l@example.com', 'L', 'B1', 'viajes')`,
	} {
		if _, err := db.Exec(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the new student", func() bool { return sink.has(later) })
	if at := sink.students[later]; at <= loadedAt {
		t.Fatalf("the new student was recorded at %s, not after the load at %s", at, loadedAt)
	}
	adaBefore, bobBefore := sink.times(a), sink.times(b)
	if _, err := db.Exec(context.Background(), `INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('b1-viajes-m1-l9', 'b1-viajes-m1', 9, 'L')`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the course's students", func() bool { return sink.times(a) > adaBefore && sink.times(later) > 1 })
	if sink.times(b) != bobBefore {
		t.Fatal("a lesson of B1 viajes named bob, who studies A1 trabajo")
	}
	// Writes to an unpublished table still move the recorded position past them.
	if _, err := db.Exec(context.Background(), `INSERT INTO unpublished SELECT generate_series(1, 1000)`); err != nil {
		t.Fatal(err)
	}
	target := currentLSN(t, db)
	waitFor(t, "the position to pass unpublished writes", func() bool { return sink.last() >= target && c.Confirmed() >= target })

	if err := stop(); err != nil {
		t.Fatalf("Run after a stop: %v", err)
	}
	if c.Streaming() {
		t.Fatal("still streaming after Run returned")
	}
	if confirmed := c.Confirmed(); confirmed > sink.last() {
		t.Fatalf("confirmed %s past the last recorded position %s", confirmed, sink.last())
	}
}

func TestConsumerRefusesAReplayBehindTheSlot(t *testing.T) {
	db, dbURL := newSourceDB(t)
	if _, err := CreateSlot(context.Background(), db, "progress_sync"); err != nil {
		t.Fatal(err)
	}
	sink := newSink()
	c := NewConsumer(db, sink, Options{DatabaseURL: dbURL, Names: Names{Slot: "progress_sync", Publication: "progress_sync"}, Model: defaultModel(), Log: quietLog()})
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	err := c.Run(ctx, pglogrepl.LSN(1))
	if !errors.Is(err, ErrReplayTooOld) {
		t.Fatalf("replay from 0/1: %v, want ErrReplayTooOld", err)
	}
	if len(sink.ends) != 0 || slices.ContainsFunc(sink.ends, func(l pglogrepl.LSN) bool { return l != 0 }) {
		t.Fatalf("a refused replay recorded %v", sink.ends)
	}
}

func TestAStudentNamedTwiceInOneTransactionIsRecordedOnce(t *testing.T) {
	db, dbURL := newSourceDB(t)
	store := newSink()
	_, stop := runConsumer(t, db, dbURL, &distinctSink{fakeSink: store, t: t})
	a := uuid.MustParse(ada)
	waitFor(t, "first load", func() bool { return store.has(a) })
	before := store.times(a)
	// One transaction names ada by her progress row and by a lesson of her course.
	if _, err := db.Exec(context.Background(), `BEGIN;
		INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('b1-viajes-m1-l7', 'b1-viajes-m1', 7, 'L');
		INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id) VALUES ('`+ada+`', 'B1', 'viajes', 'b1-viajes-m1', 'b1-viajes-m1-l7');
		COMMIT`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ada's change", func() bool { return store.times(a) > before })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// distinctSink fails the test when one write names a student twice: the durable buffer's
// upsert refuses that, and the stream would stall on it.
type distinctSink struct {
	*fakeSink
	t *testing.T
}

func (s *distinctSink) Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error {
	seen := map[uuid.UUID]bool{}
	for _, id := range students {
		if seen[id] {
			s.t.Errorf("student %s named twice in one write", id)
		}
		seen[id] = true
	}
	return s.fakeSink.Add(ctx, students, end)
}

func TestALoadRefusedForHiddenRowsIsDoneOnceTheyAreVisible(t *testing.T) {
	ctx := context.Background()
	db, dbURL := newSourceDB(t)
	var dbName string
	if err := db.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	role := "svc_" + strings.ToLower(dbName)
	for _, s := range []string{
		`CREATE ROLE ` + role + ` LOGIN REPLICATION PASSWORD 'pw'`,
		`GRANT USAGE ON SCHEMA public TO ` + role,
		`GRANT SELECT ON ` + strings.Join(defaultModel().TableNames(), ", ") + ` TO ` + role,
		`ALTER TABLE users ENABLE ROW LEVEL SECURITY`,
	} {
		if _, err := db.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Exec(context.Background(), `DROP OWNED BY `+role)
		_, _ = db.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
	})
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "pw")
	asRole, err := pgxpool.New(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer asRole.Close()
	sink := newSink()
	c, stop := runConsumer(t, asRole, u.String(), sink)
	// The first session creates the slot and finds users hidden: nothing may be loaded.
	waitFor(t, "the slot", func() bool {
		s, err := ReadSlot(ctx, db, "progress_sync")
		return err == nil && s.Exists
	})
	if c.Streaming() || sink.last() != 0 {
		t.Fatalf("streamed (%v) or recorded up to %s from a view that hides every student", c.Streaming(), sink.last())
	}
	if _, err := db.Exec(ctx, ReadPolicySQL("public.users", role)); err != nil {
		t.Fatal(err)
	}
	a, b := uuid.MustParse(ada), uuid.MustParse(bob)
	waitFor(t, "the load after the policy", func() bool { return sink.has(a) && sink.has(b) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestTheLeaseAsksTheServerWhoHoldsTheSlot(t *testing.T) {
	db, dbURL := newSourceDB(t)
	c, stop := runConsumer(t, db, dbURL, newSink())
	ctx := context.Background()
	waitFor(t, "streaming", c.Streaming)
	if err := c.Lease().Confirm(ctx); err != nil {
		t.Fatalf("fence while streaming: %v", err)
	}
	// The server says another process holds the slot, whatever this one believes.
	mine := c.lease.walsender.Load()
	c.lease.walsender.Store(mine + 1)
	if err := c.Lease().Confirm(ctx); !errors.Is(err, ErrNotHolding) {
		t.Fatalf("fence with the slot held by another process: %v, want ErrNotHolding", err)
	}
	c.lease.walsender.Store(mine)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

package reconcile

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/metrics/model/modeltest"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

// queue is the buffer as the walk sees it: what it was given, and who waits already.
type queue struct {
	mu       sync.Mutex
	added    map[uuid.UUID]int
	waiting  map[uuid.UUID]bool
	inFlight map[uuid.UUID]bool
}

func (q *queue) Add(_ context.Context, ids []uuid.UUID, _ pglogrepl.LSN) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, id := range ids {
		q.added[id]++
	}
	return nil
}

func (q *queue) Waiting(ids []uuid.UUID) (queued, inFlight map[uuid.UUID]bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	queued, inFlight = map[uuid.UUID]bool{}, map[uuid.UUID]bool{}
	for _, id := range ids {
		if q.waiting[id] {
			queued[id] = true
		}
		if q.inFlight[id] {
			inFlight[id] = true
		}
	}
	return queued, inFlight
}

// env is a database of students pushed once to the emulator, and a walk over them.
type env struct {
	t        *testing.T
	emu      *hubspottest.Server
	store    *state.Store
	students []pgtest.SeededStudent
	contact  map[uuid.UUID]string
	queue    *queue
	logs     *test.Hook
	log      *logrus.Entry
	hs       *hubspot.Client
	view     replication.CompleteView
	db       *pgxpool.Pool
	pusher   *push.Pusher
}

func newEnv(t *testing.T, students int) *env {
	t.Helper()
	ctx := context.Background()
	db := pg.NewPool(t)
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seeded, err := pgtest.Seed(ctx, conn.Conn(), pgtest.SeedOptions{Students: students, Seed: 11})
	conn.Release()
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(ctx, db, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	emu := hubspottest.NewServer(hubspottest.Options{Token: "tok", Seed: 5})
	t.Cleanup(emu.Close)
	logger, hook := test.NewNullLogger()
	logger.SetOutput(io.Discard)
	hs, err := hubspot.New(hubspot.Config{BaseURL: emu.URL(), Token: "tok", RateLimit: hubspot.Rate{Requests: 1000, Per: time.Second},
		InitialBackoff: time.Millisecond, Log: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, emu: emu, store: store, students: seeded, contact: map[uuid.UUID]string{}, logs: hook, log: logrus.NewEntry(logger), hs: hs,
		queue: &queue{added: map[uuid.UUID]int{}, waiting: map[uuid.UUID]bool{}, inFlight: map[uuid.UUID]bool{}}, view: replication.CompleteView{DB: db, Model: modeltest.CourseProgress(t, db)}, db: db}
	if _, err := push.Provision(context.Background(), hs); err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		e.contact[s.ID] = emu.AddContact(s.Email, nil, nil)
		ids[i] = s.ID
	}
	e.pusher = push.New(hs, store, logrus.NewEntry(logger), push.Options{})
	e.push(ids)
	emu.ResetStats()
	return e
}

// push writes the students as the flush would.
func (e *env) push(ids []uuid.UUID) {
	e.t.Helper()
	ctx := context.Background()
	for start := 0; start < len(ids); start += push.MaxBatch {
		batch, err := e.view.ForStudents(ctx, ids[start:min(start+push.MaxBatch, len(ids))])
		if err != nil {
			e.t.Fatal(err)
		}
		if _, err := e.pusher.Push(ctx, batch); err != nil {
			e.t.Fatal(err)
		}
	}
}

// flushQueued pushes what the walk queued and empties the queue.
func (e *env) flushQueued() {
	var ids []uuid.UUID
	for id := range e.queue.added {
		ids = append(ids, id)
	}
	e.queue.added = map[uuid.UUID]int{}
	e.push(ids)
}

func (e *env) reconciler(mayWrite func() bool) *Reconciler {
	var lease replication.Holder // nil: always
	if mayWrite != nil {
		lease = leaseFunc(mayWrite)
	}
	return New(e.hs, e.view, e.queue, e.store, e.store.Reconciliation("s"), Options{Every: time.Nanosecond, Budget: rate.Inf,
		Lease: lease, Log: e.log})
}

// pass runs steps until a pass completes, or at most pages+2 steps.
func (e *env) pass(r *Reconciler, maxSteps int) state.ReconcilePass {
	e.t.Helper()
	ctx := context.Background()
	for range maxSteps {
		if err := r.step(ctx); err != nil {
			e.t.Fatal(err)
		}
		p, err := e.store.Reconciliation("s").Load(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		if p.Pass > 0 && !p.Running {
			return p
		}
	}
	e.t.Fatalf("no pass completed in %d steps", maxSteps)
	return state.ReconcilePass{}
}

func (e *env) unsettled(id uuid.UUID) []string {
	e.t.Helper()
	pushed, err := e.store.Pushed(context.Background(), []string{e.contact[id]})
	if err != nil {
		e.t.Fatal(err)
	}
	var missing []string
	for _, name := range metrics.Names() {
		if _, ok := pushed[e.contact[id]][name]; !ok {
			missing = append(missing, name)
		}
	}
	return missing
}

func TestAPassWithNothingChangedReadsEachPageOnceAndQueuesNobody(t *testing.T) {
	e := newEnv(t, 250)
	p := e.pass(e.reconciler(nil), 10)
	st := e.emu.Stats()
	if st.BatchReads != 3 || st.BatchUpdates != 0 || st.Requests != 3 {
		t.Fatalf("a pass over 250 contacts made %d requests (%d batch/read, %d batch/update), want 3 batch/read", st.Requests, st.BatchReads, st.BatchUpdates)
	}
	if p.ContactsRead != 250 || p.StudentsDifferent != 0 || len(e.queue.added) != 0 {
		t.Fatalf("pass %+v queued %d students", p, len(e.queue.added))
	}
}

func TestAPassQueuesWhatDiffersAndCountsOnlyDrift(t *testing.T) {
	e := newEnv(t, 120)
	drifted, pending, pushing, gone, moved := e.students[3].ID, e.students[4].ID, e.students[6].ID, e.students[5].ID, e.students[110].ID
	e.emu.EditContact(e.contact[drifted], map[string]string{metrics.StudyStreak: "777", "firstname": "X"})
	// Changes on their way: in the database, not yet in HubSpot.
	for _, id := range []uuid.UUID{pending, pushing} {
		if _, err := e.db.Exec(context.Background(), `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 31337)
			ON CONFLICT (user_id) DO UPDATE SET total_xp = 31337`, id); err != nil {
			t.Fatal(err)
		}
	}
	e.queue.waiting[pending] = true
	e.queue.inFlight[pushing] = true
	e.emu.DeleteContact(e.contact[gone])
	if _, err := e.db.Exec(context.Background(), `UPDATE users SET email = 'moved@example.com' WHERE id = $1`, moved); err != nil {
		t.Fatal(err)
	}
	p := e.pass(e.reconciler(nil), 10)
	if p.StudentsDifferent != 1 || p.Differed[metrics.StudyStreak] != 1 || len(p.Differed) != 1 {
		t.Fatalf("pass found %d different, by property %v; want the one drifted study_streak", p.StudentsDifferent, p.Differed)
	}
	// A student queued already is not queued again: that would put its push off.
	for id, want := range map[uuid.UUID]int{drifted: 1, pushing: 1, gone: 1, moved: 1, pending: 0} {
		if e.queue.added[id] != want {
			t.Errorf("student %s queued %d times, want %d", id, e.queue.added[id], want)
		}
	}
	if len(e.queue.added) != 4 {
		t.Errorf("queued %d students, want 4", len(e.queue.added))
	}
	if u := e.unsettled(pending); len(u) != 1 || u[0] != metrics.TotalXP {
		t.Errorf("the queued student's record forgets %v, want [total_xp]: its push must send it", u)
	}
	if u := e.unsettled(drifted); len(u) != 1 || u[0] != metrics.StudyStreak {
		t.Errorf("the drifted contact's record forgets %v, want [study_streak]", u)
	}
	if links, _ := e.store.Links(context.Background(), []uuid.UUID{gone}); len(links) != 0 {
		t.Errorf("the link to a deleted contact survived the pass")
	}
	if e.emu.Stats().BatchUpdates != 0 {
		t.Errorf("the walk wrote to HubSpot itself")
	}
}

func TestAPassResumesWhereItWasAndOnlyTheSlotHolderWalks(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, 250)
	standby := e.reconciler(func() bool { return false })
	for range 3 {
		short, cancel := context.WithTimeout(ctx, 10*time.Millisecond) // a standby sleeps between looks
		if err := standby.step(short); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	if st := e.emu.Stats(); st.Requests != 0 {
		t.Fatalf("a standby made %d requests", st.Requests)
	}
	first := e.reconciler(nil)
	if err := first.step(ctx); err != nil { // starts the pass and does its first page
		t.Fatal(err)
	}
	if st := e.emu.Stats(); st.BatchReads != 1 {
		t.Fatalf("%d batch/reads after the first page", st.BatchReads)
	}
	// "Restart": a new walker carries on from the stored position.
	p := e.pass(e.reconciler(nil), 10)
	if st := e.emu.Stats(); st.BatchReads != 3 || p.ContactsRead != 250 || p.Pass != 1 {
		t.Fatalf("after a restart the pass made %d batch/reads in all and read %d contacts (pass %d), want 3 and 250 in pass 1", st.BatchReads, p.ContactsRead, p.Pass)
	}
}

func TestAPropertyOverwrittenPassAfterPassIsNamed(t *testing.T) {
	e := newEnv(t, 30)
	r := e.reconciler(nil)
	for pass := range 3 {
		for _, s := range e.students[:pass*5] { // 0, then 5, then 10 contacts
			e.emu.EditContact(e.contact[s.ID], map[string]string{metrics.StudyStreak: "777"})
		}
		e.logs.Reset()
		e.pass(r, 5)
		e.flushQueued()
		var warned string
		for _, entry := range e.logs.AllEntries() {
			if entry.Level == logrus.WarnLevel {
				warned = entry.Message
			}
		}
		switch pass {
		case 0, 1:
			if warned != "" {
				t.Fatalf("pass %d warned %q, though nothing had drifted in the pass before", pass+1, warned)
			}
		case 2:
			if want := "study_streak was changed in HubSpot again on 5 contacts"; !strings.Contains(warned, want) {
				t.Fatalf("pass 3 warned %q, want %q", warned, want)
			}
		}
	}
}

func TestBudgetIsATenthOfTheRateLimit(t *testing.T) {
	for _, tc := range []struct {
		rate hubspot.Rate
		want rate.Limit
	}{
		{hubspot.Rate{Requests: 100, Per: 10 * time.Second}, 1},
		{hubspot.Rate{Requests: 190, Per: 10 * time.Second}, 1.9},
		{hubspot.Rate{}, rate.Inf},
	} {
		if got := Budget(tc.rate); got != tc.want {
			t.Errorf("Budget(%v) = %v, want %v", tc.rate, got, tc.want)
		}
	}
}

// landing is HubSpot with a push landing just before each read answers.
type landing struct {
	HubSpot
	before func()
}

func (l landing) ReadByID(ctx context.Context, ids []string, props []string) (map[string]hubspot.Contact, error) {
	l.before()
	return l.HubSpot.ReadByID(ctx, ids, props)
}

func TestAChangeOnItsWayIsNotTakenForDrift(t *testing.T) {
	e := newEnv(t, 50)
	ctx := context.Background()
	xp := 1000
	r := e.reconciler(nil)
	// While the walk reads each page, ten students change and their pushes land.
	r.hs = landing{HubSpot: e.hs, before: func() {
		var ids []uuid.UUID
		for _, s := range e.students[:10] {
			xp++
			if _, err := e.db.Exec(ctx, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2)
				ON CONFLICT (user_id) DO UPDATE SET total_xp = $2`, s.ID, xp); err != nil {
				t.Error(err)
			}
			ids = append(ids, s.ID)
		}
		e.push(ids)
	}}
	p := e.pass(r, 5)
	if p.StudentsDifferent != 0 || len(p.Differed) != 0 {
		t.Fatalf("pushes landing during the walk counted as drift: %d students, %v", p.StudentsDifferent, p.Differed)
	}
}

func TestAValueThatChangesBackWhileHubSpotIsReadIsNotDrift(t *testing.T) {
	e := newEnv(t, 50)
	ctx := context.Background()
	setXP := func(ids []uuid.UUID, xp int) {
		for _, id := range ids {
			if _, err := e.db.Exec(ctx, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2)
				ON CONFLICT (user_id) DO UPDATE SET total_xp = $2`, id, xp); err != nil {
				t.Error(err)
			}
		}
	}
	var flipped []uuid.UUID
	for _, s := range e.students[:10] {
		flipped = append(flipped, s.ID)
	}
	setXP(flipped, 5000)
	e.push(flipped)
	r := e.reconciler(nil)
	// While HubSpot is read, the students go to 5001 (pushed: HubSpot and the record say so)
	// and back to 5000 (not pushed yet).
	r.hs = landing{HubSpot: e.hs, before: func() {
		setXP(flipped, 5001)
		e.push(flipped)
		setXP(flipped, 5000)
	}}
	p := e.pass(r, 5)
	if p.StudentsDifferent != 0 || len(p.Differed) != 0 {
		t.Fatalf("a value that changed back while HubSpot was read counted as drift: %d students, %v", p.StudentsDifferent, p.Differed)
	}
	for _, id := range flipped {
		if e.queue.added[id] != 1 {
			t.Fatalf("student %s queued %d times: HubSpot holds 5001 and must be repaired", id, e.queue.added[id])
		}
	}
}

func TestAPassLogsItsProgress(t *testing.T) {
	e := newEnv(t, 250)
	r := New(e.hs, e.view, e.queue, e.store, e.store.Reconciliation("s"), Options{Every: time.Nanosecond, Budget: rate.Inf,
		ProgressEvery: time.Nanosecond, Log: e.log})
	e.pass(r, 10)
	var lines []string
	for _, entry := range e.logs.AllEntries() {
		if entry.Message == "reconcile: progress" {
			lines = append(lines, fmt.Sprintf("%v of %v, eta %v", entry.Data["contacts_read"], entry.Data["contacts_total"], entry.Data["eta"]))
		}
	}
	// The first page starts the clock; each later one is past ProgressEvery.
	if want := []string{"200 of 250, eta 0s", "250 of 250, eta 0s"}; fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Fatalf("progress lines %q, want %q", lines, want)
	}
}

func TestTimeLeftIsNoLessThanTheBudgetAllows(t *testing.T) {
	budget := Budget(hubspot.Rate{Requests: 100, Per: 10 * time.Second}) // one page a second
	for _, tc := range []struct {
		left int
		seen float64
		want time.Duration
	}{
		{0, 0, 0},
		{100, 0, time.Second},
		{101, 0, 2 * time.Second},
		{100_000, 0, 1000 * time.Second},
		{1000, 500, 10 * time.Second}, // faster than the budget allows: the budget decides
		{1000, 20, 50 * time.Second},  // HubSpot slower than the budget: what was seen decides
	} {
		if got := TimeLeft(tc.left, budget, tc.seen); got != tc.want {
			t.Errorf("TimeLeft(%d, 1 page/s, %g/s) = %s, want %s", tc.left, tc.seen, got, tc.want)
		}
	}
	if got := TimeLeft(500, rate.Inf, 0); got != 0 {
		t.Errorf("with no budget, TimeLeft = %s, want 0", got)
	}
}

// leaseFunc is a replication.Holder from a function.
type leaseFunc func() bool

func (f leaseFunc) MayWrite() bool { return f() }

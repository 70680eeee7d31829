package push

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/metrics/model/modeltest"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

// env is a database, the emulator with our properties, and a Pusher between them.
type env struct {
	t     *testing.T
	db    *pgxpool.Pool
	emu   *hubspottest.Server
	store *state.Store
	p     *Pusher
	logs  *test.Hook
	model *model.Model
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	db := pg.NewPool(t)
	store, err := state.Open(ctx, db, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	emu := hubspottest.NewServer(hubspottest.Options{Token: "tok-push-test", Seed: 3})
	t.Cleanup(emu.Close)
	logger, hook := test.NewNullLogger()
	logger.SetOutput(io.Discard)
	hs, err := hubspot.New(hubspot.Config{BaseURL: emu.URL(), Token: "tok-push-test", RateLimit: hubspot.Rate{Requests: 1000, Per: time.Second},
		InitialBackoff: time.Millisecond, Log: logrus.NewEntry(logger)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Provision(ctx, hs); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, db: db, emu: emu, store: store, p: New(hs, store, logrus.NewEntry(logger), Options{}), logs: hook,
		model: modeltest.CourseProgress(t, db)}
}

func (e *env) student(email string, extra ...string) uuid.UUID {
	e.t.Helper()
	ctx := context.Background()
	var id uuid.UUID
	if err := e.db.QueryRow(ctx, `INSERT INTO users (email, name, language_level, course_goal) VALUES ($1, 'S', 'B1', 'viajes') RETURNING id`, email).Scan(&id); err != nil {
		e.t.Fatal(err)
	}
	for _, sql := range extra {
		if _, err := e.db.Exec(ctx, sql, id); err != nil {
			e.t.Fatalf("%s: %v", sql, err)
		}
	}
	return id
}

func (e *env) push(ids ...uuid.UUID) Result {
	e.t.Helper()
	students, err := e.model.ForStudents(context.Background(), e.db, ids)
	if err != nil {
		e.t.Fatal(err)
	}
	res, err := e.p.Push(context.Background(), students)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

func (e *env) problem(id uuid.UUID) state.Problem {
	e.t.Helper()
	probs, err := e.store.Problems(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, p := range probs {
		if p.StudentID == id {
			return p
		}
	}
	return state.Problem{}
}

func progress(lesson string, score string, spent string) string {
	return `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score, time_spent, last_accessed_at)
		VALUES ($1, 'B1', 'viajes', 'b1-viajes-m1', ` + lesson + `, true, ` + score + `, ` + spent + `, '2026-11-20 10:00')`
}

func TestHostileInput(t *testing.T) {
	e := newEnv(t)
	fine := e.student("fine@example.com")
	e.emu.AddContact("fine@example.com", nil, nil)

	noEmail := e.student("   ")
	notAddress := e.student("just some words")
	upper := e.student("Twin@Example.com")
	lower := e.student("twin@example.com")
	e.emu.AddContact("twin@example.com", nil, nil)
	secondaryOnly := e.student("old-address@example.com")
	e.emu.AddContact("new-address@example.com", []string{"old-address@example.com"}, nil)
	wild := e.student("wild@example.com", progress("'l1'", "150", "2000000000"), progress("'l2'", "-20", "-5"))
	e.emu.AddContact("wild@example.com", nil, nil)
	longLesson := e.student("long@example.com", progress("repeat('x', 10000)", "80", "60"))
	e.emu.AddContact("long@example.com", nil, nil)
	tooLong := e.student("toolong@example.com", progress("repeat('y', 70000)", "80", "60"))
	e.emu.AddContact("toolong@example.com", nil, nil)

	res := e.push(fine, noEmail, notAddress, upper, lower, secondaryOnly, wild, longLesson, tooLong)

	for _, tc := range []struct {
		name    string
		student uuid.UUID
		kind    state.Kind
		reason  string
	}{
		{"no email", noEmail, state.Unmatched, "no email"},
		{"not an address", notAddress, state.Unmatched, "not an address"},
		{"same email in two cases (upper)", upper, state.Conflict, "more than one of them holds the contact's primary address"},
		{"same email in two cases (lower)", lower, state.Conflict, "more than one of them holds the contact's primary address"},
		{"value longer than HubSpot takes", tooLong, state.Rejected, "current_lesson"},
	} {
		if p := e.problem(tc.student); p.Kind != tc.kind || !strings.Contains(p.Reason, tc.reason) {
			t.Errorf("%s: problem %+v, want %s containing %q", tc.name, p, tc.kind, tc.reason)
		}
	}
	for _, tc := range []struct {
		name, email string
		student     uuid.UUID
		check       func(c hubspottest.Contact) bool
	}{
		{"ordinary student beside the hostile ones", "fine@example.com", fine, func(c hubspottest.Contact) bool { return c.Properties[metrics.CourseStatus] == "not_started" }},
		{"email only on a contact's secondary address", "new-address@example.com", secondaryOnly, func(c hubspottest.Contact) bool { return c.Properties[metrics.CourseStatus] == "not_started" }},
		{"scores out of range and enormous time", "wild@example.com", wild, func(c hubspottest.Contact) bool {
			return c.Properties[metrics.AverageScore] == "65" && c.Properties[metrics.TotalStudyTime] == "33333333"
		}},
		{"a 10,000-character lesson id", "long@example.com", longLesson, func(c hubspottest.Contact) bool { return len(c.Properties[metrics.CurrentLesson]) == 10000 }},
	} {
		c, ok := e.emu.ContactByEmail(tc.email)
		if !ok || !tc.check(c) {
			t.Errorf("%s: contact %+v", tc.name, c.Properties)
		}
		if p := e.problem(tc.student); p.Kind != "" {
			t.Errorf("%s: unexpected problem %+v", tc.name, p)
		}
	}
	twin, _ := e.emu.ContactByEmail("twin@example.com")
	if twin.Properties[metrics.CourseStatus] != "" {
		t.Errorf("a contact claimed by two students was written: %v", twin.Properties)
	}
	if len(res.Problems) != 5 {
		t.Errorf("%d problems, want 5: %+v", len(res.Problems), res.Problems)
	}
	if v := e.emu.Violations(); len(v) > 0 {
		t.Fatalf("violations: %v", v)
	}
	// Logs name students by id and a masked email, never the address itself.
	for _, entry := range e.logs.AllEntries() {
		if s, _ := entry.String(); strings.Contains(s, "Twin@Example.com") || strings.Contains(s, "twin@example.com") {
			t.Fatalf("log shows a full email: %s", s)
		}
	}
}

func TestSecondPushSendsNothingAndRejectedValuesWaitForAChange(t *testing.T) {
	e := newEnv(t)
	a := e.student("a@example.com", progress("'l1'", "90", "60"))
	e.emu.AddContact("a@example.com", nil, nil)
	e.emu.AddValidationRule(metrics.AverageScore, hubspottest.MaxNumber(50))
	e.push(a)
	if p := e.problem(a); p.Kind != state.Rejected {
		t.Fatalf("problem %+v, want rejected", p)
	}
	e.emu.ResetStats()
	e.push(a)
	if st := e.emu.Stats(); st.Requests != 0 {
		t.Fatalf("pushing unchanged, already refused values made %d requests", st.Requests)
	}
	if _, err := e.db.Exec(context.Background(), `UPDATE course_progress SET score = 40 WHERE user_id = $1`, a); err != nil {
		t.Fatal(err)
	}
	e.push(a)
	if p := e.problem(a); p.Kind != "" {
		t.Fatalf("after the value changed: problem %+v", p)
	}
	c, _ := e.emu.ContactByEmail("a@example.com")
	if c.Properties[metrics.AverageScore] != "40" {
		t.Fatalf("average_score %q", c.Properties[metrics.AverageScore])
	}
}

func TestMaskEmail(t *testing.T) {
	for in, want := range map[string]string{"ada@example.com": "a***@example.com", "": "", "x": "x***", "@d.com": "@***", "a.secret8@b": "a***", "@onlydomain.secret.com": "@***",
		// Not one address: nothing after the first letter may show.
		"x@jane.doe.secret@gmail.com": "x***", "jane@gmail.com, bob.secret@yahoo.com": "j***",
		"mia@example.com bob.other@example.com": "m***", "tom@example.com\nann.secret@example.com": "t***",
		"<script>alert(1)</script>@evil.com": "<***",
		// A letter is never cut in two.
		"Élise.Dupont@example.fr": "É***@example.fr", "Ñ": "Ñ***"} {
		if got := MaskEmail(in); got != want {
			t.Errorf("MaskEmail(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestShowEmailsIsOptIn(t *testing.T) {
	for _, show := range []bool{false, true} {
		e := newEnv(t)
		e.p.showEmails = show
		id := e.student("nobody-here@example.com")
		e.push(id)
		var logged bool
		for _, entry := range e.logs.AllEntries() {
			if entry.Data["email"] == "nobody-here@example.com" {
				logged = true
			}
		}
		if logged != show {
			t.Errorf("ShowEmails=%v: full email logged = %v", show, logged)
		}
	}
}

func TestBatchThatLostEveryProgressRowIsRefused(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name     string
		students int  // all with progress, pushed once
		keep     int  // students whose rows survive
		allow    bool // AllowClearing
		refused  bool
	}{
		{name: "one student deleted their progress", students: 1, refused: false},
		{name: "fewer than the threshold", students: VanishedProgressMin - 1, refused: false},
		{name: "a whole batch at the threshold", students: VanishedProgressMin, refused: true},
		{name: "one survivor shows the view is not empty", students: VanishedProgressMin + 2, keep: 1, refused: false},
		{name: "the operator allows clearing", students: VanishedProgressMin + 2, allow: true, refused: false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var ids []uuid.UUID
			for i := range tc.students {
				email := fmt.Sprintf("s%d@example.com", i)
				ids = append(ids, e.student(email, progress("'l1'", "80", "600")))
				e.emu.AddContact(email, nil, nil)
			}
			e.push(ids...)
			if _, err := e.db.Exec(ctx, `DELETE FROM course_progress WHERE NOT user_id = ANY($1)`, ids[:tc.keep]); err != nil {
				t.Fatal(err)
			}
			e.p.allowClearing = tc.allow
			e.emu.ResetStats()
			students, err := e.model.ForStudents(ctx, e.db, ids)
			if err != nil {
				t.Fatal(err)
			}
			_, err = e.p.Push(ctx, students)
			var vanished *VanishedProgressError
			if got := errors.As(err, &vanished); got != tc.refused {
				t.Fatalf("refused %v (%v), want %v", got, err, tc.refused)
			}
			updates := e.emu.Stats().BatchUpdates
			c, _ := e.emu.ContactByEmail(fmt.Sprintf("s%d@example.com", tc.students-1))
			if tc.refused {
				if updates != 0 || c.Properties[metrics.CourseStatus] != metrics.StatusInProgress {
					t.Fatalf("a refused batch wrote: %d updates, course_status %q", updates, c.Properties[metrics.CourseStatus])
				}
				if vanished.Students != tc.students || !strings.Contains(err.Error(), "row-level security") {
					t.Fatalf("error %v", err)
				}
				return
			}
			if c.Properties[metrics.CourseStatus] != metrics.StatusNotStarted {
				t.Fatalf("course_status %q after a push that was let through", c.Properties[metrics.CourseStatus])
			}
		})
	}
}

// crashingStore loses the Record of the next push, as a SIGKILL between HubSpot's answer and
// the state's transaction would.
type crashingStore struct {
	*state.Store
	crash bool
}

func (c *crashingStore) Record(ctx context.Context, o state.Outcome) error {
	if c.crash {
		c.crash = false
		return errors.New("killed before recording")
	}
	return c.Store.Record(ctx, o)
}

func TestAWriteNeverRecordedIsNotTakenForTheOldValue(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.student("a@example.com")
	e.emu.AddContact("a@example.com", nil, nil)
	e.push(a) // records the contact's values: no progress
	store := &crashingStore{Store: e.store, crash: true}
	e.p.store = store
	if _, err := e.db.Exec(ctx, progress("'l1'", "76.09", "60"), a); err != nil {
		t.Fatal(err)
	}
	students, err := e.model.ForStudents(ctx, e.db, []uuid.UUID{a})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Push(ctx, students); err == nil {
		t.Fatal("the push whose record was lost reported success")
	}
	c, _ := e.emu.ContactByEmail("a@example.com")
	if c.Properties[metrics.AverageScore] != "76.09" {
		t.Fatalf("HubSpot took %q; the test needs the write to have happened", c.Properties[metrics.AverageScore])
	}
	// The student's progress goes back to what the record last held; the retry must still
	// write it, since HubSpot holds the values of the lost write.
	if _, err := e.db.Exec(ctx, `DELETE FROM course_progress WHERE user_id = $1`, a); err != nil {
		t.Fatal(err)
	}
	e.push(a)
	c, _ = e.emu.ContactByEmail("a@example.com")
	if c.Properties[metrics.AverageScore] != "" || c.Properties[metrics.CourseStatus] != metrics.StatusNotStarted {
		t.Fatalf("after the retry HubSpot holds average_score %q, course_status %q", c.Properties[metrics.AverageScore], c.Properties[metrics.CourseStatus])
	}
}

func TestATransientPerInputErrorIsRetriedNotRejected(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.student("a@example.com", progress("'l1'", "80", "60"))
	id := e.emu.AddContact("a@example.com", nil, nil)
	e.emu.FailInputsOnce("INTERNAL_ERROR", id)
	students, err := e.model.ForStudents(ctx, e.db, []uuid.UUID{a})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Push(ctx, students); err == nil || !strings.Contains(err.Error(), "retried") {
		t.Fatalf("push with a transient per-input error: %v, want an error that retries the batch", err)
	}
	if p := e.problem(a); p.Kind != "" {
		t.Fatalf("a transient error made the student %s: %s", p.Kind, p.Reason)
	}
	e.push(a)
	if c, _ := e.emu.Contact(id); c.Properties[metrics.AverageScore] != "80" {
		t.Fatalf("after the retry average_score = %q", c.Properties[metrics.AverageScore])
	}
}

func TestAddingUpBatchesKeepsOneProblemPerStudent(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	var total Result
	total.Add(Result{Students: 1, Problems: []state.Problem{{StudentID: a, Kind: state.Conflict}, {StudentID: b, Kind: state.Conflict}}})
	total.Add(Result{Students: 1, Problems: []state.Problem{{StudentID: b, Kind: state.Conflict, Reason: "later"}}})
	if total.Count(state.Conflict) != 2 || total.Problems[1].Reason != "later" || total.Students != 2 {
		t.Fatalf("total %+v", total)
	}
}

// A problem is news once: two students in conflict over a contact are warned about when the
// conflict begins, not again each time one of them changes; and once when it is over.
func TestAProblemIsWarnedAboutOnce(t *testing.T) {
	e := newEnv(t)
	upper := e.student("Pair@Example.com")
	lower := e.student("pair@example.com")
	cid := e.emu.AddContact("pair@example.com", nil, nil)
	warnings := func() int {
		n := 0
		for _, entry := range e.logs.AllEntries() {
			if entry.Level == logrus.WarnLevel && entry.Data["kind"] == state.Conflict {
				n++
			}
		}
		return n
	}
	e.push(upper)
	e.push(lower)
	if n := warnings(); n != 2 {
		t.Fatalf("%d conflict warnings when the conflict began, want 2 (one per student)", n)
	}
	for i := 0; i < 5; i++ {
		e.push(upper)
		e.push(lower)
	}
	if n := warnings(); n != 2 {
		t.Fatalf("%d conflict warnings after each student changed 5 times, want still 2", n)
	}
	// The twin leaves: the one left writes the contact, and its problem's end is said once.
	if _, err := e.db.Exec(context.Background(), `UPDATE users SET email = 'moved@example.com' WHERE id = $1`, lower); err != nil {
		t.Fatal(err)
	}
	e.push(lower)
	e.push(upper)
	if p := e.problem(upper); p.Kind != "" {
		t.Fatalf("the student left on the contact is still a problem: %+v", p)
	}
	over := 0
	for _, entry := range e.logs.AllEntries() {
		if entry.Message == "the student's problem is over: HubSpot holds the student's values" && entry.Data["student_id"] == upper {
			over++
		}
	}
	if over != 1 {
		t.Fatalf("%d lines saying the conflict of contact %s is over, want 1", over, cid)
	}
}

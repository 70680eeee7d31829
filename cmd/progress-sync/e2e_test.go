package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/metrics/model/modeltest"
	"github.com/focusenglish/progress-sync/metrics/reference"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

// These tests run the real progress-sync binary against the test PostgreSQL and the HubSpot
// emulator.

var (
	pg     *pgtest.Server
	binary string
)

const token = "pat-na1-e2e-secret-token-0123456789"

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "progress-sync-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "progress-sync")
	// The checkout's commit goes in the binary (version), whatever GOFLAGS says.
	args := []string{"build", "-buildvcs=auto", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	// PROGRESS_SYNC_TEST_BINARY runs the tests against another build, such as an older
	// commit's, to see a test fail where a defect was.
	if other := os.Getenv("PROGRESS_SYNC_TEST_BINARY"); other != "" {
		binary = other
	} else if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build progress-sync: %v\n%s", err, out)
		os.Exit(1)
	}
	code := pgtest.Run(m, &pg)
	os.RemoveAll(dir)
	os.Exit(code)
}

// cli runs the binary with the given environment and arguments.
type cli struct {
	t   *testing.T
	env map[string]string
}

type result struct {
	stdout, stderr string
	code           int
}

func (c cli) run(args ...string) result {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for k, v := range c.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run %v: %v", args, err)
	}
	r := result{stdout.String(), stderr.String(), code}
	for _, out := range []string{r.stdout, r.stderr} {
		if strings.Contains(out, token) {
			c.t.Fatalf("progress-sync %v printed the HubSpot token", args)
		}
	}
	return r
}

func (c cli) mustRun(args ...string) result {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("progress-sync %v exited %d\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, tail(r.stderr, 4000))
	}
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// world is a seeded database and an emulator holding contacts for most students.
type world struct {
	t        *testing.T
	dbURL    string
	db       *pgx.Conn
	emu      *hubspottest.Server
	cli      cli
	students []pgtest.SeededStudent
	// roles of particular students
	unmatched []uuid.UUID
	noEmail   uuid.UUID
	badEmail  uuid.UUID
	owner     uuid.UUID // primary email of a shared contact
	rival     uuid.UUID // an additional email of the same contact
	rejected  uuid.UUID // average score above the portal's validation rule
	// rulesEnforced: HubSpot enforces the portal's validation rules on API writes (from the
	// 2026-09 version on; not on v3, where the rejected student's value is taken).
	rulesEnforced bool
	contactIDs    map[uuid.UUID]string
	// model is the progress model the binary runs with; what HubSpot must hold is computed
	// by the model's SQL for the default, and independently (metrics/reference) for
	// lesson_progress.
	model string
	// contactsMade counts the contacts the test created, to prove the sync created none.
	contactsMade int
}

const studentsTotal = 1050

// newWorld seeds total students; the last 5% have no contact.
func newWorld(t *testing.T, total int) *world { return newWorldOn(t, pg, total) }

// newWorldOn is newWorld on a server of the test's own.
func newWorldOn(t *testing.T, srv *pgtest.Server, total int) *world {
	ctx := context.Background()
	dbURL := srv.NewDatabase(t)
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	students, err := pgtest.Seed(ctx, db, pgtest.SeedOptions{Students: total, Seed: 42})
	if err != nil {
		t.Fatal(err)
	}
	emu := hubspottest.NewServer(hubspottest.Options{Token: token, RateLimit: 100, Seed: 7})
	t.Cleanup(emu.Close)
	// The portal refuses average scores above 100, as a HubSpot validation rule would.
	emu.AddValidationRule(metrics.AverageScore, hubspottest.MaxNumber(100))
	w := &world{t: t, dbURL: dbURL, db: db, emu: emu, students: students, contactIDs: map[uuid.UUID]string{}, model: model.Default,
		cli: cli{t: t, env: map[string]string{
			"DATABASE_URL": dbURL, "HUBSPOT_ACCESS_TOKEN": token, "HUBSPOT_BASE_URL": emu.URL(), "LOG_FORMAT": "json",
		}}}

	// PROGRESS_SYNC_TEST_HUBSPOT_API_VERSION runs the tests on another API version (CI: v3);
	// every request of a test must use the one chosen.
	family := hubspot.DefaultAPIVersion
	if v := os.Getenv("PROGRESS_SYNC_TEST_HUBSPOT_API_VERSION"); v != "" {
		family = v
		w.cli.env["HUBSPOT_API_VERSION"] = v
	}
	w.rulesEnforced = family != hubspot.LegacyAPIVersion
	t.Cleanup(func() {
		for f, n := range emu.Stats().ByFamily {
			if f != family && w.cli.env["HUBSPOT_API_VERSION"] != f {
				t.Errorf("%d requests went to the %s paths, the test runs on %s", n, f, family)
			}
		}
	})

	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Emails as people type them: upper case and stray spaces.
	for i := 0; i < 20; i++ {
		exec(`UPDATE users SET email = upper(email) WHERE id = $1`, students[i].ID)
		exec(`UPDATE users SET email = '  ' || email || ' ' WHERE id = $1`, students[20+i].ID)
	}
	w.noEmail, w.badEmail = students[40].ID, students[41].ID
	exec(`UPDATE users SET email = '' WHERE id = $1`, w.noEmail)
	exec(`UPDATE users SET email = 'not an email' WHERE id = $1`, w.badEmail)
	// Two students resolving to one contact: the rival's email is an additional address of
	// the owner's contact.
	w.owner, w.rival = students[100].ID, students[101].ID
	exec(`UPDATE users SET email = 'alias-of-101@example.com' WHERE id = $1`, w.rival)
	// A value the portal's validation rule refuses: an average score above 100.
	w.rejected = students[200].ID
	exec(`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score)
		VALUES ($1, 'A1', 'viajes', 'a1-viajes-m1', 'bonus-lesson', true, 999.99)`, w.rejected)

	for i, s := range students {
		switch {
		case i >= total-total/20:
			w.unmatched = append(w.unmatched, s.ID)
			continue
		case s.ID == w.noEmail || s.ID == w.badEmail || s.ID == w.rival:
			continue
		}
		var extra []string
		if s.ID == w.owner {
			extra = []string{"alias-of-101@example.com"}
		}
		// Some contacts already hold stale values, some hold the right ones.
		props := map[string]string{"firstname": fmt.Sprintf("Student %d", i+1)}
		if i%3 == 0 {
			props["total_xp"] = "123456"
		}
		w.contactIDs[s.ID] = emu.AddContact(s.Email, extra, props)
		w.contactsMade++
	}
	return w
}

// expected computes every student's metrics from the database.
func (w *world) expected() map[uuid.UUID]metrics.Student {
	w.t.Helper()
	ids := make([]uuid.UUID, len(w.students))
	for i, s := range w.students {
		ids[i] = s.ID
	}
	if w.model == "lesson_progress" {
		want, err := reference.LessonProgress(context.Background(), w.db)
		if err != nil {
			w.t.Fatal(err)
		}
		return want
	}
	got, err := modeltest.Verified(w.t, w.db, w.model).ForStudents(context.Background(), w.db, ids)
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[uuid.UUID]metrics.Student{}
	for _, s := range got {
		out[s.ID] = s
	}
	return out
}

// checkContacts asserts that every contact the sync may write holds exactly the student's
// metrics, that no contact was created and the emulator saw no contract violation.
func (w *world) checkContacts() {
	w.t.Helper()
	if diff := w.diff(); len(diff) > 0 {
		for i, d := range diff {
			if i == 10 {
				break
			}
			w.t.Error(d)
		}
		w.t.Fatalf("%d property values differ from the database", len(diff))
	}
	if n := len(w.emu.Contacts()); n != w.contactsMade {
		w.t.Fatalf("HubSpot holds %d contacts, the test made %d", n, w.contactsMade)
	}
	if v := w.emu.Violations(); len(v) > 0 {
		w.t.Fatalf("HubSpot contract violations:\n%s", strings.Join(v, "\n"))
	}
}

// waitEqual polls until every contact equals the database, or fails at the deadline.
func (w *world) waitEqual(timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff := w.diff()
		if len(diff) == 0 {
			w.checkContacts()
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("after %s, %d values still differ, e.g. %s", timeout, len(diff), diff[0])
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// diff lists the values on contacts that differ from the student's metrics.
func (w *world) diff() []string {
	w.t.Helper()
	want := w.expected()
	var out []string
	for id, cid := range w.contactIDs {
		c, ok := w.emu.Contact(cid)
		if !ok {
			w.t.Fatalf("contact %s disappeared", cid)
		}
		for _, name := range metrics.Names() {
			exp, computed := want[id].Values[name]
			if !computed {
				continue // the model leaves it to HubSpot
			}
			if id == w.rejected && w.rulesEnforced {
				exp = "" // nothing may be written to a contact HubSpot refused
				if name == metrics.TotalXP && c.Properties[name] == "123456" {
					exp = "123456"
				}
			}
			if got := c.Properties[name]; got != exp {
				out = append(out, fmt.Sprintf("contact %s (student %s) %s = %q, want %q", cid, id, name, got, exp))
			}
		}
	}
	sort.Strings(out)
	return out
}

// addContact makes a HubSpot contact during a test.
func (w *world) addContact(email string) string {
	w.contactsMade++
	return w.emu.AddContact(email, nil, nil)
}

type problem struct{ kind, reason string }

func (w *world) problems() map[uuid.UUID]problem {
	w.t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, w.dbURL)
	if err != nil {
		w.t.Fatal(err)
	}
	defer pool.Close()
	store, err := state.OpenReadOnly(ctx, pool, model.Builtin(model.Default).Students)
	if err != nil {
		w.t.Fatal(err)
	}
	probs, err := store.Problems(ctx)
	if err != nil {
		w.t.Fatal(err)
	}
	out := map[uuid.UUID]problem{}
	for _, p := range probs {
		out[p.StudentID] = problem{kind: string(p.Kind), reason: p.Reason}
	}
	return out
}

func (w *world) checkProblems() {
	w.t.Helper()
	probs := w.problems()
	want := map[uuid.UUID]string{w.noEmail: "unmatched", w.badEmail: "unmatched", w.rival: "conflict"}
	if w.rulesEnforced {
		want[w.rejected] = "rejected"
	}
	for _, id := range w.unmatched {
		want[id] = "unmatched"
	}
	for id, kind := range want {
		if probs[id].kind != kind {
			w.t.Errorf("student %s: problem %+v, want kind %s", id, probs[id], kind)
		}
	}
	for id, p := range probs {
		if _, ok := want[id]; !ok {
			w.t.Errorf("student %s has an unexpected problem %+v", id, p)
		}
	}
	if r := probs[w.rejected].reason; w.rulesEnforced && !strings.Contains(r, "average_score") {
		t := w.t
		t.Errorf("rejection reason %q does not carry HubSpot's message about average_score", r)
	}
}

func requestBudget(students int) int { return 2*((students+99)/100) + 10 }

func TestBackfillEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults hubspottest.Faults
	}{
		{name: "healthy HubSpot"},
		{name: "20% of replies are 429 or 5xx", faults: hubspottest.Faults{Rate429: 0.1, Rate5xx: 0.1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, studentsTotal)
			w.emu.SetFaults(tc.faults)
			w.cli.mustRun("provision")

			before := w.emu.Contacts()
			dry := w.cli.mustRun("backfill", "--dry-run")
			if !strings.Contains(dry.stdout, "would update contact") || !strings.Contains(dry.stdout, "unmatched") {
				t.Fatalf("dry run printed no changes:\n%s", tail(dry.stdout, 2000))
			}
			// The report lands in job logs: no email in full, nor what was typed instead of one.
			for _, s := range w.students {
				if e := metrics.NormalizeEmail(s.Email); strings.Contains(strings.ToLower(dry.stdout), e) {
					t.Fatalf("the dry run's report shows the email %s in full", e)
				}
			}
			if strings.Contains(dry.stdout, "not an email") || strings.Contains(dry.stdout, "alias-of-101@") {
				t.Fatal("the dry run's report shows what a student typed in full")
			}
			if st := w.emu.Stats(); st.BatchUpdates != 0 {
				t.Fatalf("dry run sent %d batch/update requests", st.BatchUpdates)
			}
			if after := w.emu.Contacts(); !sameContacts(before, after) {
				t.Fatal("dry run changed HubSpot contacts")
			}
			var stateExists bool
			if err := w.db.QueryRow(context.Background(), `SELECT to_regnamespace('progress_sync') IS NOT NULL`).Scan(&stateExists); err != nil {
				t.Fatal(err)
			}
			if stateExists {
				t.Fatal("dry run created the sync state")
			}

			w.emu.ResetStats()
			out := w.cli.mustRun("backfill")
			st := w.emu.Stats()
			w.checkContacts()
			w.checkProblems()
			counted := st.Requests
			if tc.faults.Rate429+tc.faults.Rate5xx > 0 {
				// Injected faults are HubSpot's failures, not the sync's requests.
				counted = st.Served
			}
			if budget := requestBudget(studentsTotal); counted > budget {
				t.Errorf("backfill made %d HubSpot requests (%d received), budget %d", counted, st.Requests, budget)
			}
			t.Logf("backfill of %d students: %d requests received, %d served, %d faults; batch/read %d, batch/update %d; summary: %s",
				studentsTotal, st.Requests, st.Served, st.Faults, st.BatchReads, st.BatchUpdates, lastLine(out.stdout))

			// Nothing changed in the database: a second backfill writes nothing.
			w.emu.ResetStats()
			again := w.cli.mustRun("backfill")
			if st := w.emu.Stats(); st.BatchUpdates != 0 || st.ByEndpoint["POST /crm/objects/"+hubspot.DefaultAPIVersion+"/contacts/batch/update"] != 0 {
				t.Fatalf("second backfill sent batch/update: %+v\n%s", st.ByEndpoint, again.stdout)
			}
			w.checkContacts()
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func sameContacts(a, b []hubspottest.Contact) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		ja, _ := json.Marshal(a[i].Properties)
		jb, _ := json.Marshal(b[i].Properties)
		if a[i].ID != b[i].ID || !bytes.Equal(ja, jb) {
			return false
		}
	}
	return true
}

func TestBackfillByEmailWritesOnlyThoseStudents(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	w.cli.mustRun("backfill")
	ctx := context.Background()
	target := w.students[5]
	if _, err := w.db.Exec(ctx, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 777777)
		ON CONFLICT (user_id) DO UPDATE SET total_xp = 777777`, target.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.db.Exec(ctx, `UPDATE user_xp SET total_xp = total_xp + 1 WHERE user_id = $1`, w.students[6].ID); err != nil {
		t.Fatal(err)
	}
	w.emu.ResetStats()
	w.cli.mustRun("backfill", "--email", "  "+strings.ToUpper(target.Email))
	st := w.emu.Stats()
	if st.BatchUpdates != 1 || len(st.BatchUpdateInputs) != 1 || st.BatchUpdateInputs[0] != 1 {
		t.Fatalf("backfill --email sent %d batch/update with inputs %v, want one with one input", st.BatchUpdates, st.BatchUpdateInputs)
	}
	// A backfill compares with what HubSpot holds: one batch/read, even for a cached contact.
	if st.BatchReads != 1 {
		t.Errorf("backfill --email made %d batch/read requests, want 1", st.BatchReads)
	}
	c, _ := w.emu.Contact(w.contactIDs[target.ID])
	if c.Properties[metrics.TotalXP] != "777777" {
		t.Fatalf("total_xp = %q, want 777777", c.Properties[metrics.TotalXP])
	}
	r := w.cli.run("backfill", "--email", "nobody@example.com")
	if r.code != 2 || !strings.Contains(r.stderr, "nobody@example.com") {
		t.Fatalf("unknown email: exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestBackfillReresolvesDeletedContact(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	w.cli.mustRun("backfill")
	// The contact is merged into a new one: the old id disappears and the email moves.
	s := w.students[7]
	old := w.contactIDs[s.ID]
	w.emu.DeleteContact(old)
	w.contactIDs[s.ID] = w.addContact(s.Email)
	w.contactsMade-- // the deleted one
	if _, err := w.db.Exec(context.Background(), `UPDATE user_xp SET total_xp = total_xp + 5 WHERE user_id = $1`, s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := w.db.Exec(context.Background(), `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 5) ON CONFLICT DO NOTHING`, s.ID); err != nil {
		t.Fatal(err)
	}
	w.cli.mustRun("backfill", "--email", s.Email)
	w.checkContacts()
}

func TestProvisionReportsPropertyOfAnotherType(t *testing.T) {
	w := newWorld(t, 300)
	w.emu.DefineProperty(hubspottest.Property{Name: metrics.StudyStreak, Label: "Streak", Type: "enumeration", FieldType: "select",
		GroupName: "contactinformation", Options: []hubspottest.Option{{Label: "Hot", Value: "hot"}}})
	r := w.cli.run("provision")
	if r.code != 1 || !strings.Contains(r.stderr, metrics.StudyStreak) || !strings.Contains(r.stderr, "enumeration") {
		t.Fatalf("provision with a mistyped property: exit %d\nstderr: %s", r.code, r.stderr)
	}
	// The others were still created with their types.
	p, ok := w.emu.Property(metrics.TotalXP)
	if !ok || p.Type != "number" {
		t.Fatalf("total_xp = %+v, %v", p, ok)
	}
	again := w.cli.run("provision")
	if again.code != 1 {
		t.Fatalf("second provision exit %d", again.code)
	}
}

func TestConfigurationErrors(t *testing.T) {
	c := cli{t: t, env: map[string]string{"SUPABASE_URL": "https://abc.supabase.co", "PROGRESS_SYNC_DEBOUNCE": "soon"}}
	r := c.run("backfill")
	if r.code != 2 {
		t.Fatalf("exit %d, want 2; stderr %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	sort.Strings(lines)
	want := []string{"DATABASE_URL", "HUBSPOT_ACCESS_TOKEN", "PROGRESS_SYNC_DEBOUNCE"}
	if len(lines) != len(want) {
		t.Fatalf("stderr has %d lines, want one per problem:\n%s", len(lines), r.stderr)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], "progress-sync: "+w+":") {
			t.Errorf("line %q does not name %s", lines[i], w)
		}
	}
	if !strings.Contains(r.stderr, "direct connection") {
		t.Errorf("the SUPABASE_URL hint is missing: %s", r.stderr)
	}
	if r := c.run("backfill", "--no-such-flag"); r.code != 2 {
		t.Errorf("unknown flag: exit %d, want 2", r.code)
	}
}

func TestHubSpotUnreachableFailsClearly(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.env["HUBSPOT_ACCESS_TOKEN"] = "wrong-token"
	r := w.cli.run("provision")
	if r.code != 1 || !strings.Contains(strings.ToLower(r.stderr), "token") {
		t.Fatalf("wrong token: exit %d\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "wrong-token") {
		t.Fatal("the token was printed")
	}
}

func TestBackfillRefusesWithoutProperties(t *testing.T) {
	w := newWorld(t, 300)
	r := w.cli.run("backfill")
	if r.code != 1 || !strings.Contains(r.stderr, "run `progress-sync provision`") || !strings.Contains(r.stderr, "lessons_completed") {
		t.Fatalf("backfill before provision: exit %d\n%s", r.code, r.stderr)
	}
	if st := w.emu.Stats(); st.BatchUpdates != 0 || st.BatchReads != 0 {
		t.Fatalf("backfill before provision sent %d updates and %d reads", st.BatchUpdates, st.BatchReads)
	}
}

// TestVersionNamesTheBuild: version and --version print the same line, with the commit the
// binary was built from when it was built in a git checkout.
func TestVersionNamesTheBuild(t *testing.T) {
	c := cli{t: t}
	long, short := c.mustRun("version"), c.mustRun("--version")
	if long.stdout != short.stdout || !strings.HasPrefix(long.stdout, "progress-sync ") {
		t.Fatalf("version printed %q, --version %q: want the same line, starting with progress-sync", long.stdout, short.stdout)
	}
	if os.Getenv("PROGRESS_SYNC_TEST_BINARY") != "" {
		return // another build: its commit is not this checkout's
	}
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Logf("no git checkout (%v): the commit is not checked", err)
		return
	}
	if commit := strings.TrimSpace(string(head))[:12]; !strings.Contains(long.stdout, "commit "+commit) {
		t.Fatalf("version printed %q, want the checkout's commit %s", long.stdout, commit)
	}
}

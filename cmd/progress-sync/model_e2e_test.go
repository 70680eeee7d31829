package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// The progress models end to end (docs/contract.md 2b and 3b): the lesson_progress model on
// the platform's unified tables, checked against an independent computation
// (metrics/reference), a change of model, and bad model files.

// newLessonWorld is newWorld whose students also study in the unified lesson progress, and
// whose binary runs the lesson_progress model. ingles-c2 has no catalogue row, as a course
// the DBA forgot; the rejected student's accuracy is above the portal's limit of 100.
func newLessonWorld(t *testing.T, total int) *world {
	t.Helper()
	w := newWorld(t, total)
	ids := make([]uuid.UUID, len(w.students))
	for i, s := range w.students {
		ids[i] = s.ID
	}
	if err := pgtest.SeedLessons(context.Background(), w.db, ids, pgtest.LessonSeedOptions{Seed: 42, SkipCatalog: []string{"ingles-c2"}}); err != nil {
		t.Fatal(err)
	}
	w.exec(`INSERT INTO user_lesson_progress (user_id, course_id, unit_id, lesson_key, status, accuracy_percent, last_activity_at)
		VALUES ($1, 'ingles-a1', 99, 'bonus', 'completed', 999.99, '2020-01-01')`, w.rejected)
	w.useModel("lesson_progress")
	return w
}

// useModel makes the binary run with model, and the test expect what model computes.
func (w *world) useModel(model string) {
	w.model = model
	w.cli.env["PROGRESS_SYNC_MODEL"] = model
}

// refusals are the lines of the binary's own, apart from the log.
func refusals(stderr string) []string {
	var lines []string
	for _, line := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(line, "progress-sync: ") {
			lines = append(lines, line)
		}
	}
	return lines
}

func TestLessonProgressBackfillCheckAndExplain(t *testing.T) {
	w := newLessonWorld(t, 300)
	sql := w.cli.mustRun("setup", "--print-sql").stdout
	for _, want := range []string{
		"CREATE TABLE IF NOT EXISTS public.course_catalog (",
		"CREATE PUBLICATION progress_sync FOR TABLE public.users, public.user_lesson_progress, public.user_streaks, public.user_xp, public.course_catalog;",
		"ALTER TABLE public.user_lesson_progress REPLICA IDENTITY FULL;",
		readPolicy("public.user_lesson_progress"),
	} {
		if !strings.Contains(sql, want) {
			t.Fatalf("setup --print-sql lacks %q:\n%s", want, sql)
		}
	}
	if strings.Contains(sql, "course_progress") {
		t.Fatalf("setup --print-sql for lesson_progress names course_progress:\n%s", sql)
	}
	w.cli.mustRun("setup")
	w.cli.mustRun("provision")

	// check names the current course without a catalogue row, and nothing else.
	var c2 int
	if err := w.db.QueryRow(context.Background(), `SELECT count(*) FROM (SELECT DISTINCT ON (user_id) course_id FROM user_lesson_progress
		ORDER BY user_id, last_activity_at DESC NULLS LAST, course_id COLLATE "C" DESC NULLS LAST, unit_id DESC NULLS LAST, lesson_key COLLATE "C" DESC NULLS LAST) l
		WHERE course_id = 'ingles-c2'`).Scan(&c2); err != nil {
		t.Fatal(err)
	}
	r := w.cli.run("check")
	problem := fmt.Sprintf("PROBLEM  model check: every current course has a catalogue row: course 'ingles-c2' is the current course of %d students but has no course_catalog row", c2)
	if r.code != 1 || c2 == 0 || !strings.Contains(r.stdout, problem) || strings.Count(r.stdout, "PROBLEM") != 1 ||
		!strings.Contains(r.stdout, "ok       progress model: lesson_progress: computes lessons_completed, current_lesson,") ||
		!strings.Contains(r.stdout, "ok       progress model query: ran on an empty batch and on 100 students") {
		t.Fatalf("check exit %d, want 1 with the one problem %q:\n%s", r.code, problem, r.stdout)
	}

	w.emu.ResetStats()
	out := w.cli.mustRun("backfill")
	w.checkContacts()
	t.Logf("backfill with lesson_progress: %s", lastLine(out.stdout))

	// explain shows the model's rows behind the values.
	var id uuid.UUID
	var rows int
	if err := w.db.QueryRow(context.Background(), `SELECT user_id, count(*) FROM user_lesson_progress WHERE user_id = ANY($1)
		GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1`, w.matched()).Scan(&id, &rows); err != nil {
		t.Fatal(err)
	}
	x, code := w.explain(id)
	counts := map[string]int{}
	for _, r := range x.Rows {
		counts[r.Table] = r.Count
	}
	if code != 0 || x.Model != "lesson_progress" || counts["public.user_lesson_progress"] != rows || counts["public.users"] != 1 {
		t.Fatalf("explain: exit %d, model %q, rows %v; want 0, lesson_progress, %d user_lesson_progress rows", code, x.Model, counts, rows)
	}
	if _, ok := counts["public.course_progress"]; ok {
		t.Fatal("explain shows course_progress rows under the lesson_progress model")
	}

	// The DBA adds the missing course: check passes, and backfill writes what it changes.
	w.exec(`INSERT INTO course_catalog (course_id, lessons) VALUES ('ingles-c2', 44)`)
	if r := w.cli.run("check"); r.code != 0 {
		t.Fatalf("check after the catalogue row: exit %d\n%s", r.code, r.stdout)
	}
	if d := len(w.diff()); d == 0 {
		t.Fatal("the new catalogue row changed no value")
	}
	w.cli.mustRun("backfill")
	w.checkContacts()
}

// matched lists the students that have a contact.
func (w *world) matched() []uuid.UUID {
	var ids []uuid.UUID
	for id := range w.contactIDs {
		if id != w.rejected {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestLessonProgressStreamsThroughKillsCatalogueChangesAndDrift(t *testing.T) {
	w := newLessonWorld(t, 300)
	w.streamEnv(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "200ms", "PROGRESS_SYNC_MAX_DELAY": "1s", "PROGRESS_SYNC_RECONCILE": "20s"})
	svc := w.start()
	w.waitEqual(time.Minute)

	stop := make(chan struct{})
	changes := w.studyLoad(stop, 7)
	rng := rand.New(rand.NewPCG(3, 3))
	const kills = 4
	for range kills {
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond) // a random moment
		svc.kill()
		svc = w.start()
	}
	close(stop)
	n := <-changes
	w.waitEqual(2 * time.Minute)
	t.Logf("lesson_progress: %d changes, %d SIGKILLs: every contact equal to the reference", n, kills)

	// Catalogue changes move the progress of every student of the course.
	before := len(w.diff())
	w.exec(`INSERT INTO course_catalog (course_id, lessons) VALUES ('ingles-c2', 44)`)
	w.exec(`UPDATE course_catalog SET lessons = 12 WHERE course_id = 'ingles-a1'`)
	if before != 0 || len(w.diff()) == 0 {
		t.Fatalf("the catalogue changes moved no value (%d differences before)", before)
	}
	w.waitEqual(time.Minute)
	w.exec(`DELETE FROM course_catalog WHERE course_id = 'ingles-b1'`)
	w.waitEqual(time.Minute)

	// Values changed in HubSpot behind the sync's back are repaired by the next pass.
	firstnames := w.drift(30, 1)
	w.waitEqualReady(svc, 90*time.Second)
	w.checkUntouched(firstnames)
	svc.mustStop()
	if out := w.cli.mustRun("status").stdout; !strings.Contains(out, "progress model: lesson_progress\n") {
		t.Fatalf("status does not name the model:\n%s", out)
	}
}

func TestLessonProgressRowLevelSecurityIsRefusedWithTheFix(t *testing.T) {
	w := newLessonWorld(t, 300)
	w.cli.mustRun("provision")
	// The platform's own policy on user_lesson_progress: auth.uid() = user_id.
	_, policies := w.asLeastPrivilegeRole(false)
	if len(policies) != 1 || policies[0] != readPolicy("public.user_lesson_progress") {
		t.Fatalf("setup --print-sql printed the read policies %v, want the one for user_lesson_progress", policies)
	}
	w.emu.ResetStats()
	for _, command := range []string{"backfill", "run"} {
		r := w.cli.run(command)
		lines := refusals(r.stderr)
		if r.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], "public.user_lesson_progress: row-level security is on") ||
			!strings.HasSuffix(lines[0], readPolicy("public.user_lesson_progress")) {
			t.Fatalf("%s: exit %d, want 2 and one line naming user_lesson_progress and its fix:\n%s", command, r.code, r.stderr)
		}
	}
	if st := w.emu.Stats(); st.BatchUpdates != 0 {
		t.Fatalf("HubSpot got %d batch/update while rows were hidden", st.BatchUpdates)
	}
	w.exec(policies[0])
	w.cli.mustRun("backfill")
	w.checkContacts()
}

func TestChangingTheModelQueuesEveryStudentOnce(t *testing.T) {
	w, svc := syncedUnder(t, "course_progress")
	svc.mustStop()
	confirmed := w.slotConfirmed()

	// While the service is stopped the unified progress moves; its tables are not published yet.
	student := w.matched()[0]
	w.exec(`UPDATE user_lesson_progress SET status = 'completed', time_spent_seconds = 36000, last_activity_at = now() WHERE user_id = $1`, student)
	w.useModel("lesson_progress")
	svc = w.start()
	svc.waitLog("added public.user_lesson_progress, public.course_catalog to publication progress_sync", 30*time.Second)
	svc.waitLog(`"from":"course_progress"`, 30*time.Second)
	w.waitEqual(time.Minute)
	logs := svc.logs.String()
	if line := regexp.MustCompile(`[^\n]*the progress model changed since the last run[^\n]*`).FindString(logs); !strings.Contains(line, `"from":"course_progress"`) ||
		!strings.Contains(line, `"students":300,`) || !strings.Contains(line, `"to":"lesson_progress"`) {
		t.Fatalf("no line saying every student was queued for the new model:\n%s", tail(logs, 3000))
	}
	if strings.Contains(logs, "created replication slot") || w.slotConfirmed() < confirmed {
		t.Fatalf("the slot was recreated (confirmed %s, was %s)", w.slotConfirmed(), confirmed)
	}
	// Streamed from the new tables from now on.
	w.exec(`UPDATE user_lesson_progress SET time_spent_seconds = time_spent_seconds + 600 WHERE user_id = $1`, student)
	w.waitEqual(time.Minute)
	svc.mustStop()

	// The same model again: nothing to recompute.
	svc = w.start()
	svc.waitLog(`"msg":"streaming"`, 30*time.Second)
	if strings.Contains(svc.logs.String(), "the progress model changed") {
		t.Fatal("a restart with the same model queued every student again")
	}
	svc.mustStop()
}

// badModel is a model file with a misspelt column on line 11 of its file.
const badModel = `model: broken
students:
  table: public.users
  id: id
  email: email
tables:
  - table: public.user_xp
    student: user_id
properties: |
  SELECT u.id,
    coalesce(x.totl_xp, 0) AS total_xp
  FROM public.users u LEFT JOIN public.user_xp x ON x.user_id = u.id
  WHERE u.id = ANY($1::uuid[])
`

func TestABadModelIsRefusedBeforeAnything(t *testing.T) {
	w := newWorld(t, 300)
	path := filepath.Join(t.TempDir(), "broken.yaml")
	if err := os.WriteFile(path, []byte(badModel), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, model, says string
	}{
		{"a column that does not exist", path, path + ": properties (line 11): column x.totl_xp does not exist"},
		{"not a model", "lesson-progress", "not a built-in model (course_progress, lesson_progress)"},
		{"a file that is not there", "./nowhere.yaml", "./nowhere.yaml: cannot read the file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w.cli.env["PROGRESS_SYNC_MODEL"] = tc.model
			w.emu.ResetStats()
			for _, command := range []string{"run", "backfill", "setup", "explain --email student60@example.com"} {
				r := w.cli.run(strings.Fields(command)...)
				lines := refusals(r.stderr)
				if r.code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tc.says) {
					t.Fatalf("%s: exit %d, want 2 and one line saying %q:\n%s", command, r.code, tc.says, r.stderr)
				}
			}
			if st := w.emu.Stats(); st.Requests != 0 {
				t.Fatalf("HubSpot got %d requests from a refused model", st.Requests)
			}
			var published int
			if err := w.db.QueryRow(context.Background(), `SELECT count(*) FROM pg_publication`).Scan(&published); err != nil || published != 0 {
				t.Fatalf("a refused model left %d publications (%v)", published, err)
			}
		})
	}
	// check reports the same problem among its items.
	w.cli.env["PROGRESS_SYNC_MODEL"] = path
	r := w.cli.run("check")
	if r.code != 1 || !strings.Contains(r.stdout, "PROBLEM  progress model: progress model "+path+": properties (line 11): column x.totl_xp does not exist") {
		t.Fatalf("check: exit %d\n%s", r.code, r.stdout)
	}
}

// xpModel computes two properties only: the others are HubSpot's.
const xpModel = `model: xp_and_streak
students:
  table: public.users
  id: id
  email: email
tables:
  - table: public.user_xp
    student: user_id
  - table: public.user_streaks
    student: user_id
properties: |
  SELECT u.id, coalesce(x.total_xp, 0) AS total_xp, coalesce(s.current_streak, 0) AS study_streak
  FROM public.users u
  LEFT JOIN public.user_xp x ON x.user_id = u.id
  LEFT JOIN public.user_streaks s ON s.user_id = u.id
  WHERE u.id = ANY($1::uuid[])
`

func TestAPropertyTheModelDoesNotComputeIsNeverWritten(t *testing.T) {
	w := newWorld(t, 300)
	w.rejected = uuid.Nil // its refused value is an average score, which this model leaves alone
	path := filepath.Join(t.TempDir(), "xp.yaml")
	if err := os.WriteFile(path, []byte(xpModel), 0o600); err != nil {
		t.Fatal(err)
	}
	w.useModel(path)
	theirs := map[string]string{metrics.CourseStatus: "completed", metrics.LessonsCompleted: "999", metrics.CourseCompletedDate: "2025-12-24"}
	for _, cid := range w.contactIDs {
		w.emu.EditContact(cid, theirs)
	}
	untouched := func() {
		t.Helper()
		for id, cid := range w.contactIDs {
			c, _ := w.emu.Contact(cid)
			for name, v := range theirs {
				if c.Properties[name] != v {
					t.Fatalf("contact %s (student %s): %s = %q, want %q: the sync wrote a property its model does not compute", cid, id, name, c.Properties[name], v)
				}
			}
		}
	}
	w.cli.mustRun("provision")
	w.cli.mustRun("backfill")
	w.checkContacts()
	untouched()

	w.streamEnv(map[string]string{"PROGRESS_SYNC_RECONCILE": "5s"})
	svc := w.start()
	pool := w.matched()
	for i, id := range pool[:20] {
		w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET total_xp = $2`, id, 5000+i)
	}
	// A student who leaves their contact: only what the model computes is cleared there.
	leaver := pool[30]
	left := w.contactIDs[leaver]
	delete(w.contactIDs, leaver)
	w.exec(`UPDATE users SET email = 'moved-away@example.com' WHERE id = $1`, leaver)
	w.waitEqual(time.Minute)
	deadline := time.Now().Add(time.Minute)
	for {
		c, _ := w.emu.Contact(left)
		if c.Properties[metrics.TotalXP] == "" && c.Properties[metrics.StudyStreak] == "" {
			if c.Properties[metrics.CourseStatus] != "completed" || c.Properties[metrics.LessonsCompleted] != "999" {
				t.Fatalf("the left contact lost what the model does not compute: %v", c.Properties)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the left contact still holds the synced values: %v", c.Properties)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A reconcile pass reads back what the model computes, and leaves the rest.
	w.emu.EditContact(w.contactIDs[pool[40]], map[string]string{metrics.TotalXP: "1", metrics.CourseStatus: "not_started"})
	theirs2 := w.contactIDs[pool[40]]
	w.waitEqual(time.Minute)
	if c, _ := w.emu.Contact(theirs2); c.Properties[metrics.CourseStatus] != "not_started" {
		t.Fatalf("reconcile wrote course_status: %v", c.Properties)
	}
	w.emu.EditContact(theirs2, theirs)
	svc.mustStop()
	untouched()

	x, _ := w.explain(pool[0])
	for _, p := range x.Properties {
		computed := p.Name == metrics.TotalXP || p.Name == metrics.StudyStreak
		if !computed && (p.State != "not_computed" || p.HubSpot == nil || *p.HubSpot != theirs[p.Name] && theirs[p.Name] != "") {
			t.Fatalf("explain: %s is %s with HubSpot %v, want not_computed with HubSpot's value", p.Name, p.State, p.HubSpot)
		}
		if computed && p.State != "equal" {
			t.Fatalf("explain: %s is %s, want equal", p.Name, p.State)
		}
	}
}

func TestARollingDeployToAnotherModelRecomputesEveryStudent(t *testing.T) {
	w, old := syncedUnder(t, "course_progress")

	// The new version starts beside the old one, which still holds the slot.
	w.useModel("lesson_progress")
	next := w.start()
	next.waitLog("waiting as a warm standby", 30*time.Second)
	old.waitLog("streaming", 30*time.Second)
	if strings.Contains(next.logs.String(), "the progress model changed") {
		t.Fatal("a standby queued every student: the holder would push them with its own model")
	}
	old.mustStop()
	next.waitLog("the progress model changed since the last run", time.Minute)
	w.waitEqual(time.Minute)
	next.mustStop()
	if out := w.cli.mustRun("status").stdout; !strings.Contains(out, "progress model: lesson_progress\n") {
		t.Fatalf("status does not name the new model:\n%s", out)
	}
}

func TestATableLeftOutOfThePublicationIsNoticedAndCaughtUp(t *testing.T) {
	w := newLessonWorld(t, 300)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)

	// Running: the catalogue is dropped from the publication, then changed.
	w.exec(`ALTER PUBLICATION progress_sync DROP TABLE course_catalog`)
	svc.waitLog("the publication leaves changes out of the stream", time.Minute)
	waitReadyz(t, svc, 503, "publication")
	w.exec(`UPDATE course_catalog SET lessons = 12 WHERE course_id = 'ingles-a2'`)
	w.exec(`ALTER PUBLICATION progress_sync ADD TABLE course_catalog`)
	w.waitEqual(time.Minute)
	svc.mustStop()

	// Stopped: the same, then a restart puts it back and catches up.
	w.exec(`ALTER PUBLICATION progress_sync DROP TABLE course_catalog`)
	w.exec(`UPDATE course_catalog SET lessons = 20 WHERE course_id = 'ingles-a1'`)
	svc = w.start()
	svc.waitLog("added public.course_catalog to publication progress_sync", 30*time.Second)
	svc.waitLog("tables the progress model reads were added to the publication", 30*time.Second)
	w.waitEqual(time.Minute)
	svc.mustStop()
}

func TestSIGTERMDuringASlowBatchExits(t *testing.T) {
	w := newWorld(t, 300)
	w.rejected = uuid.Nil
	path := filepath.Join(t.TempDir(), "slow.yaml")
	slow := strings.Replace(xpModel, "  FROM public.users u\n", "  FROM public.users u CROSS JOIN (SELECT pg_sleep(3)) slow\n", 1)
	if err := os.WriteFile(path, []byte(slow), 0o600); err != nil {
		t.Fatal(err)
	}
	w.useModel(path)
	w.streamEnv(nil)
	svc := w.start("run", "--grace", "1s")
	// The first load's batches take 3 s each, longer than the grace: once one is pushed, the
	// next is under way.
	svc.waitLog(`"msg":"pushed batch"`, time.Minute)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d after SIGTERM during a slow batch", code)
	}
	// Nothing was lost: the students still wait in the sync state.
	if out := w.cli.mustRun("status").stdout; !strings.Contains(out, "pending students: ") || strings.Contains(out, "pending students: 0 ") {
		t.Fatalf("status after the stop:\n%s", out)
	}
}

// syncedUnder is a world of the unified lesson tables (300 students) synced by a service
// running the named model.
func syncedUnder(t *testing.T, model string) (*world, *service) {
	t.Helper()
	w := newLessonWorld(t, 300)
	w.useModel(model)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	return w, svc
}

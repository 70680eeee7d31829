package main_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"

	"bytes"
	"context"
	"github.com/jackc/pgx/v5"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

// service is a running `progress-sync run` (or replay).
type service struct {
	t    *testing.T
	cmd  *exec.Cmd
	logs *lockedBuffer
	done chan struct{}
	code int
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// syncedWorld is a world of 300 students with the service running and every contact already
// equal to the database.
func syncedWorld(t *testing.T) (*world, *service) {
	t.Helper()
	w := newWorld(t, 300)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	return w, svc
}

// streamEnv makes the service quick enough for tests: short debounce, frequent status.
func (w *world) streamEnv(extra map[string]string) {
	w.cli.env["PROGRESS_SYNC_DEBOUNCE"] = "300ms"
	w.cli.env["PROGRESS_SYNC_MAX_DELAY"] = "3s"
	w.cli.env["LOG_LEVEL"] = "debug"
	for k, v := range extra {
		w.cli.env[k] = v
	}
}

func (w *world) start(args ...string) *service {
	w.t.Helper()
	if len(args) == 0 {
		args = []string{"run"}
	}
	args = append(args, "--status-interval", "500ms", "--listen", "127.0.0.1:0")
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir()}
	for k, v := range w.cli.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	s := &service{t: w.t, cmd: cmd, logs: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	go func() {
		err := cmd.Wait()
		s.code = cmd.ProcessState.ExitCode()
		_ = err
		close(s.done)
	}()
	w.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-s.done
		if w.t.Failed() {
			w.t.Logf("service %v log (tail):\n%s", args, tail(s.logs.String(), 6000))
		}
		if strings.Contains(s.logs.String(), token) {
			w.t.Errorf("service %v logged the HubSpot token", args)
		}
	})
	return s
}

// stop sends SIGTERM and returns the exit status.
func (s *service) stop() int {
	s.t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.t.Fatalf("service did not stop within a minute of SIGTERM; log:\n%s", tail(s.logs.String(), 4000))
	}
	return s.code
}

// mustStop stops the service with SIGTERM and fails the test unless it exits 0.
func (s *service) mustStop() {
	s.t.Helper()
	if code := s.stop(); code != 0 {
		s.t.Fatalf("exit %d after SIGTERM", code)
	}
}

func (s *service) kill() {
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// waitLog waits for a log line containing substr.
func (s *service) waitLog(substr string, timeout time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.logs.String(), substr) {
		select {
		case <-s.done:
			s.t.Fatalf("service exited (%d) before logging %q:\n%s", s.code, substr, tail(s.logs.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %q in the log after %s:\n%s", substr, timeout, tail(s.logs.String(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *world) exec(sql string, args ...any) {
	w.t.Helper()
	if _, err := w.db.Exec(context.Background(), sql, args...); err != nil {
		w.t.Fatalf("%s: %v", sql, err)
	}
}

func (w *world) lsn(query string) pglogrepl.LSN {
	w.t.Helper()
	var text string
	if err := w.db.QueryRow(context.Background(), query).Scan(&text); err != nil {
		w.t.Fatalf("%s: %v", query, err)
	}
	l, err := pglogrepl.ParseLSN(text)
	if err != nil {
		w.t.Fatal(err)
	}
	return l
}

func (w *world) slotConfirmed() pglogrepl.LSN {
	return w.lsn(`SELECT coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'progress_sync'), '0/0')::text`)
}

// waitConfirmedPast waits until the slot has confirmed at least target.
func (w *world) waitConfirmedPast(target pglogrepl.LSN, timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for w.slotConfirmed() < target {
		if time.Now().After(deadline) {
			w.t.Fatalf("slot confirmed %s, still short of %s after %s", w.slotConfirmed(), target, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestStreamKeepsHubSpotEqual(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	svc := w.start()
	// First start: every student is queued from the slot's snapshot and pushed.
	w.waitEqual(time.Minute)

	a, b, c := w.students[10].ID, w.students[11].ID, w.students[12].ID
	steps := []struct {
		name string
		do   func()
	}{
		{"insert", func() {
			w.exec(`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score, time_spent, last_accessed_at, completed_at)
				VALUES ($1, 'B1', 'viajes', 'b1-viajes-m1', 'b1-viajes-m1-l4', true, 91.5, 600, '2026-11-27 23:30', '2026-11-27 23:10')`, a)
		}},
		{"update", func() { w.exec(`UPDATE course_progress SET score = 12.25, completed = true WHERE user_id = $1`, b) }},
		{"delete", func() { w.exec(`DELETE FROM course_progress WHERE user_id = $1`, c) }},
		{"move a row to another student", func() {
			w.exec(`UPDATE course_progress SET user_id = $2 WHERE id = (SELECT id FROM course_progress WHERE user_id = $1
				AND lesson_id NOT IN (SELECT lesson_id FROM course_progress WHERE user_id = $2) LIMIT 1)`, w.students[13].ID, w.students[14].ID)
		}},
		{"truncate", func() { w.exec(`TRUNCATE user_xp`) }},
		{"new lesson in a course", func() {
			w.exec(`INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('a2-trabajo-m3-l5', 'a2-trabajo-m3', 5, 'New')`)
		}},
		{"course level change", func() {
			w.exec(`UPDATE users SET language_level = 'C1', course_goal = 'trabajo' WHERE id = $1`, w.students[15].ID)
		}},
		{"email change", func() {
			s := w.students[16]
			w.exec(`UPDATE users SET email = 'renamed-16@example.com' WHERE id = $1`, s.ID)
			w.contactIDs[s.ID] = w.addContact("renamed-16@example.com")
		}},
	}
	for _, st := range steps {
		st.do()
		w.waitEqual(30 * time.Second)
	}
	if code := svc.stop(); code != 0 {
		t.Fatalf("SIGTERM: exit %d", code)
	}
}

func TestManyChangesToOneStudentMakeOneUpdate(t *testing.T) {
	w := newWorld(t, 300)
	// A debounce long enough that 200 commits land inside it on any machine.
	w.streamEnv(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "5s", "PROGRESS_SYNC_MAX_DELAY": "60s"})
	w.start()
	w.waitEqual(time.Minute)
	w.emu.ResetStats()
	s := w.students[20].ID
	w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 0) ON CONFLICT (user_id) DO UPDATE SET total_xp = 0`, s)
	for i := 0; i < 199; i++ {
		w.exec(`UPDATE user_xp SET total_xp = total_xp + 1 WHERE user_id = $1`, s)
	}
	w.waitEqual(time.Minute)
	st := w.emu.Stats()
	if st.BatchUpdates != 1 || len(st.BatchUpdateInputs) != 1 || st.BatchUpdateInputs[0] != 1 {
		t.Fatalf("200 changes to one student made %d batch/update with inputs %v, want one input", st.BatchUpdates, st.BatchUpdateInputs)
	}
}

func TestSlotAdvancesWhileHubSpotRefusesEverything(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	w.start()
	w.waitEqual(time.Minute)
	w.emu.SetFaults(hubspottestFaultsAll5xx())
	before := w.slotConfirmed()
	for i := 0; i < 5; i++ {
		w.exec(`UPDATE user_streaks SET current_streak = current_streak + 1 WHERE user_id = $1`, w.students[30+i].ID)
		target := w.lsn(`SELECT pg_current_wal_lsn()::text`)
		w.waitConfirmedPast(target, 30*time.Second)
	}
	if len(w.diff()) == 0 {
		t.Fatal("contacts equal although HubSpot refused every call")
	}
	refused := w.emu.Stats().Faults
	after := w.slotConfirmed()
	w.emu.SetFaults(noFaults())
	w.waitEqual(time.Minute)
	t.Logf("while HubSpot refused %d calls, the slot confirmed %s -> %s (%d bytes); afterwards every contact equal",
		refused, before, after, after-before)
}

func TestUnpublishedWritesAdvanceTheSlot(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	w.start()
	w.waitEqual(time.Minute)
	w.exec(`CREATE TABLE unrelated (id serial PRIMARY KEY, note text)`)
	for i := 0; i < 50; i++ {
		w.exec(`INSERT INTO unrelated (note) VALUES ('x')`)
	}
	target := w.lsn(`SELECT pg_current_wal_lsn()::text`)
	w.waitConfirmedPast(target, 30*time.Second)
}

func TestSecondInstanceWaitsAndTakesOver(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	first := w.start()
	w.waitEqual(time.Minute)
	second := w.start()
	second.waitLog("warm standby", 30*time.Second)
	if code := first.stop(); code != 0 {
		t.Fatalf("first instance exit %d", code)
	}
	second.waitLog(`"msg":"streaming"`, 30*time.Second)
	w.exec(`UPDATE user_streaks SET current_streak = 99 WHERE user_id = $1`, w.students[40].ID)
	w.waitEqual(30 * time.Second)
	if code := second.stop(); code != 0 {
		t.Fatalf("second instance exit %d", code)
	}
}

func TestReplay(t *testing.T) {
	w, svc := syncedWorld(t)
	old := w.slotConfirmed()
	w.exec(`UPDATE user_streaks SET current_streak = current_streak + 1`)
	w.waitConfirmedPast(w.lsn(`SELECT pg_current_wal_lsn()::text`), 30*time.Second)
	w.waitEqual(30 * time.Second)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	sum, err := state.Summarize(context.Background(), w.db, "progress_sync")
	if err != nil {
		t.Fatal(err)
	}
	stored := sum.Checkpoint.LSN

	r := w.cli.run("replay", "--from-lsn", old.String(), "--listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, old.String()) || !strings.Contains(r.stderr, "backfill") {
		t.Fatalf("replay from a too-old LSN: exit %d\n%s", r.code, tail(r.stderr, 2000))
	}
	replay := w.start("replay", "--from-lsn", stored.String())
	replay.waitLog(`"msg":"streaming"`, 30*time.Second)
	w.exec(`UPDATE user_streaks SET current_streak = 7 WHERE user_id = $1`, w.students[50].ID)
	w.waitEqual(30 * time.Second)
	if code := replay.stop(); code != 0 {
		t.Fatalf("replay exit %d", code)
	}
}

func hubspottestFaultsAll5xx() hubspottest.Faults { return hubspottest.Faults{Rate5xx: 1} }
func noFaults() hubspottest.Faults                { return hubspottest.Faults{} }

// studyLoad writes a steady mix of changes until stop is closed, on its own connection.
func (w *world) studyLoad(stop <-chan struct{}, seed uint64) <-chan int {
	done := make(chan int, 1)
	conn, err := pgx.Connect(context.Background(), w.dbURL)
	if err != nil {
		w.t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, seed))
	// Students with a special role in the world (no email, a shared contact, a refused
	// value) keep their data; the load works on the rest.
	pool := w.students[210:]
	go func() {
		defer conn.Close(context.Background())
		ctx := context.Background()
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			s := pool[rng.IntN(len(pool))].ID
			var err error
			switch rng.IntN(5) {
			case 0:
				_, err = conn.Exec(ctx, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2)
					ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + $2`, s, rng.IntN(50))
			case 1:
				_, err = conn.Exec(ctx, `UPDATE user_streaks SET current_streak = $2 WHERE user_id = $1`, s, rng.IntN(40))
			case 2, 3:
				if w.model == "lesson_progress" {
					err = lessonChange(ctx, conn, rng, s, rng.IntN(4) == 0)
					break
				}
				if rng.IntN(2) == 1 {
					_, err = conn.Exec(ctx, `DELETE FROM course_progress WHERE id = (SELECT id FROM course_progress WHERE user_id = $1 LIMIT 1)`, s)
					break
				}
				_, err = conn.Exec(ctx, `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score, time_spent, last_accessed_at)
					VALUES ($1, 'B2', 'trabajo', 'b2-trabajo-m1', $2, $3, $4, $5, now())
					ON CONFLICT (user_id, course_level, course_goal, module_id, lesson_id)
					DO UPDATE SET completed = excluded.completed, score = excluded.score, time_spent = course_progress.time_spent + excluded.time_spent, last_accessed_at = now()`,
					s, fmt.Sprintf("b2-trabajo-m1-l%d", 1+rng.IntN(4)), rng.IntN(2) == 0, fmt.Sprintf("%d.%02d", 40+rng.IntN(60), rng.IntN(100)), rng.IntN(900))
			case 4:
				// Several students in one transaction.
				_, err = conn.Exec(ctx, `UPDATE user_xp SET total_xp = total_xp + 1 WHERE user_id IN ($1, $2, $3)`,
					s, pool[rng.IntN(len(pool))].ID, pool[rng.IntN(len(pool))].ID)
			}
			if err != nil {
				w.t.Errorf("load: %v", err)
				done <- n
				return
			}
			n++
		}
	}()
	return done
}

// lessonChange is a student's study as the unified progress records it: the app's progress
// endpoint upserts the lesson's row; or a row is deleted.
func lessonChange(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, s uuid.UUID, remove bool) error {
	if remove {
		_, err := conn.Exec(ctx, `DELETE FROM user_lesson_progress WHERE id = (SELECT id FROM user_lesson_progress WHERE user_id = $1 LIMIT 1)`, s)
		return err
	}
	courses := pgtest.LessonCourses()
	course := courses[rng.IntN(len(courses))]
	lesson := rng.IntN(course.Lessons)
	status := "in_progress"
	if rng.IntN(2) == 0 {
		status = "completed"
	}
	_, err := conn.Exec(ctx, `INSERT INTO user_lesson_progress (user_id, course_id, unit_id, lesson_key, status, accuracy_percent,
			time_spent_seconds, completed_at, last_activity_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $5 = 'completed' THEN now() END, now())
		ON CONFLICT (user_id, course_id, unit_id, lesson_key) DO UPDATE SET status = excluded.status,
			accuracy_percent = excluded.accuracy_percent, time_spent_seconds = user_lesson_progress.time_spent_seconds + excluded.time_spent_seconds,
			completed_at = coalesce(user_lesson_progress.completed_at, excluded.completed_at), last_activity_at = now()`,
		s, course.ID, lesson/4+1, fmt.Sprintf("lesson-%d-grammar", lesson%4+1), status,
		fmt.Sprintf("%d.%02d", rng.IntN(100), rng.IntN(100)), rng.IntN(900))
	return err
}

func TestKilledAtRandomMomentsLosesNothing(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "200ms", "PROGRESS_SYNC_MAX_DELAY": "1s"})
	svc := w.start()
	w.waitEqual(time.Minute)

	stop := make(chan struct{})
	changes := w.studyLoad(stop, 99)
	rng := rand.New(rand.NewPCG(5, 5))
	const kills = 6
	for i := 0; i < kills; i++ {
		// A random moment: in the middle of receiving, persisting or pushing.
		time.Sleep(time.Duration(300+rng.IntN(1500)) * time.Millisecond)
		svc.kill()
		svc = w.start()
	}
	close(stop)
	n := <-changes
	w.waitEqual(2 * time.Minute)
	st := w.emu.Stats()
	t.Logf("%d changes, %d SIGKILLs: every contact equal; HubSpot saw %d requests (%d batch/update)", n, kills, st.Requests, st.BatchUpdates)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestSetupStatusTeardown(t *testing.T) {
	w := newWorld(t, 300)
	sql := w.cli.mustRun("setup", "--print-sql").stdout
	for _, want := range []string{"CREATE PUBLICATION progress_sync FOR TABLE public.users", "ALTER TABLE public.course_progress REPLICA IDENTITY FULL",
		"pg_create_logical_replication_slot('progress_sync', 'pgoutput')"} {
		if !strings.Contains(sql, want) {
			t.Errorf("setup --print-sql lacks %q:\n%s", want, sql)
		}
	}
	if n := w.lsn(`SELECT coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots), '0/0')::text`); n != 0 {
		t.Fatal("--print-sql created the slot")
	}
	first := w.cli.mustRun("setup").stdout
	if !strings.Contains(first, "created publication") || !strings.Contains(first, "created replication slot") {
		t.Fatalf("first setup:\n%s", first)
	}
	if again := w.cli.mustRun("setup").stdout; strings.Contains(again, "created") {
		t.Fatalf("second setup changed something:\n%s", again)
	}

	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	status := w.cli.mustRun("status").stdout
	for _, want := range []string{"slot progress_sync: streaming", "wal_status reserved", "checkpoint: 0/", "pending students: 0", "unmatched: 17"} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}
	if r := w.cli.run("teardown"); r.code != 1 || !strings.Contains(r.stderr, "in use") {
		t.Fatalf("teardown of a slot in use: exit %d %s", r.code, r.stderr)
	}
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	w.cli.mustRun("teardown")
	if w.slotConfirmed() != 0 {
		t.Fatal("slot still exists after teardown")
	}
	w.cli.mustRun("teardown", "--all")
	var pubs, schemas int
	if err := w.db.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_namespace WHERE nspname = 'progress_sync')`).Scan(&pubs, &schemas); err != nil {
		t.Fatal(err)
	}
	if pubs != 0 || schemas != 0 {
		t.Fatalf("after teardown --all: %d publications, %d state schemas", pubs, schemas)
	}
}

func TestUnmatchedStudentIsPushedOnceItsContactExists(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	w.start("run", "--recheck-unmatched", "1s")
	w.waitEqual(time.Minute)
	// The contact appears later, say at checkout; nothing changes in the database.
	late := w.unmatched[0]
	var email string
	if err := w.db.QueryRow(context.Background(), `SELECT email FROM users WHERE id = $1`, late).Scan(&email); err != nil {
		t.Fatal(err)
	}
	w.contactIDs[late] = w.addContact(email)
	w.unmatched = w.unmatched[1:]
	w.waitEqual(30 * time.Second)
}

func TestLostSlotIsRecreatedAndBackfilled(t *testing.T) {
	w, svc := syncedWorld(t)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	// While the service is down, changes pile up and the server gives the slot's WAL away.
	w.exec(`UPDATE user_xp SET total_xp = total_xp + 1000`)
	w.loseSlot()
	svc = w.start()
	svc.waitLog("the replication slot was lost", 30*time.Second)
	w.waitEqual(time.Minute)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestStreamsWhileHubSpotIsDownFromTheStart(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	w.emu.SetFaults(hubspottest.Faults{DailyExhausted: true})
	svc := w.start()
	svc.waitLog(`"condition":"hubspot_daily_limit"`, 30*time.Second)
	svc.waitLog("provisioning the HubSpot properties", time.Second)
	svc.waitLog("streaming", 30*time.Second)
	w.exec(`UPDATE user_streaks SET current_streak = current_streak + 1`)
	w.waitConfirmedPast(w.lsn(`SELECT pg_current_wal_lsn()::text`), 30*time.Second)
	w.emu.SetFaults(noFaults())
	// Provisioning is retried every few seconds at first.
	w.waitEqual(2 * time.Minute)
}

func TestReconnectsAfterTheWalsenderIsKilled(t *testing.T) {
	w, svc := syncedWorld(t)
	for i := 0; i < 3; i++ {
		w.exec(`SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'progress_sync' AND active_pid IS NOT NULL`)
		w.exec(`UPDATE user_xp SET total_xp = total_xp + 1 WHERE user_id = $1`, w.students[60+i].ID)
		w.waitEqual(time.Minute)
	}
	if !strings.Contains(svc.logs.String(), "reconnecting") {
		t.Fatal("the service never noticed the lost connection")
	}
}

func TestSchemaSurprises(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	// A DBA's choices before the service first runs: an identity index instead of FULL, and
	// a publication that lacks a table.
	w.exec(`ALTER TABLE user_xp REPLICA IDENTITY USING INDEX user_xp_user_id_key`)
	w.exec(`CREATE PUBLICATION progress_sync FOR TABLE users, course_progress, user_streaks, course_lessons, course_modules`)
	svc := w.start()
	svc.waitLog("added public.user_xp to publication progress_sync", 30*time.Second)
	w.waitEqual(time.Minute)
	var identity string
	if err := w.db.QueryRow(context.Background(), `SELECT relreplident::text FROM pg_class WHERE oid = 'user_xp'::regclass`).Scan(&identity); err != nil {
		t.Fatal(err)
	}
	if identity != "i" {
		t.Fatalf("setup replaced a sufficient identity index (now %q)", identity)
	}
	// Deletes through the identity index still name the student.
	victim := w.students[70].ID
	w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 4242) ON CONFLICT (user_id) DO UPDATE SET total_xp = 4242`, victim)
	w.waitEqual(30 * time.Second)
	w.exec(`DELETE FROM user_xp WHERE user_id = $1`, victim)
	w.waitEqual(30 * time.Second)

	// Columns come and go on published tables while streaming.
	w.exec(`ALTER TABLE course_progress ADD COLUMN device text DEFAULT 'web'`)
	w.exec(`UPDATE course_progress SET score = 77, device = 'ios' WHERE user_id = $1`, w.students[71].ID)
	w.waitEqual(30 * time.Second)
	w.exec(`ALTER TABLE course_progress DROP COLUMN exercises_completed`)
	w.exec(`ALTER TABLE course_progress DROP COLUMN device`)
	w.exec(`DELETE FROM course_progress WHERE user_id = $1`, w.students[72].ID)
	w.exec(`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score)
		VALUES ($1, 'A1', 'viajes', 'a1-viajes-m1', 'a1-viajes-m1-l1', true, 50)`, w.students[73].ID)
	w.waitEqual(30 * time.Second)
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

func TestSIGTERMWhileStartingExitsZero(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	for _, after := range []string{"loaded sync state", "streaming"} {
		svc := w.start()
		svc.waitLog(after, 30*time.Second)
		if code := svc.stop(); code != 0 {
			t.Fatalf("SIGTERM after %q: exit %d", after, code)
		}
	}
}

// scrape fetches one of the service's HTTP endpoints, found from its log.
func (s *service) scrape(path string) (int, string) {
	s.t.Helper()
	s.waitLog("serving /metrics", 30*time.Second)
	m := regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(s.logs.String())
	if m == nil {
		s.t.Fatal("no telemetry address in the log")
	}
	res, err := http.Get("http://" + m[1] + path)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metricValue reads one sample from a Prometheus text exposition.
func metricValue(t *testing.T, body, sample string) float64 {
	t.Helper()
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, sample+" ") {
			v, err := strconv.ParseFloat(strings.TrimPrefix(line, sample+" "), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return -1
}

func TestMetricsAndHealth(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	svc := w.start()
	if code, body := svc.scrape("/healthz"); code != 200 {
		t.Fatalf("/healthz %d %s", code, body)
	}
	w.waitEqual(time.Minute)
	waitReadyz(t, svc, 200, "ready")
	_, before := svc.scrape("/metrics")
	for i := 0; i < 5; i++ {
		w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 1) ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + 1`, w.students[80+i].ID)
	}
	w.waitEqual(30 * time.Second)
	// The gauges and counters move as the stream is processed.
	var after string
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, after = svc.scrape("/metrics")
		if metricValue(t, after, `progress_sync_flush_batches_total`) > metricValue(t, before, `progress_sync_flush_batches_total`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no flush counted:\n%s", after)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The database gauges refresh every status interval.
	for metricValue(t, after, `progress_sync_slot_wal_status{status="reserved"}`) != 1 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		_, after = svc.scrape("/metrics")
	}
	if n := metricValue(t, after, `progress_sync_problem_students{kind="unmatched"}`); n != 17 {
		t.Errorf("unmatched students %v, want 17", n)
	}
	for _, sample := range []string{
		`progress_sync_hubspot_requests_total{endpoint="POST /crm/objects/2026-09/contacts/batch/update",status="200"}`,
		`progress_sync_contacts_updated_total`, `progress_sync_commit_to_hubspot_seconds_count`,
		`progress_sync_changes_received_total{table="public.user_xp"}`,
		`progress_sync_last_flush_timestamp_seconds`, `progress_sync_confirmed_lsn`, `progress_sync_streaming`,
		`progress_sync_pending_students`, `progress_sync_slot_wal_status{status="reserved"}`, `progress_sync_problem_students{kind="unmatched"}`,
	} {
		if metricValue(t, after, sample) < 0 {
			t.Errorf("no sample %s", sample)
		}
	}
	if v := metricValue(t, after, `progress_sync_contacts_updated_total`); v < metricValue(t, before, `progress_sync_contacts_updated_total`)+5 {
		t.Errorf("contacts_updated_total %v, want at least 5 more than %v", v, metricValue(t, before, `progress_sync_contacts_updated_total`))
	}
	if !strings.Contains(after, `progress_sync_build_info{modified=`) {
		t.Error("no progress_sync_build_info")
	}
	if strings.Contains(after, token) {
		t.Fatal("the metrics show the token")
	}
	t.Logf("one scrape of /metrics during the test (progress_sync_ lines):\n%s", grepLines(after, "progress_sync_"))
	checkDashboardMetrics(t, after)
	// A spent daily limit makes the service not ready, while it keeps streaming.
	w.emu.SetFaults(hubspottest.Faults{DailyExhausted: true})
	w.exec(`UPDATE user_xp SET total_xp = total_xp + 1 WHERE user_id = $1`, w.students[90].ID)
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, body := svc.scrape("/readyz")
		if code == 503 && strings.Contains(body, "daily") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz with a spent daily limit: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) && !strings.Contains(l, "_bucket{") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestCheck(t *testing.T) {
	w := newWorld(t, 300)
	// Misconfigured: no publication, weak replica identities, properties missing in HubSpot,
	// a token without access.
	r := w.cli.run("check")
	for _, want := range []string{"PROBLEM  publication", "PROBLEM  replica identities", "ALTER TABLE public.course_progress REPLICA IDENTITY FULL;",
		"PROBLEM  HubSpot properties", "ok       wal_level", "ok       replication connection"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("misconfigured check lacks %q", want)
		}
	}
	if r.code != 1 {
		t.Fatalf("misconfigured check: exit %d\n%s", r.code, r.stdout)
	}
	w.cli.mustRun("setup")
	w.cli.mustRun("provision")
	good := w.cli.mustRun("check")
	if !strings.Contains(good.stdout, "all ") || !strings.Contains(good.stdout, "accepted on API version 2026-09") {
		t.Fatalf("correct setup:\n%s", good.stdout)
	}
	// Every request went to the date version's paths.
	if st := w.emu.Stats(); st.ByFamily["2026-09"] == 0 || st.ByFamily["v3"] != 0 {
		t.Fatalf("requests by path family %v, want all on 2026-09", st.ByFamily)
	}
	w.cli.env["HUBSPOT_API_VERSION"] = "v3"
	w.emu.ResetStats()
	if out := w.cli.mustRun("check").stdout; !strings.Contains(out, "accepted on API version v3") {
		t.Fatalf("check on v3:\n%s", out)
	}
	if st := w.emu.Stats(); st.ByFamily["v3"] == 0 || st.ByFamily["2026-09"] != 0 {
		t.Fatalf("HUBSPOT_API_VERSION=v3: requests by path family %v", st.ByFamily)
	}
	delete(w.cli.env, "HUBSPOT_API_VERSION")
	w.emu.ResetStats()
	t.Logf("check on the test database:\n%s", good.stdout)
	bad := cli{t: t, env: map[string]string{"DATABASE_URL": w.dbURL, "HUBSPOT_ACCESS_TOKEN": "not-the-token", "HUBSPOT_BASE_URL": w.emu.URL()}}
	if r := bad.run("check"); r.code != 1 || !strings.Contains(r.stdout, "PROBLEM  HubSpot token") {
		t.Fatalf("wrong token: exit %d\n%s", r.code, r.stdout)
	}
}

// loseSlot makes the server give away WAL the stopped service's slot still needs, until the
// slot is lost.
func (w *world) loseSlot() {
	w.t.Helper()
	w.exec(`ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'`)
	w.exec(`SELECT pg_reload_conf()`)
	w.t.Cleanup(func() {
		w.exec(`ALTER SYSTEM RESET max_slot_wal_keep_size`)
		w.exec(`SELECT pg_reload_conf()`)
	})
	w.exec(`CREATE TABLE IF NOT EXISTS filler (pad text)`)
	deadline := time.Now().Add(time.Minute)
	for {
		w.exec(`INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000)`)
		w.exec(`SELECT pg_switch_wal()`)
		w.exec(`CHECKPOINT`)
		var status string
		if err := w.db.QueryRow(context.Background(), `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = 'progress_sync'`).Scan(&status); err != nil {
			w.t.Fatal(err)
		}
		if status == "lost" {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("slot not lost after a minute of WAL (wal_status %s)", status)
		}
	}
}

// checkDashboardMetrics fails when a panel of the Helm chart's Grafana dashboard queries a
// metric the service does not export (scrape is a /metrics answer of the running service).
func checkDashboardMetrics(t *testing.T, scrape string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "deploy", "helm", "progress-sync", "dashboards", "progress-sync.json"))
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, line := range strings.Split(scrape, "\n") {
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " "); ok && strings.HasPrefix(line, "# TYPE ") {
			exported[name] = true
		}
	}
	names := regexp.MustCompile(`progress_sync_[a-z0-9_]+`).FindAllString(string(raw), -1)
	if len(names) < 10 {
		t.Fatalf("the dashboard names %d metrics", len(names))
	}
	for _, n := range names {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] {
			t.Errorf("the Grafana dashboard queries %s, which the service does not export", n)
		}
	}
}

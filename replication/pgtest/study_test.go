package pgtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// studyConn connects to a new database holding the seeded courses and n students. The session
// runs far from UTC, so a Studier writing local time instead of UTC would show.
func studyConn(t *testing.T, n int) (*pgx.Conn, []SeededStudent) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	students, err := Seed(ctx, conn, SeedOptions{Students: n, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SET TIME ZONE 'Pacific/Kiritimati'`); err != nil {
		t.Fatal(err)
	}
	return conn, students
}

// progressRow is one course_progress row as the checks see it.
type progressRow struct {
	completed    bool
	score        *float64
	timeSpent    int
	completedAt  *time.Time
	lastAccessed *time.Time
}

func (r progressRow) String() string {
	return fmt.Sprint(r.completed, deref(r.score), r.timeSpent, deref(r.completedAt), deref(r.lastAccessed))
}

// snapshot is everything a Studier may change about one student.
type snapshot struct {
	level, goal *string
	progress    map[string]progressRow // by lesson_id
	xp          *int
	streak      *int
	longest     *int
}

func takeSnapshot(t *testing.T, conn *pgx.Conn, student uuid.UUID) snapshot {
	t.Helper()
	ctx := context.Background()
	var s snapshot
	if err := conn.QueryRow(ctx, `SELECT language_level, course_goal FROM users WHERE id = $1`, student).Scan(&s.level, &s.goal); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT lesson_id, coalesce(completed, false), score::float8, coalesce(time_spent, 0), completed_at, last_accessed_at
		FROM course_progress WHERE user_id = $1`, student)
	if err != nil {
		t.Fatal(err)
	}
	s.progress = map[string]progressRow{}
	for rows.Next() {
		var lesson string
		var r progressRow
		if err := rows.Scan(&lesson, &r.completed, &r.score, &r.timeSpent, &r.completedAt, &r.lastAccessed); err != nil {
			t.Fatal(err)
		}
		s.progress[lesson] = r
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	_ = conn.QueryRow(ctx, `SELECT total_xp FROM user_xp WHERE user_id = $1`, student).Scan(&s.xp)
	_ = conn.QueryRow(ctx, `SELECT current_streak, longest_streak FROM user_streaks WHERE user_id = $1`, student).Scan(&s.streak, &s.longest)
	return s
}

// changedLessons lists the lessons whose row was added or changed between two snapshots.
func changedLessons(before, after snapshot) []string {
	var out []string
	for id, a := range after.progress {
		b, ok := before.progress[id]
		if !ok || a.String() != b.String() {
			out = append(out, id)
		}
	}
	return out
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// justNow says whether a timestamp read from the database is the current UTC time.
func justNow(ts *time.Time) bool {
	if ts == nil {
		return false
	}
	now := time.Now().UTC()
	return ts.After(now.Add(-time.Minute)) && ts.Before(now.Add(time.Minute))
}

// kindChecks verifies that a change of each kind is visible in the database as described.
func kindChecks() map[string]func(before, after snapshot, ch Change) error {
	return map[string]func(before, after snapshot, ch Change) error{
		KindOpen: func(before, after snapshot, ch Change) error {
			changed := changedLessons(before, after)
			if len(changed) != 1 || len(after.progress) < len(before.progress) {
				return fmt.Errorf("changed lessons %v, rows %d -> %d", changed, len(before.progress), len(after.progress))
			}
			id := changed[0]
			a := after.progress[id]
			if !strings.Contains(ch.Description, "lesson "+id+" ") {
				return fmt.Errorf("row of %s changed, description says %q", id, ch.Description)
			}
			if !justNow(a.lastAccessed) || a.completed != before.progress[id].completed || a.timeSpent <= before.progress[id].timeSpent {
				return fmt.Errorf("lesson %s: %+v, was %+v", id, a, before.progress[id])
			}
			if fmt.Sprint(deref(before.xp)) != fmt.Sprint(deref(after.xp)) {
				return fmt.Errorf("xp changed when opening a lesson")
			}
			return nil
		},
		KindLesson: func(before, after snapshot, ch Change) error {
			changed := changedLessons(before, after)
			if len(changed) != 1 {
				return fmt.Errorf("changed lessons %v", changed)
			}
			id := changed[0]
			a := after.progress[id]
			if !a.completed || a.score == nil || *a.score < 0 || *a.score > 100 || !justNow(a.completedAt) || !justNow(a.lastAccessed) {
				return fmt.Errorf("lesson %s: %+v", id, a)
			}
			if want := fmt.Sprintf("lesson %s with %.2f ", id, *a.score); !strings.Contains(ch.Description, want) {
				return fmt.Errorf("description %q lacks %q", ch.Description, want)
			}
			if after.xp == nil || (before.xp != nil && *after.xp <= *before.xp) {
				return fmt.Errorf("xp %v -> %v", deref(before.xp), deref(after.xp))
			}
			return nil
		},
		KindXP: func(before, after snapshot, ch Change) error {
			if after.xp == nil || (before.xp != nil && *after.xp <= *before.xp) {
				return fmt.Errorf("xp %v -> %v", deref(before.xp), deref(after.xp))
			}
			if !strings.Contains(ch.Description, fmt.Sprintf("(total %d)", *after.xp)) {
				return fmt.Errorf("xp is %d, description says %q", *after.xp, ch.Description)
			}
			return nil
		},
		KindStreak: func(before, after snapshot, ch Change) error {
			if after.streak == nil || *after.longest < *after.streak {
				return fmt.Errorf("streak %v (longest %v)", deref(after.streak), deref(after.longest))
			}
			was := 0
			if before.streak != nil {
				was = *before.streak
			}
			if *after.streak != was+1 && !(*after.streak == 0 && was > 0) {
				return fmt.Errorf("streak %d -> %d", was, *after.streak)
			}
			return nil
		},
		KindReset: func(before, after snapshot, ch Change) error {
			id := strings.TrimPrefix(ch.Description, "reset lesson ")
			if _, ok := before.progress[id]; !ok {
				return fmt.Errorf("%q: no such row before", ch.Description)
			}
			if _, ok := after.progress[id]; ok || len(after.progress) != len(before.progress)-1 {
				return fmt.Errorf("%q: rows %d -> %d", ch.Description, len(before.progress), len(after.progress))
			}
			return nil
		},
		KindCourse: func(before, after snapshot, ch Change) error {
			if after.level == nil || after.goal == nil {
				return fmt.Errorf("no course after %q", ch.Description)
			}
			if fmt.Sprint(deref(before.level), deref(before.goal)) == fmt.Sprint(*after.level, *after.goal) {
				return fmt.Errorf("course unchanged (%s %s)", *after.level, *after.goal)
			}
			if !strings.HasSuffix(ch.Description, *after.level+" "+*after.goal) {
				return fmt.Errorf("course is %s %s, description says %q", *after.level, *after.goal, ch.Description)
			}
			return nil
		},
	}
}

// TestStudierSituations forces a kind of change on students in particular situations.
func TestStudierSituations(t *testing.T) {
	conn, _ := studyConn(t, 0)
	ctx := context.Background()
	allB1Viajes := `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, completed, score, completed_at, last_accessed_at)
		SELECT $1, m.course_level, m.course_goal, m.id, l.id, true, 70, '2026-01-01', '2026-01-01'
		FROM course_lessons l JOIN course_modules m ON m.id = l.module_id
		WHERE m.course_level = 'B1' AND m.course_goal = 'viajes'`
	for _, tc := range []struct {
		name         string
		level, goal  any
		setup        []string // SQL run with $1 = the student
		kind         string
		wantKind     string
		wantDescribe string
	}{
		{name: "open starts the course", level: "B1", goal: "viajes", kind: KindOpen, wantKind: KindOpen, wantDescribe: "opened lesson b1-viajes-m1-l1 "},
		{name: "lesson completes the open lesson", level: "B1", goal: "viajes", kind: KindLesson, wantKind: KindLesson,
			setup: []string{`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id, last_accessed_at)
				VALUES ($1, 'B1', 'viajes', 'b1-viajes-m2', 'b1-viajes-m2-l3', '2026-01-01')`},
			wantDescribe: "completed lesson b1-viajes-m2-l3 with "},
		{name: "last lesson finishes the course", level: "B1", goal: "viajes", kind: KindLesson, wantKind: KindLesson,
			setup:        []string{allB1Viajes, `DELETE FROM course_progress WHERE user_id = $1 AND lesson_id = 'b1-viajes-m3-l4'`},
			wantDescribe: "finished course B1 viajes"},
		{name: "lesson after the course is a retake", level: "B1", goal: "viajes", kind: KindLesson, wantKind: KindLesson,
			setup: []string{allB1Viajes}, wantDescribe: "retook lesson b1-viajes-"},
		{name: "xp without a row", level: "A1", goal: "trabajo", kind: KindXP, wantKind: KindXP, wantDescribe: "earned "},
		{name: "streak without a row", level: "A1", goal: "trabajo", kind: KindStreak, wantKind: KindStreak, wantDescribe: "started a streak (1 day)"},
		{name: "reset deletes a row", level: "A1", goal: "trabajo", kind: KindReset, wantKind: KindReset,
			setup: []string{`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id)
				VALUES ($1, 'C1', 'viajes', 'c1-viajes-m1', 'c1-viajes-m1-l2')`},
			wantDescribe: "reset lesson c1-viajes-m1-l2"},
		{name: "reset with nothing to reset opens a lesson", level: "A1", goal: "trabajo", kind: KindReset, wantKind: KindOpen, wantDescribe: "opened lesson a1-trabajo-m1-l1 "},
		{name: "no course: lesson work chooses one", kind: KindLesson, wantKind: KindCourse, wantDescribe: "chose course "},
		{name: "course without lessons: lesson work switches", level: "C2", goal: "examenes", kind: KindOpen, wantKind: KindCourse, wantDescribe: "switched from course C2 examenes to "},
		{name: "course change", level: "B2", goal: "trabajo", kind: KindCourse, wantKind: KindCourse, wantDescribe: "switched from course B2 trabajo to "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			student := uuid.New()
			if _, err := conn.Exec(ctx, `INSERT INTO auth.users (id, email) VALUES ($1, $2)`, student, student.String()+"@example.com"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, `INSERT INTO users (id, email, name, language_level, course_goal) VALUES ($1, $2, 'S', $3, $4)`,
				student, student.String()+"@example.com", tc.level, tc.goal); err != nil {
				t.Fatal(err)
			}
			for _, q := range tc.setup {
				if _, err := conn.Exec(ctx, q, student); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			before := takeSnapshot(t, conn, student)
			ch, err := NewStudier([]uuid.UUID{student}, 1).step(ctx, conn, student, tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			if ch.Student != student || ch.Kind != tc.wantKind || !strings.Contains(ch.Description, tc.wantDescribe) {
				t.Fatalf("got %+v, want kind %s describing %q", ch, tc.wantKind, tc.wantDescribe)
			}
			if err := kindChecks()[ch.Kind](before, takeSnapshot(t, conn, student), ch); err != nil {
				t.Fatalf("%s %q: %v", ch.Kind, ch.Description, err)
			}
		})
	}
}

// TestStudierRun runs the mix on a seeded database: every kind occurs, every change is visible
// as described, and the data stays as valid as the platform's.
func TestStudierRun(t *testing.T) {
	conn, seeded := studyConn(t, 300)
	ctx := context.Background()
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
	}
	known := map[uuid.UUID]bool{}
	for _, id := range ids {
		known[id] = true
	}
	studier := NewStudier(ids, 42)
	kinds := map[string]int{}
	students := map[uuid.UUID]bool{}
	var broke bool
	for i := 0; i < 300; i++ {
		next := studier.peek()
		before := takeSnapshot(t, conn, next)
		ch, err := studier.Step(ctx, conn)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if ch.Student != next || !known[ch.Student] || ch.Description == "" {
			t.Fatalf("step %d: %+v, foresaw student %s", i, ch, next)
		}
		if err := kindChecks()[ch.Kind](before, takeSnapshot(t, conn, ch.Student), ch); err != nil {
			t.Fatalf("step %d: %s %q: %v", i, ch.Kind, ch.Description, err)
		}
		kinds[ch.Kind]++
		students[ch.Student] = true
		broke = broke || strings.HasPrefix(ch.Description, "broke")
	}
	for _, k := range Kinds() {
		if kinds[k] == 0 {
			t.Errorf("no %s change in 300 steps: %v", k, kinds)
		}
	}
	if !broke {
		t.Error("no streak was broken in 300 steps")
	}
	if len(students) < 20 || len(students) > 200 {
		t.Errorf("%d students changed: the sessions should touch many students, but repeatedly", len(students))
	}
	t.Logf("kinds %v over %d students", kinds, len(students))

	for _, check := range []struct {
		name, sql string
	}{
		{"score out of 0..100", `SELECT count(*) FROM course_progress WHERE score < 0 OR score > 100`},
		{"activity in the future (not UTC?)", `SELECT count(*) FROM course_progress WHERE last_accessed_at > (now() AT TIME ZONE 'UTC') + interval '1 minute'
			OR completed_at > (now() AT TIME ZONE 'UTC') + interval '1 minute' OR started_at > (now() AT TIME ZONE 'UTC') + interval '1 minute'`},
		{"progress on an unknown lesson", `SELECT count(*) FROM course_progress p WHERE NOT EXISTS (SELECT 1 FROM course_lessons l
			JOIN course_modules m ON m.id = l.module_id WHERE l.id = p.lesson_id AND l.module_id = p.module_id
			AND m.course_level = p.course_level AND m.course_goal = p.course_goal)`},
		{"streak above its longest", `SELECT count(*) FROM user_streaks WHERE current_streak > longest_streak OR current_streak < 0`},
		{"negative xp", `SELECT count(*) FROM user_xp WHERE total_xp < 0`},
		{"half a course", `SELECT count(*) FROM users WHERE (language_level IS NULL) <> (course_goal IS NULL)`},
	} {
		var n int
		if err := conn.QueryRow(ctx, check.sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", check.name, err)
		}
		if n != 0 {
			t.Errorf("%s: %d rows", check.name, n)
		}
	}
}

// peek foresees the student the next Step will pick, by making the choice on a copy.
func (s *Studier) peek() uuid.UUID {
	src := *s.src
	c := Studier{students: s.students, src: &src, rng: rand.New(&src), session: slices.Clone(s.session)}
	return c.pickStudent()
}

// TestStudierRepeats: the same data and seed make the same changes, so a benchmark's load can
// be replayed.
func TestStudierRepeats(t *testing.T) {
	ctx := context.Background()
	var runs [2][]Change
	for r := range runs {
		conn, seeded := studyConn(t, 50)
		ids := make([]uuid.UUID, len(seeded))
		for i, s := range seeded {
			ids[i] = s.ID
		}
		studier := NewStudier(ids, 7)
		for i := 0; i < 60; i++ {
			ch, err := studier.Step(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			runs[r] = append(runs[r], ch)
		}
	}
	for i := range runs[0] {
		if runs[0][i] != runs[1][i] {
			t.Fatalf("step %d: %+v, then %+v", i, runs[0][i], runs[1][i])
		}
	}
}

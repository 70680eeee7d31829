package model

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

var _ Querier = (*pgx.Conn)(nil)
var _ Querier = pgx.Tx(nil)

func connect(t testing.TB) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t testing.TB, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Courses of the fixture (course_modules/course_lessons). Lesson ids are "<module>-l<n>".
//
//	B2 trabajo:  2 modules × 3 lessons = 6
//	A1 viajes:   1 module  × 3 lessons = 3
//	B1 examenes: 2 modules × 4 lessons = 8
//	A2 trabajo:  1 module  × 2 lessons = 2
//	C1 trabajo:  1 module without lessons
//	B2 viajes:   1 module  × 2000 lessons
//	C2 viajes:   no module
var fixtureCourses = []struct {
	level, goal string
	lessons     []int // lessons per module
}{
	{"B2", "trabajo", []int{3, 3}},
	{"A1", "viajes", []int{3}},
	{"B1", "examenes", []int{4, 4}},
	{"A2", "trabajo", []int{2}},
	{"C1", "trabajo", []int{0}},
	{"B2", "viajes", []int{2000}},
}

func moduleID(level, goal string, m int) string { return fmt.Sprintf("%s-%s-m%d", level, goal, m) }
func lessonID(level, goal string, m, l int) string {
	return fmt.Sprintf("%s-l%d", moduleID(level, goal, m), l)
}

func loadCourses(t testing.TB, conn *pgx.Conn) {
	t.Helper()
	for _, c := range fixtureCourses {
		for m, n := range c.lessons {
			mod := moduleID(c.level, c.goal, m+1)
			exec(t, conn, `INSERT INTO course_modules (id, course_level, course_goal, order_index, title)
				VALUES ($1, $2, $3, $4, $1)`, mod, c.level, c.goal, m+1)
			exec(t, conn, `INSERT INTO course_lessons (id, module_id, order_index, title)
				SELECT $1 || '-l' || i, $1, i, 'Lesson ' || i FROM generate_series(1, $2::int) i`, mod, n)
		}
	}
}

// row is a course_progress row; nil fields are NULL.
type row struct {
	lesson       string
	module       string // default: the lesson id without its "-l<n>" suffix, or "other"
	completed    any    // bool or nil
	score        any    // decimal string or nil
	timeSpent    any    // int or nil
	completedAt  any    // "YYYY-MM-DD HH:MM:SS" or nil
	lastAccessed any    // "YYYY-MM-DD HH:MM:SS" or nil
}

type student struct {
	email       string
	level, goal any // string or nil
	rows        []row
	// bulk completes lessons 1..n of module 1 of the student's course (for the 2000-lesson course).
	bulk       int
	streak, xp any // int or nil (no row)
	id         uuid.UUID
}

func insertStudent(t testing.TB, conn *pgx.Conn, s *student) {
	t.Helper()
	if s.id == uuid.Nil {
		s.id = uuid.New()
	}
	exec(t, conn, `INSERT INTO users (id, email, name, language_level, course_goal) VALUES ($1, $2, 'Student', $3, $4)`,
		s.id, s.email, s.level, s.goal)
	level, goal := "A1", "viajes"
	if l, ok := s.level.(string); ok {
		level = l
	}
	if g, ok := s.goal.(string); ok {
		goal = g
	}
	for _, r := range s.rows {
		mod := r.module
		if mod == "" {
			mod = "other"
			if i := bytes.LastIndex([]byte(r.lesson), []byte("-l")); i > 0 {
				mod = r.lesson[:i]
			}
		}
		exec(t, conn, `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id,
				completed, score, time_spent, completed_at, last_accessed_at, started_at)
			VALUES ($1, $2, $3, $4, $5, $6::boolean, $7::text::numeric, $8::int, $9::text::timestamp, $10::text::timestamp, NULL)`,
			s.id, level, goal, mod, r.lesson, r.completed, r.score, r.timeSpent, r.completedAt, r.lastAccessed)
	}
	if s.bulk > 0 {
		exec(t, conn, `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id,
				completed, score, time_spent, completed_at, last_accessed_at)
			SELECT $1, $2, $3, $4, $4 || '-l' || i, true, NULL, 60, NULL, '2026-05-01 12:00:00'
			FROM generate_series(1, $5::int) i`, s.id, level, goal, moduleID(level, goal, 1), s.bulk)
	}
	if s.streak != nil || s.xp != nil {
		exec(t, conn, `INSERT INTO auth.users (id, email) VALUES ($1, $2)`, s.id, s.email)
	}
	if s.streak != nil {
		exec(t, conn, `INSERT INTO user_streaks (user_id, current_streak, longest_streak) VALUES ($1, $2, $2)`, s.id, s.streak)
	}
	if s.xp != nil {
		exec(t, conn, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2)`, s.id, s.xp)
	}
}

// want is the metrics of a student with no progress rows, no assigned course and no xp or
// streak rows, changed by kv (name, value pairs).
func want(kv ...string) metrics.Values {
	v := metrics.Values{
		metrics.LessonsCompleted: "0", metrics.CurrentLesson: "", metrics.AverageScore: "", metrics.TotalStudyTime: "0",
		metrics.ProgressPercentage: "", metrics.LastActivityDate: "", metrics.StudyStreak: "0", metrics.TotalXP: "0",
		metrics.CourseCompletedDate: "", metrics.CourseStatus: metrics.StatusNotStarted,
	}
	for i := 0; i+1 < len(kv); i += 2 {
		v[kv[i]] = kv[i+1]
	}
	return v
}

const (
	ts1 = "2026-01-10 10:00:00"
	ts2 = "2026-01-15 08:00:00"
	ts3 = "2026-02-20 23:59:59"
	ts4 = "2026-03-01 00:00:00"
)

func b2t(m, l int) string { return lessonID("B2", "trabajo", m, l) }
func a1v(l int) string    { return lessonID("A1", "viajes", 1, l) }
func b1e(m, l int) string { return lessonID("B1", "examenes", m, l) }
func a2t(l int) string    { return lessonID("A2", "trabajo", 1, l) }

var metricCases = []struct {
	name    string
	student student
	want    metrics.Values
}{
	{"no progress rows, no course", student{level: nil, goal: nil}, want()},
	{"no progress rows, assigned course", student{level: "B2", goal: "trabajo"},
		want(metrics.ProgressPercentage, "0")},
	{"null scores only", student{level: "B2", goal: "trabajo", rows: []row{
		{lesson: b2t(1, 1), completed: true, score: nil, timeSpent: 60, lastAccessed: ts1},
		{lesson: b2t(1, 2), completed: true, score: nil, timeSpent: 60, lastAccessed: ts2},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, b2t(1, 2), metrics.TotalStudyTime, "2",
		metrics.ProgressPercentage, "33.3", metrics.LastActivityDate, "2026-01-15", metrics.CourseStatus, metrics.StatusInProgress)},
	{"mean ignores null scores and incomplete rows", student{level: "B2", goal: "trabajo", rows: []row{
		{lesson: b2t(1, 1), completed: true, score: "80.00", timeSpent: 0, lastAccessed: ts1},
		{lesson: b2t(1, 2), completed: true, score: nil, timeSpent: 0, lastAccessed: ts1},
		{lesson: b2t(1, 3), completed: true, score: "91.00", timeSpent: 0, lastAccessed: ts1},
		{lesson: b2t(2, 1), completed: false, score: "10.00", timeSpent: 0, lastAccessed: ts1},
		{lesson: b2t(2, 2), completed: nil, score: "10.00", timeSpent: 0, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "3", metrics.CurrentLesson, b2t(2, 2), metrics.AverageScore, "85.5",
		metrics.ProgressPercentage, "50", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"mean x.xx5 rounds half up", student{rows: []row{
		{lesson: "x-l1", completed: true, score: "85.33", lastAccessed: ts1},
		{lesson: "x-l2", completed: true, score: "85.34", lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, "x-l2", metrics.AverageScore, "85.34",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"mean 0.005 rounds to 0.01, whole mean has no decimals", student{rows: []row{
		{lesson: "x-l1", completed: true, score: "0.01", lastAccessed: ts1},
		{lesson: "x-l2", completed: true, score: "0.00", lastAccessed: ts1},
		{lesson: "y-l1", completed: false, score: "100.00", lastAccessed: nil},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, "x-l2", metrics.AverageScore, "0.01",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"mean of 90.00 is 90", student{rows: []row{
		{lesson: "x-l1", completed: true, score: "90.00", lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, "x-l1", metrics.AverageScore, "90",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"90 s is 2 min", student{rows: []row{{lesson: "x-l1", completed: false, timeSpent: 90, lastAccessed: ts1}}},
		want(metrics.CurrentLesson, "x-l1", metrics.TotalStudyTime, "2", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"89 s is 1 min", student{rows: []row{{lesson: "x-l1", completed: false, timeSpent: 89, lastAccessed: ts1}}},
		want(metrics.CurrentLesson, "x-l1", metrics.TotalStudyTime, "1", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"30 s is 1 min, 29 s is 0", student{rows: []row{{lesson: "x-l1", completed: false, timeSpent: 29, lastAccessed: ts1}}},
		want(metrics.CurrentLesson, "x-l1", metrics.TotalStudyTime, "0", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"negative and null time count as 0", student{rows: []row{
		{lesson: "x-l1", completed: false, timeSpent: 100, lastAccessed: ts1},
		{lesson: "x-l2", completed: false, timeSpent: -5000, lastAccessed: ts1},
		{lesson: "x-l3", completed: false, timeSpent: nil, lastAccessed: ts1},
	}}, want(metrics.CurrentLesson, "x-l3", metrics.TotalStudyTime, "2", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"huge time does not overflow", student{rows: []row{
		{lesson: "x-l1", timeSpent: 2000000000, lastAccessed: ts1},
		{lesson: "x-l2", timeSpent: 2000000000, lastAccessed: ts1},
		{lesson: "x-l3", timeSpent: 2000000000, lastAccessed: ts1},
		{lesson: "x-l4", timeSpent: 2000000000, lastAccessed: ts1},
		{lesson: "x-l5", timeSpent: 2000000000, lastAccessed: ts1},
	}}, want(metrics.CurrentLesson, "x-l5", metrics.TotalStudyTime, "166666667", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"current lesson: latest access wins over greater id", student{rows: []row{
		{lesson: "x-l9", lastAccessed: ts1},
		{lesson: "x-l1", lastAccessed: ts2},
	}}, want(metrics.CurrentLesson, "x-l1", metrics.LastActivityDate, "2026-01-15", metrics.CourseStatus, metrics.StatusInProgress)},
	{"current lesson: ties go to the greatest id (bytewise), nulls last", student{rows: []row{
		{lesson: "x-l10", lastAccessed: ts2},
		{lesson: "x-l2", lastAccessed: ts2},
		{lesson: "x-L3", lastAccessed: ts2},
		{lesson: "x-l1", lastAccessed: ts1},
		{lesson: "z-l9", lastAccessed: nil},
	}}, want(metrics.CurrentLesson, "x-l2", metrics.LastActivityDate, "2026-01-15", metrics.CourseStatus, metrics.StatusInProgress)},
	{"current lesson: all accesses null", student{rows: []row{
		{lesson: "x-l1", lastAccessed: nil},
		{lesson: "x-l3", lastAccessed: nil},
		{lesson: "x-l2", lastAccessed: nil},
	}}, want(metrics.CurrentLesson, "x-l3", metrics.CourseStatus, metrics.StatusInProgress)},
	{"23:30 UTC stays on its date", student{rows: []row{
		{lesson: "x-l1", lastAccessed: "2026-03-14 23:30:00"},
		{lesson: "x-l2", lastAccessed: "2026-03-14 00:30:00"},
	}}, want(metrics.CurrentLesson, "x-l1", metrics.LastActivityDate, "2026-03-14", metrics.CourseStatus, metrics.StatusInProgress)},
	{"progress 1/6", student{level: "B2", goal: "trabajo", rows: []row{
		{lesson: b2t(2, 3), completed: true, lastAccessed: ts1},
		{lesson: b2t(1, 1), completed: false, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, b2t(2, 3), metrics.ProgressPercentage, "16.7",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"progress 2/3, same lesson twice and lessons of other courses", student{level: "A1", goal: "viajes", rows: []row{
		{lesson: a1v(1), completed: true, lastAccessed: ts1},
		{lesson: a1v(1), module: "elsewhere", completed: true, lastAccessed: ts1},
		{lesson: a1v(3), completed: true, lastAccessed: ts1},
		{lesson: b2t(1, 1), completed: true, lastAccessed: ts1},
		{lesson: b2t(1, 2), completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "5", metrics.CurrentLesson, b2t(1, 2), metrics.ProgressPercentage, "66.7",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"progress 1/8", student{level: "B1", goal: "examenes", rows: []row{
		{lesson: b1e(2, 4), completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, b1e(2, 4), metrics.ProgressPercentage, "12.5",
		metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"course completed: latest completed_at", student{level: "A2", goal: "trabajo", rows: []row{
		{lesson: a2t(1), completed: true, score: "70.00", completedAt: ts1, lastAccessed: ts4},
		{lesson: a2t(2), completed: true, score: "80.00", completedAt: ts2, lastAccessed: ts2},
		// a later completion outside the course does not move the date
		{lesson: "x-l1", completed: true, completedAt: ts3, lastAccessed: ts3},
	}}, want(metrics.LessonsCompleted, "3", metrics.CurrentLesson, a2t(1), metrics.AverageScore, "75", metrics.ProgressPercentage, "100",
		metrics.LastActivityDate, "2026-03-01", metrics.CourseCompletedDate, "2026-01-15", metrics.CourseStatus, metrics.StatusCompleted)},
	{"course completed: last_accessed_at where completed_at is null", student{level: "A2", goal: "trabajo", rows: []row{
		{lesson: a2t(1), completed: true, completedAt: ts2, lastAccessed: ts2},
		{lesson: a2t(2), completed: true, completedAt: nil, lastAccessed: ts3},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, a2t(2), metrics.ProgressPercentage, "100",
		metrics.LastActivityDate, "2026-02-20", metrics.CourseCompletedDate, "2026-02-20", metrics.CourseStatus, metrics.StatusCompleted)},
	{"course completed: no timestamps at all", student{level: "A2", goal: "trabajo", rows: []row{
		{lesson: a2t(1), completed: true},
		{lesson: a2t(2), completed: true},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, a2t(2), metrics.ProgressPercentage, "100",
		metrics.CourseStatus, metrics.StatusCompleted)},
	{"course lesson done twice but another missing is not completed", student{level: "A2", goal: "trabajo", rows: []row{
		{lesson: a2t(1), completed: true, completedAt: ts1, lastAccessed: ts1},
		{lesson: a2t(1), module: "elsewhere", completed: true, completedAt: ts1, lastAccessed: ts1},
		{lesson: a2t(2), completed: false, lastAccessed: ts2},
	}}, want(metrics.LessonsCompleted, "2", metrics.CurrentLesson, a2t(2), metrics.ProgressPercentage, "50",
		metrics.LastActivityDate, "2026-01-15", metrics.CourseStatus, metrics.StatusInProgress)},
	{"1999 of 2000 shows 100 but is not completed", student{level: "B2", goal: "viajes", bulk: 1999},
		want(metrics.LessonsCompleted, "1999", metrics.CurrentLesson, lessonID("B2", "viajes", 1, 999), metrics.TotalStudyTime, "1999",
			metrics.ProgressPercentage, "100", metrics.LastActivityDate, "2026-05-01", metrics.CourseStatus, metrics.StatusInProgress)},
	{"2000 of 2000", student{level: "B2", goal: "viajes", bulk: 2000},
		want(metrics.LessonsCompleted, "2000", metrics.CurrentLesson, lessonID("B2", "viajes", 1, 999), metrics.TotalStudyTime, "2000",
			metrics.ProgressPercentage, "100", metrics.LastActivityDate, "2026-05-01", metrics.CourseCompletedDate, "2026-05-01",
			metrics.CourseStatus, metrics.StatusCompleted)},
	{"course with zero lessons", student{level: "C1", goal: "trabajo", rows: []row{
		{lesson: "x-l1", completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, "x-l1", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"no module for level and goal", student{level: "C2", goal: "viajes", rows: []row{
		{lesson: "x-l1", completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, "x-l1", metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"level without goal", student{level: "B2", goal: nil, rows: []row{
		{lesson: b2t(1, 1), completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, b2t(1, 1), metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"goal without level", student{level: nil, goal: "trabajo", rows: []row{
		{lesson: b2t(1, 1), completed: true, lastAccessed: ts1},
	}}, want(metrics.LessonsCompleted, "1", metrics.CurrentLesson, b2t(1, 1), metrics.LastActivityDate, "2026-01-10", metrics.CourseStatus, metrics.StatusInProgress)},
	{"xp and streak rows", student{streak: 7, xp: 1234}, want(metrics.StudyStreak, "7", metrics.TotalXP, "1234")},
	{"xp and streak rows at zero", student{streak: 0, xp: 0}, want()},
	{"only xp row", student{xp: 50}, want(metrics.TotalXP, "50")},
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	conn := connect(t)
	loadCourses(t, conn)
	students := make([]student, len(metricCases))
	ids := make([]uuid.UUID, len(metricCases))
	for i, c := range metricCases {
		students[i] = c.student
		students[i].email = fmt.Sprintf("student%02d@example.com", i)
		insertStudent(t, conn, &students[i])
		ids[i] = students[i].id
	}
	// The values must not depend on the session's time zone or date style.
	for _, setting := range []string{
		"SET TimeZone = 'Pacific/Kiritimati'",
		"SET TimeZone = 'America/Los_Angeles'",
		"SET DateStyle = 'German, DMY'",
	} {
		exec(t, conn, setting)
		got, err := courseProgress(t, conn).ForStudents(ctx, conn, ids)
		if err != nil {
			t.Fatalf("%s: %v", setting, err)
		}
		if len(got) != len(ids) {
			t.Fatalf("%s: got %d students, want %d", setting, len(got), len(ids))
		}
		byID := map[uuid.UUID]metrics.Student{}
		for _, s := range got {
			byID[s.ID] = s
		}
		for i, c := range metricCases {
			s, ok := byID[ids[i]]
			if !ok {
				t.Errorf("%s: %s: student missing", setting, c.name)
				continue
			}
			if s.Email != students[i].email {
				t.Errorf("%s: %s: email %q, want %q", setting, c.name, s.Email, students[i].email)
			}
			for _, name := range metrics.Names() {
				g, ok := s.Values[name]
				if !ok {
					t.Errorf("%s: %s: %s missing", setting, c.name, name)
				}
				if g != c.want[name] {
					t.Errorf("%s: %s: %s = %q, want %q", setting, c.name, name, g, c.want[name])
				}
				if cg := metrics.Canonical(name, g); cg != g {
					t.Errorf("%s: %s: computed %s %q is not canonical (%q)", setting, c.name, name, g, cg)
				}
			}
			if len(s.Values) != len(metrics.Names()) {
				t.Errorf("%s: %s: %d values, want %d", setting, c.name, len(s.Values), len(metrics.Names()))
			}
		}
	}
}

func sortedIDs(ids []uuid.UUID) []uuid.UUID {
	out := slices.Clone(ids)
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i][:], out[j][:]) < 0 })
	return out
}

func TestForStudents(t *testing.T) {
	ctx := context.Background()
	conn := connect(t)
	var known []uuid.UUID
	for i := 0; i < 5; i++ {
		s := student{email: fmt.Sprintf("s%d@example.com", i)}
		insertStudent(t, conn, &s)
		known = append(known, s.id)
	}
	unknown := []uuid.UUID{uuid.New(), uuid.New()}
	req := []uuid.UUID{known[3], unknown[0], known[1], known[3], unknown[1], known[0]}

	tests := []struct {
		name string
		ids  []uuid.UUID
		want []uuid.UUID
	}{
		{"mixed known, unknown and duplicate ids", req, sortedIDs([]uuid.UUID{known[0], known[1], known[3]})},
		{"only unknown ids", unknown, nil},
		{"no ids", nil, nil},
		{"all", known, sortedIDs(known)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := courseProgress(t, conn).ForStudents(ctx, conn, tc.ids)
			if err != nil {
				t.Fatal(err)
			}
			if g := metrics.IDs(got); !slices.Equal(g, tc.want) {
				t.Fatalf("ids %v, want %v", g, tc.want)
			}
		})
	}

	// Works inside a transaction too (pgx.Tx is a Querier).
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	got, err := courseProgress(t, conn).ForStudents(ctx, tx, known[:1])
	if err != nil || len(got) != 1 || got[0].Values[metrics.CourseStatus] != metrics.StatusNotStarted {
		t.Fatalf("in a transaction: %v, %v", got, err)
	}
}

func TestPage(t *testing.T) {
	ctx := context.Background()
	conn := connect(t)
	loadCourses(t, conn)
	var all []uuid.UUID
	for i := 0; i < 23; i++ {
		s := student{email: fmt.Sprintf("p%d@example.com", i), level: "A1", goal: "viajes"}
		if i%2 == 0 {
			s.rows = []row{{lesson: a1v(1), completed: true, lastAccessed: ts1}}
		}
		insertStudent(t, conn, &s)
		all = append(all, s.id)
	}
	all = sortedIDs(all)

	for _, limit := range []int{1, 7, 23, 100} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			var seen []uuid.UUID
			after, pages := uuid.Nil, 0
			for {
				page, err := courseProgress(t, conn).Page(ctx, conn, after, limit)
				if err != nil {
					t.Fatal(err)
				}
				pages++
				if len(page) > limit {
					t.Fatalf("page of %d, limit %d", len(page), limit)
				}
				for _, s := range page {
					want := "0"
					if s.Values[metrics.LessonsCompleted] == "1" {
						want = "33.3"
					}
					if s.Values[metrics.ProgressPercentage] != want {
						t.Errorf("%s: progress %q, want %q", s.ID, s.Values[metrics.ProgressPercentage], want)
					}
				}
				seen = append(seen, metrics.IDs(page)...)
				if len(page) < limit {
					break
				}
				after = page[len(page)-1].ID
			}
			if !slices.Equal(seen, all) {
				t.Fatalf("pages gave %d ids %v, want every student once in order %v", len(seen), seen, all)
			}
			if wantPages := len(all)/limit + 1; pages != wantPages {
				t.Errorf("%d pages, want %d", pages, wantPages)
			}
		})
	}
	t.Run("after the last id", func(t *testing.T) {
		page, err := courseProgress(t, conn).Page(ctx, conn, all[len(all)-1], 10)
		if err != nil || len(page) != 0 {
			t.Fatalf("got %v, %v; want an empty page", page, err)
		}
	})
	t.Run("bad limit", func(t *testing.T) {
		if _, err := courseProgress(t, conn).Page(ctx, conn, uuid.Nil, 0); err == nil {
			t.Fatal("limit 0 accepted")
		}
	})
}

func TestIDsByEmail(t *testing.T) {
	ctx := context.Background()
	conn := connect(t)
	ids := map[string]uuid.UUID{}
	for _, email := range []string{
		"Ana.Garcia@Example.com ",
		"\tbob@example.com",
		"dup@example.com",
		"DUP@Example.COM",
		"JOSÉ@Example.com",
		"carol@example.com",
	} {
		s := student{email: email}
		insertStudent(t, conn, &s)
		ids[email] = s.id
	}
	tests := []struct {
		name   string
		emails []string
		want   map[string][]uuid.UUID
	}{
		{"padded and upper-case on both sides",
			[]string{"  ANA.GARCIA@example.COM", "Bob@Example.com\n"},
			map[string][]uuid.UUID{
				"ana.garcia@example.com": {ids["Ana.Garcia@Example.com "]},
				"bob@example.com":        {ids["\tbob@example.com"]},
			}},
		{"two students with one normalized email",
			[]string{"dup@example.com", "Dup@Example.com"},
			map[string][]uuid.UUID{"dup@example.com": sortedIDs([]uuid.UUID{ids["dup@example.com"], ids["DUP@Example.COM"]})}},
		{"non-ASCII email", []string{"josé@example.com"},
			map[string][]uuid.UUID{"josé@example.com": {ids["JOSÉ@Example.com"]}}},
		{"unknown and empty emails", []string{"nobody@example.com", "  ", ""}, map[string][]uuid.UUID{}},
		{"no emails", nil, map[string][]uuid.UUID{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := courseProgress(t, conn).IDsByEmail(ctx, conn, tc.emails)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func seedLarge(t testing.TB, conn *pgx.Conn, n, rows int) {
	t.Helper()
	loadCourses(t, conn)
	exec(t, conn, `INSERT INTO users (id, email, name, language_level, course_goal)
		SELECT gen_random_uuid(), 'bulk' || i || '@example.com', 'Bulk',
			(ARRAY['B2','A1','B1','A2','C1','B2'])[1 + i % 6], (ARRAY['trabajo','viajes','examenes','trabajo','trabajo','viajes'])[1 + i % 6]
		FROM generate_series(1, $1::int) i`, n)
	exec(t, conn, `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id,
			completed, score, time_spent, completed_at, last_accessed_at)
		SELECT u.id, u.language_level, u.course_goal, u.language_level || '-' || u.course_goal || '-m' || (1 + j % 2),
			u.language_level || '-' || u.course_goal || '-m' || (1 + j % 2) || '-l' || (1 + j / 2),
			j % 3 <> 0, (j * 7 % 10000) / 100.0, j * 37, timestamp '2026-01-01' + j * interval '1 hour',
			timestamp '2026-01-01' + j * interval '90 minutes'
		FROM users u, generate_series(0, $1::int - 1) j`, rows)
	exec(t, conn, `INSERT INTO auth.users (id, email) SELECT id, email FROM users`)
	exec(t, conn, `INSERT INTO user_xp (user_id, total_xp) SELECT id, 100 FROM users WHERE random() < 0.8`)
	exec(t, conn, `INSERT INTO user_streaks (user_id, current_streak) SELECT id, 3 FROM users WHERE random() < 0.8`)
	exec(t, conn, `ANALYZE`)
}

func BenchmarkForStudents100(b *testing.B) {
	ctx := context.Background()
	conn := connect(b)
	seedLarge(b, conn, 10000, 50)
	var all []uuid.UUID
	r, err := conn.Query(ctx, `SELECT id FROM users ORDER BY random()`)
	if err != nil {
		b.Fatal(err)
	}
	all, err = pgx.CollectRows(r, pgx.RowTo[uuid.UUID])
	if err != nil {
		b.Fatal(err)
	}
	m := courseProgress(b, conn)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		start := (i * 100) % (len(all) - 100)
		got, err := m.ForStudents(ctx, conn, all[start:start+100])
		if err != nil || len(got) != 100 {
			b.Fatalf("%d students, %v", len(got), err)
		}
	}
}

func BenchmarkPageAll(b *testing.B) {
	ctx := context.Background()
	conn := connect(b)
	seedLarge(b, conn, 10000, 50)
	m := courseProgress(b, conn)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		after, n := uuid.Nil, 0
		for {
			page, err := m.Page(ctx, conn, after, 100)
			if err != nil {
				b.Fatal(err)
			}
			n += len(page)
			if len(page) < 100 {
				break
			}
			after = page[len(page)-1].ID
		}
		if n != 10000 {
			b.Fatalf("paged %d students", n)
		}
		b.ReportMetric(float64(time.Since(start).Microseconds())/100, "µs/page")
	}
}

// courseProgress is the built-in course_progress model, verified against conn's database.
func courseProgress(t testing.TB, conn *pgx.Conn) *Model {
	t.Helper()
	m := Builtin("course_progress")
	if err := m.Verify(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	return m
}

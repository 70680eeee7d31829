package reference

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// lessonEdgeCase is a student the seed does not make, written by SQL: $1 is the student's id.
// want, when set, pins a few values the contract text gives outright, so the reference itself
// is checked and not only compared.
type lessonEdgeCase struct {
	name string
	sql  []string
	want map[string]string
}

// A row of user_lesson_progress for the edge cases: user_id is $1.
const ulp = `INSERT INTO user_lesson_progress (user_id, course_id, unit_id, lesson_key, status, accuracy_percent, time_spent_seconds, completed_at, last_activity_at) VALUES `

func lessonEdgeCases() []lessonEdgeCase {
	noon := "'2026-03-10 12:00:00+00'"
	return []lessonEdgeCase{
		{name: "tie on course_id", sql: []string{ulp + `
			($1, 'ingles-a1', 3, 'lesson-1-grammar', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-a2', 1, 'lesson-1-grammar', 'in_progress', 10, 60, NULL, ` + noon + `),
			($1, 'ingles-b2', 9, 'lesson-4-speaking', 'completed', 70, 60, NULL, '2026-03-10 11:59:59.999999+00')`},
			want: map[string]string{metrics.CurrentLesson: "ingles-a2/1/lesson-1-grammar", metrics.ProgressPercentage: "0"}},
		{name: "tie on unit_id compares integers", sql: []string{ulp + `
			($1, 'ingles-b1', 3, 'lesson-1-grammar', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-b1', 10, 'lesson-1-grammar', 'completed', 80, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-b1/10/lesson-1-grammar", metrics.ProgressPercentage: "5.6",
				metrics.AverageScore: "85"}},
		{name: "tie on lesson_key compares bytes", sql: []string{ulp + `
			($1, 'ingles-b1', 2, 'lesson-10', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-b1', 2, 'lesson-2', 'in_progress', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-b1', 2, 'Lesson-9', 'in_progress', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-b1/2/lesson-2"}},
		{name: "tie with a NULL unit_id", sql: []string{ulp + `
			($1, 'ingles-b1', NULL, 'lesson-9', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-b1', 1, 'lesson-1', 'in_progress', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-b1/1/lesson-1"}},
		{name: "tie of NULL unit_ids and a NULL lesson_key", sql: []string{ulp + `
			($1, 'ingles-c1', NULL, NULL, 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-c1', NULL, 'a', 'in_progress', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-c1', NULL, NULL, 'completed', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-c1//a", metrics.ProgressPercentage: "2.5",
				metrics.LessonsCompleted: "2"}},
		{name: "tie with a NULL lesson_key", sql: []string{ulp + `
			($1, 'ingles-a1', 2, NULL, 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-a1', 2, 'a', 'in_progress', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-a1/2/a"}},
		{name: "tie with a NULL course_id", sql: []string{ulp + `
			($1, NULL, 99, 'z', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'a', 'in_progress', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-a1/1/a"}},
		{name: "tie of course_ids compared as bytes", sql: []string{ulp + `
			($1, 'ingles-z', 1, 'a', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-é', 1, 'a', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'Ingles-zz', 1, 'a', 'completed', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-é/1/a", metrics.ProgressPercentage: ""}},
		{name: "latest row without a course", sql: []string{ulp + `
			($1, NULL, 5, 'z', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'a', 'completed', 90, 60, NULL, '2026-03-09 12:00+00')`},
			want: map[string]string{metrics.CurrentLesson: "/5/z", metrics.ProgressPercentage: "",
				metrics.CourseStatus: "in_progress", metrics.CourseCompletedDate: ""}},
		{name: "latest row all NULL", sql: []string{ulp + `
			($1, NULL, NULL, NULL, NULL, NULL, NULL, NULL, ` + noon + `)`},
			want: map[string]string{metrics.CurrentLesson: "//", metrics.CourseStatus: "in_progress",
				metrics.LessonsCompleted: "0", metrics.TotalStudyTime: "0", metrics.AverageScore: ""}},
		{name: "NULL last_activity_at on every row", sql: []string{ulp + `
			($1, 'ingles-a2', 4, 'lesson-2-vocabulary', 'completed', 50, 60, NULL, NULL),
			($1, 'ingles-a2', 4, 'lesson-3-listening', 'completed', 60, 60, '2026-02-01 10:00+00', NULL),
			($1, 'ingles-a1', 7, 'lesson-1-grammar', 'completed', 70, 60, NULL, NULL)`},
			want: map[string]string{metrics.CurrentLesson: "ingles-a2/4/lesson-3-listening", metrics.LastActivityDate: "",
				metrics.ProgressPercentage: "6.7", metrics.AverageScore: "60"}},
		{name: "NULL last_activity_at, complete, no dates", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 50, 60, NULL, NULL),
			($1, 'ingles-mini', 1, 'b', 'completed', 60, 60, NULL, NULL)`},
			want: map[string]string{metrics.ProgressPercentage: "100", metrics.CourseStatus: "completed",
				metrics.CourseCompletedDate: "", metrics.LastActivityDate: ""}},
		{name: "NULL and negative time spent, rounds down", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'in_progress', 90, NULL, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'in_progress', 90, -500, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'c', 'in_progress', 90, 89, NULL, ` + noon + `)`},
			want: map[string]string{metrics.TotalStudyTime: "1", metrics.LessonsCompleted: "0", metrics.AverageScore: ""}},
		{name: "time spent at a half minute", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'in_progress', 90, 30, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'in_progress', 90, 120, NULL, ` + noon + `),
			($1, 'ingles-a1', 1, 'c', 'in_progress', 90, -30, NULL, ` + noon + `)`},
			want: map[string]string{metrics.TotalStudyTime: "3"}},
		{name: "only NULL time spent", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'in_progress', 90, NULL, NULL, ` + noon + `)`},
			want: map[string]string{metrics.TotalStudyTime: "0"}},
		{name: "NULL accuracy on completed rows", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', NULL, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'completed', 70.5, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'c', 'in_progress', 10, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.AverageScore: "70.5", metrics.LessonsCompleted: "2"}},
		{name: "only NULL accuracy", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', NULL, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'in_progress', 70, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.AverageScore: ""}},
		{name: "average at the rounding edge", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', 85.33, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'completed', 85.34, 60, ` + noon + `, ` + noon + `)`},
			want: map[string]string{metrics.AverageScore: "85.34"}},
		{name: "average 1.005", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', 1.00, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'completed', 1.01, 60, ` + noon + `, ` + noon + `)`},
			want: map[string]string{metrics.AverageScore: "1.01"}},
		{name: "average repeating", sql: []string{ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', 85.33, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'b', 'completed', 85.33, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'c', 'completed', 85.34, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'd', 'completed', 0, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'e', 'completed', 100, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'f', 'completed', 0.01, 60, ` + noon + `, ` + noon + `)`},
			want: map[string]string{metrics.AverageScore: "59.34", metrics.ProgressPercentage: "25"}},
		{name: "current course without a catalogue row", sql: []string{ulp + `
			($1, 'ingles-c2', 1, 'a', 'completed', 90, 60, ` + noon + `, ` + noon + `),
			($1, 'ingles-a1', 1, 'a', 'completed', 90, 60, NULL, '2026-03-01 12:00+00')`},
			want: map[string]string{metrics.ProgressPercentage: "", metrics.CourseStatus: "in_progress",
				metrics.CourseCompletedDate: ""}},
		{name: "current course unknown", sql: []string{ulp + `
			($1, 'ingles-x9', 1, 'a', 'completed', 90, 60, ` + noon + `, ` + noon + `)`},
			want: map[string]string{metrics.ProgressPercentage: "", metrics.CourseStatus: "in_progress"}},
		{name: "more completed lessons than the catalogue", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-05 08:00+00', ` + noon + `),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, '2026-03-07 08:00+00', '2026-03-04 12:00+00'),
			($1, 'ingles-mini', 2, 'a', 'completed', 90, 60, '2026-03-06 08:00+00', '2026-03-03 12:00+00')`},
			want: map[string]string{metrics.ProgressPercentage: "100", metrics.CourseStatus: "completed",
				metrics.CourseCompletedDate: "2026-03-07"}},
		{name: "complete course, latest row in the other one", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-05 08:00+00', '2026-03-05 08:00+00'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, '2026-03-06 08:00+00', '2026-03-06 08:00+00'),
			($1, 'ingles-a1', 1, 'lesson-1-grammar', 'completed', 90, 60, '2026-03-07 08:00+00', '2026-03-07 08:00+00'),
			($1, 'ingles-a1', 1, 'lesson-2-vocabulary', 'in_progress', 90, 60, NULL, '2026-03-08 08:00+00')`},
			want: map[string]string{metrics.ProgressPercentage: "4.2", metrics.CourseStatus: "in_progress",
				metrics.CourseCompletedDate: "", metrics.LessonsCompleted: "3"}},
		{name: "complete course is the latest, the other one is not", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-05 08:00+00', '2026-03-09 08:00+00'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, NULL, '2026-03-08 23:00+00'),
			($1, 'ingles-a1', 1, 'lesson-1-grammar', 'completed', 90, 60, '2026-03-10 08:00+00', '2026-03-07 08:00+00')`},
			want: map[string]string{metrics.ProgressPercentage: "100", metrics.CourseStatus: "completed",
				metrics.CourseCompletedDate: "2026-03-08"}},
		{name: "duplicate lessons with NULL unit_id", sql: []string{ulp + `
			($1, 'ingles-mini', NULL, 'a', 'completed', 90, 60, '2026-03-05 08:00+00', ` + noon + `),
			($1, 'ingles-mini', NULL, 'a', 'completed', 80, 60, '2026-03-05 09:00+00', ` + noon + `),
			($1, 'ingles-mini', NULL, NULL, 'completed', 70, 60, NULL, NULL),
			($1, 'ingles-mini', NULL, NULL, 'completed', 60, 60, NULL, NULL),
			($1, 'ingles-a1', NULL, 'b', 'completed', 60, 60, NULL, NULL)`},
			want: map[string]string{metrics.ProgressPercentage: "100", metrics.LessonsCompleted: "5",
				metrics.CourseStatus: "completed", metrics.CourseCompletedDate: "2026-03-05",
				metrics.CurrentLesson: "ingles-mini//a"}},
		{name: "duplicate lessons, one short", sql: []string{ulp + `
			($1, 'ingles-r16', NULL, 'a', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-r16', NULL, 'a', 'completed', 80, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.ProgressPercentage: "6.3", metrics.CourseStatus: "in_progress"}},
		{name: "progress at a rounding edge", sql: []string{ulp + `
			($1, 'ingles-r16', 1, 'a', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-r16', 1, 'b', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-r16', 1, 'c', 'completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-r16', 1, 'd', 'in_progress', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.ProgressPercentage: "18.8"}},
		{name: "rounded 100 is not complete", sql: []string{
			`INSERT INTO user_lesson_progress (user_id, course_id, unit_id, lesson_key, status, accuracy_percent, time_spent_seconds, completed_at, last_activity_at)
			SELECT $1, 'ingles-big', i / 10, 'k' || i, 'completed', 75, 60, '2026-03-01 12:00+00', '2026-03-01 12:00+00' FROM generate_series(1, 1999) i`},
			want: map[string]string{metrics.ProgressPercentage: "100", metrics.CourseStatus: "in_progress",
				metrics.CourseCompletedDate: "", metrics.LessonsCompleted: "1999", metrics.TotalStudyTime: "1999"}},
		{name: "completed rows with NULL completed_at", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-01 08:00+00', '2026-03-02 08:00+00'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, NULL, '2026-03-04 08:00+00'),
			($1, 'ingles-mini', 1, 'c', 'in_progress', 90, 60, NULL, '2026-03-05 08:00+00')`},
			want: map[string]string{metrics.CourseCompletedDate: "2026-03-04", metrics.CourseStatus: "completed",
				metrics.LastActivityDate: "2026-03-05"}},
		{name: "statuses other than completed", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'Completed', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-mini', 1, 'b', 'completed ', 90, 60, NULL, ` + noon + `),
			($1, 'ingles-mini', 1, 'c', NULL, 90, 60, NULL, ` + noon + `),
			($1, 'ingles-mini', 1, 'd', 'completed', 90, 60, NULL, ` + noon + `)`},
			want: map[string]string{metrics.LessonsCompleted: "1", metrics.ProgressPercentage: "50",
				metrics.CourseStatus: "in_progress"}},
		{name: "no rows", sql: []string{
			`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 1234)`,
			`INSERT INTO user_streaks (user_id, current_streak, longest_streak) VALUES ($1, 7, 9)`},
			want: map[string]string{metrics.LessonsCompleted: "0", metrics.CurrentLesson: "", metrics.AverageScore: "",
				metrics.TotalStudyTime: "0", metrics.ProgressPercentage: "", metrics.LastActivityDate: "",
				metrics.StudyStreak: "7", metrics.TotalXP: "1234", metrics.CourseCompletedDate: "",
				metrics.CourseStatus: "not_started"}},
		{name: "no rows at all", want: map[string]string{metrics.StudyStreak: "0", metrics.TotalXP: "0",
			metrics.CourseStatus: "not_started", metrics.TotalStudyTime: "0", metrics.LessonsCompleted: "0"}},
		{name: "just before midnight UTC in Los Angeles time", sql: []string{
			`SET TimeZone = 'America/Los_Angeles'`,
			ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-01 15:59:59.999999', '2026-03-01 15:59:59.999999'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, NULL, '2026-03-01 15:30:00')`,
			`RESET TimeZone`},
			want: map[string]string{metrics.LastActivityDate: "2026-03-01", metrics.CourseCompletedDate: "2026-03-01"}},
		{name: "just after midnight UTC in Los Angeles time", sql: []string{
			`SET TimeZone = 'America/Los_Angeles'`,
			ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-01 16:00:00', '2026-03-01 15:59:59'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, '2026-03-01 10:00:00', '2026-03-01 16:00:00.000001')`,
			`RESET TimeZone`},
			want: map[string]string{metrics.LastActivityDate: "2026-03-02", metrics.CourseCompletedDate: "2026-03-02"}},
		{name: "just before midnight UTC in Kiritimati time", sql: []string{
			`SET TimeZone = 'Pacific/Kiritimati'`,
			ulp + `
			($1, 'ingles-a1', 1, 'a', 'completed', 90, 60, '2026-03-02 13:59:59', '2026-03-02 13:59:59')`,
			`RESET TimeZone`},
			want: map[string]string{metrics.LastActivityDate: "2026-03-01"}},
		{name: "a completion at midnight UTC", sql: []string{ulp + `
			($1, 'ingles-mini', 1, 'a', 'completed', 90, 60, '2026-03-03 00:00:00+00', '2026-03-02 23:59:59+00'),
			($1, 'ingles-mini', 1, 'b', 'completed', 90, 60, '2026-03-02 23:59:59.999999+00', '2026-03-02 23:00:00+00')`},
			want: map[string]string{metrics.LastActivityDate: "2026-03-02", metrics.CourseCompletedDate: "2026-03-03"}},
	}
}

// The lesson_progress model's SQL and this package agree on every student of a varied data
// set and of the edge cases, whatever the session's time zone.
func TestLessonProgressAgreesWithModel(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// A fixed now keeps the data, and so a failure, the same from run to run.
	now := time.Date(2026, 5, 20, 9, 30, 0, 0, time.UTC)
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: 1000, Seed: 23, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
	}
	if err := pgtest.SeedLessons(ctx, conn, ids, pgtest.LessonSeedOptions{Seed: 23, Now: now, SkipCatalog: []string{"ingles-c2"}}); err != nil {
		t.Fatal(err)
	}
	// Courses of the edge cases: one of 2 lessons, one of 16 (a progress of 1/16 is 6.25) and
	// one of 2000 (1999 lessons round to 100 without completing it).
	if _, err := conn.Exec(ctx, `INSERT INTO course_catalog (course_id, lessons) VALUES ('ingles-mini', 2), ('ingles-r16', 16), ('ingles-big', 2000)`); err != nil {
		t.Fatal(err)
	}

	edges := map[uuid.UUID]lessonEdgeCase{}
	for i, ec := range lessonEdgeCases() {
		id := uuid.NewSHA1(uuid.NameSpaceURL, []byte("lesson-edge-case:"+ec.name))
		email := fmt.Sprintf("edge%d@example.com", i+1)
		if _, err := conn.Exec(ctx, `INSERT INTO auth.users (id, email) VALUES ($1, $2)`, id, email); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO users (id, email, name) VALUES ($1, $2, $3)`, id, email, ec.name); err != nil {
			t.Fatal(err)
		}
		for _, sql := range ec.sql {
			var args []any
			if strings.Contains(sql, "$1") {
				args = []any{id}
			}
			if _, err := conn.Exec(ctx, sql, args...); err != nil {
				t.Fatalf("%s: %s: %v", ec.name, sql, err)
			}
		}
		edges[id] = ec
		ids = append(ids, id)
	}

	checkLessonSeedVariety(t, ctx, conn)

	m := model.Builtin("lesson_progress")
	if err := m.Verify(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if got := m.Computes(); !slices.Equal(got, metrics.Names()) {
		t.Fatalf("the model computes %v, want all of %v", got, metrics.Names())
	}

	for _, tz := range []string{"", "Pacific/Kiritimati"} {
		name := "server time zone"
		if tz != "" {
			name = tz
		}
		t.Run(name, func(t *testing.T) {
			if tz != "" {
				if _, err := conn.Exec(ctx, "SET TimeZone = '"+tz+"'"); err != nil {
					t.Fatal(err)
				}
				defer conn.Exec(ctx, "RESET TimeZone")
			}
			var zone string
			if err := conn.QueryRow(ctx, `SHOW TimeZone`).Scan(&zone); err != nil {
				t.Fatal(err)
			}
			want, err := LessonProgress(ctx, conn)
			if err != nil {
				t.Fatal(err)
			}
			if len(want) != len(ids) {
				t.Fatalf("the reference computed %d students, want %d", len(want), len(ids))
			}
			// Values the contract text gives outright for the edge cases: the reference must give them.
			for id, ec := range edges {
				for name, v := range ec.want {
					if got := want[id].Values[name]; got != v {
						t.Errorf("reference, edge case %q: %s = %q, want %q", ec.name, name, got, v)
					}
				}
			}
			diffs, compared := 0, 0
			for start := 0; start < len(ids); start += 100 {
				got, err := m.ForStudents(ctx, conn, ids[start:min(start+100, len(ids))])
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range got {
					compared++
					ref, ok := want[s.ID]
					if !ok {
						t.Fatalf("the model computed student %s, whom the reference does not know", s.ID)
					}
					if s.Email != ref.Email {
						t.Errorf("student %s: model email %q, reference %q", s.ID, s.Email, ref.Email)
					}
					for _, name := range metrics.Names() {
						if s.Values[name] != ref.Values[name] {
							diffs++
							if diffs <= 10 {
								who := s.ID.String()
								if ec, ok := edges[s.ID]; ok {
									who += " (edge case " + strconv.Quote(ec.name) + ")"
								}
								t.Errorf("student %s %s: model %q, reference %q", who, name, s.Values[name], ref.Values[name])
							}
						}
					}
				}
			}
			if compared != len(ids) {
				t.Errorf("the model computed %d students, want %d", compared, len(ids))
			}
			if diffs > 0 {
				t.Fatalf("%d of %d values differ (TimeZone %s)", diffs, compared*len(metrics.Names()), zone)
			}
			t.Logf("TimeZone %s: %d students (%d edge cases), %d values agree", zone, compared, len(edges), compared*len(metrics.Names()))
		})
	}
}

// checkLessonSeedVariety fails the test when SeedLessons stopped making the situations the
// comparison relies on.
func checkLessonSeedVariety(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	t.Helper()
	var withRows, finishers, twoCourses, tiedLatest, noCatalogue, noActivity int
	err := conn.QueryRow(ctx, `
		WITH latest AS (
			SELECT DISTINCT ON (user_id) user_id, course_id, last_activity_at FROM user_lesson_progress
			ORDER BY user_id, last_activity_at DESC NULLS LAST)
		SELECT
			(SELECT count(DISTINCT user_id) FROM user_lesson_progress),
			(SELECT count(*) FROM (SELECT p.user_id FROM user_lesson_progress p JOIN course_catalog c USING (course_id)
				WHERE p.status = 'completed' GROUP BY p.user_id, p.course_id, c.lessons
				HAVING count(DISTINCT (p.unit_id, p.lesson_key)) >= c.lessons) f),
			(SELECT count(*) FROM (SELECT user_id FROM user_lesson_progress GROUP BY user_id HAVING count(DISTINCT course_id) > 1) x),
			(SELECT count(*) FROM latest l WHERE (SELECT count(*) FROM user_lesson_progress p
				WHERE p.user_id = l.user_id AND p.last_activity_at = l.last_activity_at) > 1),
			(SELECT count(*) FROM latest l WHERE NOT EXISTS (SELECT 1 FROM course_catalog c WHERE c.course_id = l.course_id)),
			(SELECT count(*) FROM user_lesson_progress WHERE last_activity_at IS NULL)`).
		Scan(&withRows, &finishers, &twoCourses, &tiedLatest, &noCatalogue, &noActivity)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lesson seed: %d students with rows, %d complete courses, %d in two courses, %d latest rows tied, %d current courses without a catalogue row, %d rows without activity",
		withRows, finishers, twoCourses, tiedLatest, noCatalogue, noActivity)
	if withRows < 500 || finishers < 20 || twoCourses < 50 || tiedLatest < 20 || noCatalogue < 20 || noActivity == 0 {
		t.Fatal("the lesson seed lacks variety")
	}
}

// SeedLessons writes the same rows given the same seed, and respects the catalogue option.
func TestSeedLessonsRepeats(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 4, 1, 12, 0, 0, 0, time.UTC)
	var dumps [2]string
	for i := range dumps {
		conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: 50, Seed: 5, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		ids := make([]uuid.UUID, len(seeded))
		for j, s := range seeded {
			ids[j] = s.ID
		}
		if err := pgtest.SeedLessons(ctx, conn, ids, pgtest.LessonSeedOptions{Seed: 5, Now: now, SkipCatalog: []string{"ingles-c2"}}); err != nil {
			t.Fatal(err)
		}
		err = conn.QueryRow(ctx, `SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s|%s', user_id, course_id, unit_id, lesson_key, status,
				accuracy_percent, time_spent_seconds, completed_at, last_activity_at), E'\n'
				ORDER BY user_id, course_id, unit_id, lesson_key) || E'\n' ||
			(SELECT string_agg(course_id || '=' || lessons, ',' ORDER BY course_id) FROM course_catalog)
			FROM user_lesson_progress`).Scan(&dumps[i])
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	if dumps[0] != dumps[1] {
		t.Fatal("SeedLessons wrote different rows from the same seed")
	}
	if strings.Contains(dumps[0], "ingles-c2=") || !strings.Contains(dumps[0], "ingles-c1=40") {
		t.Fatalf("catalogue: %s", dumps[0][strings.LastIndex(dumps[0], "\n")+1:])
	}
}

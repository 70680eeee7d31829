package reference

import (
	"cmp"
	"context"
	"fmt"
	"math/big"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
)

// lessonRow is one public.user_lesson_progress row; nil is NULL.
type lessonRow struct {
	course       *string
	unit         *int32
	key          *string
	status       *string
	accuracy     *big.Rat // exact
	timeSpent    *int64
	completedAt  *time.Time
	lastActivity *time.Time
}

func (r *lessonRow) completed() bool { return r.status != nil && *r.status == "completed" }

// lessonStudent is one public.users row and what belongs to it.
type lessonStudent struct {
	email      string
	rows       []lessonRow
	streak, xp *int64
}

// lessonID is a lesson of a course: (unit_id, lesson_key), two NULLs being equal.
type lessonID struct {
	hasUnit, hasKey bool
	unit            int32
	key             string
}

// LessonProgress is the reference for the lesson_progress model (docs/contract.md, 3b): it
// loads every student (public.users), their user_lesson_progress rows, streak, XP and the
// course_catalog, and computes the ten properties in Go with exact arithmetic, keyed by
// student id, with each student's raw email.
func LessonProgress(ctx context.Context, conn *pgx.Conn) (map[uuid.UUID]metrics.Student, error) {
	students := map[uuid.UUID]*lessonStudent{}
	var id uuid.UUID
	var email string
	rows, err := conn.Query(ctx, `SELECT id, email FROM public.users`)
	if err != nil {
		return nil, fmt.Errorf("reference: users: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&id, &email}, func() error {
		students[id] = &lessonStudent{email: email}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: users: %w", err)
	}

	var r lessonRow
	var accuracy *string // numeric as text, exact
	rows, err = conn.Query(ctx, `SELECT user_id, course_id, unit_id, lesson_key, status, accuracy_percent::text,
		time_spent_seconds, completed_at, last_activity_at FROM public.user_lesson_progress`)
	if err != nil {
		return nil, fmt.Errorf("reference: lesson progress: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&id, &r.course, &r.unit, &r.key, &r.status, &accuracy,
		&r.timeSpent, &r.completedAt, &r.lastActivity}, func() error {
		r.accuracy = nil
		if accuracy != nil {
			x, ok := new(big.Rat).SetString(*accuracy)
			if !ok {
				return fmt.Errorf("student %s: accuracy_percent %q is not a finite number", id, *accuracy)
			}
			r.accuracy = x
		}
		if st, ok := students[id]; ok {
			st.rows = append(st.rows, r)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: lesson progress: %w", err)
	}

	streaks, xp, err := streaksAndXP(ctx, conn)
	if err != nil {
		return nil, err
	}
	for id, st := range students {
		st.streak, st.xp = streaks[id], xp[id]
	}

	catalog := map[string]int64{}
	var course string
	var n int64
	rows, err = conn.Query(ctx, `SELECT course_id, lessons FROM public.course_catalog`)
	if err != nil {
		return nil, fmt.Errorf("reference: course catalogue: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&course, &n}, func() error {
		catalog[course] = n
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: course catalogue: %w", err)
	}

	out := make(map[uuid.UUID]metrics.Student, len(students))
	for id, st := range students {
		out[id] = metrics.Student{ID: id, Email: st.email, Values: lessonValues(st, catalog)}
	}
	return out, nil
}

// lessonValues applies the lesson_progress contract to one student.
func lessonValues(st *lessonStudent, catalog map[string]int64) metrics.Values {
	v := metrics.Values{}

	var latest *lessonRow
	for i := range st.rows {
		if latest == nil || lessonLater(&st.rows[i], latest) {
			latest = &st.rows[i]
		}
	}

	completed := 0
	scoreSum, scoreN := new(big.Rat), int64(0)
	var seconds int64
	for i := range st.rows {
		r := &st.rows[i]
		if r.completed() {
			completed++
			if r.accuracy != nil {
				scoreSum.Add(scoreSum, r.accuracy)
				scoreN++
			}
		}
		if r.timeSpent != nil && *r.timeSpent > 0 {
			seconds += *r.timeSpent
		}
	}
	v[metrics.LessonsCompleted] = strconv.Itoa(completed)

	v[metrics.CurrentLesson] = ""
	if latest != nil {
		unit := ""
		if latest.unit != nil {
			unit = strconv.FormatInt(int64(*latest.unit), 10)
		}
		v[metrics.CurrentLesson] = deref(latest.course) + "/" + unit + "/" + deref(latest.key)
	}

	v[metrics.AverageScore] = ""
	if scoreN > 0 {
		v[metrics.AverageScore] = Round(new(big.Rat).Quo(scoreSum, big.NewRat(scoreN, 1)), 2)
	}
	v[metrics.TotalStudyTime] = Round(big.NewRat(seconds, 60), 0)

	v[metrics.LastActivityDate] = ""
	if latest != nil && latest.lastActivity != nil {
		// NULLs sort last, so the latest row holds the latest last_activity_at.
		v[metrics.LastActivityDate] = latest.lastActivity.UTC().Format(time.DateOnly)
	}

	// The current course: its distinct completed lessons and when the last was completed.
	complete := false
	v[metrics.ProgressPercentage], v[metrics.CourseCompletedDate] = "", ""
	if latest != nil && latest.course != nil {
		current := *latest.course
		done := map[lessonID]bool{}
		var finished *time.Time
		for i := range st.rows {
			r := &st.rows[i]
			if !r.completed() || r.course == nil || *r.course != current {
				continue
			}
			id := lessonID{hasUnit: r.unit != nil, hasKey: r.key != nil}
			if r.unit != nil {
				id.unit = *r.unit
			}
			if r.key != nil {
				id.key = *r.key
			}
			done[id] = true
			at := r.completedAt
			if at == nil {
				at = r.lastActivity
			}
			if at != nil && (finished == nil || at.After(*finished)) {
				finished = at
			}
		}
		if size, ok := catalog[current]; ok && size > 0 {
			pct := new(big.Rat).Mul(big.NewRat(100, 1), big.NewRat(int64(len(done)), size))
			if pct.Cmp(big.NewRat(100, 1)) > 0 {
				pct = big.NewRat(100, 1)
			}
			v[metrics.ProgressPercentage] = Round(pct, 1)
			complete = int64(len(done)) >= size
			if complete && finished != nil {
				v[metrics.CourseCompletedDate] = finished.UTC().Format(time.DateOnly)
			}
		}
	}

	v[metrics.StudyStreak], v[metrics.TotalXP] = "0", "0"
	if st.streak != nil {
		v[metrics.StudyStreak] = strconv.FormatInt(*st.streak, 10)
	}
	if st.xp != nil {
		v[metrics.TotalXP] = strconv.FormatInt(*st.xp, 10)
	}

	switch {
	case complete:
		v[metrics.CourseStatus] = metrics.StatusCompleted
	case len(st.rows) > 0:
		v[metrics.CourseStatus] = metrics.StatusInProgress
	default:
		v[metrics.CourseStatus] = metrics.StatusNotStarted
	}
	return v
}

// lessonLater reports whether a comes before b in the latest-row order: latest
// last_activity_at first, then the greatest course_id, unit_id and lesson_key; in each, NULL
// comes after every value. Text compares as bytes.
func lessonLater(a, b *lessonRow) bool {
	if c := descNullsLast(a.lastActivity, b.lastActivity, func(x, y time.Time) int { return x.Compare(y) }); c != 0 {
		return c < 0
	}
	if c := descNullsLast(a.course, b.course, cmp.Compare[string]); c != 0 {
		return c < 0
	}
	if c := descNullsLast(a.unit, b.unit, cmp.Compare[int32]); c != 0 {
		return c < 0
	}
	return descNullsLast(a.key, b.key, cmp.Compare[string]) < 0
}

// descNullsLast compares a and b for a descending order with NULLs last: negative when a
// comes first.
func descNullsLast[T any](a, b *T, compare func(x, y T) int) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return -compare(*a, *b)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

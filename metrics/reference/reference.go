// Package reference is a second, independent implementation of the student metrics (docs/contract.md
// §3): it loads the raw rows and computes every value in Go with exact rational arithmetic. It
// is slow and simple on purpose; tests and the chaos soak check the built-in progress models'
// SQL against it.
package reference

import (
	"context"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
)

type progressRow struct {
	lesson       string
	completed    bool
	score        *string // numeric as text, exact
	timeSpent    *int64
	completedAt  *time.Time
	lastAccessed *time.Time
}

type student struct {
	email        string
	level, goal  *string
	rows         []progressRow
	streak, xp   *int64
	hasProgress  bool
	courseLesson map[string]bool
}

// Compute loads every student and returns their metrics as HubSpot takes them, keyed by id,
// with each student's raw email.
func Compute(ctx context.Context, conn *pgx.Conn) (map[uuid.UUID]metrics.Student, error) {
	students := map[uuid.UUID]*student{}
	var id uuid.UUID
	var s student
	rows, err := conn.Query(ctx, `SELECT id, email, language_level, course_goal FROM public.users`)
	if err != nil {
		return nil, fmt.Errorf("reference: users: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&id, &s.email, &s.level, &s.goal}, func() error {
		c := s
		students[id] = &c
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: users: %w", err)
	}

	var r progressRow
	rows, err = conn.Query(ctx, `SELECT user_id, lesson_id, coalesce(completed, false), score::text, time_spent, completed_at, last_accessed_at
		FROM public.course_progress`)
	if err != nil {
		return nil, fmt.Errorf("reference: progress: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&id, &r.lesson, &r.completed, &r.score, &r.timeSpent, &r.completedAt, &r.lastAccessed}, func() error {
		if st, ok := students[id]; ok {
			st.rows = append(st.rows, r)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: progress: %w", err)
	}

	streaks, xp, err := streaksAndXP(ctx, conn)
	if err != nil {
		return nil, err
	}
	for id, st := range students {
		st.streak, st.xp = streaks[id], xp[id]
	}

	courses := map[[2]string]map[string]bool{}
	var level, goal string
	var lesson *string
	rows, err = conn.Query(ctx, `SELECT m.course_level, m.course_goal, l.id FROM public.course_modules m
		LEFT JOIN public.course_lessons l ON l.module_id = m.id`)
	if err != nil {
		return nil, fmt.Errorf("reference: courses: %w", err)
	}
	if _, err := pgx.ForEachRow(rows, []any{&level, &goal, &lesson}, func() error {
		k := [2]string{level, goal}
		if courses[k] == nil {
			courses[k] = map[string]bool{}
		}
		if lesson != nil {
			courses[k][*lesson] = true
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("reference: courses: %w", err)
	}

	out := make(map[uuid.UUID]metrics.Student, len(students))
	for id, st := range students {
		var course map[string]bool
		if st.level != nil && st.goal != nil {
			course = courses[[2]string{*st.level, *st.goal}]
		}
		out[id] = metrics.Student{ID: id, Email: st.email, Values: values(st, course)}
	}
	return out, nil
}

// values applies docs/contract.md §3 to one student; course is nil without an assigned course.
func values(st *student, course map[string]bool) metrics.Values {
	v := metrics.Values{}
	completed := 0
	scoreSum, scoreN := new(big.Rat), 0
	var seconds int64
	var current *progressRow
	var latest *time.Time
	done := map[string]bool{}
	var finished *time.Time
	for i := range st.rows {
		r := &st.rows[i]
		if r.completed {
			completed++
			if r.score != nil {
				x, ok := new(big.Rat).SetString(*r.score)
				if ok {
					scoreSum.Add(scoreSum, x)
					scoreN++
				}
			}
			if course[r.lesson] {
				done[r.lesson] = true
				at := r.completedAt
				if at == nil {
					at = r.lastAccessed
				}
				if at != nil && (finished == nil || at.After(*finished)) {
					finished = at
				}
			}
		}
		if r.timeSpent != nil && *r.timeSpent > 0 {
			seconds += *r.timeSpent
		}
		if current == nil || later(r, current) {
			current = r
		}
		if r.lastAccessed != nil && (latest == nil || r.lastAccessed.After(*latest)) {
			latest = r.lastAccessed
		}
	}
	v[metrics.LessonsCompleted] = fmt.Sprint(completed)
	v[metrics.CurrentLesson] = ""
	if current != nil {
		v[metrics.CurrentLesson] = current.lesson
	}
	v[metrics.AverageScore] = ""
	if scoreN > 0 {
		v[metrics.AverageScore] = Round(new(big.Rat).Quo(scoreSum, big.NewRat(int64(scoreN), 1)), 2)
	}
	v[metrics.TotalStudyTime] = Round(big.NewRat(seconds, 60), 0)
	v[metrics.ProgressPercentage], v[metrics.CourseCompletedDate] = "", ""
	complete := len(course) > 0 && len(done) == len(course)
	if len(course) > 0 {
		pct := new(big.Rat).Mul(big.NewRat(100, 1), big.NewRat(int64(len(done)), int64(len(course))))
		if pct.Cmp(big.NewRat(100, 1)) > 0 {
			pct = big.NewRat(100, 1)
		}
		v[metrics.ProgressPercentage] = Round(pct, 1)
		if complete && finished != nil {
			v[metrics.CourseCompletedDate] = finished.Format("2006-01-02")
		}
	}
	v[metrics.LastActivityDate] = ""
	if latest != nil {
		v[metrics.LastActivityDate] = latest.Format("2006-01-02")
	}
	v[metrics.StudyStreak], v[metrics.TotalXP] = "0", "0"
	if st.streak != nil {
		v[metrics.StudyStreak] = fmt.Sprint(*st.streak)
	}
	if st.xp != nil {
		v[metrics.TotalXP] = fmt.Sprint(*st.xp)
	}
	switch {
	case complete:
		v[metrics.CourseStatus] = "completed"
	case len(st.rows) > 0:
		v[metrics.CourseStatus] = "in_progress"
	default:
		v[metrics.CourseStatus] = "not_started"
	}
	return v
}

// later orders rows for current_lesson: latest access first, no access last, then the
// greatest lesson id (compared as bytes).
func later(a, b *progressRow) bool {
	switch {
	case a.lastAccessed != nil && b.lastAccessed == nil:
		return true
	case a.lastAccessed == nil && b.lastAccessed != nil:
		return false
	case a.lastAccessed != nil && !a.lastAccessed.Equal(*b.lastAccessed):
		return a.lastAccessed.After(*b.lastAccessed)
	}
	return a.lesson > b.lesson
}

// Round formats r with at most scale decimals, rounding half away from zero, without
// trailing zeros: HubSpot's plain decimal form.
func Round(r *big.Rat, scale int) string {
	neg := r.Sign() < 0
	abs := new(big.Rat).Abs(r)
	pow := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(scale)), nil)
	scaled := new(big.Rat).Mul(abs, new(big.Rat).SetInt(pow))
	q, m := new(big.Int).QuoRem(scaled.Num(), scaled.Denom(), new(big.Int))
	// Half away from zero: round up when the remainder is at least half the denominator.
	if new(big.Int).Mul(m, big.NewInt(2)).Cmp(scaled.Denom()) >= 0 {
		q.Add(q, big.NewInt(1))
	}
	digits := q.String()
	if scale > 0 {
		for len(digits) <= scale {
			digits = "0" + digits
		}
		digits = digits[:len(digits)-scale] + "." + digits[len(digits)-scale:]
		digits = strings.TrimRight(strings.TrimRight(digits, "0"), ".")
	}
	if neg && digits != "0" {
		digits = "-" + digits
	}
	return digits
}

// streaksAndXP reads user_streaks.current_streak and user_xp.total_xp by student, the same in
// every model.
func streaksAndXP(ctx context.Context, conn *pgx.Conn) (streaks, xp map[uuid.UUID]*int64, err error) {
	read := func(sql string) (map[uuid.UUID]*int64, error) {
		rows, err := conn.Query(ctx, sql)
		if err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
		out := map[uuid.UUID]*int64{}
		var id uuid.UUID
		var n int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error {
			v := n
			out[id] = &v
			return nil
		}); err != nil {
			return nil, fmt.Errorf("reference: %w", err)
		}
		return out, nil
	}
	if streaks, err = read(`SELECT user_id, current_streak FROM public.user_streaks`); err != nil {
		return nil, nil, err
	}
	xp, err = read(`SELECT user_id, total_xp FROM public.user_xp`)
	return streaks, xp, err
}

package metrics

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Inputs are the rows behind one student's metrics, for a person asking why a value is what
// it is (progress-sync explain).
type Inputs struct {
	Level, Goal      string // the assigned course; "" when not set
	CourseModules    int    // modules of the assigned course
	CourseLessons    int    // lessons of those modules
	ProgressRows     int    // course_progress rows, in any course
	CompletedRows    int
	ScoredRows       int // completed rows with a score (average_score averages these)
	CourseDone       int // distinct lessons of the assigned course completed
	SecondsSpent     int64
	LastAccess       *time.Time // latest last_accessed_at (UTC, as stored)
	StreakRow, XPRow bool       // whether user_streaks and user_xp have a row
}

const inputsSQL = `SELECT coalesce(u.language_level, ''), coalesce(u.course_goal, ''),
	(SELECT count(*) FROM public.course_modules m WHERE m.course_level = u.language_level AND m.course_goal = u.course_goal),
	(SELECT count(*) FROM public.course_modules m JOIN public.course_lessons l ON l.module_id = m.id
		WHERE m.course_level = u.language_level AND m.course_goal = u.course_goal),
	count(cp.user_id),
	count(*) FILTER (WHERE cp.completed),
	count(*) FILTER (WHERE cp.completed AND cp.score IS NOT NULL),
	count(DISTINCT cp.lesson_id) FILTER (WHERE cp.completed AND cp.lesson_id IN (
		SELECT l.id FROM public.course_modules m JOIN public.course_lessons l ON l.module_id = m.id
		WHERE m.course_level = u.language_level AND m.course_goal = u.course_goal)),
	coalesce(sum(greatest(coalesce(cp.time_spent, 0), 0)), 0)::bigint,
	max(cp.last_accessed_at),
	EXISTS (SELECT 1 FROM public.user_streaks s WHERE s.user_id = u.id),
	EXISTS (SELECT 1 FROM public.user_xp x WHERE x.user_id = u.id)
FROM public.users u LEFT JOIN public.course_progress cp ON cp.user_id = u.id
WHERE u.id = $1 GROUP BY u.id, u.language_level, u.course_goal`

// ErrNoStudent is returned for an id no public.users row has.
var ErrNoStudent = errors.New("no such student")

// InputsOf reads the rows behind one student's metrics.
func InputsOf(ctx context.Context, q Querier, id uuid.UUID) (Inputs, error) {
	var in Inputs
	rows, err := q.Query(ctx, inputsSQL, id)
	if err != nil {
		return in, fmt.Errorf("read the inputs of student %s: %w", id, err)
	}
	in, err = pgx.CollectExactlyOneRow(rows, func(row pgx.CollectableRow) (Inputs, error) {
		var in Inputs
		err := row.Scan(&in.Level, &in.Goal, &in.CourseModules, &in.CourseLessons, &in.ProgressRows, &in.CompletedRows,
			&in.ScoredRows, &in.CourseDone, &in.SecondsSpent, &in.LastAccess, &in.StreakRow, &in.XPRow)
		return in, err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return in, fmt.Errorf("student %s: %w", id, ErrNoStudent)
	}
	if err != nil {
		return in, fmt.Errorf("read the inputs of student %s: %w", id, err)
	}
	return in, nil
}

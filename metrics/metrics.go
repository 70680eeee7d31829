// Package metrics computes each student's learning metrics (docs/contract.md §3) from the platform's
// tables, in the string form HubSpot takes.
//
// All arithmetic happens in PostgreSQL on numeric (exact decimal, round() half away from zero),
// and the values leave the database already formatted: numbers as plain decimal strings without
// trailing zeros ("85.5", "12", "0"), dates as YYYY-MM-DD, "" to clear a property. No value
// passes through a float64.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Querier runs a query: *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Values maps a HubSpot property name to its value as HubSpot takes it ("" clears it).
type Values map[string]string

// Student is one student's computed metrics.
type Student struct {
	ID    uuid.UUID
	Email string // raw, as stored in public.users.email
	// Values holds every property of Names().
	Values Values
}

// Course status values (the options of CourseStatus).
const (
	StatusNotStarted = "not_started"
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"
)

// metricsSQL computes the ten properties of the students selected by the CTE `u` (prepended by
// the caller; it must yield id, email, language_level, course_goal of public.users rows).
//
// Plan, per call:
//   - lessons: the lessons of every course assigned to a student of the batch, read once per
//     distinct (language_level, course_goal) pair of the batch, and sizes counts them per course;
//   - p: the batch's course_progress rows (index on course_progress(user_id), one index probe
//     per student), each joined (hash) with its student's course lessons, aggregated per
//     student;
//   - the final select adds user_streaks and user_xp (unique indexes on user_id) and formats.
//
// Rules worth spelling out:
//   - timestamps are TIMESTAMP WITHOUT TIME ZONE holding UTC and are formatted with to_char
//     directly, never through timestamptz, so neither TimeZone nor DateStyle can change a value;
//   - numeric::text does not depend on any setting (lc_numeric only affects to_char of numbers);
//   - "greatest lesson_id" compares bytes (COLLATE "C"), so the database's collation cannot
//     change which lesson wins a tie, and Go's string order agrees;
//   - avg(numeric) divides to at least 16 significant digits, far finer than the distance
//     between a mean of 2-decimal scores and the nearest rounding tie that it is not equal to,
//     so round(avg, 2) rounds exactly as exact arithmetic would (same for the other divisions);
//   - "progress is 100" (course_status completed, course_completed_date) means every lesson of
//     the assigned course is completed (done = lessons), not that the rounded percentage shows
//     100: 1999 of 2000 lessons displays as "100" but the course is not completed.
const metricsSQL = `,
lessons AS MATERIALIZED (
	SELECT m.course_level, m.course_goal, l.id AS lesson_id
	FROM (SELECT DISTINCT language_level, course_goal FROM u
	      WHERE language_level IS NOT NULL AND course_goal IS NOT NULL) a
	JOIN public.course_modules m ON m.course_level = a.language_level AND m.course_goal = a.course_goal
	JOIN public.course_lessons l ON l.module_id = m.id
),
sizes AS (
	SELECT course_level, course_goal, count(*) AS n FROM lessons GROUP BY course_level, course_goal
),
p AS (
	SELECT cp.user_id,
		count(*) FILTER (WHERE cp.completed) AS completed,
		(array_agg(cp.lesson_id ORDER BY cp.last_accessed_at DESC NULLS LAST, cp.lesson_id COLLATE "C" DESC))[1] AS current_lesson,
		avg(cp.score) FILTER (WHERE cp.completed AND cp.score IS NOT NULL) AS avg_score,
		sum(greatest(coalesce(cp.time_spent, 0), 0)) AS seconds,
		max(cp.last_accessed_at) AS last_access,
		count(DISTINCT l.lesson_id) FILTER (WHERE cp.completed) AS course_done,
		max(coalesce(cp.completed_at, cp.last_accessed_at)) FILTER (WHERE cp.completed AND l.lesson_id IS NOT NULL) AS course_done_at
	FROM u
	JOIN public.course_progress cp ON cp.user_id = u.id
	LEFT JOIN lessons l ON l.course_level = u.language_level AND l.course_goal = u.course_goal
		AND l.lesson_id = cp.lesson_id
	GROUP BY cp.user_id
)
SELECT u.id, u.email,
	coalesce(p.completed, 0)::text,
	coalesce(p.current_lesson, ''),
	coalesce(trim_scale(round(p.avg_score, 2))::text, ''),
	coalesce(trim_scale(round(p.seconds::numeric / 60))::text, '0'),
	CASE WHEN s.n > 0
		THEN trim_scale(least(round(100 * coalesce(p.course_done, 0)::numeric / s.n, 1), 100))::text
		ELSE '' END,
	coalesce(to_char(p.last_access, 'YYYY-MM-DD'), ''),
	coalesce(st.current_streak, 0)::text,
	coalesce(x.total_xp, 0)::text,
	CASE WHEN s.n > 0 AND p.course_done = s.n
		THEN coalesce(to_char(p.course_done_at, 'YYYY-MM-DD'), '')
		ELSE '' END,
	CASE WHEN s.n > 0 AND p.course_done = s.n THEN '` + StatusCompleted + `'
		WHEN p.user_id IS NOT NULL THEN '` + StatusInProgress + `'
		ELSE '` + StatusNotStarted + `' END
FROM u
LEFT JOIN p ON p.user_id = u.id
LEFT JOIN sizes s ON s.course_level = u.language_level AND s.course_goal = u.course_goal
LEFT JOIN public.user_streaks st ON st.user_id = u.id
LEFT JOIN public.user_xp x ON x.user_id = u.id
ORDER BY u.id`

// studentsOfCoursesSQL selects the students assigned to a course (the same rule as lessons
// above: language_level and course_goal equal the module's course_level and course_goal) of
// the modules $1 or the (level, goal) pairs $2, $3.
const studentsOfCoursesSQL = `SELECT u.id FROM public.users u
	WHERE (u.language_level, u.course_goal) IN (
		SELECT m.course_level, m.course_goal FROM public.course_modules m WHERE m.id = ANY($1)
		UNION SELECT * FROM unnest($2::text[], $3::text[]))`

// StudentsOfCourses lists the students assigned to the course of any of the modules, or to
// any of the courses ((course_level, course_goal) pairs): a change to a course's lessons can
// move their progress.
func StudentsOfCourses(ctx context.Context, q Querier, modules []string, courses [][2]string) ([]uuid.UUID, error) {
	levels, goals := make([]string, len(courses)), make([]string, len(courses))
	for i, c := range courses {
		levels[i], goals[i] = c[0], c[1]
	}
	return queryStudentIDs(ctx, q, "find the students of changed courses", studentsOfCoursesSQL, modules, levels, goals)
}

// AllStudents lists every student.
func AllStudents(ctx context.Context, q Querier) ([]uuid.UUID, error) {
	return queryStudentIDs(ctx, q, "list every student", `SELECT id FROM public.users`)
}

func queryStudentIDs(ctx context.Context, q Querier, what, sql string, args ...any) ([]uuid.UUID, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ids, nil
}

// resultNames are the properties in the order metricsSQL returns them, after id and email.
var resultNames = [...]string{
	LessonsCompleted, CurrentLesson, AverageScore, TotalStudyTime, ProgressPercentage,
	LastActivityDate, StudyStreak, TotalXP, CourseCompletedDate, CourseStatus,
}

const forStudentsSQL = `WITH u AS MATERIALIZED (
	SELECT id, email, language_level, course_goal FROM public.users WHERE id = ANY($1::uuid[])
)` + metricsSQL

const pageSQL = `WITH u AS MATERIALIZED (
	SELECT id, email, language_level, course_goal FROM public.users WHERE id > $1::uuid
	ORDER BY id LIMIT $2::int
)` + metricsSQL

// ForStudents computes the metrics of the given students in one SQL round trip. Ids with no
// public.users row are absent from the result; duplicates count once. The result is ordered by
// id (PostgreSQL's uuid order, which is bytewise).
func ForStudents(ctx context.Context, q Querier, ids []uuid.UUID) ([]Student, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := q.Query(ctx, forStudentsSQL, ids)
	if err != nil {
		return nil, fmt.Errorf("compute metrics of %d students: %w", len(ids), err)
	}
	out, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("compute metrics of %d students: %w", len(ids), err)
	}
	return out, nil
}

// Page computes the metrics of up to limit students with id > after (keyset pagination by
// users.id; uuid.Nil starts), ordered by id, in one round trip. A page shorter than limit is
// the last one; the next page starts after the last id returned.
func Page(ctx context.Context, q Querier, after uuid.UUID, limit int) ([]Student, error) {
	if limit <= 0 {
		return nil, errors.New("metrics page: limit must be positive")
	}
	if limit > 1<<31-1 {
		limit = 1<<31 - 1
	}
	rows, err := q.Query(ctx, pageSQL, after, limit)
	if err != nil {
		return nil, fmt.Errorf("compute metrics of the students after %s: %w", after, err)
	}
	out, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("compute metrics of the students after %s: %w", after, err)
	}
	return out, nil
}

func collect(rows pgx.Rows) ([]Student, error) {
	defer rows.Close()
	var out []Student
	var vals [len(resultNames)]string
	dest := make([]any, 0, 2+len(vals))
	for rows.Next() {
		var s Student
		dest = append(dest[:0], &s.ID, &s.Email)
		for i := range vals {
			dest = append(dest, &vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		s.Values = make(Values, len(resultNames))
		for i, name := range resultNames {
			s.Values[name] = vals[i]
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// NormalizeEmail is how emails are matched (docs/contract.md §3): trimmed and lower-cased, as
// HubSpot stores them.
func NormalizeEmail(email string) string {
	return strings.ToLower(strings.TrimSpace(email))
}

// MatchableEmail normalizes a student's email for matching a contact, or says why it cannot
// be an address worth looking up.
func MatchableEmail(raw string) (email, problem string) {
	e := NormalizeEmail(raw)
	if e == "" {
		return "", "student has no email"
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || a.Name != "" {
		return "", "email is not an address"
	}
	local, domain, _ := strings.Cut(e, "@")
	if local == "" || !strings.Contains(domain, ".") || strings.HasSuffix(domain, ".") || len(e) > 254 {
		return "", "email is not an address"
	}
	return e, ""
}

// idsByEmailSQL selects the candidates in SQL and the Go side decides with NormalizeEmail, so
// the result never depends on the database's collation: an ASCII email is a candidate when its
// SQL normalization (btrim of ASCII white space, lower()) matches, which for ASCII text is
// exactly NormalizeEmail; an email with any non-ASCII character (rare) is always a candidate,
// since lower() of a C-collation database leaves É alone where strings.ToLower does not.
const idsByEmailSQL = `SELECT id, email FROM public.users
WHERE lower(btrim(email, E' \t\n\x0b\f\r')) = ANY($1::text[]) OR octet_length(email) <> char_length(email)
ORDER BY id`

// IDsByEmail returns the ids of students whose email, trimmed and lower-cased, equals one of the
// given emails (also trimmed and lower-cased), keyed by the normalized email each matched, ids in
// ascending order. Emails that match nobody are absent. One round trip (it scans users: there is
// no index on the normalized email; it is meant for a handful of emails, not for every student).
func IDsByEmail(ctx context.Context, q Querier, emails []string) (map[string][]uuid.UUID, error) {
	want := make(map[string]bool, len(emails))
	list := make([]string, 0, len(emails))
	for _, e := range emails {
		n := NormalizeEmail(e)
		if n == "" || want[n] {
			continue
		}
		want[n] = true
		list = append(list, n)
	}
	out := map[string][]uuid.UUID{}
	if len(list) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, idsByEmailSQL, list)
	if err != nil {
		return nil, fmt.Errorf("look up %d emails: %w", len(list), err)
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var email string
		if err := rows.Scan(&id, &email); err != nil {
			return nil, fmt.Errorf("look up %d emails: %w", len(list), err)
		}
		if n := NormalizeEmail(email); want[n] {
			out[n] = append(out[n], id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up %d emails: %w", len(list), err)
	}
	return out, nil
}

// CountStudents returns how many students there are, for a backfill's progress.
func CountStudents(ctx context.Context, q Querier) (int, error) {
	rows, err := q.Query(ctx, `SELECT count(*) FROM public.users`)
	if err != nil {
		return 0, fmt.Errorf("count the students: %w", err)
	}
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int])
	if err != nil {
		return 0, fmt.Errorf("count the students: %w", err)
	}
	return n, nil
}

package pgtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Kinds of Change a Studier makes.
const (
	KindOpen   = "open"   // opened a lesson and studied a while without finishing it
	KindLesson = "lesson" // completed (or retook) a lesson with a score, earning XP
	KindXP     = "xp"     // earned XP outside lessons
	KindStreak = "streak" // extended or broke the daily streak
	KindReset  = "reset"  // reset a lesson: its progress row is deleted
	KindCourse = "course" // chose another course (users.language_level, course_goal)
)

// Kinds lists every kind of Change, in a fixed order for summaries.
func Kinds() []string {
	return []string{KindOpen, KindLesson, KindXP, KindStreak, KindReset, KindCourse}
}

// sessionSize is how many students study at once. Real students do several things in a row
// (open a lesson, finish it, keep their streak), which is what the sync's per-student
// debounce is for, so most steps continue one of these sessions rather than pick anyone.
const sessionSize = 8

// Change is one change a Studier made, in one transaction.
type Change struct {
	Student uuid.UUID
	// Kind is one of Kinds().
	Kind string
	// Description says what happened, for a person: "completed lesson b2-trabajo-m1-l3 with
	// 88.50 in 14m05s (+27 XP)". It does not name the student.
	Description string
}

// Studier makes realistic changes to the platform's tables, one per Step, for the demo, tests
// and load generation. Given the same database contents and seed it makes the same changes.
// A Studier is not safe for concurrent use; give each goroutine its own (and its own seed).
type Studier struct {
	students []uuid.UUID
	src      *rand.PCG // kept so tests can copy the state and foresee a choice
	rng      *rand.Rand
	session  []uuid.UUID
}

// NewStudier returns a Studier that works on the given students (ids of public.users rows,
// which must also be auth.users rows, as on Supabase and after Seed).
func NewStudier(students []uuid.UUID, seed uint64) *Studier {
	src := rand.NewPCG(seed, seed^0x5851f42d4c957f2d)
	return &Studier{students: append([]uuid.UUID(nil), students...), src: src, rng: rand.New(src)}
}

// Step makes one change for one student, in one transaction, and says what it was.
func (s *Studier) Step(ctx context.Context, conn *pgx.Conn) (Change, error) {
	if len(s.students) == 0 {
		return Change{}, errors.New("studier: no students")
	}
	return s.step(ctx, conn, s.pickStudent(), s.pickKind())
}

// pickStudent continues a study session, or now and then lets one end and another begin.
func (s *Studier) pickStudent() uuid.UUID { return pickInSession(s.rng, s.students, &s.session) }

// pickInSession picks a student of the session (students studying at once), filling it up
// first and now and then letting one leave for another of students.
func pickInSession(rng *rand.Rand, students []uuid.UUID, session *[]uuid.UUID) uuid.UUID {
	size := min(sessionSize, len(students))
	switch {
	case len(*session) < size:
		*session = append(*session, students[rng.IntN(len(students))])
		return (*session)[len(*session)-1]
	case rng.IntN(5) == 0:
		i := rng.IntN(len(*session))
		(*session)[i] = students[rng.IntN(len(students))]
		return (*session)[i]
	default:
		return (*session)[rng.IntN(len(*session))]
	}
}

// pickKind draws the mix: mostly lesson work, now and then a reset or a course change.
func (s *Studier) pickKind() string {
	kindWeights := []struct {
		kind   string
		weight int
	}{
		{KindOpen, 30}, {KindLesson, 30}, {KindXP, 15}, {KindStreak, 15}, {KindReset, 5}, {KindCourse, 5},
	}
	total := 0
	for _, w := range kindWeights {
		total += w.weight
	}
	n := s.rng.IntN(total)
	for _, w := range kindWeights {
		if n < w.weight {
			return w.kind
		}
		n -= w.weight
	}
	return KindOpen
}

// step makes a change of the given kind, or of a kind that makes sense for the student when
// it does not (a reset with nothing to reset opens a lesson; lesson work without a course
// with lessons picks a course).
func (s *Studier) step(ctx context.Context, conn *pgx.Conn, student uuid.UUID, kind string) (Change, error) {
	ch := Change{Student: student}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var level, goal *string
		// Locking the student keeps two Studiers from interleaving the read and write of one
		// student's rows.
		err := tx.QueryRow(ctx, `SELECT language_level, course_goal FROM public.users WHERE id = $1 FOR UPDATE`, student).Scan(&level, &goal)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("student %s is not in public.users", student)
		}
		if err != nil {
			return fmt.Errorf("read student %s: %w", student, err)
		}
		var lessons []courseLesson
		if level != nil && goal != nil && (kind == KindOpen || kind == KindLesson || kind == KindReset) {
			if lessons, err = readCourse(ctx, tx, student, *level, *goal); err != nil {
				return err
			}
		}
		if kind == KindReset {
			ch.Description, err = s.reset(ctx, tx, student)
			if err != nil || ch.Description != "" {
				ch.Kind = KindReset
				return err
			}
			kind = KindOpen
		}
		if (kind == KindOpen || kind == KindLesson) && len(lessons) == 0 {
			kind = KindCourse
		}
		ch.Kind = kind
		switch kind {
		case KindOpen:
			ch.Description, err = s.open(ctx, tx, student, lessons)
		case KindLesson:
			ch.Description, err = s.complete(ctx, tx, student, lessons)
		case KindXP:
			ch.Description, err = s.earnXP(ctx, tx, student)
		case KindStreak:
			ch.Description, err = s.streak(ctx, tx, student)
		case KindCourse:
			ch.Description, err = s.changeCourse(ctx, tx, student, level, goal)
		default:
			err = fmt.Errorf("unknown kind %q", kind)
		}
		return err
	})
	if err != nil {
		return Change{}, fmt.Errorf("studier: %s change for student %s: %w", kind, student, err)
	}
	return ch, nil
}

// courseLesson is a lesson of the student's assigned course and how far the student got.
type courseLesson struct {
	id, module, level, goal string
	opened, completed       bool
}

// readCourse reads the lessons of a course in study order with the student's progress on each.
func readCourse(ctx context.Context, tx pgx.Tx, student uuid.UUID, level, goal string) ([]courseLesson, error) {
	rows, err := tx.Query(ctx, `SELECT l.id, l.module_id, p.id IS NOT NULL, coalesce(p.completed, false)
		FROM public.course_lessons l
		JOIN public.course_modules m ON m.id = l.module_id
		LEFT JOIN public.course_progress p ON p.user_id = $1 AND p.course_level = m.course_level
			AND p.course_goal = m.course_goal AND p.module_id = l.module_id AND p.lesson_id = l.id
		WHERE m.course_level = $2 AND m.course_goal = $3
		ORDER BY m.order_index, m.id, l.order_index, l.id`, student, level, goal)
	if err != nil {
		return nil, fmt.Errorf("read course %s %s: %w", level, goal, err)
	}
	lessons, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (courseLesson, error) {
		l := courseLesson{level: level, goal: goal}
		err := row.Scan(&l.id, &l.module, &l.opened, &l.completed)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("read course %s %s: %w", level, goal, err)
	}
	return lessons, nil
}

// nextLesson is the first lesson of the course not yet completed, or -1.
func nextLesson(lessons []courseLesson) int {
	for i, l := range lessons {
		if !l.completed {
			return i
		}
	}
	return -1
}

// upsertProgressSQL writes a lesson's progress row. Timestamps are written as UTC because the
// platform's columns are TIMESTAMP WITHOUT TIME ZONE holding UTC, whatever the session's
// TimeZone. A negative time_spent (a platform quirk) is left as it is and added to.
const upsertProgressSQL = `INSERT INTO public.course_progress
		(user_id, course_level, course_goal, module_id, lesson_id, completed, score, time_spent, started_at, completed_at, last_accessed_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8, now() AT TIME ZONE 'UTC',
		CASE WHEN $6 THEN now() AT TIME ZONE 'UTC' END, now() AT TIME ZONE 'UTC')
	ON CONFLICT (user_id, course_level, course_goal, module_id, lesson_id) DO UPDATE SET
		completed = coalesce(course_progress.completed, false) OR excluded.completed,
		score = coalesce(excluded.score, course_progress.score),
		time_spent = coalesce(course_progress.time_spent, 0) + excluded.time_spent,
		completed_at = coalesce(excluded.completed_at, course_progress.completed_at),
		last_accessed_at = excluded.last_accessed_at`

// open studies a lesson for a few minutes without finishing it: usually the next lesson of
// the course, sometimes one already seen.
func (s *Studier) open(ctx context.Context, tx pgx.Tx, student uuid.UUID, lessons []courseLesson) (string, error) {
	var seen []int
	for j, l := range lessons {
		if l.opened {
			seen = append(seen, j)
		}
	}
	i := nextLesson(lessons)
	if len(seen) > 0 && (i < 0 || s.rng.IntN(4) == 0) {
		i = seen[s.rng.IntN(len(seen))]
	}
	l := lessons[i]
	spent := 60 + s.rng.IntN(540)
	if _, err := tx.Exec(ctx, upsertProgressSQL, student, l.level, l.goal, l.module, l.id, false, nil, spent); err != nil {
		return "", fmt.Errorf("open lesson %s: %w", l.id, err)
	}
	verb := "opened"
	if l.opened {
		verb = "went back to"
	}
	return fmt.Sprintf("%s lesson %s and studied %s", verb, l.id, minutes(spent)), nil
}

// complete finishes a lesson with a score and earns XP for it: usually the lesson the student
// has open, else the next one; with the course done, a lesson is retaken.
func (s *Studier) complete(ctx context.Context, tx pgx.Tx, student uuid.UUID, lessons []courseLesson) (string, error) {
	i := -1
	if s.rng.IntN(5) > 0 {
		for j, l := range lessons {
			if l.opened && !l.completed {
				i = j
				break
			}
		}
	}
	if i < 0 {
		i = nextLesson(lessons)
	}
	retake := i < 0
	if retake {
		i = s.rng.IntN(len(lessons))
	}
	l := lessons[i]
	// Most students pass comfortably; some struggle.
	cents := 6000 + s.rng.IntN(4001)
	if s.rng.IntN(7) == 0 {
		cents = 2000 + s.rng.IntN(4000)
	}
	score := fmt.Sprintf("%d.%02d", cents/100, cents%100)
	spent := 300 + s.rng.IntN(1500)
	if _, err := tx.Exec(ctx, upsertProgressSQL, student, l.level, l.goal, l.module, l.id, true, score, spent); err != nil {
		return "", fmt.Errorf("complete lesson %s: %w", l.id, err)
	}
	xp := 10 + cents/500
	if _, err := addXP(ctx, tx, student, xp); err != nil {
		return "", err
	}
	if retake {
		return fmt.Sprintf("retook lesson %s with %s in %s (+%d XP)", l.id, score, minutes(spent), xp), nil
	}
	desc := fmt.Sprintf("completed lesson %s with %s in %s (+%d XP)", l.id, score, minutes(spent), xp)
	left := 0
	for _, o := range lessons {
		if !o.completed && o.id != l.id {
			left++
		}
	}
	if left == 0 {
		desc += fmt.Sprintf(": finished course %s %s", l.level, l.goal)
	}
	return desc, nil
}

func addXP(ctx context.Context, tx pgx.Tx, student uuid.UUID, xp int) (int, error) {
	var total int
	err := tx.QueryRow(ctx, `INSERT INTO public.user_xp (user_id, total_xp) VALUES ($1, $2)
		ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + excluded.total_xp, updated_at = now()
		RETURNING total_xp`, student, xp).Scan(&total)
	if err != nil {
		return 0, fmt.Errorf("add %d XP: %w", xp, err)
	}
	return total, nil
}

func (s *Studier) earnXP(ctx context.Context, tx pgx.Tx, student uuid.UUID) (string, error) {
	xpSources := []string{"a vocabulary quiz", "a listening exercise", "the daily challenge", "a speaking practice"}
	xp := 5 + s.rng.IntN(46)
	source := xpSources[s.rng.IntN(len(xpSources))]
	total, err := addXP(ctx, tx, student, xp)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("earned %d XP in %s (total %d)", xp, source, total), nil
}

// streak extends the daily streak, or now and then breaks it (a missed day).
func (s *Studier) streak(ctx context.Context, tx pgx.Tx, student uuid.UUID) (string, error) {
	var current int
	err := tx.QueryRow(ctx, `SELECT current_streak FROM public.user_streaks WHERE user_id = $1 FOR UPDATE`, student).Scan(&current)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("read streak: %w", err)
	}
	if current > 0 && s.rng.IntN(4) == 0 {
		if _, err := tx.Exec(ctx, `UPDATE public.user_streaks SET current_streak = 0, updated_at = now() WHERE user_id = $1`, student); err != nil {
			return "", fmt.Errorf("break streak: %w", err)
		}
		return fmt.Sprintf("broke a %d-day streak", current), nil
	}
	err = tx.QueryRow(ctx, `INSERT INTO public.user_streaks (user_id, current_streak, longest_streak, last_activity_date)
		VALUES ($1, 1, 1, (now() AT TIME ZONE 'UTC')::date)
		ON CONFLICT (user_id) DO UPDATE SET current_streak = user_streaks.current_streak + 1,
			longest_streak = greatest(user_streaks.longest_streak, user_streaks.current_streak + 1),
			last_activity_date = excluded.last_activity_date, updated_at = now()
		RETURNING current_streak`, student).Scan(&current)
	if err != nil {
		return "", fmt.Errorf("extend streak: %w", err)
	}
	if current == 1 {
		return "started a streak (1 day)", nil
	}
	return fmt.Sprintf("extended the streak to %d days", current), nil
}

// reset deletes one of the student's progress rows, as "start this lesson over" does; it
// returns "" when the student has none.
func (s *Studier) reset(ctx context.Context, tx pgx.Tx, student uuid.UUID) (string, error) {
	rows, err := tx.Query(ctx, `SELECT id, lesson_id FROM public.course_progress WHERE user_id = $1 ORDER BY lesson_id, id`, student)
	if err != nil {
		return "", fmt.Errorf("read progress: %w", err)
	}
	type row struct {
		id     uuid.UUID
		lesson string
	}
	progress, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.lesson)
		return x, err
	})
	if err != nil {
		return "", fmt.Errorf("read progress: %w", err)
	}
	if len(progress) == 0 {
		return "", nil
	}
	p := progress[s.rng.IntN(len(progress))]
	if _, err := tx.Exec(ctx, `DELETE FROM public.course_progress WHERE id = $1`, p.id); err != nil {
		return "", fmt.Errorf("reset lesson %s: %w", p.lesson, err)
	}
	return "reset lesson " + p.lesson, nil
}

// changeCourse assigns another course (any that has modules, including one without lessons
// yet), as a student who changes level or goal does.
func (s *Studier) changeCourse(ctx context.Context, tx pgx.Tx, student uuid.UUID, level, goal *string) (string, error) {
	rows, err := tx.Query(ctx, `SELECT DISTINCT course_level, course_goal FROM public.course_modules ORDER BY 1, 2`)
	if err != nil {
		return "", fmt.Errorf("read courses: %w", err)
	}
	type course struct{ level, goal string }
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (course, error) {
		var c course
		err := r.Scan(&c.level, &c.goal)
		return c, err
	})
	if err != nil {
		return "", fmt.Errorf("read courses: %w", err)
	}
	var others []course
	for _, c := range all {
		if level == nil || goal == nil || c.level != *level || c.goal != *goal {
			others = append(others, c)
		}
	}
	if len(others) == 0 {
		return "", errors.New("no other course in public.course_modules")
	}
	c := others[s.rng.IntN(len(others))]
	if _, err := tx.Exec(ctx, `UPDATE public.users SET language_level = $2, course_goal = $3, updated_at = now() AT TIME ZONE 'UTC'
		WHERE id = $1`, student, c.level, c.goal); err != nil {
		return "", fmt.Errorf("assign course %s %s: %w", c.level, c.goal, err)
	}
	if level == nil || goal == nil {
		return fmt.Sprintf("chose course %s %s", c.level, c.goal), nil
	}
	return fmt.Sprintf("switched from course %s %s to %s %s", *level, *goal, c.level, c.goal), nil
}

// minutes formats seconds as 14m05s.
func minutes(seconds int) string {
	return fmt.Sprintf("%dm%02ds", seconds/60, seconds%60)
}

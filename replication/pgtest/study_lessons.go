package pgtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// KindCatalogue is a LessonStudier's change of a course's size in course_catalog, which
// concerns every student of the course.
const KindCatalogue = "catalogue"

// LessonStudier makes changes as the platform's unified progress records them (the app's
// progress endpoint upserts one user_lesson_progress row per lesson), one per Step: lessons
// studied and completed, XP, streaks, a lesson's row deleted, and now and then a course's
// size changed in course_catalog. It works on the lesson_progress model's tables as Studier
// works on the PRD's; it is not safe for concurrent use.
type LessonStudier struct {
	students []uuid.UUID
	rng      *rand.Rand
	xp       *Studier // XP and streaks are the same tables in both models
	session  []uuid.UUID
}

// NewLessonStudier returns a LessonStudier on the given students (public.users and
// auth.users rows), repeatable from seed.
func NewLessonStudier(students []uuid.UUID, seed uint64) *LessonStudier {
	return &LessonStudier{students: append([]uuid.UUID(nil), students...),
		rng: rand.New(rand.NewPCG(seed, seed^0x632be59bd9b4e019)), xp: NewStudier(students, seed+1)}
}

// Step makes one change, in one transaction, and says what it was.
func (s *LessonStudier) Step(ctx context.Context, conn *pgx.Conn) (Change, error) {
	if len(s.students) == 0 {
		return Change{}, errors.New("lesson studier: no students")
	}
	student := s.pickStudent()
	n := s.rng.IntN(100)
	var ch Change
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var err error
		switch {
		case n < 35:
			ch, err = s.study(ctx, tx, student, false)
		case n < 70:
			ch, err = s.study(ctx, tx, student, true)
		case n < 82:
			ch = Change{Student: student, Kind: KindXP}
			ch.Description, err = s.xp.earnXP(ctx, tx, student)
		case n < 94:
			ch = Change{Student: student, Kind: KindStreak}
			ch.Description, err = s.xp.streak(ctx, tx, student)
		case n < 99:
			ch, err = s.reset(ctx, tx, student)
		default:
			ch, err = s.resize(ctx, tx)
		}
		return err
	})
	if err != nil {
		return Change{}, fmt.Errorf("lesson studier: %w", err)
	}
	return ch, nil
}

// pickStudent continues a study session, or lets one end and another begin (see Studier).
func (s *LessonStudier) pickStudent() uuid.UUID { return pickInSession(s.rng, s.students, &s.session) }

// study works on a lesson of the student's latest course (or, now and then, another course),
// upserting its row as the app's progress endpoint does; complete finishes it with a score.
func (s *LessonStudier) study(ctx context.Context, tx pgx.Tx, student uuid.UUID, complete bool) (Change, error) {
	courses := LessonCourses()
	course := courses[s.rng.IntN(len(courses))]
	if s.rng.IntN(5) > 0 {
		var latest *string
		err := tx.QueryRow(ctx, `SELECT course_id FROM public.user_lesson_progress WHERE user_id = $1
			ORDER BY last_activity_at DESC NULLS LAST LIMIT 1`, student).Scan(&latest)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return Change{}, fmt.Errorf("read the latest lesson: %w", err)
		}
		for _, c := range courses {
			if latest != nil && c.ID == *latest {
				course = c
			}
		}
	}
	lesson := unifiedLessons(course.Lessons)[s.rng.IntN(course.Lessons)]
	status, kind := "in_progress", KindOpen
	if complete {
		status, kind = "completed", KindLesson
	}
	accuracy := fmt.Sprintf("%d.%02d", s.rng.IntN(100), s.rng.IntN(100))
	seconds := 60 + s.rng.IntN(1200)
	_, err := tx.Exec(ctx, `INSERT INTO public.user_lesson_progress (user_id, course_id, unit_id, lesson_key, status,
			accuracy_percent, time_spent_seconds, completed_at, last_activity_at)
		VALUES ($1, $2, $3, $4, $5, $6::numeric, $7, CASE WHEN $5 = 'completed' THEN now() END, now())
		ON CONFLICT (user_id, course_id, unit_id, lesson_key) DO UPDATE SET
			status = CASE WHEN user_lesson_progress.status = 'completed' THEN 'completed' ELSE excluded.status END,
			accuracy_percent = excluded.accuracy_percent,
			time_spent_seconds = coalesce(user_lesson_progress.time_spent_seconds, 0) + excluded.time_spent_seconds,
			completed_at = coalesce(user_lesson_progress.completed_at, excluded.completed_at),
			last_activity_at = now(), updated_at = now()`,
		student, course.ID, lesson.unit, lesson.key, status, accuracy, seconds)
	if err != nil {
		return Change{}, fmt.Errorf("record lesson %s/%d/%s: %w", course.ID, lesson.unit, lesson.key, err)
	}
	return Change{Student: student, Kind: kind,
		Description: fmt.Sprintf("%s %s/%d/%s with %s%% in %ds", status, course.ID, lesson.unit, lesson.key, accuracy, seconds)}, nil
}

// reset deletes one of the student's lesson rows (a lesson reset).
func (s *LessonStudier) reset(ctx context.Context, tx pgx.Tx, student uuid.UUID) (Change, error) {
	var what string
	err := tx.QueryRow(ctx, `DELETE FROM public.user_lesson_progress WHERE id = (
			SELECT id FROM public.user_lesson_progress WHERE user_id = $1 ORDER BY random() LIMIT 1)
		RETURNING coalesce(course_id, '') || '/' || coalesce(unit_id::text, '') || '/' || coalesce(lesson_key, '')`, student).Scan(&what)
	if errors.Is(err, pgx.ErrNoRows) {
		return s.study(ctx, tx, student, false)
	}
	if err != nil {
		return Change{}, fmt.Errorf("reset a lesson: %w", err)
	}
	return Change{Student: student, Kind: KindReset, Description: "reset lesson " + what}, nil
}

// resize changes a course's number of lessons in the catalogue (adds the course when it has
// no row): every student of the course may move.
func (s *LessonStudier) resize(ctx context.Context, tx pgx.Tx) (Change, error) {
	courses := LessonCourses()
	c := courses[s.rng.IntN(len(courses))]
	lessons := max(1, c.Lessons-6+s.rng.IntN(13))
	if _, err := tx.Exec(ctx, `INSERT INTO public.course_catalog (course_id, lessons) VALUES ($1, $2)
		ON CONFLICT (course_id) DO UPDATE SET lessons = excluded.lessons`, c.ID, lessons); err != nil {
		return Change{}, fmt.Errorf("resize course %s: %w", c.ID, err)
	}
	return Change{Kind: KindCatalogue, Description: fmt.Sprintf("course %s now has %d lessons", c.ID, lessons)}, nil
}

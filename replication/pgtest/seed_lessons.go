package pgtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// LessonSeedOptions shape the synthetic unified lesson progress SeedLessons writes.
type LessonSeedOptions struct {
	// Seed makes the data repeatable.
	Seed uint64
	// MaxLessons is the most user_lesson_progress rows a student gets, except a student who
	// completes a whole course (who gets all of its lessons, and maybe a few of another
	// course); default 20.
	MaxLessons int
	// Now anchors timestamps; default time.Now().
	Now time.Time
	// SkipCatalog are course ids left out of course_catalog on purpose, such as "ingles-c2":
	// students still study them, so their current course can lack a catalogue row.
	SkipCatalog []string
}

// LessonCourse is one course of the unified lesson progress and its number of lessons.
type LessonCourse struct {
	ID      string
	Lessons int
}

// LessonCourses are the six courses SeedLessons knows, in order.
func LessonCourses() []LessonCourse {
	return []LessonCourse{
		{"ingles-a1", 24}, {"ingles-a2", 30}, {"ingles-b1", 36},
		{"ingles-b2", 40}, {"ingles-c1", 40}, {"ingles-c2", 44},
	}
}

// lessonKinds name the lessons of a unit: lesson i of a course is unit i/4+1, key
// lesson-<i%4+1>-<kind>, as the app's lesson keys look (lesson-1-grammar).
var lessonKinds = []string{"grammar", "vocabulary", "listening", "speaking"}

type unifiedLesson struct {
	unit int32
	key  string
}

func unifiedLessons(n int) []unifiedLesson {
	out := make([]unifiedLesson, n)
	for i := range out {
		k := i % len(lessonKinds)
		out[i] = unifiedLesson{unit: int32(i/len(lessonKinds) + 1), key: fmt.Sprintf("lesson-%d-%s", k+1, lessonKinds[k])}
	}
	return out
}

// SeedLessons fills course_catalog with the courses of LessonCourses (but those of
// opts.SkipCatalog) and writes, for each given student, 0..opts.MaxLessons
// user_lesson_progress rows in one or two courses: statuses 'in_progress' and 'completed',
// accuracy_percent in 0..100 with two decimals (NULL now and then), time_spent_seconds (NULL
// or negative now and then), completed_at on most completed rows and last_activity_at (NULL
// now and then; some students' rows share one timestamp, so the latest row is decided by the
// tie-breaks). About one student in eight completes a whole course. The students must already
// be public.users and auth.users rows (as after Seed); course_catalog must be empty. Given the
// same students and options it writes the same rows.
func SeedLessons(ctx context.Context, conn *pgx.Conn, students []uuid.UUID, opts LessonSeedOptions) error {
	if opts.MaxLessons == 0 {
		opts.MaxLessons = 20
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x2545f4914f6cdd1d))
	now := opts.Now.UTC().Truncate(time.Second)

	courses := LessonCourses()
	lessons := make([][]unifiedLesson, len(courses))
	var catalog [][]any
	for i, c := range courses {
		lessons[i] = unifiedLessons(c.Lessons)
		if !slices.Contains(opts.SkipCatalog, c.ID) {
			catalog = append(catalog, []any{c.ID, int32(c.Lessons)})
		}
	}

	var progress [][]any
	for _, student := range students {
		n := rng.IntN(opts.MaxLessons + 1)
		first := rng.IntN(len(courses))
		second := -1
		if rng.IntN(3) == 0 {
			second = (first + 1 + rng.IntN(len(courses)-1)) % len(courses)
		}
		finisher := rng.IntN(8) == 0
		// Some students' rows all share a day's timestamp (a bulk import, a client with a
		// stuck clock): the latest row is then the tie-breaks' choice.
		tied := rng.IntN(10) == 0
		tiedAt := now.Add(-time.Duration(rng.IntN(60)) * 24 * time.Hour).Truncate(24 * time.Hour)

		type pick struct {
			course int
			lesson unifiedLesson
			done   bool
		}
		var picks []pick
		seen := map[pick]bool{}
		if finisher {
			for _, l := range lessons[first] {
				picks = append(picks, pick{first, l, true})
				seen[pick{first, l, false}] = true
			}
			n = 0
			if second >= 0 {
				n = rng.IntN(opts.MaxLessons/2 + 1)
			}
		}
		for j := 0; j < n; j++ {
			c := first
			if second >= 0 && (finisher || rng.IntN(2) == 0) {
				c = second
			}
			l := lessons[c][rng.IntN(len(lessons[c]))]
			if seen[pick{c, l, false}] {
				continue // the unique index: one row per (user, course, unit, lesson)
			}
			seen[pick{c, l, false}] = true
			picks = append(picks, pick{c, l, rng.IntN(10) < 7})
		}

		for _, p := range picks {
			status := "in_progress"
			if p.done {
				status = "completed"
			}
			total := int32(8 + rng.IntN(8))
			doneExercises := total
			if !p.done {
				doneExercises = int32(rng.IntN(int(total)))
			}
			var accuracy any
			if rng.IntN(20) > 0 {
				if v := rng.IntN(10001); v == 10000 {
					accuracy = "100.00"
				} else {
					accuracy = fmt.Sprintf("%d.%02d", v/100, v%100)
				}
			}
			var spent any = int32(rng.IntN(3600))
			switch rng.IntN(50) {
			case 0:
				spent = int32(-rng.IntN(100))
			case 1:
				spent = nil
			}
			at := now.Add(-time.Duration(rng.IntN(60*24*60*60)) * time.Second)
			if tied {
				at = tiedAt
			}
			var completedAt any
			if p.done && rng.IntN(10) > 0 {
				completedAt = at.Add(-time.Duration(rng.IntN(7200)) * time.Second)
			}
			var lastActivity any = at
			if rng.IntN(40) == 0 {
				lastActivity = nil
			}
			started := at.Add(-time.Duration(1+rng.IntN(72)) * time.Hour)
			progress = append(progress, []any{student, courses[p.course].ID, p.lesson.unit, p.lesson.key, status,
				doneExercises, total, doneExercises + int32(rng.IntN(4)), doneExercises, accuracy, spent,
				started, completedAt, lastActivity})
		}
	}

	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"public", "course_catalog"}, []string{"course_id", "lessons"}, pgx.CopyFromRows(catalog)); err != nil {
		return fmt.Errorf("seed course_catalog: %w", err)
	}
	cols := []string{"user_id", "course_id", "unit_id", "lesson_key", "status",
		"exercises_completed", "exercises_total", "attempts", "correct_count", "accuracy_percent", "time_spent_seconds",
		"started_at", "completed_at", "last_activity_at"}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"public", "user_lesson_progress"}, cols, pgx.CopyFromRows(progress)); err != nil {
		return fmt.Errorf("seed user_lesson_progress: %w", err)
	}
	return nil
}

package pgtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// SeedOptions shape the synthetic Focus English data Seed writes.
type SeedOptions struct {
	Students int
	// Seed makes the data repeatable.
	Seed uint64
	// MaxLessons is the most progress rows a student gets; default 15.
	MaxLessons int
	// Now anchors timestamps; default time.Now().
	Now time.Time
}

// SeededStudent is one student Seed created.
type SeededStudent struct {
	ID    uuid.UUID
	Email string
}

// IDs are the seeded students' ids, in order.
func IDs(seeded []SeededStudent) []uuid.UUID {
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
	}
	return ids
}

const modulesPerCourse, lessonsPerModule = 3, 4

// Seed fills an empty database holding Schema with courses (3 modules of 4 lessons for every
// level and goal, except C2/examenes, whose modules have no lessons yet) and students with
// progress, streaks and XP. Emails are student<N>@example.com.
func Seed(ctx context.Context, conn *pgx.Conn, opts SeedOptions) ([]SeededStudent, error) {
	if opts.MaxLessons == 0 {
		opts.MaxLessons = 15
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	levels := []string{"A1", "A2", "B1", "B2", "C1", "C2"}
	goals := []string{"trabajo", "viajes", "examenes"}
	rng := rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15))
	now := opts.Now.UTC().Truncate(time.Second)

	type lesson struct{ id, module, level, goal string }
	var modules, lessons [][]any
	courseLessons := map[string][]lesson{}
	for _, lv := range levels {
		for _, g := range goals {
			key := lv + "/" + g
			for m := 1; m <= modulesPerCourse; m++ {
				mid := fmt.Sprintf("%s-%s-m%d", strings.ToLower(lv), g, m)
				modules = append(modules, []any{mid, lv, g, m, fmt.Sprintf("%s %s module %d", lv, g, m)})
				if key == "C2/examenes" {
					continue
				}
				for l := 1; l <= lessonsPerModule; l++ {
					lid := fmt.Sprintf("%s-l%d", mid, l)
					lessons = append(lessons, []any{lid, mid, l, "Lesson " + lid, 10 + l})
					courseLessons[key] = append(courseLessons[key], lesson{lid, mid, lv, g})
				}
			}
		}
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"course_modules"}, []string{"id", "course_level", "course_goal", "order_index", "title"}, pgx.CopyFromRows(modules)); err != nil {
		return nil, fmt.Errorf("seed modules: %w", err)
	}
	if _, err := conn.CopyFrom(ctx, pgx.Identifier{"course_lessons"}, []string{"id", "module_id", "order_index", "title", "duration"}, pgx.CopyFromRows(lessons)); err != nil {
		return nil, fmt.Errorf("seed lessons: %w", err)
	}

	students := make([]SeededStudent, opts.Students)
	var users, authUsers, progress, xp, streaks [][]any
	for i := range students {
		id := uuid.UUID(randomBytes(rng))
		email := fmt.Sprintf("student%d@example.com", i+1)
		students[i] = SeededStudent{ID: id, Email: email}
		var level, goal any
		lv, g := levels[rng.IntN(len(levels))], goals[rng.IntN(len(goals))]
		if rng.IntN(10) > 0 {
			level, goal = lv, g
		}
		users = append(users, []any{id, email, fmt.Sprintf("Student %d", i+1), level, goal})
		authUsers = append(authUsers, []any{id, email})

		own := courseLessons[lv+"/"+g]
		n := rng.IntN(opts.MaxLessons + 1)
		finisher := rng.IntN(10) == 0 && len(own) > 0
		if finisher {
			n = len(own)
		}
		seen := map[string]bool{}
		for j := 0; j < n; j++ {
			var ls lesson
			switch {
			case finisher:
				ls = own[j]
			case len(own) > 0 && rng.IntN(5) > 0:
				ls = own[rng.IntN(len(own))]
			default:
				// Lessons of another course count as completed lessons, not as progress.
				other := courseLessons[levels[rng.IntN(5)]+"/"+goals[rng.IntN(len(goals))]]
				ls = other[rng.IntN(len(other))]
			}
			if seen[ls.id] {
				continue
			}
			seen[ls.id] = true
			completed := finisher || rng.IntN(10) < 7
			var score any
			if completed && rng.IntN(10) > 0 {
				score = fmt.Sprintf("%d.%02d", 50+rng.IntN(50), rng.IntN(100))
			}
			spent := rng.IntN(3600)
			if rng.IntN(50) == 0 {
				spent = -rng.IntN(100)
			}
			accessed := now.Add(-time.Duration(rng.IntN(60*24*60)) * time.Minute)
			var completedAt any
			if completed && rng.IntN(10) > 0 {
				completedAt = accessed.Add(-time.Duration(rng.IntN(120)) * time.Minute)
			}
			var lastAccessed any = accessed
			if rng.IntN(40) == 0 {
				lastAccessed = nil
			}
			progress = append(progress, []any{id, ls.level, ls.goal, ls.module, ls.id, completed, score, spent, accessed.Add(-time.Hour), completedAt, lastAccessed})
		}
		if rng.IntN(10) < 8 {
			xp = append(xp, []any{id, rng.IntN(5000)})
		}
		if rng.IntN(10) < 7 {
			streaks = append(streaks, []any{id, rng.IntN(30), 30 + rng.IntN(30)})
		}
	}
	copies := []struct {
		table string
		cols  []string
		rows  [][]any
	}{
		{"users", []string{"id", "email", "name", "language_level", "course_goal"}, users},
		{"auth.users", []string{"id", "email"}, authUsers},
		{"course_progress", []string{"user_id", "course_level", "course_goal", "module_id", "lesson_id", "completed", "score", "time_spent", "started_at", "completed_at", "last_accessed_at"}, progress},
		{"user_xp", []string{"user_id", "total_xp"}, xp},
		{"user_streaks", []string{"user_id", "current_streak", "longest_streak"}, streaks},
	}
	for _, c := range copies {
		ident := pgx.Identifier{c.table}
		if c.table == "auth.users" {
			ident = pgx.Identifier{"auth", "users"}
		}
		if _, err := conn.CopyFrom(ctx, ident, c.cols, pgx.CopyFromRows(c.rows)); err != nil {
			return nil, fmt.Errorf("seed %s: %w", c.table, err)
		}
	}
	return students, nil
}

func randomBytes(rng *rand.Rand) [16]byte {
	var b [16]byte
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return b
}

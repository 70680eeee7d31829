package reference

import (
	"context"
	"math/big"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

func TestRound(t *testing.T) {
	for _, tc := range []struct {
		num, den int64
		scale    int
		want     string
	}{
		{85335, 1000, 2, "85.34"}, {-85335, 1000, 2, "-85.34"}, {1, 6, 1, "0.2"}, {100, 6, 1, "16.7"},
		{200, 3, 1, "66.7"}, {89, 60, 0, "1"}, {90, 60, 0, "2"}, {0, 1, 2, "0"}, {1, 1000, 2, "0"},
		{-1, 1000, 2, "0"}, {255, 10, 0, "26"}, {8550, 100, 2, "85.5"}, {12, 1, 1, "12"},
	} {
		if got := Round(big.NewRat(tc.num, tc.den), tc.scale); got != tc.want {
			t.Errorf("Round(%d/%d, %d) = %q, want %q", tc.num, tc.den, tc.scale, got, tc.want)
		}
	}
}

// The course_progress model's SQL and this package agree on every student of a varied data set.
func TestAgreesWithSQL(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: 2000, Seed: 11})
	if err != nil {
		t.Fatal(err)
	}
	// Edge cases the seed does not make: equal access times, scores at the rounding edge,
	// a course whose modules have no lessons.
	for _, sql := range []string{
		`UPDATE course_progress SET last_accessed_at = '2026-11-01 12:00' WHERE user_id IN (SELECT id FROM users ORDER BY id LIMIT 50)`,
		`UPDATE course_progress SET score = 85.33 WHERE score IS NOT NULL AND lesson_id LIKE '%-l1'`,
		`UPDATE course_progress SET score = 85.34 WHERE score IS NOT NULL AND lesson_id LIKE '%-l2'`,
		`UPDATE course_progress SET time_spent = 30 WHERE lesson_id LIKE '%-l3'`,
		`UPDATE users SET language_level = 'C2', course_goal = 'examenes' WHERE id IN (SELECT id FROM users ORDER BY id DESC LIMIT 20)`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	want, err := Compute(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
	}
	m := model.Builtin("course_progress")
	if err := m.Verify(ctx, conn); err != nil {
		t.Fatal(err)
	}
	diffs := 0
	for start := 0; start < len(ids); start += 100 {
		got, err := m.ForStudents(ctx, conn, ids[start:min(start+100, len(ids))])
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range got {
			for _, name := range metrics.Names() {
				if s.Values[name] != want[s.ID].Values[name] {
					diffs++
					if diffs <= 10 {
						t.Errorf("student %s %s: SQL %q, reference %q", s.ID, name, s.Values[name], want[s.ID].Values[name])
					}
				}
			}
		}
	}
	if diffs > 0 {
		t.Fatalf("%d values differ", diffs)
	}
}

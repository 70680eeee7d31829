package replication

import (
	"context"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

const (
	ada = "11111111-1111-4111-8111-111111111111"
	bob = "22222222-2222-4222-8222-222222222222"
)

// decodeAll runs sql and decodes what the publication sends for it, through a real slot.
func decodeAll(t *testing.T, db *pgxpool.Pool, sql ...string) []*Commit {
	t.Helper()
	dec := NewDecoder(defaultModel())
	var commits []*Commit
	for _, m := range captureMessages(t, db, sql) {
		c, err := dec.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		if c != nil {
			commits = append(commits, c)
		}
	}
	return commits
}

func setupSlot(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	db, _ := newSourceDB(t)
	for _, s := range []string{
		`INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('b1-viajes-m1-l1', 'b1-viajes-m1', 1, 'L')`,
		`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id) VALUES ('` + ada + `', 'B1', 'viajes', 'b1-viajes-m1', 'b1-viajes-m1-l1')`,
	} {
		if _, err := db.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	if _, err := CreateSlot(ctx, db, "progress_sync"); err != nil {
		t.Fatal(err)
	}
	return db
}

func keys[K comparable](m map[K]struct{}, less func(a, b K) bool) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return less(out[i], out[j]) })
	return out
}

func TestDecodeMapsRowsToStudents(t *testing.T) {
	type want struct {
		students []string
		modules  []string
		courses  [][2]string
		all      bool
	}
	for _, tc := range []struct {
		name string
		sql  []string
		want want
	}{
		{"insert progress", []string{`INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id) VALUES ('` + bob + `', 'A1', 'trabajo', 'm', 'l')`},
			want{students: []string{bob}}},
		{"delete progress names the student (replica identity full)", []string{`DELETE FROM course_progress WHERE user_id = '` + ada + `'`},
			want{students: []string{ada}}},
		{"row moved to another student names both", []string{`UPDATE course_progress SET user_id = '` + bob + `' WHERE user_id = '` + ada + `'`},
			want{students: []string{ada, bob}}},
		{"user email change", []string{`UPDATE users SET email = 'new@example.com' WHERE id = '` + bob + `'`},
			want{students: []string{bob}}},
		{"xp and streak", []string{`INSERT INTO user_xp (user_id, total_xp) VALUES ('` + ada + `', 5)`, `INSERT INTO user_streaks (user_id, current_streak) VALUES ('` + bob + `', 2)`},
			want{students: []string{ada, bob}}},
		{"new lesson names its module", []string{`INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('b1-viajes-m1-l2', 'b1-viajes-m1', 2, 'L2')`},
			want{modules: []string{"b1-viajes-m1"}}},
		{"lesson moved between modules names both", []string{`INSERT INTO course_modules (id, course_level, course_goal, order_index, title) VALUES ('a1-trabajo-m1', 'A1', 'trabajo', 1, 'M')`,
			`UPDATE course_lessons SET module_id = 'a1-trabajo-m1' WHERE id = 'b1-viajes-m1-l1'`},
			want{modules: []string{"a1-trabajo-m1", "b1-viajes-m1"}, courses: [][2]string{{"A1", "trabajo"}}}},
		{"module changes course", []string{`UPDATE course_modules SET course_level = 'C1' WHERE id = 'b1-viajes-m1'`},
			want{courses: [][2]string{{"B1", "viajes"}, {"C1", "viajes"}}}},
		{"truncate", []string{`TRUNCATE user_xp`}, want{all: true}},
		{"unpublished table", []string{`CREATE TABLE other (x int)`, `INSERT INTO other VALUES (1)`}, want{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := setupSlot(t)
			commits := decodeAll(t, db, tc.sql...)
			got := newChanges()
			for _, c := range commits {
				if c.End == 0 {
					t.Error("commit without an end LSN")
				}
				got.Merge(c.Changes)
			}
			var students []string
			for _, id := range keys(got.Students, func(a, b uuid.UUID) bool { return a.String() < b.String() }) {
				students = append(students, id.String())
			}
			modules := modulesOf(got)
			courses := coursesOf(got)
			if !equal(students, tc.want.students) || !equal(modules, tc.want.modules) || !equal(courses, tc.want.courses) || got.AllStudents != tc.want.all {
				t.Fatalf("got students %v modules %v courses %v all %v\nwant %+v", students, modules, courses, got.AllStudents, tc.want)
			}
		})
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDecodeFollowsAlterTable(t *testing.T) {
	db := setupSlot(t)
	// Adding a column before user_id's position is impossible, but dropping one before it
	// moves it: the decoder must take positions from the latest Relation message.
	commits := decodeAll(t, db,
		`ALTER TABLE user_xp ADD COLUMN note text`,
		`INSERT INTO user_xp (user_id, total_xp, note) VALUES ('`+ada+`', 1, 'x')`,
		`ALTER TABLE user_xp DROP COLUMN id`,
		`UPDATE user_xp SET total_xp = 2, user_id = '`+bob+`'`,
	)
	got := newChanges()
	for _, c := range commits {
		got.Merge(c.Changes)
	}
	if len(got.Students) != 2 {
		t.Fatalf("students %v, want ada and bob", got.Students)
	}
}

func TestDecodeRejectsGarbage(t *testing.T) {
	for _, msg := range [][]byte{nil, {'Z'}, {'I', 0, 0}, {'C', 0}} {
		if _, err := NewDecoder(defaultModel()).Decode(msg); err == nil {
			t.Errorf("Decode(%v) accepted garbage", msg)
		}
	}
	// A change before its Relation message is an error, not a guess.
	dec := NewDecoder(defaultModel())
	if _, err := dec.Decode([]byte{'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := dec.Decode([]byte{'I', 0, 0, 0, 9, 'N', 0, 0}); err == nil {
		t.Error("a row of an unknown relation was accepted")
	}
}

// defaultModel is the model the tests' tables follow: the PRD's course_progress.
func defaultModel() *model.Model { return model.Builtin(model.Default) }

// modulesOf is the course_lessons.module_id values changes name, sorted.
func modulesOf(ch Changes) []string {
	return keys(ch.Keys["public.course_lessons"], func(a, b string) bool { return a < b })
}

// coursesOf is the course_modules (course_level, course_goal) pairs changes name, sorted.
func coursesOf(ch Changes) [][2]string {
	var out [][2]string
	for _, k := range keys(ch.Keys["public.course_modules"], func(a, b string) bool { return a < b }) {
		level, goal, _ := strings.Cut(k, keySep)
		out = append(out, [2]string{level, goal})
	}
	return out
}

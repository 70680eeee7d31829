package model

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
)

// goodModel is a small valid model over the reference schema; tests break one part of it.
const goodModel = `model: xp_only
students:
  table: public.users
  id: id
  email: email
tables:
  - table: public.user_xp
    student: user_id
  - table: public.course_lessons
    keys: [module_id]
    students: |
      SELECT u.id FROM public.users u WHERE u.course_goal = ANY($1::text[])
properties: |
  SELECT u.id,
    coalesce(x.total_xp, 0) AS total_xp
  FROM public.users u
  LEFT JOIN public.user_xp x ON x.user_id = u.id
  WHERE u.id = ANY($1::uuid[])
`

func writeModel(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "model.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// wantModelError checks that err is an *Error naming the file, the part and the line, and
// saying what is wrong.
func wantModelError(t *testing.T, err error, path, part string, line int, says string) {
	t.Helper()
	var me *Error
	if !errors.As(err, &me) {
		t.Fatalf("got %v (%T), want a model error", err, err)
	}
	if me.Source != path || !strings.Contains(me.Part, part) || me.Line != line || !strings.Contains(me.Error(), says) {
		t.Fatalf("got %q (part %q, line %d), want file %s, part %q, line %d, saying %q", me.Error(), me.Part, me.Line, path, part, line, says)
	}
	if strings.Contains(me.Error(), "\n") {
		t.Fatalf("the error is more than one line: %q", me.Error())
	}
}

func TestLoadRefusesABadFile(t *testing.T) {
	tests := []struct {
		name, text, part string
		line             int
		says             string
	}{
		{"syntax error", strings.Replace(goodModel, "  id: id", "  id: [id", 1), "", 3, "not a valid model file"}, // the YAML parser's line
		{"unknown key", strings.Replace(goodModel, "    student: user_id", "    studnet: user_id", 1), "", 8, `unknown key "studnet" (a table takes table and student, or table, keys and students)`},
		{"no name", strings.Replace(goodModel, "model: xp_only\n", "", 1), "model", 0, "missing"},
		{"students incomplete", strings.Replace(goodModel, "  email: email\n", "", 1), "students", 2, "email"},
		{"table without a student mapping", strings.Replace(goodModel, "    student: user_id\n", "", 1), "tables[1] public.user_xp", 7, "no student mapping"},
		{"student and keys", strings.Replace(goodModel, "    student: user_id\n", "    student: user_id\n    keys: [id]\n", 1), "tables[1]", 7, "not both"},
		{"keys without a query", strings.Replace(goodModel, "    students: |\n      SELECT u.id FROM public.users u WHERE u.course_goal = ANY($1::text[])\n", "", 1), "tables[2]", 9, "without students"},
		{"unqualified table", strings.Replace(goodModel, "table: public.user_xp", "table: user_xp", 1), "tables[1]", 7, "schema-qualified"},
		{"students table listed again", strings.Replace(goodModel, "table: public.user_xp", "table: public.users", 1), "tables[1]", 7, "listed under students"},
		{"no properties", goodModel[:strings.Index(goodModel, "properties:")], "properties", 0, "missing"},
		{"empty file", "", "", 0, "empty"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeModel(t, tc.text)
			_, err := Load(path)
			wantModelError(t, err, path, tc.part, tc.line, tc.says)
		})
	}
	t.Run("not a name nor a path", func(t *testing.T) {
		_, err := Load("lesson-progress")
		if err == nil || !strings.Contains(err.Error(), "course_progress, lesson_progress") {
			t.Fatalf("got %v, want the list of built-in models", err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := Load("/nonexistent/model.yaml")
		wantModelError(t, err, "/nonexistent/model.yaml", "", 0, "cannot read")
	})
}

func TestVerifyRefusesAModelTheDatabaseContradicts(t *testing.T) {
	conn := connect(t)
	// The properties query's first line of SQL is line 14 of goodModel.
	const props = 14
	tests := []struct {
		name, from, to, part string
		line                 int
		says                 string
	}{
		{"unknown table", "table: public.user_xp", "table: public.user_xpp", "tables public.user_xpp", 7, "no table public.user_xpp"},
		{"unknown student column", "student: user_id", "student: student_id", "tables public.user_xp", 7, "has no column student_id"},
		{"student column not a uuid", "student: user_id", "student: total_xp", "tables public.user_xp", 7, "must be a uuid"},
		{"unknown key column", "keys: [module_id]", "keys: [modul_id]", "tables public.course_lessons", 9, "has no column modul_id"},
		{"syntax error in the query", "  LEFT JOIN public.user_xp x", "  LEFT JION public.user_xp x", "properties", props + 3, "syntax error"},
		{"unknown column in the query", "coalesce(x.total_xp, 0)", "coalesce(x.totl_xp, 0)", "properties", props + 1, "totl_xp"},
		{"a column that is not a property", "AS total_xp", "AS xp", "properties", props + 1, "not a property"},
		{"a float for a number", "coalesce(x.total_xp, 0) AS", "coalesce(x.total_xp, 0)::float8 AS", "properties", props + 1, "is float8"},
		{"a timestamp for a date", "coalesce(x.total_xp, 0) AS total_xp", "x.created_at AS last_activity_date", "properties", props + 1, "a date"},
		{"no id", "SELECT u.id,", "SELECT u.id AS student,", "properties", props, "no column id"},
		{"a second parameter", "WHERE u.id = ANY($1::uuid[])", "WHERE u.id = ANY($1::uuid[]) AND $2::int > 0", "properties", props, "$2"},
		{"a table the model does not list", "LEFT JOIN public.user_xp x ON x.user_id = u.id", "LEFT JOIN public.user_xp x ON x.user_id = u.id JOIN public.user_streaks s ON s.user_id = u.id", "properties", props + 3, "reads public.user_streaks"},
		{"a query that writes", "  SELECT u.id,\n", "  WITH gone AS (DELETE FROM public.user_xp RETURNING 1) SELECT u.id,\n", "properties", props, "changes the database"},
		{"a students query of the wrong shape", "SELECT u.id FROM public.users u WHERE", "SELECT u.email FROM public.users u WHERE", "tables[2] public.course_lessons students", 12, "uuid"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodModel, tc.from) {
				t.Fatalf("goodModel lacks %q", tc.from)
			}
			path := writeModel(t, strings.Replace(goodModel, tc.from, tc.to, 1))
			m, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			wantModelError(t, m.Verify(context.Background(), conn), path, tc.part, tc.line, tc.says)
		})
	}
	t.Run("the good model", func(t *testing.T) {
		m, err := Load(writeModel(t, goodModel))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Verify(context.Background(), conn); err != nil {
			t.Fatal(err)
		}
		if got := m.Computes(); len(got) != 1 || got[0] != metrics.TotalXP {
			t.Fatalf("computes %v, want only total_xp", got)
		}
	})
}

func TestAQueryThatBreaksOneRowPerStudentIsAnError(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	var ids []uuid.UUID
	for i := range 3 {
		s := student{email: "s" + string(rune('a'+i)) + "@example.com"}
		insertStudent(t, conn, &s)
		ids = append(ids, s.id)
	}
	tests := []struct {
		name, from, to, says string
	}{
		{"a student twice", "LEFT JOIN public.user_xp x ON x.user_id = u.id", "LEFT JOIN public.user_xp x ON x.user_id = u.id CROSS JOIN generate_series(1, 2)", "more than one row"},
		{"a student missing", "WHERE u.id = ANY($1::uuid[])", "WHERE u.id = ANY($1::uuid[]) AND u.email <> 'sb@example.com'", "no row for student"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeModel(t, strings.Replace(goodModel, tc.from, tc.to, 1))
			m, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Verify(ctx, conn); err != nil {
				t.Fatal(err)
			}
			_, err = m.ForStudents(ctx, conn, ids)
			wantModelError(t, err, path, "properties", props(t, m), tc.says)
			if _, err := m.Trial(ctx, conn); err == nil || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("Trial: %v, want %q", err, tc.says)
			}
		})
	}
}

func props(t *testing.T, m *Model) int { t.Helper(); return m.Properties.Line }

func TestTheModelRunsReadOnly(t *testing.T) {
	conn := connect(t)
	ctx := context.Background()
	exec(t, conn, `CREATE FUNCTION public.sneaky() RETURNS int LANGUAGE sql AS $$ DELETE FROM public.user_xp; SELECT 1 $$`)
	path := writeModel(t, strings.Replace(goodModel, "coalesce(x.total_xp, 0) AS total_xp", "public.sneaky() AS total_xp", 1))
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(ctx, conn); err != nil {
		t.Fatal(err) // the planner cannot see inside the function
	}
	s := student{email: "ro@example.com", xp: 5}
	insertStudent(t, conn, &s)
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		_, err := m.ForStudents(ctx, tx, []uuid.UUID{s.id})
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("a model query that writes ran: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM user_xp`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("user_xp has %d rows (%v), want the one row untouched", n, err)
	}
}

func TestBuiltinsAreValidFiles(t *testing.T) {
	conn := connect(t)
	for _, name := range Builtins() {
		t.Run(name, func(t *testing.T) {
			m, err := Load(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Verify(context.Background(), conn); err != nil {
				t.Fatal(err)
			}
			if len(m.Computes()) != len(metrics.Names()) {
				t.Fatalf("%s computes %v, want all ten", name, m.Computes())
			}
			if m.Digest == "" || m.File != "" || m.Name != name {
				t.Fatalf("name %q file %q digest %q", m.Name, m.File, m.Digest)
			}
		})
	}
}

func TestAStudentsQueryReturningNULLIsAnError(t *testing.T) {
	conn := connect(t)
	path := writeModel(t, strings.Replace(goodModel, "SELECT u.id FROM public.users u WHERE", "SELECT NULL::uuid FROM public.users u WHERE", 1))
	m, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	insertStudent(t, conn, &student{email: "n@example.com", level: "B2", goal: "trabajo"})
	_, err = m.StudentsOfKeys(context.Background(), conn, "public.course_lessons", [][]string{{"trabajo"}})
	wantModelError(t, err, path, "tables[2] public.course_lessons students", 12, "NULL student id")
}

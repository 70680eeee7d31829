package pgtest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
)

var pg *Server

func TestMain(m *testing.M) { Main(m, &pg) }

func TestDatabaseHasSchemaAndLogicalWAL(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		t.Fatal(err)
	}
	if walLevel != "logical" {
		t.Fatalf("wal_level = %q, want logical", walLevel)
	}
	var tables int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'
		AND table_name IN ('users','course_progress','course_modules','course_lessons','user_xp','user_streaks')`).Scan(&tables); err != nil {
		t.Fatal(err)
	}
	if tables != 6 {
		t.Fatalf("found %d of the 6 reference tables", tables)
	}
}

func TestDatabasesAreIndependent(t *testing.T) {
	ctx := context.Background()
	a, b := pg.NewDatabase(t), pg.NewDatabase(t)
	if a == b {
		t.Fatalf("two tests share database %s", a)
	}
	ca, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(ctx)
	if _, err := ca.Exec(ctx, `INSERT INTO users (email, name) VALUES ('x@example.com', 'X')`); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(ctx)
	var n int
	if err := cb.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("second database sees %d users written to the first", n)
	}
}

func TestMajorVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", 15},
		{"postgres (PostgreSQL) 17.2\n", 17},
		{"postgres (PostgreSQL) 9.6.24\n", 9},
		{"garbage", 0},
	} {
		if got := majorVersion(tc.in); got != tc.want {
			t.Errorf("majorVersion(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestSeed(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	students, err := Seed(ctx, conn, SeedOptions{Students: 200, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	if len(students) != 200 {
		t.Fatalf("seeded %d students", len(students))
	}
	var users, withProgress, finishers int
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM users), (SELECT count(DISTINCT user_id) FROM course_progress),
		(SELECT count(*) FROM users u WHERE (SELECT count(*) FROM course_lessons l JOIN course_modules m ON m.id = l.module_id
			WHERE m.course_level = u.language_level AND m.course_goal = u.course_goal) > 0
		AND NOT EXISTS (SELECT 1 FROM course_lessons l JOIN course_modules m ON m.id = l.module_id
			WHERE m.course_level = u.language_level AND m.course_goal = u.course_goal
			AND NOT EXISTS (SELECT 1 FROM course_progress p WHERE p.user_id = u.id AND p.lesson_id = l.id AND p.completed)))`).
		Scan(&users, &withProgress, &finishers)
	if err != nil {
		t.Fatal(err)
	}
	if users != 200 || withProgress == 0 || withProgress == 200 || finishers == 0 {
		t.Fatalf("users=%d with progress=%d finishers=%d: the data lacks variety", users, withProgress, finishers)
	}
}

func TestServerIsTheChosenBuild(t *testing.T) {
	dir := os.Getenv(BinDirEnv)
	if dir == "" || os.Getenv("PROGRESS_SYNC_TEST_DATABASE_URL") != "" {
		return // the newest installed server, or one the tests did not start
	}
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var num int
	if err := conn.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&num); err != nil {
		t.Fatal(err)
	}
	if want := majorVersion(string(out)); num/10000 != want {
		t.Fatalf("the server runs %d, but %s=%s holds PostgreSQL %d", num, BinDirEnv, dir, want)
	}
	t.Logf("PostgreSQL %d from %s", num, dir)
}

package pgtest

import (
	"context"
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

package pgtest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Main starts a server for a test package, stores it in *srv, runs the tests and stops the
// server. Use it from TestMain:
//
//	var pg *pgtest.Server
//	func TestMain(m *testing.M) { pgtest.Main(m, &pg) }
//
// A server that cannot start fails the package with the reason and how to fix it: tests never
// skip for want of PostgreSQL.
func Main(m *testing.M, srv **Server) {
	os.Exit(Run(m, srv))
}

// Run is Main without the exit, for a TestMain with more to set up and tear down; it returns
// the exit status.
func Run(m *testing.M, srv **Server) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	s, err := Start(ctx, Options{})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start the test PostgreSQL: %v\n", err)
		return 1
	}
	*srv = s
	if s.External() {
		// Slot names are shared by the whole server: test packages take turns on it.
		unlock, err := s.takeTurn()
		if err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			return 1
		}
		defer unlock()
	}
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop: %v\n", err)
	}
	return code
}

// NewDatabase gives the test its own database holding Schema and drops it when the test ends.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	if s == nil {
		t.Fatal("pgtest: no server; start one in TestMain with pgtest.Main")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dbURL, err := s.CreateDatabase(ctx, t.Name())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.DropDatabase(ctx, dbURL); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return dbURL
}

// NewPool gives the test its own database holding Schema and a pool on it, both gone when
// the test ends. The database's URL is pool.Config().ConnString().
func (s *Server) NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	db, err := pgxpool.New(context.Background(), s.NewDatabase(t))
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

// takeTurn holds a server-wide advisory lock until unlock: test packages sharing one external
// server would otherwise collide on replication slot names, which are server-wide.
func (s *Server) takeTurn() (unlock func(), err error) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return nil, fmt.Errorf("connect to the shared server: %w", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(727276)"); err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("wait for the shared server: %w", err)
	}
	return func() { conn.Close(context.Background()) }, nil
}

package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/replication/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

func seeded(t *testing.T, students int) string {
	t.Helper()
	ctx := context.Background()
	dbURL := pg.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: students, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	return dbURL
}

func noEnv(string) string { return "" }

func TestRunsForDuration(t *testing.T) {
	dbURL := seeded(t, 40)
	var out, errOut bytes.Buffer
	start := time.Now()
	code := run(context.Background(), []string{"--rate", "100", "--duration", "1s", "--seed", "9"},
		func(k string) string {
			if k == "DATABASE_URL" {
				return dbURL
			}
			return ""
		}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("ran %s for --duration 1s", d)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	changes := lines[:len(lines)-2]
	if len(changes) < 50 || len(changes) > 110 {
		t.Fatalf("%d changes in 1s at 100/s:\n%s", len(changes), out.String())
	}
	for _, l := range changes {
		if !regexp.MustCompile(`^student\d+@example\.com \S`).MatchString(l) {
			t.Fatalf("change line %q", l)
		}
	}
	summary := lines[len(lines)-2:]
	if !strings.Contains(summary[0], "changes in") || !strings.Contains(summary[0], "seed 9") || !strings.HasPrefix(summary[1], "study-sim: open ") {
		t.Fatalf("summary %q", summary)
	}
}

func TestStopsOnInterrupt(t *testing.T) {
	dbURL := seeded(t, 20)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--database-url", dbURL, "--rate", "50", "--quiet"}, noEnv, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 || strings.Contains(out.String(), "0 changes") {
		t.Fatalf("--quiet output:\n%s", out.String())
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "DATABASE_URL"},
		{[]string{"--database-url", "postgres://x", "--rate", "0"}, "--rate"},
		{[]string{"--database-url", "postgres://x", "--duration", "-1s"}, "--duration"},
		{[]string{"--database-url", "postgres://x", "extra"}, "unexpected"},
		{[]string{"--no-such-flag"}, "no-such-flag"},
	} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), tc.args, noEnv, &out, &errOut); code != exitUsage || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want %d naming %s", tc.args, code, errOut.String(), exitUsage, tc.want)
		}
	}
}

func TestNoStudents(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(context.Background(), []string{"--database-url", pg.NewDatabase(t), "--duration", "1s"}, noEnv, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "no students") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
}

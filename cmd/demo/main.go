// Command demo shows progress-sync doing its job on one machine without credentials: it starts
// a throwaway PostgreSQL with synthetic Focus English students and the HubSpot emulator, then
// runs the real progress-sync binary against them and prints what HubSpot ends up holding.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

const demoToken = "demo-token"

func main() {
	students := flag.Int("students", 300, "synthetic students to create")
	withoutContact := flag.Int("without-contact", 20, "students that have no HubSpot contact")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, os.Stdout, *students, *withoutContact); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func demo(ctx context.Context, out io.Writer, students, withoutContact int) error {
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n== "+format+"\n", args...) }

	step("Starting a throwaway PostgreSQL (wal_level=logical)")
	srv, err := startPostgres(ctx, out)
	if err != nil {
		return err
	}
	defer srv.Stop()
	dbURL, err := srv.CreateDatabase(ctx, "demo")
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: students, Seed: 2026})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "loaded the Focus English schema and %d students with their lessons, streaks and XP\n", len(seeded))

	step("Starting the HubSpot emulator")
	emu := hubspottest.NewServer(hubspottest.Options{Token: demoToken, RateLimit: 100, Seed: 1})
	defer emu.Close()
	for _, s := range seeded[:max(0, len(seeded)-withoutContact)] {
		emu.AddContact(s.Email, nil, map[string]string{"firstname": "Student"})
	}
	fmt.Fprintf(out, "emulator at %s with contacts for %d of the %d students\n", emu.URL(), len(emu.Contacts()), len(seeded))

	step("Building progress-sync")
	dir, err := os.MkdirTemp("", "progress-sync-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "progress-sync")
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/focusenglish/progress-sync/cmd/progress-sync").CombinedOutput(); err != nil {
		return fmt.Errorf("build progress-sync: %w\n%s", err, b)
	}
	env := append(os.Environ(), "DATABASE_URL="+dbURL, "HUBSPOT_ACCESS_TOKEN="+demoToken,
		"HUBSPOT_BASE_URL="+emu.URL(), "LOG_FORMAT=text", "LOG_LEVEL=error")
	sync := func(maxLines int, args ...string) error {
		fmt.Fprintf(out, "$ progress-sync %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		cmd.Stderr = out
		b, err := cmd.Output()
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > maxLines {
			shown := append(lines[:maxLines-1:maxLines-1], fmt.Sprintf("  ... %d more lines ...", len(lines)-maxLines), lines[len(lines)-1])
			lines = shown
		}
		fmt.Fprintln(out, strings.Join(lines, "\n"))
		return err
	}

	step("Creating the HubSpot properties")
	if err := sync(20, "provision"); err != nil {
		return err
	}
	step("Previewing the first backfill (nothing is written)")
	if err := sync(14, "backfill", "--dry-run"); err != nil {
		return err
	}
	step("Backfilling every student")
	emu.ResetStats()
	if err := sync(8, "backfill"); err != nil {
		return err
	}
	st := emu.Stats()
	fmt.Fprintf(out, "HubSpot requests: %d batch/read, %d batch/update, %d in all\n", st.BatchReads, st.BatchUpdates, st.Requests)
	printContacts(out, emu, 8)

	step("Three students study; a second backfill sends only what changed")
	for _, s := range seeded[:3] {
		if _, err := conn.Exec(ctx, `INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 50)
			ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + 50, updated_at = now()`, s.ID); err != nil {
			return err
		}
	}
	emu.ResetStats()
	if err := sync(8, "backfill"); err != nil {
		return err
	}
	st = emu.Stats()
	fmt.Fprintf(out, "HubSpot requests: %d batch/read, %d batch/update carrying %v contacts\n", st.BatchReads, st.BatchUpdates, st.BatchUpdateInputs)
	printContacts(out, emu, 3)
	if v := emu.Violations(); len(v) > 0 {
		return fmt.Errorf("the emulator saw HubSpot contract violations: %s", strings.Join(v, "; "))
	}
	fmt.Fprintln(out, "\nNo contact was created; students without a contact are listed in progress_sync.problems.")
	return nil
}

// startPostgres starts the throwaway server, installing Debian's PostgreSQL first if it is
// missing and we may.
func startPostgres(ctx context.Context, out io.Writer) (*pgtest.Server, error) {
	srv, err := pgtest.Start(ctx, pgtest.Options{})
	if err == nil || !errors.Is(err, pgtest.ErrNotInstalled) {
		return srv, err
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w\nrun: sudo apt-get install -y postgresql, then the demo again", err)
	}
	fmt.Fprintln(out, "PostgreSQL is not installed; installing Debian's package (apt-get install postgresql)")
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "postgresql"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = io.Discard, out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("apt-get %s: %w", strings.Join(args, " "), err)
		}
	}
	return pgtest.Start(ctx, pgtest.Options{})
}

func printContacts(out io.Writer, emu *hubspottest.Server, n int) {
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	cols := []string{metrics.LessonsCompleted, metrics.AverageScore, metrics.TotalStudyTime, metrics.ProgressPercentage,
		metrics.LastActivityDate, metrics.StudyStreak, metrics.TotalXP, metrics.CourseStatus}
	fmt.Fprintln(tw, "contact\temail\tlessons\tavg score\tminutes\tprogress %\tlast activity\tstreak\txp\tstatus")
	for i, c := range emu.Contacts() {
		if i == n {
			break
		}
		row := []string{c.ID, c.Email}
		for _, col := range cols {
			v := c.Properties[col]
			if v == "" {
				v = "-"
			}
			row = append(row, v)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
}

// Command demo shows progress-sync doing its job on one machine without credentials: it starts
// a throwaway PostgreSQL with synthetic Focus English students and the HubSpot emulator, runs
// the real `progress-sync run` service against them, and lets simulated students study while
// it prints each change in the database and each update HubSpot receives.
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
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

const demoToken = "demo-token"

// The service's timing in the demo: short, so the sync visibly follows the changes.
const (
	debounce = time.Second
	maxDelay = 5 * time.Second
)

// options are the demo's flags.
type options struct {
	students, withoutContact int
	duration                 time.Duration
	rate                     float64
	seed                     uint64
}

func main() {
	var o options
	flag.IntVar(&o.students, "students", 300, "synthetic students to create")
	flag.IntVar(&o.withoutContact, "without-contact", 20, "students that have no HubSpot contact")
	flag.DurationVar(&o.duration, "duration", 0, "how long students study; 0 means until Ctrl-C")
	flag.Float64Var(&o.rate, "rate", 4, "changes per second the simulated students make")
	flag.Uint64Var(&o.seed, "seed", 2026, "seed for the synthetic data and the simulated changes")
	flag.Parse()
	if o.students < 1 || o.withoutContact < 0 || o.withoutContact > o.students || !(o.rate > 0) || o.duration < 0 {
		fmt.Fprintln(os.Stderr, "demo: need --students ≥ 1, 0 ≤ --without-contact ≤ --students, --rate > 0 and --duration ≥ 0")
		os.Exit(2)
	}
	// The signal is caught for the whole run: a second Ctrl-C while stopping must not leave
	// the service or PostgreSQL behind.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := demo(ctx, os.Stdout, o)
	stop()
	if err != nil {
		if errors.Is(err, errInterrupted) {
			fmt.Fprintln(os.Stderr, "demo: interrupted before the service started")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "\ndemo FAILED:", err)
		os.Exit(1)
	}
}

var errInterrupted = errors.New("interrupted")

// setupErr turns a failure caused by Ctrl-C during set-up into errInterrupted.
func setupErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errInterrupted
	}
	return err
}

func demo(ctx context.Context, out io.Writer, o options) (err error) {
	step := func(format string, args ...any) { fmt.Fprintf(out, "\n== "+format+"\n", args...) }

	step("Starting a throwaway PostgreSQL (wal_level=logical)")
	srv, err := startPostgres(ctx, out)
	if err != nil {
		return setupErr(ctx, err)
	}
	defer srv.Stop()
	dbURL, err := srv.CreateDatabase(ctx, "demo")
	if err != nil {
		return setupErr(ctx, err)
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return setupErr(ctx, err)
	}
	defer conn.Close(context.Background())
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: o.students, Seed: o.seed})
	if err != nil {
		return setupErr(ctx, err)
	}
	fmt.Fprintf(out, "loaded the Focus English schema and %d students with their lessons, streaks and XP\n", len(seeded))

	step("Starting the HubSpot emulator")
	emu := hubspottest.NewServer(hubspottest.Options{Token: demoToken, RateLimit: 100, Seed: 1})
	defer emu.Close()
	hasContact := map[string]bool{}
	for _, s := range seeded[:len(seeded)-o.withoutContact] {
		emu.AddContact(s.Email, nil, map[string]string{"firstname": "Student"})
		hasContact[metrics.NormalizeEmail(s.Email)] = true
	}
	fmt.Fprintf(out, "emulator at %s with contacts for %d of the %d students\n", emu.URL(), len(emu.Contacts()), len(seeded))

	step("Building progress-sync")
	dir, err := os.MkdirTemp("", "progress-sync-demo-")
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "progress-sync")
	var svc *service
	// The temporary directory goes, except the service's log when the run failed.
	defer func() {
		if err != nil && svc != nil {
			os.Remove(bin)
			return
		}
		os.RemoveAll(dir)
	}()
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/focusenglish/progress-sync/cmd/progress-sync").CombinedOutput(); err != nil {
		return setupErr(ctx, fmt.Errorf("build progress-sync: %w\n%s", err, b))
	}
	fmt.Fprintln(out, "built", bin)

	step("Starting the service: progress-sync run (debounce %s, max delay %s)", debounce, maxDelay)
	env := serviceEnv(dbURL, emu.URL())
	listen := pickListen()
	svc, err = startService(bin, filepath.Join(dir, "progress-sync.log"), listen, env)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "its log (warnings and errors only): %s\n", svc.logPath)
	fmt.Fprintf(out, "its status page, up while the demo runs: http://%s/ (metrics at /metrics)\n", listen)
	// Whatever happens next, the service is stopped before PostgreSQL (deferred earlier).
	stopped := false
	defer func() {
		if !stopped {
			_, _ = svc.stop(time.Minute)
		}
	}()
	failed := func(format string, args ...any) error {
		return fmt.Errorf(format+"\nprogress-sync log %s (tail):\n%s", append(args, svc.logPath, svc.logTail(15))...)
	}

	started := time.Now()
	backfilled, err := waitBackfill(ctx, emu, svc, 2*time.Minute)
	if err != nil {
		return failed("%v", err)
	}
	backfillStats := emu.Stats()
	if backfilled {
		fmt.Fprintf(out, "first start: properties provisioned and all %d contacts backfilled in %.1fs, %d HubSpot requests (%d batch/read, %d batch/update)\n",
			len(hasContact), time.Since(started).Seconds(), backfillStats.Requests, backfillStats.BatchReads, backfillStats.BatchUpdates)
		if o.withoutContact > 0 {
			fmt.Fprintf(out, "the %d students without a contact are recorded as unmatched; no contact is created\n", o.withoutContact)
		}
	}
	emu.ResetStats()

	p := &printer{out: out}
	act := &activity{after: map[string][]stamped{}}
	w := newWatcher(emu)
	var sim simulation
	reason := "interrupted"
	if backfilled {
		until := "Ctrl-C to stop"
		if o.duration > 0 {
			until = fmt.Sprintf("for %s", o.duration)
		}
		step("Students study (%g changes/s); HubSpot follows %s to %s after a student's last change (%s)", o.rate, debounce, debounce+time.Second, until)
		reason, sim = study(ctx, o, dbURL, seeded, hasContact, svc, w, p, act)
	}

	// From here on the demo's context may be cancelled (Ctrl-C): stopping uses its own.
	stopCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	step("Stopping (%s)", reason)
	if sim.err != nil {
		return failed("the simulator failed: %v", sim.err)
	}
	if !svc.running() {
		return failed("progress-sync exited with status %d while the students studied", svc.code)
	}
	if sim.total > 0 {
		if err := waitEqual(stopCtx, conn, emu, seeded, w, p, act); err != nil {
			return failed("%v", err)
		}
	}
	code, err := svc.stop(time.Minute)
	stopped = true
	if err != nil {
		return failed("%v", err)
	}
	if code != 0 {
		return failed("progress-sync exited with status %d after SIGTERM", code)
	}
	fmt.Fprintln(out, "sent SIGTERM to progress-sync: it pushed what was due, stored its checkpoint and exited with status 0")

	step("Summary")
	st := emu.Stats()
	var kinds []string
	for _, k := range pgtest.Kinds() {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, sim.counts[k]))
	}
	fmt.Fprintf(out, "changes made:      %d (%s)\n", sim.total, strings.Join(kinds, ", "))
	fmt.Fprintf(out, "HubSpot requests:  %d for the first start (properties and backfill); %d while streaming (%d batch/update carrying %d contact updates, %d batch/read)\n",
		backfillStats.Requests, st.Requests, st.BatchUpdates, sum(st.BatchUpdateInputs), st.BatchReads)
	fmt.Fprintf(out, "contacts updated:  %d while streaming\n", len(w.updated))
	status, err := runCommand(stopCtx, bin, env, "status")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "$ progress-sync status\n%s\n", status)
	if v := emu.Violations(); len(v) > 0 {
		return fmt.Errorf("the HubSpot emulator saw calls progress-sync must never make:\n  %s", strings.Join(v, "\n  "))
	}
	if summary := logSummary(svc.logLines()); summary != "" {
		fmt.Fprintf(out, "progress-sync's log: %s\n", summary)
	}
	if err := srv.Stop(); err != nil {
		return fmt.Errorf("stop PostgreSQL: %w", err)
	}
	fmt.Fprintln(out, "\nPostgreSQL stopped and temporary files removed. No contact was created.")
	return nil
}

// waitBackfill waits until every contact has course_status set, which the first start's
// backfill does for every matched student. It returns false when interrupted.
func waitBackfill(ctx context.Context, emu *hubspottest.Server, svc *service, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		done, total := 0, 0
		for _, c := range emu.Contacts() {
			total++
			if c.Properties[metrics.CourseStatus] != "" {
				done++
			}
		}
		if done == total {
			return true, nil
		}
		if !svc.running() {
			return false, fmt.Errorf("progress-sync exited with status %d during its first start", svc.code)
		}
		if time.Now().After(deadline) {
			return false, fmt.Errorf("after %s only %d of %d contacts have been backfilled", timeout, done, total)
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// study runs the simulator and the HubSpot watcher until Ctrl-C, the duration, or the service
// exiting, and says which it was.
func study(ctx context.Context, o options, dbURL string, seeded []pgtest.SeededStudent, hasContact map[string]bool,
	svc *service, w *watcher, p *printer, act *activity) (string, simulation) {
	simCtx, stopSim := context.WithCancel(ctx)
	defer stopSim()
	simDone := make(chan simulation, 1)
	go func() { simDone <- simulate(simCtx, dbURL, seeded, hasContact, o.seed, o.rate, p, act) }()

	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		w.run(watchCtx, 300*time.Millisecond, p, act)
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()

	var timeUp <-chan time.Time
	if o.duration > 0 {
		t := time.NewTimer(o.duration)
		defer t.Stop()
		timeUp = t.C
	}
	reason := ""
	var sim simulation
	select {
	case <-ctx.Done():
		reason = "interrupted"
	case <-timeUp:
		reason = fmt.Sprintf("%s are up", o.duration)
	case <-svc.exited:
		reason = "progress-sync exited"
	case sim = <-simDone:
		return "the simulator stopped", sim
	}
	stopSim()
	return reason, <-simDone
}

// waitEqual waits, with the watcher still reporting, until every contact equals the database:
// within the max delay once changes stop (docs/contract.md §6, "eventually equal").
func waitEqual(ctx context.Context, conn *pgx.Conn, emu *hubspottest.Server, seeded []pgtest.SeededStudent,
	w *watcher, p *printer, act *activity) error {
	deadline := act.lastChange().Add(maxDelay + 10*time.Second)
	for {
		w.poll(p, act)
		diffs, matched, err := differences(ctx, conn, emu, seeded)
		if err != nil {
			return fmt.Errorf("compare HubSpot with the database: %w", err)
		}
		if len(diffs) == 0 {
			p.printf("students stopped; %.1fs after the last change every one of the %d contacts equals the database\n",
				time.Since(act.lastChange()).Seconds(), matched)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s after the last change, %d values still differ from the database, e.g.\n  %s",
				time.Since(act.lastChange()).Round(100*time.Millisecond), len(diffs), strings.Join(diffs[:min(5, len(diffs))], "\n  "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
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

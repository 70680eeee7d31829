// Command chaos is progress-sync's soak test under fire. It runs the real binary against a
// throwaway PostgreSQL and the HubSpot emulator while simulated students study, and keeps
// breaking things: SIGKILLs, PostgreSQL restarts, cut walsenders, 429 storms, 5xx bursts,
// replies slower than the client's timeout and a spent daily limit (--mode fire); two
// instances on one slot, the holder killed or stopped again and again (--mode handover); or
// an operator's actions, the slot dropped and re-created by setup and replays from the stored
// checkpoint (--mode operator). Then it stops the faults,
// waits for the buffer to drain, and checks every contact against metrics it computes itself
// (package metrics/reference), under the progress model chosen with --model. It prints one summary and exits 1 if anything was lost,
// corrupted, created or leaked.
package main

import (
	"context"

	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics/reference"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

const (
	token      = "pat-chaos-0123456789abcdef-secret"
	dbPassword = "chaos-db-password-secret"
)

type options struct {
	duration    time.Duration
	students    int
	rate        float64
	seed        uint64
	every       time.Duration
	minKills    int
	minRestarts int
	logDir      string
	race        bool
	mode        string
	model       string
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 5*time.Minute, "how long to break things")
	flag.IntVar(&o.students, "students", 3000, "synthetic students")
	flag.Float64Var(&o.rate, "rate", 150, "changes per second made by the simulated students")
	flag.Uint64Var(&o.seed, "seed", 1, "seed for data, changes and the fault schedule")
	flag.DurationVar(&o.every, "every", 0, "time between faults (default: duration/60, at least 1s)")
	flag.IntVar(&o.minKills, "min-kills", 0, "fail unless at least this many SIGKILL restarts happened (default: 20 for 5 minutes, in proportion)")
	flag.IntVar(&o.minRestarts, "min-pg-restarts", 2, "fail unless PostgreSQL was restarted at least this often")
	flag.StringVar(&o.logDir, "log-dir", "", "keep the service's logs here (default: a temporary directory, removed on success)")
	flag.BoolVar(&o.race, "race", false, "build progress-sync with the race detector")
	flag.StringVar(&o.mode, "mode", "fire", "what to break: fire (kills, PostgreSQL restarts, walsender cuts, HubSpot faults), "+
		"handover (two instances on one slot, the holder killed or stopped again and again), or operator (slot dropped and re-created by setup, replay from the checkpoint, kills)")
	flag.StringVar(&o.model, "model", "course_progress", "the progress model the service runs: course_progress (the students study in course_progress) or lesson_progress (in user_lesson_progress, with course_catalog changes)")
	flag.Parse()
	if o.model != "course_progress" && o.model != "lesson_progress" {
		fmt.Fprintf(os.Stderr, "chaos: --model %q: want course_progress or lesson_progress\n", o.model)
		os.Exit(2)
	}
	if o.mode != "fire" && o.mode != "handover" && o.mode != "operator" {
		fmt.Fprintf(os.Stderr, "chaos: --mode %q: want fire, handover or operator\n", o.mode)
		os.Exit(2)
	}
	if o.every == 0 {
		o.every = max(time.Second, o.duration/60)
	}
	if o.minKills == 0 {
		o.minKills = max(3, int(20*o.duration/(5*time.Minute)))
	}
	if o.mode != "fire" {
		o.minRestarts = 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := soak(ctx, o, os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	if !ok {
		os.Exit(1)
	}
}

// counters are what the summary reports.
type counters struct {
	changes, kills, pgRestarts, walsenderCuts atomic.Int64
	faults                                    map[string]int
	// handover and operator modes
	terms, takeovers, recreated, replays int
	pendingAtStop                        []int // students pending when a holder was stopped
	peakRetained                         atomic.Int64
}

func soak(ctx context.Context, o options, out io.Writer) (bool, error) {
	started := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(out, "chaos %6.1fs: %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}
	keepLogs := o.logDir != ""
	if !keepLogs {
		dir, err := os.MkdirTemp("", "progress-sync-chaos-")
		if err != nil {
			return false, err
		}
		o.logDir = dir
	}
	if err := os.MkdirAll(o.logDir, 0o755); err != nil {
		return false, err
	}

	srv, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		return false, err
	}
	defer srv.Stop()
	dbURL, err := srv.CreateDatabase(ctx, "chaos")
	if err != nil {
		return false, err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return false, err
	}
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: o.students, Seed: o.seed})
	if err == nil && o.model == "lesson_progress" {
		// ingles-c2 starts without its catalogue row; the studier's resizes may add it.
		err = pgtest.SeedLessons(ctx, conn, pgtest.IDs(seeded), pgtest.LessonSeedOptions{Seed: o.seed, SkipCatalog: []string{"ingles-c2"}})
	}
	conn.Close(ctx)
	if err != nil {
		return false, err
	}
	emu := hubspottest.NewServer(hubspottest.Options{Token: token, RateLimit: 100, Seed: int64(o.seed)})
	defer emu.Close()
	contactOf := map[uuid.UUID]string{}
	ids := make([]uuid.UUID, len(seeded))
	for i, s := range seeded {
		ids[i] = s.ID
		if i%20 != 19 { // 5% have no contact
			contactOf[s.ID] = emu.AddContact(s.Email, nil, nil)
		}
	}
	initialContacts := len(emu.Contacts())
	logf("PostgreSQL on port %d, %d students, emulator with %d contacts; logs in %s", srv.Port(), len(seeded), initialContacts, o.logDir)

	bin := filepath.Join(o.logDir, "progress-sync")
	args := []string{"build", "-o", bin}
	if o.race {
		args = append(args, "-race")
	}
	if b, err := exec.CommandContext(ctx, "go", append(args, "github.com/focusenglish/progress-sync/cmd/progress-sync")...).CombinedOutput(); err != nil {
		return false, fmt.Errorf("build progress-sync: %w\n%s", err, b)
	}
	u, _ := url.Parse(dbURL)
	u.User = url.UserPassword("postgres", dbPassword) // trust auth ignores it; the logs must not show it
	env := append(os.Environ(), "DATABASE_URL="+u.String(), "HUBSPOT_ACCESS_TOKEN="+token, "HUBSPOT_BASE_URL="+emu.URL(),
		"PROGRESS_SYNC_DEBOUNCE=500ms", "PROGRESS_SYNC_MAX_DELAY=3s", "PROGRESS_SYNC_RECONCILE=10s", "LOG_FORMAT=json", "LOG_LEVEL=info",
		"PROGRESS_SYNC_MODEL="+o.model)
	if o.mode == "handover" {
		// Students must be pending at every kill: a debounce longer than the kills' spacing.
		env = append(env, fmt.Sprintf("PROGRESS_SYNC_DEBOUNCE=%s", max(2*time.Second, o.every)), "PROGRESS_SYNC_MAX_DELAY=30s")
	}
	fleet := []*service{{bin: bin, logPath: filepath.Join(o.logDir, "service.log"), env: env}}
	if o.mode == "handover" {
		fleet = append(fleet, &service{bin: bin, logPath: filepath.Join(o.logDir, "service-b.log"), env: env})
	}
	for _, f := range fleet {
		if err := f.listenOnFreePort(); err != nil {
			return false, err
		}
		if err := f.start(); err != nil {
			return false, err
		}
		defer f.kill()
	}
	svc := fleet[0]

	c := &counters{faults: map[string]int{}}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var loadWG sync.WaitGroup
	loadWG.Add(2)
	go func() { defer loadWG.Done(); study(loadCtx, dbURL, ids, o, c) }()
	go func() { defer loadWG.Done(); watchRetention(loadCtx, dbURL, c) }()

	// The fault schedule: every other event a SIGKILL; PostgreSQL restarts at a third and two
	// thirds of the way; the rest rotate through walsender cuts and the emulator's faults,
	// each emulator fault lasting until the next event.
	rng := rand.New(rand.NewPCG(o.seed, 7))
	others := []string{"walsender", "429 storm", "5xx burst", "slow replies", "daily limit", "drift"}
	restartsAt := []time.Duration{o.duration / 3, 2 * o.duration / 3}
	deadline := started.Add(o.duration)
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		jitter := time.Duration(rng.Int64N(int64(o.every/2) + 1))
		select {
		case <-ctx.Done():
		case <-time.After(o.every/2 + jitter):
		}
		emu.SetFaults(hubspottest.Faults{})
		switch {
		case o.mode == "handover":
			if err := handOver(ctx, fleet, i, c, logf); err != nil {
				return false, err
			}
		case o.mode == "operator":
			if err := operate(ctx, svc, dbURL, i, c, logf); err != nil {
				return false, err
			}
		case len(restartsAt) > 0 && time.Since(started) >= restartsAt[0]:
			restartsAt = restartsAt[1:]
			logf("restarting PostgreSQL")
			if err := srv.Restart(ctx); err != nil {
				return false, fmt.Errorf("restart PostgreSQL: %w", err)
			}
			c.pgRestarts.Add(1)
		case i%2 == 0:
			svc.kill()
			c.kills.Add(1)
			if err := svc.start(); err != nil {
				return false, err
			}
		default:
			kind := others[(i/2)%len(others)]
			c.faults[kind]++
			switch kind {
			case "walsender":
				if n, err := cutWalsender(ctx, dbURL); err == nil && n > 0 {
					c.walsenderCuts.Add(1)
				}
			case "429 storm":
				emu.SetFaults(hubspottest.Faults{Rate429: 0.6})
			case "5xx burst":
				emu.SetFaults(hubspottest.Faults{Rate5xx: 0.6})
			case "slow replies":
				emu.SetFaults(hubspottest.Faults{Latency: 3 * time.Second}) // past --hubspot-timeout 2s
			case "daily limit":
				emu.SetFaults(hubspottest.Faults{DailyExhausted: true})
			case "drift":
				driftContacts(emu, contactOf, rng, 20)
			}
		}
	}
	emu.SetFaults(hubspottest.Faults{})
	stopLoad()
	loadWG.Wait()
	logf("faults stopped after %s; %d changes made; waiting for the buffer to drain", o.duration, c.changes.Load())
	for _, f := range fleet {
		if !f.running() {
			if err := f.start(); err != nil {
				return false, err
			}
		}
	}

	// Drained means: nothing pending, and every contact equal to the reference.
	drainStart := time.Now()
	var mismatches []string
	for {
		pending, err := pendingCount(ctx, dbURL)
		if err == nil && pending == 0 {
			mismatches, err = compare(ctx, dbURL, o.model, emu, contactOf)
			if err == nil && len(mismatches) == 0 {
				break
			}
		}
		if time.Since(drainStart) > 3*time.Minute || ctx.Err() != nil {
			if err != nil {
				return false, err
			}
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	drained := time.Since(drainStart)
	exit := 0
	for _, f := range fleet {
		exit = max(exit, f.stop())
	}

	created := len(emu.Contacts()) - initialContacts
	violations := emu.Violations()
	var leaks []string
	for _, f := range fleet {
		logs, _ := os.ReadFile(f.logPath)
		for _, secret := range []string{token, dbPassword} {
			if strings.Contains(string(logs), secret) {
				leaks = append(leaks, "a secret appears in "+filepath.Base(f.logPath))
			}
		}
	}
	st := emu.Stats()
	var faultNames []string
	for _, k := range others[1:] {
		faultNames = append(faultNames, fmt.Sprintf("%s %d", k, c.faults[k]))
	}
	fmt.Fprintf(out, "\nchaos summary (mode %s, model %s, %s, %d students, seed %d)\n", o.mode, o.model, o.duration, o.students, o.seed)
	fmt.Fprintf(out, "  changes made:        %d\n", c.changes.Load())
	fmt.Fprintf(out, "  SIGKILL restarts:    %d\n", c.kills.Load())
	switch o.mode {
	case "fire":
		fmt.Fprintf(out, "  PostgreSQL restarts: %d\n", c.pgRestarts.Load())
		fmt.Fprintf(out, "  walsender cuts:      %d\n", c.walsenderCuts.Load())
		fmt.Fprintf(out, "  emulator faults:     %s\n", strings.Join(faultNames, ", "))
	case "handover":
		fmt.Fprintf(out, "  SIGTERM (grace 1s):  %d\n", c.terms)
		fmt.Fprintf(out, "  takeovers:           %d (the standby took the slot)\n", c.takeovers)
		if len(c.pendingAtStop) > 0 {
			fmt.Fprintf(out, "  pending at stops:    min %d, max %d students\n", slices.Min(c.pendingAtStop), slices.Max(c.pendingAtStop))
		}
	case "operator":
		fmt.Fprintf(out, "  slot re-created:     %d (dropped, then progress-sync setup)\n", c.recreated)
		fmt.Fprintf(out, "  replays:             %d (from the stored checkpoint)\n", c.replays)
	}
	fmt.Fprintf(out, "  HubSpot requests:    %d (%d batch/update, %d answered with injected faults)\n", st.Requests, st.BatchUpdates, st.Faults)
	fmt.Fprintf(out, "  peak WAL retained:   %.1f MiB\n", float64(c.peakRetained.Load())/(1<<20))
	fmt.Fprintf(out, "  drained in:          %s; final SIGTERM exit status %d\n", drained.Round(100*time.Millisecond), exit)
	fmt.Fprintf(out, "  mismatches: %d, contacts created: %d, duplicate or invalid batches: %d, secrets in logs: %d\n",
		len(mismatches), created, len(violations), len(leaks))
	for i, m := range mismatches {
		if i == 10 {
			break
		}
		fmt.Fprintln(out, "    mismatch:", m)
	}
	for _, v := range violations {
		fmt.Fprintln(out, "    violation:", v)
	}

	var failures []string
	if len(mismatches) > 0 || created > 0 || len(violations) > 0 || len(leaks) > 0 || exit != 0 {
		failures = append(failures, "data lost, corrupted, created or leaked")
	}
	if c.kills.Load() < int64(o.minKills) {
		failures = append(failures, fmt.Sprintf("only %d SIGKILL restarts (want %d)", c.kills.Load(), o.minKills))
	}
	if c.pgRestarts.Load() < int64(o.minRestarts) {
		failures = append(failures, fmt.Sprintf("only %d PostgreSQL restarts (want %d)", c.pgRestarts.Load(), o.minRestarts))
	}
	switch o.mode {
	case "fire":
		for _, k := range others {
			if c.faults[k] == 0 {
				failures = append(failures, "fault never exercised: "+k)
			}
		}
	case "handover":
		if c.takeovers < 2 {
			failures = append(failures, fmt.Sprintf("only %d takeovers", c.takeovers))
		}
	case "operator":
		if c.recreated == 0 || c.replays == 0 {
			failures = append(failures, fmt.Sprintf("operator actions not exercised (%d re-created, %d replays)", c.recreated, c.replays))
		}
	}
	if len(failures) > 0 {
		fmt.Fprintf(out, "chaos: FAIL: %s (logs kept in %s)\n", strings.Join(failures, "; "), o.logDir)
		return false, nil
	}
	fmt.Fprintln(out, "chaos: PASS")
	if !keepLogs {
		os.RemoveAll(o.logDir)
	}
	return true, nil
}

// study makes changes at the chosen rate, reconnecting when PostgreSQL restarts.
// driftContacts changes a synced property on n random contacts behind the sync's back, as a
// person or a workflow would; the reconcile must write them back.
func driftContacts(emu *hubspottest.Server, contactOf map[uuid.UUID]string, rng *rand.Rand, n int) {
	ids := make([]string, 0, len(contactOf))
	for _, id := range contactOf {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	edits := []map[string]string{{"study_streak": "777"}, {"course_status": "completed"}, {"last_activity_date": "2001-01-01"}, {"lessons_completed": ""}}
	for i := 0; i < n && len(ids) > 0; i++ {
		emu.EditContact(ids[rng.IntN(len(ids))], edits[rng.IntN(len(edits))])
	}
}

func study(ctx context.Context, dbURL string, ids []uuid.UUID, o options, c *counters) {
	var studier interface {
		Step(ctx context.Context, conn *pgx.Conn) (pgtest.Change, error)
	} = pgtest.NewStudier(ids, o.seed+1)
	if o.model == "lesson_progress" {
		studier = pgtest.NewLessonStudier(ids, o.seed+1)
	}
	limit := rate.NewLimiter(rate.Limit(o.rate), 1)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	for ctx.Err() == nil {
		if err := limit.Wait(ctx); err != nil {
			return
		}
		if conn == nil {
			var err error
			if conn, err = pgx.Connect(ctx, dbURL); err != nil {
				conn = nil
				time.Sleep(200 * time.Millisecond)
				continue
			}
		}
		if _, err := studier.Step(ctx, conn); err != nil {
			conn.Close(context.Background())
			conn = nil
			continue
		}
		c.changes.Add(1)
	}
}

// watchRetention samples how much WAL the slot keeps the server from recycling.
func watchRetention(ctx context.Context, dbURL string, c *counters) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			continue
		}
		var retained int64
		if conn.QueryRow(ctx, `SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint FROM pg_replication_slots`).Scan(&retained) == nil {
			for {
				cur := c.peakRetained.Load()
				if retained <= cur || c.peakRetained.CompareAndSwap(cur, retained) {
					break
				}
			}
		}
		conn.Close(ctx)
	}
}

func cutWalsender(ctx context.Context, dbURL string) (int, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE active_pid IS NOT NULL`).Scan(&n)
	return n, err
}

func pendingCount(ctx context.Context, dbURL string) (int, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(ctx)
	sum, err := state.Summarize(ctx, conn, "progress_sync")
	return sum.Pending, err
}

// compare lists the contact values that differ from the reference metrics.
func compare(ctx context.Context, dbURL, model string, emu *hubspottest.Server, contactOf map[uuid.UUID]string) ([]string, error) {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	want, err := reference.Of(model)(ctx, conn)
	if err != nil {
		return nil, err
	}
	return reference.Differences(emu, want, contactOf), nil
}

// service is the progress-sync process, restarted after every kill, logging to one file.
type service struct {
	bin, logPath string
	env          []string
	listen       string   // the address of its /readyz
	args         []string // the command; default run
	mu           sync.Mutex
	cmd          *exec.Cmd
	done         chan struct{}
}

func (s *service) start() error {
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	command := s.args
	if len(command) == 0 {
		command = []string{"run", "--grace", "5s"}
	}
	cmd := exec.Command(s.bin, append(command, "--status-interval", "1s", "--hubspot-timeout", "2s", "--daily-limit-pause", "3s",
		"--recheck-unmatched", "10s", "--listen", s.listen)...)
	cmd.Env, cmd.Stdout, cmd.Stderr = s.env, f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start progress-sync: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

func (s *service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *service) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM and returns the exit status (-1 if it had to be killed).
func (s *service) stop() int {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return -1
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	case <-time.After(time.Minute):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		return -1
	}
}

// listenOnFreePort gives the service a fixed loopback port, so its /readyz can be asked.
func (s *service) listenOnFreePort() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	s.listen = ln.Addr().String()
	return ln.Close()
}

// ready asks the service's /readyz: 200 means it holds the slot and streams.
func (s *service) ready() bool {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get("http://" + s.listen + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// handOver stops whichever instance holds the slot, by SIGKILL or by SIGTERM with a short
// grace in turn, and starts it again (it comes back as the standby); then it waits for the
// other one to take over.
func handOver(ctx context.Context, fleet []*service, i int, c *counters, logf func(string, ...any)) error {
	holder, other := -1, -1
	for j, f := range fleet {
		if f.ready() {
			holder, other = j, 1-j
		}
	}
	if holder < 0 {
		return nil // between holders: the next step finds one
	}
	h := fleet[holder]
	if n, err := pendingCount(ctx, fleet[0].dbURL()); err == nil {
		c.pendingAtStop = append(c.pendingAtStop, n)
	}
	if i%2 == 0 {
		h.kill()
		c.kills.Add(1)
	} else {
		h.stop()
		c.terms++
	}
	// The other instance takes the slot; only then does this one come back, as its standby.
	deadline := time.Now().Add(60 * time.Second)
	for ctx.Err() == nil && !fleet[other].ready() {
		if time.Now().After(deadline) {
			logf("no takeover within 60 s of stopping instance %d", holder)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fleet[other].ready() {
		c.takeovers++
	}
	h.args = []string{"run", "--grace", "1s"}
	return h.start()
}

// operate does what an operator might, in turn: a SIGKILL restart; the service stopped, its
// slot dropped and re-created by setup, the service started again; the service stopped and
// started as replay from the stored checkpoint.
func operate(ctx context.Context, svc *service, dbURL string, i int, c *counters, logf func(string, ...any)) error {
	switch i % 3 {
	case 0:
		svc.kill()
		c.kills.Add(1)
		svc.args = nil
		return svc.start()
	case 1:
		svc.stop()
		if err := runSQL(ctx, dbURL, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'progress_sync'`); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, svc.bin, "setup")
		cmd.Env = svc.env
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("progress-sync setup: %w\n%s", err, out)
		}
		c.recreated++
		svc.args = nil
		return svc.start()
	default:
		svc.stop()
		conn, err := pgx.Connect(ctx, dbURL)
		if err != nil {
			return err
		}
		sum, err := state.Summarize(ctx, conn, "progress_sync")
		conn.Close(ctx)
		if err != nil {
			return err
		}
		if sum.Checkpoint.LSN == 0 {
			svc.args = nil
			return svc.start()
		}
		c.replays++
		svc.args = []string{"replay", "--from-lsn", sum.Checkpoint.LSN.String(), "--grace", "5s"}
		logf("replay from the stored checkpoint %s", sum.Checkpoint.LSN)
		return svc.start()
	}
}

func runSQL(ctx context.Context, dbURL, sql string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql)
	return err
}

// dbURL is the DATABASE_URL the service runs with.
func (s *service) dbURL() string {
	for _, e := range s.env {
		if v, ok := strings.CutPrefix(e, "DATABASE_URL="); ok {
			return v
		}
	}
	return ""
}

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics/reference"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

const token = "pat-bench-0123456789abcdef"

// harness is one scenario's environment: PostgreSQL, a database, the emulator and the built
// binary, with a working directory for logs.
type harness struct {
	out     io.Writer
	started time.Time
	dir     string
	keep    bool

	srv   *pgtest.Server
	dbURL string
	emu   *hubspottest.Server
	bin   string
}

type harnessOptions struct {
	logDir    string
	rateLimit int // emulator's requests per 10 s; 0 = unlimited
	pgConfig  map[string]string
}

// startScenario parses a scenario's flags and starts its harness, named after the flag set;
// opts are read once the flags are parsed.
func startScenario(ctx context.Context, out io.Writer, fs *flag.FlagSet, args []string, opts func() harnessOptions) (*harness, error) {
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return newHarness(ctx, out, fs.Name(), opts())
}

func newHarness(ctx context.Context, out io.Writer, name string, o harnessOptions) (*harness, error) {
	h := &harness{out: out, started: time.Now(), dir: o.logDir, keep: o.logDir != ""}
	if h.dir == "" {
		dir, err := os.MkdirTemp("", "progress-sync-bench-"+name+"-")
		if err != nil {
			return nil, err
		}
		h.dir = dir
	}
	if err := os.MkdirAll(h.dir, 0o755); err != nil {
		return nil, err
	}
	h.bin = filepath.Join(h.dir, "progress-sync")
	build := exec.CommandContext(ctx, "go", "build", "-o", h.bin, "github.com/focusenglish/progress-sync/cmd/progress-sync")
	if b, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build progress-sync: %w\n%s", err, b)
	}
	settings := map[string]string{
		// Keep checkpoints out of the timed windows; the WAL of a run is retained by its slots anyway.
		"max_wal_size":       "16GB",
		"checkpoint_timeout": "30min",
	}
	for k, v := range o.pgConfig {
		settings[k] = v
	}
	srv, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		return nil, err
	}
	h.srv = srv
	if h.dbURL, err = srv.CreateDatabase(ctx, "bench_"+name); err != nil {
		h.close()
		return nil, err
	}
	h.emu = hubspottest.NewServer(hubspottest.Options{Token: token, RateLimit: o.rateLimit, Seed: 1})
	h.logf("PostgreSQL on 127.0.0.1:%d, emulator at %s (rate limit %s), work dir %s", srv.Port(), h.emu.URL(), limitText(o.rateLimit), h.dir)
	return h, nil
}

func limitText(n int) string {
	if n == 0 {
		return "none"
	}
	return fmt.Sprintf("%d/10s", n)
}

func (h *harness) close() {
	if h.emu != nil {
		h.emu.Close()
	}
	if h.srv != nil {
		_ = h.srv.Stop()
	}
	if !h.keep {
		_ = os.RemoveAll(h.dir)
	}
}

func (h *harness) logf(format string, args ...any) {
	fmt.Fprintf(h.out, "bench %7.1fs: %s\n", time.Since(h.started).Seconds(), fmt.Sprintf(format, args...))
}

func (h *harness) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, h.dbURL)
}

// seed loads synthetic students and gives every one of them a contact.
func (h *harness) seed(ctx context.Context, students, maxLessons int, contacts bool) ([]pgtest.SeededStudent, error) {
	conn, err := h.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	began := time.Now()
	seeded, err := pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: students, Seed: 1, MaxLessons: maxLessons})
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "VACUUM ANALYZE"); err != nil {
		return nil, err
	}
	var rows int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM public.course_progress").Scan(&rows); err != nil {
		return nil, err
	}
	h.logf("seeded %d students, %d course_progress rows (%.1f per student) in %s", len(seeded), rows,
		float64(rows)/float64(max(1, len(seeded))), time.Since(began).Round(100*time.Millisecond))
	if contacts {
		for _, s := range seeded {
			h.emu.AddContact(s.Email, nil, nil)
		}
	}
	return seeded, nil
}

// env is the service's environment.
func (h *harness) env(extra ...string) []string {
	return append(append(os.Environ(), "DATABASE_URL="+h.dbURL, "HUBSPOT_ACCESS_TOKEN="+token,
		"HUBSPOT_BASE_URL="+h.emu.URL(), "LOG_FORMAT=json", "LOG_LEVEL=info"), extra...)
}

// oneShot runs a progress-sync command to completion and returns its stdout.
func (h *harness) oneShot(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Env = h.env()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("progress-sync %s: %w\n%s%s", strings.Join(args, " "), err, out, tail(stderr.String(), 2000))
	}
	return string(out), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// timedProcess is a command run under /usr/bin/time -v, so that its peak RSS is reported by
// a public tool; the bench also samples VmHWM of the child itself.
type timedProcess struct {
	cmd      *exec.Cmd
	timeFile string
	logPath  string
	began    time.Time
	done     chan struct{}
	waitErr  error
	child    int // pid of the measured process (the child of time)
}

// startTimed starts /usr/bin/time -v -o <dir>/<name>.time <argv...>, with stdout and stderr
// to <dir>/<name>.log.
func (h *harness) startTimed(name string, env []string, argv ...string) (*timedProcess, error) {
	timeBin, err := exec.LookPath("/usr/bin/time")
	if err != nil {
		return nil, errors.New("/usr/bin/time not found: apt-get install -y time")
	}
	p := &timedProcess{timeFile: filepath.Join(h.dir, name+".time"), logPath: filepath.Join(h.dir, name+".log"), done: make(chan struct{})}
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(timeBin, append([]string{"-v", "-o", p.timeFile}, argv...)...)
	p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = env, f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.began = time.Now()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() { p.waitErr = p.cmd.Wait(); f.Close(); close(p.done) }()
	// The child appears a moment after time starts.
	for i := 0; i < 200 && p.child == 0; i++ {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.cmd.Process.Pid, p.cmd.Process.Pid))
		if fields := strings.Fields(string(b)); len(fields) > 0 {
			p.child, _ = strconv.Atoi(fields[0])
			break
		}
		select {
		case <-p.done:
			return p, fmt.Errorf("%s exited at once: %v\n%s", name, p.waitErr, p.logTail())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if p.child == 0 {
		return p, fmt.Errorf("%s: no child process under /usr/bin/time", name)
	}
	return p, nil
}

func (p *timedProcess) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	return tail(string(b), 3000)
}

// running reports whether the process is still alive.
func (p *timedProcess) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the measured process and waits for it (SIGKILL after limit).
func (p *timedProcess) stop(limit time.Duration) error {
	if p.running() {
		_ = syscall.Kill(p.child, syscall.SIGTERM)
	}
	select {
	case <-p.done:
	case <-time.After(limit):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("did not stop within %s", limit)
	}
	return nil
}

// wait waits for the process to exit by itself.
func (p *timedProcess) wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return ctx.Err()
	}
}

// timeReport is what /usr/bin/time -v printed.
type timeReport struct {
	maxRSSKiB      int64
	userS, systemS float64
	elapsed        string
	exitStatus     int
}

func (p *timedProcess) report() (timeReport, error) {
	b, err := os.ReadFile(p.timeFile)
	if err != nil {
		return timeReport{}, err
	}
	var r timeReport
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ": ")
		if !ok {
			continue
		}
		switch {
		case k == "Maximum resident set size (kbytes)":
			r.maxRSSKiB, _ = strconv.ParseInt(v, 10, 64)
		case k == "User time (seconds)":
			r.userS, _ = strconv.ParseFloat(v, 64)
		case k == "System time (seconds)":
			r.systemS, _ = strconv.ParseFloat(v, 64)
		case strings.HasPrefix(k, "Elapsed (wall clock) time"):
			r.elapsed = v
		case k == "Exit status":
			r.exitStatus, _ = strconv.Atoi(v)
		}
	}
	return r, nil
}

// procStatus reads a field in kB (VmHWM, VmRSS) of /proc/<pid>/status.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// service is progress-sync run under /usr/bin/time -v.
type service struct {
	*timedProcess
}

// startService starts `progress-sync run` with the given flags and extra environment.
func (h *harness) startService(name string, env []string, flags ...string) (*service, error) {
	argv := append([]string{h.bin, "run", "--listen", "127.0.0.1:0"}, flags...)
	p, err := h.startTimed(name, h.env(env...), argv...)
	if err != nil {
		if p != nil && p.running() {
			_ = p.stop(10 * time.Second)
		}
		return nil, err
	}
	return &service{p}, nil
}

// metricsAddr finds the telemetry address in the service's log ("serving /metrics" line).
func (s *service) metricsAddr(ctx context.Context) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		f, err := os.Open(s.logPath)
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var line struct {
					Msg  string `json:"msg"`
					Addr string `json:"addr"`
				}
				if json.Unmarshal(sc.Bytes(), &line) == nil && strings.Contains(line.Msg, "serving /metrics") && line.Addr != "" {
					f.Close()
					return line.Addr, nil
				}
			}
			f.Close()
		}
		if !s.running() {
			return "", fmt.Errorf("service exited:\n%s", s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", errors.New("no \"serving /metrics\" line in the service log")
}

// scrape reads the Prometheus text of the service's /metrics.
func scrape(ctx context.Context, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// histogram is a Prometheus histogram's cumulative buckets.
type histogram struct {
	bounds []float64 // upper bounds, ascending, +Inf last
	counts []float64 // cumulative
	sum    float64
	count  float64
}

// parseHistogram reads metric name's buckets from Prometheus text.
func parseHistogram(text, name string) histogram {
	var h histogram
	type bucket struct{ le, n float64 }
	var bs []bucket
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, name+"_bucket{"):
			i := strings.Index(line, `le="`)
			j := strings.Index(line[i+4:], `"`)
			le, _ := strconv.ParseFloat(line[i+4:i+4+j], 64)
			if line[i+4:i+4+j] == "+Inf" {
				le = math.Inf(1)
			}
			n, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			bs = append(bs, bucket{le, n})
		case strings.HasPrefix(line, name+"_sum "):
			h.sum, _ = strconv.ParseFloat(strings.Fields(line)[1], 64)
		case strings.HasPrefix(line, name+"_count "):
			h.count, _ = strconv.ParseFloat(strings.Fields(line)[1], 64)
		}
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	for _, b := range bs {
		h.bounds = append(h.bounds, b.le)
		h.counts = append(h.counts, b.n)
	}
	return h
}

// minus is h with an earlier snapshot subtracted.
func (h histogram) minus(o histogram) histogram {
	out := histogram{bounds: h.bounds, counts: make([]float64, len(h.counts)), sum: h.sum - o.sum, count: h.count - o.count}
	for i := range h.counts {
		out.counts[i] = h.counts[i]
		if i < len(o.counts) {
			out.counts[i] -= o.counts[i]
		}
	}
	return out
}

// quantile interpolates linearly within the bucket holding q, as PromQL's histogram_quantile.
func (h histogram) quantile(q float64) float64 {
	if len(h.counts) == 0 || h.counts[len(h.counts)-1] == 0 {
		return math.NaN()
	}
	rank := q * h.counts[len(h.counts)-1]
	for i, c := range h.counts {
		if c >= rank {
			lo, below := 0.0, 0.0
			if i > 0 {
				lo, below = h.bounds[i-1], h.counts[i-1]
			}
			if math.IsInf(h.bounds[i], 1) {
				return lo
			}
			if c == below {
				return h.bounds[i]
			}
			return lo + (h.bounds[i]-lo)*(rank-below)/(c-below)
		}
	}
	return h.bounds[len(h.bounds)-1]
}

// promValue sums the samples of a metric whose line starts with prefix.
func promValue(text, prefix string) float64 {
	var total float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			v, _ := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			total += v
		}
	}
	return total
}

// currentLSN is the server's WAL insert position.
func currentLSN(ctx context.Context, conn *pgx.Conn) (pglogrepl.LSN, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		return 0, err
	}
	return pglogrepl.ParseLSN(s)
}

// slotPosition reads a slot's confirmed_flush_lsn and whether a walsender uses it.
func slotPosition(ctx context.Context, conn *pgx.Conn, slot string) (pglogrepl.LSN, bool, error) {
	var s string
	var active bool
	err := conn.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn::text, '0/0'), active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&s, &active)
	if err != nil {
		return 0, false, fmt.Errorf("read slot %s: %w", slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	return lsn, active, err
}

// waitSlot polls until slot has confirmed at least lsn and returns when it did (and when
// the slot first became active, zero if it already was).
func waitSlot(ctx context.Context, conn *pgx.Conn, slot string, lsn pglogrepl.LSN, limit time.Duration, alive func() bool) (reached, active time.Time, err error) {
	deadline := time.Now().Add(limit)
	for {
		got, act, err := slotPosition(ctx, conn, slot)
		if err != nil {
			return reached, active, err
		}
		now := time.Now()
		if act && active.IsZero() {
			active = now
		}
		if got >= lsn {
			return now, active, nil
		}
		if now.After(deadline) {
			return reached, active, fmt.Errorf("slot %s confirmed %s after %s, want %s", slot, got, limit, lsn)
		}
		if alive != nil && !alive() {
			return reached, active, errors.New("the service exited")
		}
		select {
		case <-ctx.Done():
			return reached, active, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func pendingCount(ctx context.Context, conn *pgx.Conn) (int, error) {
	sum, err := state.Summarize(ctx, conn, serviceSlot)
	return sum.Pending, err
}

// waitQueued waits, looking every interval, until at least n students are pending: the
// service's first start has queued them all.
func waitQueued(ctx context.Context, conn *pgx.Conn, svc *service, n int, every time.Duration) error {
	for {
		pending, err := pendingCount(ctx, conn)
		if err == nil && pending >= n {
			return nil
		}
		if !svc.running() {
			return fmt.Errorf("service exited:\n%s", svc.logTail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// waitDrained waits until nothing is pending and every contact equals metrics/reference.
func (h *harness) waitDrained(ctx context.Context, conn *pgx.Conn, contactOf map[uuid.UUID]string, limit time.Duration, alive func() bool) (time.Duration, error) {
	began := time.Now()
	var last []string
	for time.Since(began) < limit {
		if alive != nil && !alive() {
			return 0, errors.New("the service exited")
		}
		n, err := pendingCount(ctx, conn)
		if err != nil {
			return 0, err
		}
		if n == 0 {
			last, err = compare(ctx, conn, h.emu, contactOf)
			if err != nil {
				return 0, err
			}
			if len(last) == 0 {
				return time.Since(began), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("not drained after %s (%d mismatches, first: %v)", limit, len(last), first(last))
}

func first(s []string) string {
	if len(s) == 0 {
		return "pending students remain"
	}
	return s[0]
}

// compare lists contact values that differ from the reference metrics.
func compare(ctx context.Context, conn *pgx.Conn, emu *hubspottest.Server, contactOf map[uuid.UUID]string) ([]string, error) {
	want, err := reference.Compute(ctx, conn)
	if err != nil {
		return nil, err
	}
	return reference.Differences(emu, want, contactOf), nil
}

// contactMap links each seeded student to its contact in the emulator.
func (h *harness) contactMap(seeded []pgtest.SeededStudent) map[uuid.UUID]string {
	out := make(map[uuid.UUID]string, len(seeded))
	for _, s := range seeded {
		if c, ok := h.emu.ContactByEmail(s.Email); ok {
			out[s.ID] = c.ID
		}
	}
	return out
}

// hwmSampler keeps the highest VmHWM seen of a pid until stopped.
type hwmSampler struct {
	mu   sync.Mutex
	peak int64
	stop chan struct{}
	done chan struct{}
}

func sampleHWM(pid int) *hwmSampler {
	s := &hwmSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if v := procStatus(pid, "VmHWM"); v > 0 {
				s.mu.Lock()
				s.peak = max(s.peak, v)
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// finish stops sampling and returns the peak in KiB.
func (s *hwmSampler) finish() int64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}

func mib(kib int64) float64 { return float64(kib) / 1024 }

// verdict prints met or NOT met.
func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

// shellJoin quotes argv for printing as a command line.
func shellJoin(argv []string) string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t'\"$\\=") && !strings.HasPrefix(a, "--") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			out[i] = a
		}
	}
	return strings.Join(out, " ")
}

// streaming is a seeded database with the service running and its first-start backfill
// drained: where the economy and freshness scenarios begin.
type streaming struct {
	seeded    []pgtest.SeededStudent
	contactOf map[uuid.UUID]string
	conn      *pgx.Conn
	svc       *service
	addr      string // the service's /metrics address
}

// startStreaming seeds students (all with contacts), starts `progress-sync run` with the
// given debounce and waits until the first-start backfill has filled every contact. The
// caller closes conn and stops svc.
func (h *harness) startStreaming(ctx context.Context, students int, debounce time.Duration, env ...string) (*streaming, error) {
	seeded, err := h.seed(ctx, students, 0, true)
	if err != nil {
		return nil, err
	}
	st := &streaming{seeded: seeded, contactOf: h.contactMap(seeded)}
	if st.conn, err = h.connect(ctx); err != nil {
		return nil, err
	}
	if st.svc, err = h.startService("run", append([]string{"PROGRESS_SYNC_DEBOUNCE=" + debounce.String()}, env...), "--status-interval", "1s"); err != nil {
		st.conn.Close(context.Background())
		return nil, err
	}
	if st.addr, err = st.svc.metricsAddr(ctx); err == nil {
		_, err = h.waitDrained(ctx, st.conn, st.contactOf, 5*time.Minute, st.svc.running)
	}
	if err != nil {
		st.svc.stop(time.Minute) //nolint:errcheck
		st.conn.Close(context.Background())
		return nil, err
	}
	return st, nil
}

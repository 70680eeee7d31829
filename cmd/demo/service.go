package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// service is a running `progress-sync run`, started as the operator would start it.
type service struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the process has exited; code is then set
	code    int
}

// startService starts `progress-sync run` with its log in logPath, serving its status page and
// metrics on listen.
func startService(bin, logPath, listen string, env []string) (*service, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create the progress-sync log: %w", err)
	}
	cmd := exec.Command(bin, "run", "--listen", listen)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: Ctrl-C reaches only the demo, which stops the simulator
		// first and then sends SIGTERM itself, in order.
		Setpgid: true,
		// Should the demo die without stopping it, it still gets the SIGTERM.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start progress-sync run: %w", err)
	}
	s := &service{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		s.code = cmd.ProcessState.ExitCode()
		close(s.exited)
	}()
	return s, nil
}

// pickListen returns the service's usual address, 127.0.0.1:9187, when it is free (so the
// status page is where the docs say), else a free port.
func pickListen() string {
	for _, addr := range []string{"127.0.0.1:9187", "127.0.0.1:0"} {
		if ln, err := net.Listen("tcp", addr); err == nil {
			addr = ln.Addr().String()
			ln.Close()
			return addr
		}
	}
	return "127.0.0.1:0"
}

// running says whether the process has not exited yet.
func (s *service) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits for the exit; after timeout it kills the process and says so.
func (s *service) stop(timeout time.Duration) (code int, err error) {
	if s.running() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.exited:
		return s.code, nil
	case <-time.After(timeout):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		return s.code, fmt.Errorf("progress-sync did not exit within %s of SIGTERM; killed it", timeout)
	}
}

// logLines returns the non-empty lines of the service's log.
func (s *service) logLines() []string {
	b, _ := os.ReadFile(s.logPath)
	var out []string
	for _, l := range strings.Split(string(bytes.TrimSpace(b)), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// logTail is the last n lines of the log, indented.
func (s *service) logTail(n int) string {
	lines := s.logLines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "  (empty)"
	}
	return "  " + strings.Join(lines, "\n  ")
}

// logSummary counts the log's lines by level and message: `12 warnings ("no HubSpot contact
// has this email" 12)`. The demo runs the service at level warn, so each line deserves a look.
func logSummary(lines []string) string {
	type key struct{ level, msg string }
	counts := map[key]int{}
	var order []key
	for _, l := range lines {
		k := key{field(l, "level"), field(l, "msg")}
		if k.msg == "" {
			k.msg = l
		}
		if counts[k] == 0 {
			order = append(order, k)
		}
		counts[k]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d × level=%s %q", counts[k], k.level, k.msg))
	}
	return strings.Join(parts, "; ")
}

// field reads name=value or name="quoted value" from a logrus text line.
func field(line, name string) string {
	i := strings.Index(line, " "+name+"=")
	if i < 0 {
		return ""
	}
	rest := line[i+len(name)+2:]
	if strings.HasPrefix(rest, `"`) {
		if v, err := strconv.QuotedPrefix(rest); err == nil {
			u, _ := strconv.Unquote(v)
			return u
		}
	}
	v, _, _ := strings.Cut(rest, " ")
	return v
}

// runCommand runs a one-shot progress-sync command and returns its output, indented.
func runCommand(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = env
	b, err := cmd.CombinedOutput()
	text := "  " + strings.ReplaceAll(strings.TrimRight(string(b), "\n"), "\n", "\n  ")
	if err != nil {
		return text, fmt.Errorf("progress-sync %s: %w\n%s", strings.Join(args, " "), err, text)
	}
	return text, nil
}

// serviceEnv is the demo's environment for progress-sync: the caller's, minus any setting of
// its own that could point it elsewhere, plus the demo's.
func serviceEnv(dbURL, hubspotURL string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "DATABASE_URL", name == "LOG_LEVEL", name == "LOG_FORMAT",
			strings.HasPrefix(name, "HUBSPOT_"), strings.HasPrefix(name, "PROGRESS_SYNC_"), strings.HasPrefix(name, "SUPABASE_"):
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"DATABASE_URL="+dbURL,
		"HUBSPOT_ACCESS_TOKEN="+demoToken,
		"HUBSPOT_BASE_URL="+hubspotURL,
		"LOG_FORMAT=text",
		"LOG_LEVEL=warn",
		"PROGRESS_SYNC_DEBOUNCE="+debounce.String(),
		"PROGRESS_SYNC_MAX_DELAY="+maxDelay.String(),
	)
}

// Package pgtest runs a throwaway PostgreSQL server with wal_level=logical, loaded with the
// Focus English reference schema, for tests and the demo.
//
// A Server is started once per test package (see Main) and hands every test its own database
// cloned from a template, so tests stay independent without paying for initdb each time.
// Setting PROGRESS_SYNC_TEST_DATABASE_URL points everything at an existing server instead.
package pgtest

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Schema is the Focus English reference schema (a copy of the platform's migrations): the
// PRD's tables, then the unified lesson progress and the course catalogue its model needs.
var Schema = prdSchema + "\n" + UnifiedSchema

//go:embed testdata/focus_english.sql
var prdSchema string

// UnifiedSchema is the platform's unified lesson progress (user_lesson_progress, since March
// 2026) and the course_catalog table of the lesson_progress model.
//
//go:embed testdata/focus_english_unified.sql
var UnifiedSchema string

// EnvDatabaseURL names an existing server to use instead of starting one. The role must be
// allowed to create databases and replication slots, and the server must run wal_level=logical.
const EnvDatabaseURL = "PROGRESS_SYNC_TEST_DATABASE_URL"

const templateName = "pgtest_template"

// installHint tells a developer how to get the server binaries this package needs.
const installHint = "install PostgreSQL 15 or newer (Debian: `apt-get install -y postgresql`), " +
	"or set " + EnvDatabaseURL + " to a server with wal_level=logical"

// ErrNotInstalled means no PostgreSQL 15+ server binaries were found.
var ErrNotInstalled = errors.New("PostgreSQL 15+ server binaries (initdb, postgres) not found")

// Options tune a started server.
type Options struct {
	// Dir holds the data directory; empty means a new temporary directory removed by Stop.
	Dir string
	// Port to listen on; 0 picks a free one.
	Port int
	// Settings are extra `-c name=value` server settings.
	Settings map[string]string
	// Local starts a server of its own even when EnvDatabaseURL names one: for tests that
	// reconfigure the server (TLS).
	Local bool
}

// Server is a running PostgreSQL server (or an external one named by EnvDatabaseURL).
type Server struct {
	base    *url.URL // connection URL with an empty database name
	dataDir string
	ownsDir bool
	binDir  string
	port    int
	cred    *syscall.Credential
	opts    Options

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	counter int
}

// Start starts a server, or connects to the one named by EnvDatabaseURL, and prepares the
// template database holding Schema.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if raw := os.Getenv(EnvDatabaseURL); raw != "" && !opts.Local {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("%s is not a valid URL: %w", EnvDatabaseURL, err)
		}
		s := &Server{base: u}
		if err := s.prepareTemplate(ctx); err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := startLocal(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := s.prepareTemplate(ctx); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

func startLocal(ctx context.Context, opts Options) (*Server, error) {
	binDir, err := findBinDir()
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir, opts: opts, dataDir: opts.Dir}
	if s.dataDir == "" {
		dir, err := os.MkdirTemp("", "progress-sync-pg-")
		if err != nil {
			return nil, fmt.Errorf("create data directory: %w", err)
		}
		s.dataDir, s.ownsDir = dir, true
	}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		cred, err := postgresCredential()
		if err != nil {
			return nil, err
		}
		s.cred = cred
		if err := os.Chown(s.dataDir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("hand %s to the postgres user: %w", s.dataDir, err)
		}
	}
	pgdata := filepath.Join(s.dataDir, "data")
	if _, err := os.Stat(filepath.Join(pgdata, "PG_VERSION")); err != nil {
		out, err := s.command(ctx, "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust",
			"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("initdb: %w\n%s", err, out)
		}
	}
	s.port = opts.Port
	if s.port == 0 {
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
	}
	s.base = &url.URL{Scheme: "postgres", User: url.User("postgres"),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)), RawQuery: "sslmode=disable"}
	if err := s.Restart(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Restart starts the server process, stopping it first if it runs. Tests use it to cut every
// connection, as an operator's restart or a failover would.
func (s *Server) Restart(ctx context.Context) error {
	if s.binDir == "" {
		return errors.New("pgtest: cannot restart an external server")
	}
	if err := s.stopProcess(); err != nil {
		return err
	}
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(s.port),
		"unix_socket_directories": s.dataDir,
		"wal_level":               "logical",
		"max_replication_slots":   "32",
		"max_wal_senders":         "32",
		"max_connections":         "200",
		// Durability of the test server itself is not under test: the sync's crash safety is,
		// and a SIGKILL of the sync does not lose writes the server acknowledged.
		"fsync":              "off",
		"synchronous_commit": "off",
		"full_page_writes":   "off",
		"shared_buffers":     "64MB",
	}
	for k, v := range s.opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := []string{"-D", filepath.Join(s.dataDir, "data")}
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	logFile, err := os.OpenFile(filepath.Join(s.dataDir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open server log: %w", err)
	}
	cmd := s.command(context.Background(), "postgres", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return s.waitReady(ctx, exited)
}

func (s *Server) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("postgres exited during start-up; log:\n%s", s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections: %w; log:\n%s", err, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dataDir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (s *Server) stopProcess() error {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	// SIGINT is PostgreSQL's "fast shutdown": it disconnects clients, so a replication
	// connection cannot hold it up.
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	return nil
}

// Stop shuts the server down and removes its temporary data directory. For an external server
// it does nothing.
func (s *Server) Stop() error {
	if s.binDir == "" {
		return nil
	}
	err := s.stopProcess()
	if s.ownsDir {
		if rmErr := os.RemoveAll(s.dataDir); rmErr != nil && err == nil {
			err = rmErr
		}
	}
	return err
}

// URL returns a connection URL for database name.
func (s *Server) URL(database string) string {
	u := *s.base
	u.Path = "/" + database
	return u.String()
}

// DataDir is the server's data directory (empty for an external server).
func (s *Server) DataDir() string { return s.dataDir }

// Port is the server's TCP port (0 for an external server).
func (s *Server) Port() int { return s.port }

// External reports whether the server is one the tests did not start (EnvDatabaseURL).
func (s *Server) External() bool { return s.binDir == "" }

// CreateDatabase creates a database holding Schema, named after hint, and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context, hint string) (string, error) {
	s.mu.Lock()
	s.counter++
	name := fmt.Sprintf("t_%s_%d_%d", sanitize(hint), os.Getpid(), s.counter)
	s.mu.Unlock()
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to test server: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+templateName); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return s.URL(name), nil
}

// DropDatabase drops the database behind url with its replication slots, which would
// otherwise keep it from being dropped.
func (s *Server) DropDatabase(ctx context.Context, dbURL string) error {
	u, err := url.Parse(dbURL)
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(u.Path, "/")
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to test server: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
		WHERE database = $1 AND active_pid IS NOT NULL`, name); err != nil {
		return fmt.Errorf("stop walsenders of %s: %w", name, err)
	}
	// A terminated walsender may hold its slot for a moment longer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1`, name)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("drop replication slots of %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

func (s *Server) prepareTemplate(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to test server: %w", err)
	}
	defer conn.Close(ctx)
	var walLevel string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("test server has wal_level=%s; logical replication tests need wal_level=logical", walLevel)
	}
	// Another test package may be preparing the same template on a shared external server.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(727274)"); err != nil {
		return fmt.Errorf("lock template: %w", err)
	}
	defer conn.Exec(ctx, "SELECT pg_advisory_unlock(727274)") //nolint:errcheck
	var current string
	err = conn.QueryRow(ctx, "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = $1", templateName).Scan(&current)
	want := schemaFingerprint()
	if err == nil && current == want {
		return nil
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("look up template: %w", err)
	}
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+templateName+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop stale template: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+templateName); err != nil {
		return fmt.Errorf("create template: %w", err)
	}
	tconn, err := pgx.Connect(ctx, s.URL(templateName))
	if err != nil {
		return fmt.Errorf("connect to template: %w", err)
	}
	_, err = tconn.Exec(ctx, Schema)
	tconn.Close(ctx)
	if err != nil {
		return fmt.Errorf("load schema into template: %w", err)
	}
	if _, err := conn.Exec(ctx, "COMMENT ON DATABASE "+templateName+" IS '"+want+"'"); err != nil {
		return fmt.Errorf("mark template: %w", err)
	}
	return nil
}

// schemaFingerprint marks the template with the schema it holds, so an external server's
// stale template is rebuilt when the schema changes.
func schemaFingerprint() string {
	var h uint32 = 2166136261
	for i := 0; i < len(Schema); i++ {
		h = (h ^ uint32(Schema[i])) * 16777619
	}
	return fmt.Sprintf("pgtest schema %08x", h)
}

func (s *Server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, name), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	cmd.Dir = s.dataDir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	return cmd
}

func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, the test server must run as the postgres user, which does not exist: %w; %s", err, installHint)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// BinDirEnv names a directory holding initdb, pg_ctl and postgres to test against instead of
// the newest one installed (.ci/run points it at PostgreSQL 17 from the npm registry).
const BinDirEnv = "PROGRESS_SYNC_TEST_PG_BIN"

// findBinDir finds initdb and postgres of version 15 or newer: BinDirEnv when set, else
// Debian's, which it keeps off PATH in /usr/lib/postgresql/<version>/bin.
func findBinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		if !isExecutable(filepath.Join(d, "initdb")) || !isExecutable(filepath.Join(d, "postgres")) {
			return "", fmt.Errorf("%w: %s=%s holds no initdb and postgres", ErrNotInstalled, BinDirEnv, d)
		}
		return d, nil
	}
	var dirs []string
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	dirs = append(dirs, matches...)
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
	}
	var tried []string
	for _, d := range dirs {
		if !isExecutable(filepath.Join(d, "initdb")) || !isExecutable(filepath.Join(d, "postgres")) {
			continue
		}
		out, err := exec.Command(filepath.Join(d, "postgres"), "--version").Output()
		if err != nil {
			continue
		}
		if v := majorVersion(string(out)); v >= 15 {
			return d, nil
		}
		tried = append(tried, fmt.Sprintf("%s (%s)", d, bytes.TrimSpace(out)))
	}
	if len(tried) > 0 {
		return "", fmt.Errorf("%w: only older versions in %s; %s", ErrNotInstalled, strings.Join(tried, ", "), installHint)
	}
	return "", fmt.Errorf("%w in /usr/lib/postgresql/*/bin or PATH; %s", ErrNotInstalled, installHint)
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// majorVersion reads "postgres (PostgreSQL) 15.18 (Debian ...)".
func majorVersion(out string) int {
	fields := strings.Fields(out)
	for i, f := range fields {
		if f == "(PostgreSQL)" && i+1 < len(fields) {
			major, _, _ := strings.Cut(fields[i+1], ".")
			v, _ := strconv.Atoi(major)
			return v
		}
	}
	return 0
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteRune('_')
		}
		if b.Len() >= 30 {
			break
		}
	}
	return b.String()
}

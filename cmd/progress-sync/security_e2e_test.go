package main_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// tlsURL turns a test database URL into one that demands a certificate signed by caFile for
// the host name localhost.
func tlsURL(t *testing.T, dbURL, caFile string) string {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = "localhost:" + u.Port()
	q := u.Query()
	q.Set("sslmode", "verify-full")
	q.Set("sslrootcert", caFile)
	u.RawQuery = q.Encode()
	return u.String()
}

func writeCA(t *testing.T, ca *pgtest.CA) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(f, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTLSVerifyFull(t *testing.T) {
	ctx := context.Background()
	ca, err := pgtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	// TLS is switched on for the whole server: a server of this test's own, also when the
	// others share one (PROGRESS_SYNC_TEST_DATABASE_URL).
	srv, err := pgtest.Start(ctx, pgtest.Options{Local: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	if err := srv.EnableTLS(ctx, ca); err != nil {
		t.Fatal(err)
	}
	w := newWorldOn(t, srv, 300)
	secure := tlsURL(t, w.dbURL, writeCA(t, ca))
	// The reload that enables TLS takes a moment to reach new connections.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, secure)
		if err == nil {
			conn.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TLS connection: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	w.cli.env["DATABASE_URL"] = secure
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	var plain int
	if err := w.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type IN ('client backend', 'walsender')
		AND a.application_name = '' AND NOT s.ssl AND a.client_addr IS NOT NULL AND a.backend_type = 'walsender'`).Scan(&plain); err != nil {
		t.Fatal(err)
	}
	var walsenderTLS bool
	if err := w.db.QueryRow(ctx, `SELECT coalesce(bool_and(s.ssl), false) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
		WHERE a.backend_type = 'walsender' AND a.datname = current_database()`).Scan(&walsenderTLS); err != nil {
		t.Fatal(err)
	}
	if !walsenderTLS || plain != 0 {
		t.Fatalf("replication connection not over TLS (walsender tls %v, plain %d)", walsenderTLS, plain)
	}
	if code := svc.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// A certificate from another authority is refused, clearly.
	other, err := pgtest.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	w.cli.env["DATABASE_URL"] = tlsURL(t, w.dbURL, writeCA(t, other))
	r := w.cli.run("backfill")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate") {
		t.Fatalf("untrusted server certificate: exit %d\n%s", r.code, r.stderr)
	}
}

func TestSecretsNeverPrinted(t *testing.T) {
	w := newWorld(t, 300)
	const password = "pw-s3cret-never-print"
	// The test server trusts local connections, so any password is accepted: exactly what is
	// needed to see whether it leaks.
	u, _ := url.Parse(w.dbURL)
	u.User = url.UserPassword("postgres", password)
	w.cli.env["DATABASE_URL"] = u.String()
	w.streamEnv(nil)
	var outputs []string
	r := w.cli.run("backfill") // refused: the properties do not exist yet
	outputs = append(outputs, r.stdout, r.stderr)
	r = w.cli.mustRun("provision")
	outputs = append(outputs, r.stdout, r.stderr)
	r = w.cli.mustRun("backfill")
	outputs = append(outputs, r.stdout, r.stderr, w.cli.mustRun("status").stdout)
	svc := w.start()
	w.waitEqual(time.Minute)
	svc.stop()
	outputs = append(outputs, svc.logs.String())
	// A database that cannot be reached, and a HubSpot that refuses the token.
	u.Host = "127.0.0.1:1"
	bad := cli{t: t, env: map[string]string{"DATABASE_URL": u.String(), "HUBSPOT_ACCESS_TOKEN": token, "HUBSPOT_BASE_URL": w.emu.URL()}}
	r = bad.run("backfill")
	outputs = append(outputs, r.stdout, r.stderr)
	w.cli.env["HUBSPOT_ACCESS_TOKEN"] = token + "-revoked"
	r = w.cli.run("provision")
	outputs = append(outputs, r.stdout, r.stderr)
	for i, out := range outputs {
		for _, secret := range []string{password, token} {
			if strings.Contains(out, secret) {
				t.Fatalf("output %d shows a secret:\n%s", i, out)
			}
		}
	}
	if !strings.Contains(fmt.Sprint(outputs), "***@example.com") {
		t.Error("no masked email in the logs; the masking test proves nothing")
	}
}

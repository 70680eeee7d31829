package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoad(t *testing.T) {
	const token = "pat-na1-secret-token-value"
	all := Needs{Database: true, Replication: true, HubSpot: true}
	good := map[string]string{"DATABASE_URL": "postgres://u:hunter2@db.example.com:5432/app", "HUBSPOT_ACCESS_TOKEN": token}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range extra {
			if v == "<unset>" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		env   map[string]string
		flags []string
		needs Needs
		want  []string // substrings, one per expected problem line, in order
		check func(t *testing.T, c Config)
	}{
		{name: "defaults", env: good, needs: all, check: func(t *testing.T, c Config) {
			if c.Slot != "progress_sync" || c.Publication != "progress_sync" || c.Debounce != 3*time.Second ||
				c.MaxDelay != 30*time.Second || c.RateLimit.Requests != 100 || c.RateLimit.Per != 10*time.Second ||
				c.Listen != "127.0.0.1:9187" || c.HubSpotBaseURL != "https://api.hubapi.com" || c.LogFormat != "json" ||
				c.Reconcile != 24*time.Hour || c.HubSpotAPIVersion != "2026-09" {
				t.Errorf("defaults = %+v", c)
			}
		}},
		{name: "flag beats environment", env: with(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "5s"}), flags: []string{"--debounce=7s", "--slot=other"}, needs: all,
			check: func(t *testing.T, c Config) {
				if c.Debounce != 7*time.Second || c.Slot != "other" {
					t.Errorf("got debounce %s slot %s", c.Debounce, c.Slot)
				}
			}},
		{name: "missing required", env: map[string]string{}, needs: all, want: []string{"DATABASE_URL: not set", "HUBSPOT_ACCESS_TOKEN: not set"}},
		{name: "token not needed for database-only commands", env: map[string]string{"DATABASE_URL": good["DATABASE_URL"]}, needs: Needs{Database: true}},
		{name: "supabase http settings instead of a database", env: map[string]string{"SUPABASE_URL": "https://x.supabase.co", "SUPABASE_KEY": "k", "HUBSPOT_ACCESS_TOKEN": token}, needs: all,
			want: []string{"DATABASE_URL: not set; SUPABASE_URL/SUPABASE_KEY are for Supabase's HTTP API"}},
		{name: "pooler refused for replication", env: with(map[string]string{"DATABASE_URL": "postgres://postgres.abc:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres"}), needs: all,
			want: []string{"DATABASE_URL: points at a connection pooler"}},
		{name: "pooler fine without replication", env: with(map[string]string{"DATABASE_URL": "postgres://postgres.abc:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres"}), needs: Needs{Database: true, HubSpot: true}},
		{name: "every bad value at once", env: with(map[string]string{
			"PROGRESS_SYNC_DEBOUNCE": "soon", "PROGRESS_SYNC_MAX_DELAY": "-1s", "PROGRESS_SYNC_RATE_LIMIT": "lots",
			"PROGRESS_SYNC_SLOT": "Bad-Slot", "PROGRESS_SYNC_PUBLICATION": "x;drop", "PROGRESS_SYNC_LISTEN": "9187",
			"LOG_LEVEL": "loud", "LOG_FORMAT": "xml", "HUBSPOT_BASE_URL": "api.hubapi.com"}), needs: all,
			want: []string{"HUBSPOT_BASE_URL", "PROGRESS_SYNC_RATE_LIMIT", "PROGRESS_SYNC_SLOT", "PROGRESS_SYNC_PUBLICATION",
				"PROGRESS_SYNC_DEBOUNCE", "PROGRESS_SYNC_MAX_DELAY", "PROGRESS_SYNC_LISTEN", "LOG_LEVEL", "LOG_FORMAT"}},
		{name: "legacy API paths", env: with(map[string]string{"HUBSPOT_API_VERSION": "v3"}), needs: all,
			check: func(t *testing.T, c Config) {
				if c.HubSpotAPIVersion != "v3" {
					t.Errorf("api version = %q", c.HubSpotAPIVersion)
				}
			}},
		{name: "API version not a version", env: with(map[string]string{"HUBSPOT_API_VERSION": "v4"}), needs: all, want: []string{"HUBSPOT_API_VERSION: \"v4\" is not a HubSpot API version"}},
		{name: "API version before date versions", env: with(map[string]string{"HUBSPOT_API_VERSION": "2025-09"}), needs: all, want: []string{"HUBSPOT_API_VERSION: \"2025-09\" is older than"}},
		{name: "listen port out of range", env: with(map[string]string{"PROGRESS_SYNC_LISTEN": "127.0.0.1:99999"}), needs: all,
			want: []string{"PROGRESS_SYNC_LISTEN: \"127.0.0.1:99999\" is not host:port with a port from 0 to 65535"}},
		{name: "listen port a name", env: with(map[string]string{"PROGRESS_SYNC_LISTEN": ":http"}), needs: all, want: []string{"PROGRESS_SYNC_LISTEN"}},
		{name: "listen on any free port", env: with(map[string]string{"PROGRESS_SYNC_LISTEN": "127.0.0.1:0"}), needs: all},
		{name: "reconcile turned off", env: with(map[string]string{"PROGRESS_SYNC_RECONCILE": "0"}), needs: all,
			check: func(t *testing.T, c Config) {
				if c.Reconcile != 0 {
					t.Errorf("reconcile = %s, want 0 (off)", c.Reconcile)
				}
			}},
		{name: "reconcile negative", env: with(map[string]string{"PROGRESS_SYNC_RECONCILE": "-1h"}), needs: all, want: []string{"PROGRESS_SYNC_RECONCILE: \"-1h\" is not a duration"}},
		{name: "reconcile without a unit", env: with(map[string]string{"PROGRESS_SYNC_RECONCILE": "24"}), needs: all, want: []string{"PROGRESS_SYNC_RECONCILE: \"24\" is not a duration"}},
		{name: "max delay shorter than debounce", env: with(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "10s", "PROGRESS_SYNC_MAX_DELAY": "5s"}), needs: all,
			want: []string{"PROGRESS_SYNC_MAX_DELAY: 5s is shorter than PROGRESS_SYNC_DEBOUNCE"}},
		{name: "token with whitespace", env: with(map[string]string{"HUBSPOT_ACCESS_TOKEN": "pat na1"}), needs: all, want: []string{"HUBSPOT_ACCESS_TOKEN: contains whitespace"}},
		{name: "unparsable database url keeps the password out", env: with(map[string]string{"DATABASE_URL": "postgres://u:hunter2@host:notaport/db"}), needs: all,
			want: []string{"DATABASE_URL: not a valid PostgreSQL connection string"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			Register(fs)
			if err := fs.Parse(tc.flags); err != nil {
				t.Fatal(err)
			}
			c, err := Load(fs, env(tc.env), tc.needs)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			cerr, ok := err.(*Error)
			if !ok {
				t.Fatalf("error = %v, want *Error", err)
			}
			if len(cerr.Problems) != len(tc.want) {
				t.Fatalf("problems:\n%s\nwant %d lines", cerr, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(cerr.Problems[i], w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, cerr.Problems[i], w)
				}
			}
			for _, secret := range []string{token, "hunter2"} {
				if strings.Contains(cerr.Error(), secret) {
					t.Errorf("error text leaks a secret: %s", cerr)
				}
			}
		})
	}
}

func TestTokenFile(t *testing.T) {
	const secret = "svc-key-na1-0123456789abcdef"
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", secret+"\n", 0o600)
	unreadable := write("unreadable", secret, 0o000)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string // "" = loads, with the token from the file
	}{
		{name: "a file with a trailing newline", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": good}},
		{name: "a byte-order mark and CRLF", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": write("bom", "\ufeff"+secret+"\r\n", 0o600)}},
		{name: "missing", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": filepath.Join(dir, "nope")}, want: "HUBSPOT_ACCESS_TOKEN_FILE: cannot read " + filepath.Join(dir, "nope") + ": no such file or directory"},
		{name: "empty", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": write("empty", "\n \n", 0o600)}, want: "is empty"},
		{name: "two tokens", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": write("two", secret+"\n"+secret+"\n", 0o600)}, want: "holds more than one token"},
		{name: "both ways at once", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": good, "HUBSPOT_ACCESS_TOKEN": secret}, want: "set one of them"},
		{name: "a directory", env: map[string]string{"HUBSPOT_ACCESS_TOKEN_FILE": dir}, want: "cannot read " + dir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			Register(fs)
			tc.env["DATABASE_URL"] = "postgres://u@db.example.com/app"
			c, err := Load(fs, env(tc.env), Needs{Database: true, HubSpot: true})
			if tc.want == "" {
				if err != nil || c.HubSpotToken != secret || c.HubSpotTokenFile != tc.env["HUBSPOT_ACCESS_TOKEN_FILE"] {
					t.Fatalf("token %q from %q, err %v", c.HubSpotToken, c.HubSpotTokenFile, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("the error shows the token: %v", err)
			}
		})
	}
	// Under systemd's LoadCredential=hubspot-token:..., with nothing else set.
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Register(fs)
	credDir := filepath.Dir(write("hubspot-token", secret, 0o400))
	c, err := Load(fs, env(map[string]string{"DATABASE_URL": "postgres://u@db.example.com/app", "CREDENTIALS_DIRECTORY": credDir}), Needs{Database: true, HubSpot: true})
	if err != nil || c.HubSpotToken != secret || c.HubSpotTokenFile != filepath.Join(credDir, "hubspot-token") {
		t.Errorf("credentials directory: token %q from %q, err %v", c.HubSpotToken, c.HubSpotTokenFile, err)
	}
	if os.Geteuid() != 0 { // root reads a file of mode 000
		if _, err := ReadTokenFile(unreadable); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("unreadable file: %v", err)
		}
	}
}

func TestAlertSettings(t *testing.T) {
	const hook = "https://hooks.slack.com/services/T000/B000/secret-9f2c"
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds := filepath.Join(dir, "creds")
	if err := os.Mkdir(creds, 0o700); err != nil {
		t.Fatal(err)
	}
	write("creds/alert-webhook", hook+"\n")
	for _, tc := range []struct {
		name  string
		env   map[string]string
		want  string // "" = loads, with the URL
		after time.Duration
	}{
		{name: "none", env: map[string]string{}, after: 5 * time.Minute},
		{name: "in the environment", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": hook, "PROGRESS_SYNC_ALERT_AFTER": "90s"}, after: 90 * time.Second},
		{name: "in a file", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE": write("hook", "\ufeff"+hook+"\r\n")}, after: 5 * time.Minute},
		{name: "systemd's credential", env: map[string]string{"CREDENTIALS_DIRECTORY": creds}, after: 5 * time.Minute},
		{name: "both", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": hook, "PROGRESS_SYNC_ALERT_WEBHOOK_FILE": write("both", hook)}, want: "set one of them"},
		{name: "missing file", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE": filepath.Join(dir, "nope")}, want: "cannot read"},
		{name: "empty file", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE": write("empty", "\n")}, want: "is empty"},
		{name: "two URLs", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE": write("two", hook+"\n"+hook)}, want: "is not one http(s) URL"},
		{name: "no scheme", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": "hooks.slack.com/services/secret-9f2c"}, want: "is not one http(s) URL"},
		{name: "a port out of range", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": "http://127.0.0.1:99999/secret-9f2c"}, want: "is not one http(s) URL"},
		{name: "no wait", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": hook, "PROGRESS_SYNC_ALERT_AFTER": "0"}, want: "PROGRESS_SYNC_ALERT_AFTER: \"0\" is not a duration of at least 1s"},
		{name: "a nanosecond", env: map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": hook, "PROGRESS_SYNC_ALERT_AFTER": "1ns"}, want: "at least 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			Register(fs)
			c, err := Load(fs, env(tc.env), Needs{Alerts: true})
			if tc.want == "" {
				wantHook := hook
				if tc.name == "none" {
					wantHook = ""
				}
				if err != nil || c.AlertWebhook != wantHook || c.AlertAfter != tc.after {
					t.Fatalf("webhook set %v, after %s, err %v", c.AlertWebhook != "", c.AlertAfter, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret-9f2c") {
				t.Fatalf("the error shows the URL: %v", err)
			}
		})
	}
}

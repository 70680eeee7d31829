package config

import (
	"net"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/focusenglish/progress-sync/hubspot"
)

// fuzzEnv is one fuzzed environment: the values, and the secrets it holds.
type fuzzEnv struct {
	vars     map[string]string
	password string // the password put into DATABASE_URL ("" if the form holds none)
}

// FuzzLoad runs Load on fuzzed environment values. DATABASE_URL is assembled from fuzzed
// parts so that the password in it is known even when the string is not a valid URL: shape
// (low 2 bits of form) is a postgres:// URL with user:password@, a key=value string, a
// postgresql:// URL with ?password=, or the user part alone (no password); bit 2 also sets
// SUPABASE_URL. needs picks Database, Replication and HubSpot (bits 0-2). An empty value is
// an unset variable.
//
// Properties: Load does not panic; an error is an *Error whose every line starts with a
// setting's variable name and ": "; on success Debounce > 0, MaxDelay >= Debounce, the slot
// and publication are plain identifiers, the listen address is host:port, and with HubSpot
// the rate has positive requests and window, the token has no whitespace, the base URL is
// http(s), and hubspot.New accepts the three. Secrets: the access token and the DATABASE_URL password never appear in the
// error text, provided they are at least 8 of the characters [A-Za-z0-9._~-] (characters
// that quoting and URL escaping leave as they are), are not part of any other value, and do
// not show up when they are swapped for a twin of the same shape (rot13 letters, digits +5):
// a secret such as "postgres" that the messages' own wording holds cannot be told apart.
func FuzzLoad(f *testing.F) {
	f.Fuzz(func(t *testing.T, needsBits, form uint8, user, password, host, port, dbname, params,
		token, baseURL, slot, debounce, maxDelay, rate, listen string) {
		needs := Needs{Database: needsBits&1 != 0, Replication: needsBits&2 != 0, HubSpot: needsBits&4 != 0}
		build := func(password, token string) fuzzEnv {
			e := fuzzEnv{vars: map[string]string{}}
			set := func(k, v string) {
				if v != "" {
					e.vars[k] = v
				}
			}
			var db string
			switch form & 3 {
			case 0:
				db, e.password = "postgres://"+user+":"+password+"@"+host+":"+port+"/"+dbname+params, password
			case 1:
				db, e.password = "host="+host+" port="+port+" user="+user+" password="+password+" dbname="+dbname+" "+params, password
			case 2:
				db, e.password = "postgresql://"+user+"@"+host+"/"+dbname+"?password="+password+params, password
			case 3:
				db = user
			}
			set("DATABASE_URL", db)
			if form&4 != 0 {
				set("SUPABASE_URL", "https://abcdefgh.supabase.co")
			}
			set("HUBSPOT_ACCESS_TOKEN", token)
			set("HUBSPOT_BASE_URL", baseURL)
			set("PROGRESS_SYNC_SLOT", slot)
			set("PROGRESS_SYNC_DEBOUNCE", debounce)
			set("PROGRESS_SYNC_MAX_DELAY", maxDelay)
			set("PROGRESS_SYNC_RATE_LIMIT", rate)
			set("PROGRESS_SYNC_LISTEN", listen)
			return e
		}
		load := func(e fuzzEnv) (Config, error) {
			fs := pflag.NewFlagSet("fuzz", pflag.ContinueOnError)
			Register(fs)
			return Load(fs, func(k string) (string, bool) { v, ok := e.vars[k]; return v, ok }, needs)
		}

		env := build(password, token)
		c, err := load(env)
		if err == nil {
			checkConfig(t, c, needs)
			return
		}
		cerr, ok := err.(*Error)
		if !ok {
			t.Fatalf("error %T %v, want *Error", err, err)
		}
		text := cerr.Error()
		for _, line := range strings.Split(text, "\n") {
			if !startsWithVariable(line) {
				t.Fatalf("problem line %q does not start with a variable name and \": \"; all:\n%s", line, text)
			}
		}

		others := []string{user, host, port, dbname, params, baseURL, slot, debounce, maxDelay, rate, listen}
		type secret struct{ name, value string }
		for _, s := range []secret{{"HUBSPOT_ACCESS_TOKEN", token}, {"the DATABASE_URL password", env.password}} {
			if !strings.Contains(text, s.value) || !checkableSecret(s.value, append(others, token, password)) {
				continue
			}
			// The twin run tells a leak from a secret that the wording or another value holds.
			twinPassword, twinToken := password, token
			if s.value == token {
				twinToken = twin(token)
			} else {
				twinPassword = twin(password)
			}
			_, twinErr := load(build(twinPassword, twinToken))
			if twinErr != nil && strings.Contains(twinErr.Error(), s.value) {
				continue
			}
			t.Fatalf("the error text holds %s %q:\n%s", s.name, s.value, text)
		}
	})
}

var secretChars = regexp.MustCompile(`^[A-Za-z0-9._~-]{8,}$`)

// checkableSecret: long enough, of characters that reach messages unchanged, different from
// its twin, and not inside another value (which messages may quote).
func checkableSecret(s string, values []string) bool {
	if !secretChars.MatchString(s) || twin(s) == s {
		return false
	}
	n := 0
	for _, v := range values {
		if strings.Contains(v, s) {
			n++
		}
	}
	return n == 1 // only the secret's own value
}

// twin maps a secret to a different one of the same shape.
func twin(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return 'a' + (r-'a'+13)%26
		case r >= 'A' && r <= 'Z':
			return 'A' + (r-'A'+13)%26
		case r >= '0' && r <= '9':
			return '0' + (r-'0'+5)%10
		}
		return r
	}, s)
}

func startsWithVariable(line string) bool {
	for _, s := range settings() {
		if strings.HasPrefix(line, s.env+": ") {
			return true
		}
	}
	return false
}

func checkConfig(t *testing.T, c Config, needs Needs) {
	t.Helper()
	if c.Debounce <= 0 || c.MaxDelay < c.Debounce {
		t.Fatalf("debounce %s, max delay %s", c.Debounce, c.MaxDelay)
	}
	if !identifier.MatchString(c.Slot) || !identifier.MatchString(c.Publication) {
		t.Fatalf("slot %q, publication %q", c.Slot, c.Publication)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		t.Fatalf("listen %q: %v", c.Listen, err)
	}
	if (needs.Database || needs.Replication) && c.DatabaseURL == "" {
		t.Fatal("no DATABASE_URL")
	}
	if needs.HubSpot {
		if c.RateLimit.Requests <= 0 || c.RateLimit.Per <= 0 {
			t.Fatalf("rate limit %s", c.RateLimit)
		}
		if c.HubSpotToken == "" || strings.ContainsAny(c.HubSpotToken, " \t\r\n") {
			t.Fatalf("token %q", c.HubSpotToken)
		}
		u, err := url.Parse(c.HubSpotBaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			t.Fatalf("base URL %q", c.HubSpotBaseURL)
		}
		// What Load accepts, the client must accept too: a setting refused only when the
		// command starts would miss the one-line, exit-status-2 report.
		if _, err := hubspot.New(hubspot.Config{BaseURL: c.HubSpotBaseURL, Token: c.HubSpotToken, RateLimit: c.RateLimit}); err != nil {
			t.Fatalf("Load accepted settings the HubSpot client refuses: %v", err)
		}
	}
}

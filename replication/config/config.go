// Package config reads progress-sync's settings (docs/contract.md §4) from flags and the environment
// and reports every problem at once, one clear line each.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics/model"
)

// Config is the validated configuration of one command.
type Config struct {
	DatabaseURL  string
	HubSpotToken string
	// HubSpotTokenFile is where the token was read from (HUBSPOT_ACCESS_TOKEN_FILE), to read
	// it again when HubSpot refuses it; "" when it came from HUBSPOT_ACCESS_TOKEN.
	HubSpotTokenFile string
	HubSpotBaseURL   string
	// HubSpotAPIVersion is the API version the paths are built from: a date version, or v3.
	HubSpotAPIVersion string
	Slot              string
	Publication       string
	// Model is the progress model (docs/contract.md §2b), read and checked as far as it can
	// be without a database; model.Verify checks it against one.
	Model     *model.Model
	Debounce  time.Duration
	MaxDelay  time.Duration
	RateLimit hubspot.Rate
	// Reconcile is how often run reads every linked contact back from HubSpot; 0: never.
	Reconcile time.Duration
	Listen    string
	LogLevel  logrus.Level
	LogFormat string
	// AlertWebhook is where alerts are posted (docs/contract.md §6, "Alerts"); "": nowhere. It is a
	// secret: never logged or shown.
	AlertWebhook string
	// AlertAfter is how long the instance holding the slot may stay not ready before an alert.
	AlertAfter time.Duration
}

// Needs says which services a command talks to, so that a command that never touches HubSpot
// does not demand a token, and one that streams refuses a pooler.
type Needs struct {
	Database    bool
	Replication bool
	HubSpot     bool
	// SkipModel says the command does not read through the progress model (teardown,
	// status, check, which verifies it itself), so its tables need not exist yet.
	SkipModel bool
	// Alerts says the command posts alerts (run, replay).
	Alerts bool
}

// setting is one row of the docs/contract.md §4 table.
type setting struct {
	env, flag, def, usage string
}

func settings() []setting {
	return []setting{
		{"DATABASE_URL", "database-url", "", "direct PostgreSQL connection string (Supabase: the direct connection, not the pooler)"},
		{"HUBSPOT_ACCESS_TOKEN", "hubspot-access-token", "", "HubSpot service key or private app token (prefer the environment: flags show in ps)"},
		{"HUBSPOT_ACCESS_TOKEN_FILE", "hubspot-access-token-file", "", "a file holding the token (systemd LoadCredential=, a mounted Kubernetes secret), read again when HubSpot answers 401"},
		{"HUBSPOT_BASE_URL", "hubspot-base-url", "https://api.hubapi.com", "HubSpot API root"},
		{"HUBSPOT_API_VERSION", "hubspot-api-version", hubspot.DefaultAPIVersion, "HubSpot API version: a date version such as 2026-09, or v3 for the legacy /crm/v3 paths"},
		{"PROGRESS_SYNC_SLOT", "slot", "progress_sync", "replication slot name"},
		{"PROGRESS_SYNC_PUBLICATION", "publication", "progress_sync", "publication name"},
		{"PROGRESS_SYNC_MODEL", "model", model.Default, "progress model: course_progress, lesson_progress, or the path of a model file (docs/models.md)"},
		{"PROGRESS_SYNC_DEBOUNCE", "debounce", "3s", "quiet period per student before a push"},
		{"PROGRESS_SYNC_MAX_DELAY", "max-delay", "30s", "longest a change may wait before a push"},
		{"PROGRESS_SYNC_RATE_LIMIT", "rate-limit", "100/10s", "HubSpot requests allowed per window (the portal's burst limit)"},
		{"PROGRESS_SYNC_RECONCILE", "reconcile", "24h", "how often run reads every linked contact back from HubSpot and repairs values changed there; 0 turns it off"},
		{"PROGRESS_SYNC_LISTEN", "listen", "127.0.0.1:9187", "address for /metrics, /healthz and /readyz"},
		{"PROGRESS_SYNC_ALERT_WEBHOOK", "alert-webhook", "", "URL to post alerts to (Slack, Google Chat, Mattermost or any JSON receiver); a secret: prefer PROGRESS_SYNC_ALERT_WEBHOOK_FILE"},
		{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE", "alert-webhook-file", "", "a file holding the alert webhook's URL (systemd LoadCredential=alert-webhook:..., a mounted Kubernetes secret)"},
		{"PROGRESS_SYNC_ALERT_AFTER", "alert-after", "5m", "how long the instance holding the slot may stay not ready before an alert"},
		{"LOG_LEVEL", "log-level", "info", "log level: debug, info, warn, error"},
		{"LOG_FORMAT", "log-format", "json", "log format: json or text"},
	}
}

// Register defines one flag per setting on fs.
func Register(fs *pflag.FlagSet) {
	for _, s := range settings() {
		fs.String(s.flag, "", fmt.Sprintf("%s (env %s, default %q)", s.usage, s.env, s.def))
	}
}

// Error lists every configuration problem, one per line.
type Error struct{ Problems []string }

func (e *Error) Error() string { return strings.Join(e.Problems, "\n") }

// Load resolves each setting (flag, then environment, then default) and validates those the
// command needs. getenv is os.LookupEnv in production.
func Load(fs *pflag.FlagSet, getenv func(string) (string, bool), needs Needs) (Config, error) {
	raw := map[string]string{}
	for _, s := range settings() {
		v := s.def
		if e, ok := getenv(s.env); ok && strings.TrimSpace(e) != "" {
			v = strings.TrimSpace(e)
		}
		if f := fs.Lookup(s.flag); f != nil && f.Changed {
			v = strings.TrimSpace(f.Value.String())
		}
		raw[s.env] = v
	}
	var c Config
	var problems []string
	bad := func(env, format string, args ...any) {
		// One line per problem: a parser's message may quote a value's line breaks as they are.
		problems = append(problems, env+": "+lineBreaks.Replace(fmt.Sprintf(format, args...)))
	}

	if needs.Database || needs.Replication {
		c.DatabaseURL = raw["DATABASE_URL"]
		if c.DatabaseURL == "" {
			_, hasURL := getenv("SUPABASE_URL")
			_, hasKey := getenv("SUPABASE_KEY")
			if hasURL || hasKey {
				bad("DATABASE_URL", "not set; SUPABASE_URL/SUPABASE_KEY are for Supabase's HTTP API, but progress-sync reads the database itself through logical replication: set DATABASE_URL to the project's direct connection string (Supabase dashboard > Connect > Direct connection, postgresql://postgres:<password>@db.<project>.supabase.co:5432/postgres)")
			} else {
				bad("DATABASE_URL", "not set; give the PostgreSQL connection string, e.g. postgresql://user:password@host:5432/dbname")
			}
		} else if msg := checkDatabaseURL(c.DatabaseURL, needs.Replication); msg != "" {
			bad("DATABASE_URL", "%s", msg)
		}
	}
	if needs.HubSpot {
		c.HubSpotToken = raw["HUBSPOT_ACCESS_TOKEN"]
		file := raw["HUBSPOT_ACCESS_TOKEN_FILE"]
		if file == "" && c.HubSpotToken == "" {
			file = credential(getenv, "hubspot-token")
		}
		if file != "" {
			if c.HubSpotToken != "" {
				bad("HUBSPOT_ACCESS_TOKEN_FILE", "set together with HUBSPOT_ACCESS_TOKEN; set one of them")
			}
			// ReadTokenFile refuses an empty or unsendable token itself.
			if token, err := ReadTokenFile(file); err != nil {
				bad("HUBSPOT_ACCESS_TOKEN_FILE", "%v", err)
			} else {
				c.HubSpotToken, c.HubSpotTokenFile = token, file
			}
		}
		switch {
		case file != "":
		case c.HubSpotToken == "":
			where := ""
			if dir, ok := getenv("CREDENTIALS_DIRECTORY"); ok {
				where = fmt.Sprintf(" (no %s either: check the unit's LoadCredential=hubspot-token:...)", filepath.Join(dir, "hubspot-token"))
			}
			bad("HUBSPOT_ACCESS_TOKEN", "not set%s; create a HubSpot service key (Settings > Integrations > Service Keys; or a legacy private app) with scopes %s, and give it in a file named by HUBSPOT_ACCESS_TOKEN_FILE or in HUBSPOT_ACCESS_TOKEN",
				where, strings.Join(hubspot.RequiredScopes(), ", "))
		case !hubspot.Sendable(c.HubSpotToken):
			bad("HUBSPOT_ACCESS_TOKEN", "contains whitespace or non-printable characters; paste the token alone")
		}
		c.HubSpotBaseURL = strings.TrimRight(raw["HUBSPOT_BASE_URL"], "/")
		if u, err := url.Parse(c.HubSpotBaseURL); err == nil && u.User != nil {
			// As hubspot.New refuses; not quoted, since it holds credentials.
			bad("HUBSPOT_BASE_URL", "must not contain a user name or password; the token goes in HUBSPOT_ACCESS_TOKEN")
		} else if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			bad("HUBSPOT_BASE_URL", "%q is not an http(s) URL such as https://api.hubapi.com", raw["HUBSPOT_BASE_URL"])
		}
		if v, err := hubspot.ParseAPIVersion(raw["HUBSPOT_API_VERSION"]); err != nil {
			bad("HUBSPOT_API_VERSION", "%v", err)
		} else {
			c.HubSpotAPIVersion = v
		}
		r, err := hubspot.ParseRate(raw["PROGRESS_SYNC_RATE_LIMIT"])
		if err != nil {
			bad("PROGRESS_SYNC_RATE_LIMIT", "%v", err)
		}
		c.RateLimit = r
	}

	c.Slot, c.Publication = raw["PROGRESS_SYNC_SLOT"], raw["PROGRESS_SYNC_PUBLICATION"]
	if !identifier.MatchString(c.Slot) {
		bad("PROGRESS_SYNC_SLOT", "%q is not a valid slot name: use 1-63 lower-case letters, digits and underscores", c.Slot)
	}
	if !identifier.MatchString(c.Publication) {
		bad("PROGRESS_SYNC_PUBLICATION", "%q is not a valid publication name: use 1-63 lower-case letters, digits and underscores", c.Publication)
	}
	if m, err := model.Load(raw["PROGRESS_SYNC_MODEL"]); err != nil {
		bad("PROGRESS_SYNC_MODEL", "%v", err)
	} else {
		c.Model = m
	}
	c.Debounce = duration(raw, "PROGRESS_SYNC_DEBOUNCE", bad)
	c.MaxDelay = duration(raw, "PROGRESS_SYNC_MAX_DELAY", bad)
	if c.Debounce > 0 && c.MaxDelay > 0 && c.MaxDelay < c.Debounce {
		bad("PROGRESS_SYNC_MAX_DELAY", "%s is shorter than PROGRESS_SYNC_DEBOUNCE (%s); it must be at least as long", c.MaxDelay, c.Debounce)
	}
	if d, err := time.ParseDuration(raw["PROGRESS_SYNC_RECONCILE"]); err != nil || d < 0 || (d > 0 && d < time.Second) {
		bad("PROGRESS_SYNC_RECONCILE", "%q is not a duration such as 24h or 6h30m (at least 1s), or 0 to turn reconciling off", raw["PROGRESS_SYNC_RECONCILE"])
	} else {
		c.Reconcile = d
	}
	c.Listen = raw["PROGRESS_SYNC_LISTEN"]
	if _, port, err := net.SplitHostPort(c.Listen); err != nil || !isPort(port) {
		bad("PROGRESS_SYNC_LISTEN", "%q is not host:port with a port from 0 to 65535 (e.g. 127.0.0.1:9187 or :9187)", c.Listen)
	}
	if needs.Alerts {
		c.AlertWebhook, c.AlertAfter = alertSettings(raw, getenv, bad)
	}
	lvl, err := logrus.ParseLevel(raw["LOG_LEVEL"])
	if err != nil {
		bad("LOG_LEVEL", "%q is not one of debug, info, warn, error", raw["LOG_LEVEL"])
	}
	c.LogLevel = lvl
	c.LogFormat = strings.ToLower(raw["LOG_FORMAT"])
	if c.LogFormat != "json" && c.LogFormat != "text" {
		bad("LOG_FORMAT", "%q is not json or text", raw["LOG_FORMAT"])
	}
	if len(problems) > 0 {
		return c, &Error{Problems: problems}
	}
	return c, nil
}

// alertSettings reads the alert webhook, from the environment or a file (systemd's
// credential alert-webhook when neither is set), and how long to wait before an alert. The
// URL is never quoted in a problem: it carries its secret.
func alertSettings(raw map[string]string, getenv func(string) (string, bool), bad func(string, string, ...any)) (string, time.Duration) {
	hook, file := raw["PROGRESS_SYNC_ALERT_WEBHOOK"], raw["PROGRESS_SYNC_ALERT_WEBHOOK_FILE"]
	if hook == "" && file == "" {
		file = credential(getenv, "alert-webhook")
	}
	env := "PROGRESS_SYNC_ALERT_WEBHOOK"
	if file != "" {
		env = "PROGRESS_SYNC_ALERT_WEBHOOK_FILE"
		if hook != "" {
			bad(env, "set together with PROGRESS_SYNC_ALERT_WEBHOOK; set one of them")
		}
		var err error
		if hook, err = readSecretFile(file, "the webhook's URL"); err != nil {
			bad(env, "%v", err)
		}
	}
	if u, err := url.Parse(hook); hook != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" ||
		(u.Port() != "" && !isPort(u.Port())) || strings.ContainsAny(hook, " \t\r\n")) {
		bad(env, "is not one http(s) URL such as https://hooks.slack.com/services/... (not shown: it is a secret)")
	}
	after, err := time.ParseDuration(raw["PROGRESS_SYNC_ALERT_AFTER"])
	if err != nil || after < time.Second {
		bad("PROGRESS_SYNC_ALERT_AFTER", "%q is not a duration of at least 1s, such as 5m or 90s", raw["PROGRESS_SYNC_ALERT_AFTER"])
	}
	return hook, after
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// ReadTokenFile reads a HubSpot token from a file: one line, surrounding blanks ignored. Its
// errors name the file, never what it holds.
func ReadTokenFile(path string) (string, error) {
	token, err := readSecretFile(path, "the service key (or private app token)")
	if err != nil {
		return "", err
	}
	if !hubspot.Sendable(token) {
		return "", fmt.Errorf("%s holds more than one token, or whitespace or non-printable characters inside it; it must hold the key alone", path)
	}
	return token, nil
}

// readSecretFile reads a secret kept in a file, surrounding blanks ignored; holds says what
// it must hold. Its errors name the file, never what it holds.
func readSecretFile(path, holds string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return "", fmt.Errorf("cannot read %s: %v", path, pe.Err)
		}
		return "", fmt.Errorf("cannot read %s", path)
	}
	// Editors on Windows start a UTF-8 file with a byte-order mark.
	secret := strings.TrimSpace(strings.TrimPrefix(string(b), "\ufeff"))
	if secret == "" {
		return "", fmt.Errorf("%s is empty; it must hold %s", path, holds)
	}
	return secret, nil
}

// credential is the file systemd's LoadCredential=name:... hands the service, if there is one.
func credential(getenv func(string) (string, bool), name string) string {
	if dir, ok := getenv("CREDENTIALS_DIRECTORY"); ok {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	return ""
}

var lineBreaks = strings.NewReplacer("\r", `\r`, "\n", `\n`)

// identifier matches names that need no quoting in SQL and in replication commands.
var identifier = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

func duration(raw map[string]string, env string, bad func(string, string, ...any)) time.Duration {
	d, err := time.ParseDuration(raw[env])
	if err != nil || d <= 0 {
		bad(env, "%q is not a positive duration such as 3s or 1m30s", raw[env])
		return 0
	}
	return d
}

// checkDatabaseURL explains what is wrong with a connection string without echoing it: it
// may carry a password.
func checkDatabaseURL(raw string, replication bool) string {
	cfg, err := pgconn.ParseConfig(raw)
	if err != nil {
		inner := err
		if u := errors.Unwrap(err); u != nil {
			inner = u
		}
		return fmt.Sprintf("not a valid PostgreSQL connection string (%s)", redact(inner.Error(), raw, cfg))
	}
	if replication && (strings.Contains(cfg.Host, "pooler.supabase.com") || cfg.Port == 6543) {
		return fmt.Sprintf("points at a connection pooler (%s:%d); logical replication needs the direct connection (Supabase: db.<project>.supabase.co:5432)", cfg.Host, cfg.Port)
	}
	return ""
}

func redact(msg, raw string, cfg *pgconn.Config) string {
	msg = strings.ReplaceAll(msg, raw, "<DATABASE_URL>")
	if u, err := url.Parse(raw); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "***")
		}
	}
	if cfg != nil && cfg.Password != "" {
		msg = strings.ReplaceAll(msg, cfg.Password, "***")
	}
	// An unencoded '@', '/' or space makes parsers disagree on where the password ends (pgx
	// reads the user information up to the first '@', net/url up to the last), and the
	// parser's message may then quote a piece of it as a host, port or keyword. When any
	// piece of the widest reading of the password survives, drop the detail.
	for _, pw := range widestPasswords(raw) {
		if holdsPiece(msg, pw) {
			return "check that special characters such as @ / : ? # and spaces in the user name and password are percent-encoded"
		}
	}
	return msg
}

// widestPasswords are the most a password in raw could be: in a URL, what follows the first
// ':' of the user information, read up to the last '@'; after a "password=" keyword or query
// parameter, the rest of the string.
func widestPasswords(raw string) []string {
	var out []string
	if _, rest, ok := strings.Cut(raw, "://"); ok {
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pw, ok := strings.Cut(rest[:at], ":"); ok && pw != "" {
				out = append(out, pw)
			}
		}
	}
	if _, rest, ok := strings.Cut(raw, "password"); ok {
		if rest, ok := strings.CutPrefix(strings.TrimLeft(rest, " "), "="); ok && strings.TrimSpace(rest) != "" {
			out = append(out, strings.TrimSpace(rest))
		}
	}
	return out
}

// holdsPiece reports whether msg holds secret or, for a longer secret, any 4 bytes of it.
func holdsPiece(msg, secret string) bool {
	const piece = 4
	if len(secret) <= piece {
		return strings.Contains(msg, secret)
	}
	for i := 0; i+piece <= len(secret); i++ {
		if strings.Contains(msg, secret[i:i+piece]) {
			return true
		}
	}
	return false
}

// isPort says whether s is a TCP port number (0: any free port).
func isPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535 && strconv.Itoa(n) == s
}

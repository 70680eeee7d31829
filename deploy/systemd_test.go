package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	unitPath     = "systemd/progress-sync.service"
	envExample   = "systemd/env.example"
	binaryPath   = "/usr/local/bin/progress-sync"
	envFilePath  = "/etc/progress-sync/env"
	defaultGrace = 20 * time.Second // run --grace
)

// unit is a parsed unit file: section -> key -> values in order (keys may repeat).
type unit map[string]map[string][]string

func parseUnit(t *testing.T, data []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", unitPath, n, line)
			}
			k = strings.TrimSpace(k)
			u[section][k] = append(u[section][k], strings.TrimSpace(v))
		}
	}
	return u
}

// last is the effective value of a key that does not accumulate.
func (u unit) last(section, key string) (string, bool) {
	vs := u[section][key]
	if len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// parseTimespan reads the systemd time spans used here ("60s", "5s", "1min", "2min 30s").
func parseTimespan(s string) (time.Duration, error) {
	var total time.Duration
	for _, f := range strings.Fields(s) {
		f = strings.NewReplacer("min", "m", "sec", "s", "msec", "ms").Replace(f)
		if !strings.ContainsAny(f, "hms") {
			f += "s" // a bare number is seconds
		}
		d, err := time.ParseDuration(f)
		if err != nil {
			return 0, fmt.Errorf("time span %q: %w", s, err)
		}
		total += d
	}
	return total, nil
}

func TestSystemdUnitDirectives(t *testing.T) {
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, data)

	want := map[string]string{
		"Type":                     "exec",
		"ExecStart":                binaryPath + " run",
		"EnvironmentFile":          envFilePath,
		"Restart":                  "always",
		"KillSignal":               "SIGTERM",
		"DynamicUser":              "yes",
		"NoNewPrivileges":          "yes",
		"ProtectSystem":            "strict",
		"ProtectHome":              "yes",
		"PrivateTmp":               "yes",
		"PrivateDevices":           "yes",
		"ProtectKernelTunables":    "yes",
		"ProtectKernelModules":     "yes",
		"ProtectKernelLogs":        "yes",
		"ProtectControlGroups":     "yes",
		"RestrictNamespaces":       "yes",
		"RestrictRealtime":         "yes",
		"RestrictSUIDSGID":         "yes",
		"LockPersonality":          "yes",
		"MemoryDenyWriteExecute":   "yes",
		"SystemCallArchitectures":  "native",
		"CapabilityBoundingSet":    "", // empty: no capability at all
		"AmbientCapabilities":      "",
		"RestartPreventExitStatus": "2 243", // a wrong setting, or a missing credential, does not fix itself
		// The key as a credential, never in the environment.
		"LoadCredential": "hubspot-token:/etc/progress-sync/hubspot-token",
		"Environment":    "HUBSPOT_ACCESS_TOKEN_FILE=%d/hubspot-token",
	}
	for k, v := range want {
		got, ok := u.last("Service", k)
		if !ok {
			t.Errorf("[Service] %s= is missing (want %q)", k, v)
		} else if got != v {
			t.Errorf("[Service] %s=%s, want %q", k, got, v)
		}
	}

	families := strings.Fields(strings.Join(u["Service"]["RestrictAddressFamilies"], " "))
	slices.Sort(families)
	if !slices.Equal(families, []string{"AF_INET", "AF_INET6", "AF_UNIX"}) {
		t.Errorf("RestrictAddressFamilies=%v, want AF_INET AF_INET6 AF_UNIX (TCP to PostgreSQL and HubSpot, nothing more)", families)
	}
	if v, _ := u.last("Service", "MemoryMax"); v == "" || v == "infinity" {
		t.Errorf("MemoryMax=%q, want a limit", v)
	}

	restart, _ := u.last("Service", "RestartSec")
	if d, err := parseTimespan(restart); err != nil || d < time.Second || d > time.Minute {
		t.Errorf("RestartSec=%q (%v), want between 1s and 1min", restart, err)
	}
	stop, _ := u.last("Service", "TimeoutStopSec")
	d, err := parseTimespan(stop)
	if err != nil || d <= defaultGrace {
		t.Errorf("TimeoutStopSec=%q (%v), want more than run's --grace of %s, or SIGKILL cuts the final flush", stop, err, defaultGrace)
	}
	// The env file holds secrets: a missing one must stop the start, not be ignored ("-").
	if strings.HasPrefix(u["Service"]["EnvironmentFile"][0], "-") {
		t.Error("EnvironmentFile is optional (-); the service cannot run without its secrets")
	}
	if v, _ := u.last("Unit", "After"); !strings.Contains(v, "network-online.target") {
		t.Errorf("[Unit] After=%q, want network-online.target", v)
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q, want multi-user.target", v)
	}
}

// TestSystemdUnitVerifies runs systemd-analyze on a copy of the unit whose ExecStart is the
// binary built from this tree and whose EnvironmentFile is the example, both in a temporary
// directory: verify checks that the command exists and is executable.
func TestSystemdUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd; .ci/run installs it), so the unit is not verified")
	}
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := binary(t)
	env := filepath.Join(dir, "env")
	example, err := os.ReadFile(envExample)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env, example, 0o600); err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(data), "ExecStart="+binaryPath, "ExecStart="+bin)
	text = strings.ReplaceAll(text, "EnvironmentFile="+envFilePath, "EnvironmentFile="+env)
	if text == string(data) {
		t.Fatal("found neither ExecStart nor EnvironmentFile to point at the test's files")
	}
	copyPath := filepath.Join(dir, "progress-sync.service")
	if err := os.WriteFile(copyPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}

	// verify exits 0 on unknown keys and only prints them, so any output is a failure.
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The sandbox must stay tight: systemd rates the unit's exposure from 0 (none) to 10.
	// --threshold is on a 0..100 scale: 20 is "2.0 OK".
	out, err = exec.Command(analyze, "security", "--offline=yes", "--threshold=20", copyPath).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (or it failed: %v)\n%s", err, out)
	} else if i := bytes.Index(out, []byte("Overall exposure level")); i >= 0 {
		t.Logf("%s", bytes.TrimSpace(out[i:]))
	}
}

// TestSystemdEnvExample checks that the example env file names every setting the binary
// reads and carries no real secret.
func TestSystemdEnvExample(t *testing.T) {
	data, err := os.ReadFile(envExample)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, env := range settingEnvs(t) {
		if !strings.Contains(text, "\n"+env+"=") && !strings.Contains(text, "\n#"+env+"=") {
			t.Errorf("%s does not mention %s", envExample, env)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") || !strings.Contains(line, "=") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "DATABASE_URL":
			if !strings.Contains(v, "CHANGE-ME") {
				t.Errorf("DATABASE_URL in %s should hold a placeholder password (CHANGE-ME)", envExample)
			}
		case "HUBSPOT_ACCESS_TOKEN":
			if !strings.Contains(v, "CHANGE-ME") {
				t.Errorf("HUBSPOT_ACCESS_TOKEN in %s should be a placeholder", envExample)
			}
		}
	}
	if !strings.Contains(text, "0600") {
		t.Errorf("%s should say that the file is mode 0600", envExample)
	}
}

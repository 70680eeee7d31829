package telemetry

import (
	"runtime/debug"
	"strings"
)

// Build is which progress-sync this is, as the Go toolchain recorded it in the binary.
type Build struct {
	Version  string // the module version: a tag, a pseudo-version, or (devel)
	Revision string // the VCS commit; empty when built outside a checkout
	Time     string // the commit's time, RFC 3339
	Modified bool   // built from a checkout with uncommitted changes
	Go       string
}

// ReadBuild reads the build information of the running binary.
func ReadBuild() Build {
	b := Build{Version: "(devel)"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Go = info.GoVersion
	if v := info.Main.Version; v != "" {
		b.Version = v
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// String is one line for people: "v1.2.0 (commit 5b1c79a8d2e1, 2026-12-03T17:00:00Z, modified, go1.26.8)".
func (b Build) String() string {
	var about []string
	if b.Revision != "" {
		about = append(about, "commit "+b.Revision[:min(12, len(b.Revision))])
	}
	if b.Time != "" {
		about = append(about, b.Time)
	}
	if b.Modified {
		about = append(about, "modified")
	}
	if b.Go != "" {
		about = append(about, b.Go)
	}
	if len(about) == 0 {
		return b.Version
	}
	return b.Version + " (" + strings.Join(about, ", ") + ")"
}

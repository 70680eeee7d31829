package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sync"
	"testing"
)

// repoRoot is the module root, seen from this package's directory.
const repoRoot = ".."

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binary builds progress-sync as the Dockerfile does (static, trimmed) once per test run
// and returns its path.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "progress-sync-deploy-test-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command(goTool(), "build", "-trimpath", "-ldflags", "-s -w",
			"-o", filepath.Join(buildDir, "progress-sync"), "./cmd/progress-sync")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-buildvcs=false")
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("build progress-sync: %v\n%s", buildErr, buildOut)
	}
	return filepath.Join(buildDir, "progress-sync")
}

// goTool is the go command of the toolchain running the tests.
func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// settingEnvs are the environment variables the binary reads (docs/contract.md §4), taken from its
// --help, so that the artifacts are checked against the settings the binary has today.
func settingEnvs(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(binary(t), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("progress-sync --help: %v\n%s", err, out)
	}
	var envs []string
	for _, m := range regexp.MustCompile(`\(env ([A-Z][A-Z0-9_]*)`).FindAllStringSubmatch(string(out), -1) {
		if !slices.Contains(envs, m[1]) {
			envs = append(envs, m[1])
		}
	}
	if len(envs) < 10 {
		t.Fatalf("found only %d settings (%v) in progress-sync --help:\n%s", len(envs), envs, out)
	}
	return envs
}

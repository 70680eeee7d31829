package deploy

import (
	"debug/elf"
	"os"
	"regexp"
	"strings"
	"testing"
)

const dockerfile = "docker/Dockerfile"

// TestDockerfile checks what can be checked without a container engine: the stages, the
// paths the build uses (from the repository root as the context), the user and the entry
// point. The image itself is built where Docker runs (docs/deploy.md).
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	var froms []string
	for _, m := range regexp.MustCompile(`(?m)^FROM\s+(?:--\S+\s+)*(\S+)`).FindAllStringSubmatch(text, -1) {
		froms = append(froms, m[1])
	}
	if len(froms) != 2 || !strings.HasPrefix(froms[0], "golang:1.26") ||
		froms[1] != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("stages %v, want golang:1.26* then gcr.io/distroless/static-debian12:nonroot", froms)
	}
	for _, want := range []string{
		"CGO_ENABLED=0",
		"-trimpath",
		`-ldflags "-s -w"`,
		"./cmd/progress-sync",
		"COPY --from=build /out/progress-sync /usr/local/bin/progress-sync",
		"USER 65532:65532",
		`ENTRYPOINT ["/usr/local/bin/progress-sync"]`,
		`CMD ["run"]`,
		"PROGRESS_SYNC_LISTEN=0.0.0.0:9187",
		"EXPOSE 9187",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("%s lacks %q", dockerfile, want)
		}
	}
	// The build context is the repository root: every COPY source must exist there.
	for _, m := range regexp.MustCompile(`(?m)^COPY\s+(?:--\S+\s+)*(.+)\s+\S+$`).FindAllStringSubmatch(text, -1) {
		if strings.Contains(m[0], "--from=") {
			continue
		}
		for _, src := range strings.Fields(m[1]) {
			if !fileExists(repoRoot + "/" + src) {
				t.Errorf("COPY %s: no such path in the repository root", src)
			}
		}
	}
	if !fileExists(repoRoot + "/cmd/progress-sync/main.go") {
		t.Error("./cmd/progress-sync has no main.go")
	}
}

// TestStaticBinary builds the binary as the Dockerfile does and checks that it needs no
// dynamic loader or shared library: distroless/static has neither.
func TestStaticBinary(t *testing.T) {
	f, err := elf.Open(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the binary has a program interpreter (PT_INTERP): it is dynamically linked")
		}
		if p.Type == elf.PT_DYNAMIC {
			t.Error("the binary has a dynamic section (PT_DYNAMIC)")
		}
	}
	if libs, err := f.ImportedLibraries(); err == nil && len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %v", libs)
	}
	if f.Section(".debug_info") != nil {
		t.Error(`the binary carries DWARF (.debug_info): -ldflags "-s -w" did not apply`)
	}
}

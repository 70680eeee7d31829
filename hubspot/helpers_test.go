package hubspot

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/sirupsen/logrus"
)

// testToken is long and distinctive so that a leak is easy to spot.
const testToken = "pat-na1-0f1e2d3c-SECRET-TOKEN-4b5a-69788796a5b4"

type recorded struct {
	Method, Path string
	Body         []byte
}

// recorder keeps every request a fake server saw.
type recorder struct {
	mu   sync.Mutex
	reqs []recorded
}

func (r *recorder) add(rec recorded) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, rec)
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

// allowedRequests is every endpoint this package may call. Anything else,
// and above all the three endpoints that create contacts, fails the test.
// Both families: /crm/v3/... and the date versions' /crm/objects/2026-09/...
var allowedRequests = []*regexp.Regexp{
	regexp.MustCompile(`^POST /crm/(v3/objects|objects/20[0-9]{2}-[0-9]{2})/contacts/batch/(read|update)$`),
	regexp.MustCompile(`^(GET|POST) /crm/(v3/properties|properties/20[0-9]{2}-[0-9]{2})/contacts(/groups)?$`),
	regexp.MustCompile(`^GET /crm/(v3/properties|properties/20[0-9]{2}-[0-9]{2})/contacts/groups/[^/]+$`),
	regexp.MustCompile(`^POST /crm/(v3/properties|properties/20[0-9]{2}-[0-9]{2})/contacts/batch/create$`),
	regexp.MustCompile(`^(GET|PATCH) /crm/(v3/properties|properties/20[0-9]{2}-[0-9]{2})/contacts/[^/]+$`),
}

func allowed(method, path string) bool {
	line := method + " " + path
	for _, re := range allowedRequests {
		if re.MatchString(line) {
			return true
		}
	}
	return false
}

// newServer starts a fake HubSpot that checks headers and endpoints on every
// request before handing it to h with the body already read.
func newServer(t *testing.T, h func(w http.ResponseWriter, r *http.Request, body []byte)) (*httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.add(recorded{Method: r.Method, Path: r.URL.Path, Body: body})
		if !allowed(r.Method, r.URL.Path) {
			t.Errorf("forbidden request %s %s", r.Method, r.URL.Path)
			writeJSON(w, http.StatusTeapot, map[string]string{"message": "forbidden in tests"})
			return
		}
		if got := r.Header.Get("Authorization"); got != "Bearer "+testToken {
			t.Errorf("%s %s: Authorization header is not the bearer token", r.Method, r.URL.Path)
		}
		if got := r.Header.Get("Accept"); got != "application/json" {
			t.Errorf("%s %s: Accept = %q", r.Method, r.URL.Path, got)
		}
		if got := r.Header.Get("User-Agent"); got != "progress-sync" {
			t.Errorf("%s %s: User-Agent = %q", r.Method, r.URL.Path, got)
		}
		if len(body) > 0 && r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: Content-Type = %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		}
		h(w, r, body)
	}))
	t.Cleanup(srv.Close)
	return srv, rec
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// safeBuffer collects log output; logrus may write from the client's goroutine
// while the test reads.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fakeTime is the retry loop's clock: timers fire at once and move the clock
// forward by the wait they were asked for, so backoff budgets and Retry-After
// are exercised without sleeping.
type fakeTime struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (f *fakeTime) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeTime) Waits() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.waits...)
}

type fakeTimer struct {
	ft *fakeTime
	c  chan time.Time
}

func (t *fakeTimer) Start(d time.Duration) {
	t.ft.mu.Lock()
	t.ft.now = t.ft.now.Add(d)
	t.ft.waits = append(t.ft.waits, d)
	now := t.ft.now
	t.ft.mu.Unlock()
	t.c <- now
}

func (t *fakeTimer) Stop()                  {}
func (t *fakeTimer) C() <-chan time.Time    { return t.c }
func (f *fakeTime) newTimer() backoff.Timer { return &fakeTimer{ft: f, c: make(chan time.Time, 1)} }

type testEnv struct {
	client *Client
	log    *safeBuffer
	time   *fakeTime
}

// newTestClient returns a client for baseURL with instant, recorded retry
// waits and a debug-level log captured for inspection.
func newTestClient(t *testing.T, baseURL string, mods ...func(*Config)) testEnv {
	t.Helper()
	buf := &safeBuffer{}
	l := logrus.New()
	l.SetOutput(buf)
	l.SetLevel(logrus.DebugLevel)
	cfg := Config{
		BaseURL:         baseURL,
		Token:           testToken,
		RateLimit:       Rate{Requests: 1_000_000, Per: time.Second},
		Log:             logrus.NewEntry(l),
		MaxRetryElapsed: time.Minute,
		InitialBackoff:  time.Millisecond,
	}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ft := &fakeTime{now: time.Date(2026, 10, 10, 10, 0, 0, 0, time.UTC)}
	c.clock = ft
	c.newTimer = ft.newTimer
	return testEnv{client: c, log: buf, time: ft}
}

// apiPaths are the paths of the version the test clients speak: the default one.
var apiPaths = pathsFor(DefaultAPIVersion)

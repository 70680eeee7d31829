package hubspot

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    Rate
		wantErr string
	}{
		{in: "100/10s", want: Rate{100, 10 * time.Second}},
		{in: "190/10s", want: Rate{190, 10 * time.Second}},
		{in: "5/1s", want: Rate{5, time.Second}},
		{in: "5/s", want: Rate{5, time.Second}},
		{in: " 250 / 10s ", want: Rate{250, 10 * time.Second}},
		{in: "600/1m", want: Rate{600, time.Minute}},
		{in: "", wantErr: `missing "/"`},
		{in: "100", wantErr: `missing "/"`},
		{in: "abc/10s", wantErr: "not a whole number"},
		{in: "1.5/10s", wantErr: "not a whole number"},
		{in: "0/10s", wantErr: "must be positive"},
		{in: "-3/10s", wantErr: "must be positive"},
		{in: "100/", wantErr: "not a duration"},
		{in: "100/ten", wantErr: "not a duration"},
		{in: "100/0s", wantErr: "window must be positive"},
		{in: "100/-5s", wantErr: "window must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRate(%q) = %v, want error", tt.in, got)
				}
				msg := err.Error()
				if !strings.Contains(msg, tt.wantErr) || !strings.Contains(msg, `e.g. "100/10s"`) {
					t.Fatalf("error %q should contain %q and an example", msg, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRate(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"empty token", Config{}, "token is empty"},
		{"token with inner space", Config{Token: "pat abc"}, "whitespace"},
		{"relative base URL", Config{Token: "t", BaseURL: "api.hubapi.com"}, "absolute http(s) URL"},
		{"ftp base URL", Config{Token: "t", BaseURL: "ftp://x"}, "absolute http(s) URL"},
		{"bad rate", Config{Token: "t", RateLimit: Rate{Requests: 5}}, "rate limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New() error = %v, want containing %q", err, tt.wantErr)
			}
		})
	}
	c, err := New(Config{Token: "  " + testToken + "\n"})
	if err != nil {
		t.Fatalf("New with padded token: %v", err)
	}
	if c.creds.token() != testToken || c.baseURL != DefaultBaseURL || c.http.Timeout != defaultHTTPTimeout ||
		c.maxElapsed != defaultMaxElapsed || c.initialBackoff != defaultInitialBackoff {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

// TestLimiterWindow drives the limiter with a simulated clock: a greedy caller
// takes every token as soon as it exists, with idle gaps that refill the
// bucket, and no rolling window may ever hold more than Requests requests.
func TestLimiterWindow(t *testing.T) {
	rates := []Rate{
		{100, 10 * time.Second},
		{190, 10 * time.Second},
		{250, 10 * time.Second},
		{5, time.Second},
		{20, 10 * time.Second},
		{2, time.Second},
		{1, time.Second},
	}
	for _, r := range rates {
		t.Run(r.String(), func(t *testing.T) {
			lim := newLimiter(r)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			var sent []time.Time
			for i := 0; i < 6*r.Requests+40; i++ {
				// Idle now and then so the bucket refills completely.
				if i%(2*r.Requests+7) == 0 {
					now = now.Add(3 * r.Per)
				}
				res := lim.ReserveN(now, 1)
				if !res.OK() {
					t.Fatal("reservation refused")
				}
				now = now.Add(res.DelayFrom(now))
				sent = append(sent, now)
			}
			// Windows are closed, [sent[i], sent[i]+Per], the stricter
			// reading of "rolling". A bucket of one cannot keep two requests
			// exactly Per apart out of one closed window, so 1/Per is checked
			// with half-open windows.
			inWindow := func(d time.Duration) bool { return d <= r.Per }
			if r.Requests == 1 {
				inWindow = func(d time.Duration) bool { return d < r.Per }
			}
			maxInWindow, j := 0, 0
			for i := range sent {
				for j < len(sent) && inWindow(sent[j].Sub(sent[i])) {
					j++
				}
				maxInWindow = max(maxInWindow, j-i)
			}
			if maxInWindow > r.Requests {
				t.Fatalf("a window of %s held %d requests, limit %d", r.Per, maxInWindow, r.Requests)
			}
			// Not needlessly strict either: a greedy caller gets the whole
			// allowance in some window.
			if maxInWindow < r.Requests {
				t.Fatalf("best window held only %d of %d requests", maxInWindow, r.Requests)
			}
		})
	}
}

type countingPacer struct {
	mu sync.Mutex
	n  int
}

func (p *countingPacer) Wait(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	return ctx.Err()
}

// TestEveryAttemptIsPaced: retries spend rate-limit tokens like first tries.
func TestEveryAttemptIsPaced(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		hits++
		n := hits
		mu.Unlock()
		if n <= 2 {
			writeJSON(w, 503, map[string]string{"message": "unavailable"})
			return
		}
		writeJSON(w, 200, map[string]any{"results": []any{}})
	})
	env := newTestClient(t, srv.URL)
	p := &countingPacer{}
	env.client.pace = p
	if _, _, err := env.client.do(context.Background(), call{method: http.MethodGet, path: apiPaths.properties}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if p.n != 3 || hits != 3 {
		t.Fatalf("pacer waits = %d, server hits = %d; want 3 and 3", p.n, hits)
	}
}

type step struct {
	status int
	body   string
	header map[string]string
	hijack bool // drop the connection without answering
	hang   bool // answer only after the client gave up
}

// scripted serves steps in order, repeating the last one.
func scripted(t *testing.T, steps []step) (string, func() int) {
	var mu sync.Mutex
	n := 0
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		s := steps[min(n, len(steps)-1)]
		n++
		mu.Unlock()
		switch {
		case s.hijack:
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		case s.hang:
			<-r.Context().Done()
			return
		}
		for k, v := range s.header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(s.status)
		_, _ = w.Write([]byte(s.body))
	})
	return srv.URL, func() int { mu.Lock(); defer mu.Unlock(); return n }
}

const (
	okBody      = `{"results":[]}`
	burstBody   = `{"status":"error","message":"You have reached your ten_secondly_rolling limit.","errorType":"RATE_LIMIT","correlationId":"c-1","policyName":"TEN_SECONDLY_ROLLING"}`
	dailyBody   = `{"status":"error","message":"You have reached your daily limit.","errorType":"RATE_LIMIT","correlationId":"c-2","policyName":"DAILY"}`
	authBody    = `{"status":"error","message":"Authentication credentials not found.","correlationId":"c-3","category":"INVALID_AUTHENTICATION"}`
	scopesBody  = `{"status":"error","message":"This app hasn't been granted all required scopes to make this call.","correlationId":"c-4","category":"MISSING_SCOPES"}`
	badReqBody  = `{"status":"error","message":"Invalid input JSON","correlationId":"c-5","category":"VALIDATION_ERROR"}`
	notFoundMsg = `{"status":"error","message":"resource not found","correlationId":"c-6","category":"OBJECT_NOT_FOUND"}`
)

func TestRetries(t *testing.T) {
	errStep := func(status int) step { return step{status: status, body: `{"status":"error","message":"try later"}`} }
	ok := step{status: 200, body: okBody}
	tests := []struct {
		name         string
		steps        []step
		maxElapsed   time.Duration
		wantAttempts int
		wantErr      string // substring; "" means success
		wantIs       error
		minFirstWait time.Duration
	}{
		{name: "429 burst without Retry-After", steps: []step{{status: 429, body: burstBody}, ok}, wantAttempts: 2},
		{name: "429 with Retry-After seconds", steps: []step{{status: 429, body: burstBody, header: map[string]string{"Retry-After": "7"}}, ok},
			wantAttempts: 2, minFirstWait: 7 * time.Second},
		{name: "429 with Retry-After date", steps: []step{{status: 429, body: burstBody, header: map[string]string{
			"Retry-After": time.Now().Add(40 * time.Second).UTC().Format(http.TimeFormat)}}, ok},
			wantAttempts: 2, minFirstWait: 30 * time.Second},
		{name: "477 with Retry-After", steps: []step{{status: 477, body: `{}`, header: map[string]string{"Retry-After": "2"}}, ok},
			wantAttempts: 2, minFirstWait: 2 * time.Second},
		{name: "500", steps: []step{errStep(500), ok}, wantAttempts: 2},
		{name: "502 twice", steps: []step{errStep(502), errStep(502), ok}, wantAttempts: 3},
		{name: "503", steps: []step{errStep(503), ok}, wantAttempts: 2},
		{name: "504 html", steps: []step{{status: 504, body: "<html>Gateway Timeout</html>"}, ok}, wantAttempts: 2},
		{name: "423 locked", steps: []step{errStep(423), ok}, wantAttempts: 2},
		{name: "connection dropped (EOF)", steps: []step{{hijack: true}, ok}, wantAttempts: 2},
		{name: "400 not retried", steps: []step{{status: 400, body: badReqBody}, ok}, wantAttempts: 1, wantErr: "HTTP 400 VALIDATION_ERROR: Invalid input JSON"},
		{name: "404 not retried", steps: []step{{status: 404, body: notFoundMsg}, ok}, wantAttempts: 1, wantErr: "HTTP 404"},
		{name: "401 not retried", steps: []step{{status: 401, body: authBody}, ok}, wantAttempts: 1,
			wantErr: "check that the service key or private app token", wantIs: ErrUnauthorized},
		{name: "403 not retried", steps: []step{{status: 403, body: scopesBody}, ok}, wantAttempts: 1,
			wantErr: "crm.objects.contacts.read, crm.objects.contacts.write, crm.schemas.contacts.read, crm.schemas.contacts.write", wantIs: ErrMissingScopes},
		{name: "429 daily stops at once", steps: []step{{status: 429, body: dailyBody}, ok}, wantAttempts: 1,
			wantErr: "resets at midnight in the HubSpot account's time zone", wantIs: ErrDailyLimit},
		{name: "503 until the budget is spent", steps: []step{errStep(503)}, maxElapsed: 30 * time.Second,
			wantErr: "giving up after", wantIs: ErrUnavailable},
		{name: "Retry-After beyond the budget", steps: []step{{status: 429, body: burstBody, header: map[string]string{"Retry-After": "3600"}}, ok},
			maxElapsed: time.Minute, wantAttempts: 1, wantErr: "HTTP 429"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, attempts := scripted(t, tt.steps)
			env := newTestClient(t, url, func(c *Config) {
				if tt.maxElapsed > 0 {
					c.MaxRetryElapsed = tt.maxElapsed
				}
			})
			_, body, err := env.client.do(context.Background(), call{method: http.MethodGet, path: apiPaths.properties})
			if tt.wantErr == "" {
				if err != nil || string(body) != okBody {
					t.Fatalf("do() = %q, %v; want success", body, err)
				}
			} else {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("do() error = %v, want containing %q", err, tt.wantErr)
				}
				var ae *APIError
				if !errors.As(err, &ae) {
					t.Fatalf("error %v is not an *APIError", err)
				}
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
			if tt.wantAttempts > 0 && attempts() != tt.wantAttempts {
				t.Fatalf("attempts = %d, want %d", attempts(), tt.wantAttempts)
			}
			if tt.wantAttempts == 0 && attempts() < 3 {
				t.Fatalf("attempts = %d, want several before giving up", attempts())
			}
			waits := env.time.Waits()
			if len(waits) != attempts()-1 && tt.wantAttempts > 0 {
				t.Fatalf("waits %v for %d attempts", waits, attempts())
			}
			if tt.minFirstWait > 0 && waits[0] < tt.minFirstWait {
				t.Fatalf("first wait %s, want at least the Retry-After %s", waits[0], tt.minFirstWait)
			}
			if len(waits) > 0 && !strings.Contains(env.log.String(), "retrying") {
				t.Fatalf("retries were not logged: %s", env.log.String())
			}
		})
	}
}

func TestRetryReplaysBody(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		mu.Lock()
		bodies = append(bodies, string(body))
		n := len(bodies)
		mu.Unlock()
		if n == 1 {
			writeJSON(w, 502, map[string]string{"message": "bad gateway"})
			return
		}
		writeJSON(w, 200, map[string]any{"results": []any{}})
	})
	env := newTestClient(t, srv.URL)
	in := batchUpdateRequest{Inputs: []updateInput{{ID: "1", Properties: map[string]string{"total_xp": "5"}}}}
	if _, _, err := env.client.do(context.Background(), call{method: http.MethodPost, path: apiPaths.batchUpdate, body: in}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 2 || bodies[0] != bodies[1] || bodies[0] == "" {
		t.Fatalf("bodies sent = %q, want the same non-empty body twice", bodies)
	}
}

func TestRetriesConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	env := newTestClient(t, "http://"+addr, func(c *Config) { c.MaxRetryElapsed = 20 * time.Second })
	p := &countingPacer{}
	env.client.pace = p
	_, _, err = env.client.do(context.Background(), call{method: http.MethodGet, path: apiPaths.properties})
	if !errors.Is(err, syscall.ECONNREFUSED) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error = %v, want connection refused, out of reach", err)
	}
	if p.n < 2 || !strings.Contains(err.Error(), "giving up after") {
		t.Fatalf("attempts = %d, err = %v; want retries before giving up", p.n, err)
	}
}

func TestRetriesTimeout(t *testing.T) {
	url, attempts := scripted(t, []step{{hang: true}, {status: 200, body: okBody}})
	env := newTestClient(t, url, func(c *Config) { c.HTTPClient = &http.Client{Timeout: 200 * time.Millisecond} })
	_, body, err := env.client.do(context.Background(), call{method: http.MethodGet, path: apiPaths.properties})
	if err != nil || string(body) != okBody {
		t.Fatalf("do() = %q, %v; want success after a timeout", body, err)
	}
	if attempts() != 2 {
		t.Fatalf("attempts = %d, want 2", attempts())
	}
}

func TestCancelledContextStopsRetrying(t *testing.T) {
	url, attempts := scripted(t, []step{{status: 503, body: `{}`}})
	env := newTestClient(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	env.client.pace = pacerFunc(func(context.Context) error {
		if attempts() >= 2 {
			cancel()
		}
		return ctx.Err()
	})
	_, _, err := env.client.do(ctx, call{method: http.MethodGet, path: apiPaths.properties})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if attempts() != 2 {
		t.Fatalf("attempts = %d, want 2", attempts())
	}
}

type pacerFunc func(context.Context) error

func (f pacerFunc) Wait(ctx context.Context) error { return f(ctx) }

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 10, 10, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"10", 10 * time.Second},
		{"1.5", 1500 * time.Millisecond},
		{"-4", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"999999999999", 48 * time.Hour},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestTokenNeverLeaks forces every kind of failure, including servers that
// echo the token back, and checks error text and the debug log.
func TestTokenNeverLeaks(t *testing.T) {
	echo := `{"status":"error","message":"bad credentials: Bearer ` + testToken + `","category":"INVALID_AUTHENTICATION","errors":[{"message":"token ` + testToken + `"}]}`
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return "http://" + ln.Addr().String()
	}
	tests := []struct {
		name  string
		url   func() string
		httpc *http.Client
	}{
		{name: "401 echoing the token", url: func() string { u, _ := scripted(t, []step{{status: 401, body: echo}}); return u }},
		{name: "403", url: func() string { u, _ := scripted(t, []step{{status: 403, body: scopesBody}}); return u }},
		{name: "500 html echoing the token", url: func() string {
			u, _ := scripted(t, []step{{status: 500, body: "<html>Authorization: Bearer " + testToken + "</html>"}})
			return u
		}},
		{name: "429 daily", url: func() string { u, _ := scripted(t, []step{{status: 429, body: dailyBody}}); return u }},
		{name: "connection refused", url: refused},
		{name: "timeout", url: func() string { u, _ := scripted(t, []step{{hang: true}}); return u },
			httpc: &http.Client{Timeout: 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newTestClient(t, tt.url(), func(c *Config) {
				c.InitialBackoff = 10 * time.Millisecond
				c.MaxRetryElapsed = 30 * time.Millisecond
				c.HTTPClient = tt.httpc
			})
			ctx := context.Background()
			_, err1 := env.client.ReadByEmail(ctx, []string{"ada@example.com"}, []string{"total_xp"})
			_, err2 := env.client.UpdateContacts(ctx, []Update{{ContactID: "1", Properties: map[string]string{"total_xp": "1"}}})
			_, err3 := env.client.Provision(ctx, PropertyGroup{Name: "g", Label: "G"}, []Property{{Name: "total_xp", Type: "number", FieldType: "number"}})
			for _, err := range []error{err1, err2, err3} {
				if err == nil {
					t.Fatal("expected an error")
				}
				if strings.Contains(err.Error(), testToken) {
					t.Fatalf("token in error: %v", err)
				}
			}
			if strings.Contains(env.log.String(), testToken) {
				t.Fatalf("token in log output: %s", env.log.String())
			}
		})
	}
}

// TestTokenNotInRejections: a 400 that echoes the token must not carry it
// into Rejection messages either.
func TestTokenNotInRejections(t *testing.T) {
	body := `{"status":"error","message":"Property values were not valid: [{\"isValid\":false,\"message\":\"` + testToken + ` was not a valid number.\",\"error\":\"INVALID_INTEGER\",\"name\":\"total_xp\"}]","category":"VALIDATION_ERROR"}`
	url, _ := scripted(t, []step{{status: 400, body: body}})
	env := newTestClient(t, url)
	res, err := env.client.UpdateContacts(context.Background(), []Update{{ContactID: "1", Properties: map[string]string{"total_xp": testToken}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Rejected) != 1 || strings.Contains(res.Rejected[0].Message, testToken) {
		t.Fatalf("rejections = %+v", res.Rejected)
	}
	if strings.Contains(env.log.String(), testToken) {
		t.Fatalf("token in log output: %s", env.log.String())
	}
}

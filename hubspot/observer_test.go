package hubspot

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"
)

type countingObserver struct {
	mu       sync.Mutex
	requests map[string]int
	limited  map[string]int
}

func (o *countingObserver) Request(endpoint string, status int, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests[endpoint+" "+http.StatusText(status)]++
}

func (o *countingObserver) RateLimited(policy string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.limited[policy]++
}

func TestObserverSeesEveryAttempt(t *testing.T) {
	calls := 0
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		calls++
		if calls == 1 {
			writeJSON(w, http.StatusTooManyRequests, map[string]string{"status": "error", "policyName": "TEN_SECONDLY_ROLLING", "errorType": "RATE_LIMIT"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"name": "total_xp", "type": "number", "fieldType": "number"})
	})
	obs := &countingObserver{requests: map[string]int{}, limited: map[string]int{}}
	env := newTestClient(t, srv.URL, func(c *Config) { c.Observer = obs })
	if _, _, err := env.client.do(context.Background(), call{method: http.MethodGet, path: apiPaths.properties + "/total_xp", route: apiPaths.properties + "/{propertyName}"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{
		"GET " + apiPaths.properties + "/{propertyName} Too Many Requests": 1,
		"GET " + apiPaths.properties + "/{propertyName} OK":                1,
	}
	for k, n := range want {
		if obs.requests[k] != n {
			t.Errorf("requests[%q] = %d, want %d (all: %v)", k, obs.requests[k], n, obs.requests)
		}
	}
	if obs.limited["TEN_SECONDLY_ROLLING"] != 1 {
		t.Errorf("rate limited = %v", obs.limited)
	}
}

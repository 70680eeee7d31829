package hubspottest

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func checkTenSecondly429(t *testing.T, r reply) {
	t.Helper()
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("got %s, want 429", r)
	}
	m := r.obj(t)
	if m["status"] != "error" || m["message"] != "You have reached your ten_secondly_rolling limit." ||
		m["errorType"] != "RATE_LIMIT" || m["policyName"] != "TEN_SECONDLY_ROLLING" || m["correlationId"] == "" {
		t.Errorf("429 body: %s", r.body)
	}
	if g, _ := m["groupName"].(string); !strings.HasPrefix(g, "publicapi:") || !strings.Contains(g, "ten-secondly") {
		t.Errorf("groupName = %q", g)
	}
	if _, ok := m["category"]; ok {
		t.Errorf("429 body has category: %s", r.body)
	}
	if r.header.Get("Retry-After") != "" {
		t.Errorf("Retry-After sent")
	}
}

func checkDaily429(t *testing.T, r reply) {
	t.Helper()
	if r.status != http.StatusTooManyRequests {
		t.Fatalf("got %s, want 429", r)
	}
	m := r.obj(t)
	if m["status"] != "error" || m["message"] != "You have reached your daily limit." || m["errorType"] != "RATE_LIMIT" ||
		m["policyName"] != "DAILY" || m["correlationId"] == "" || m["requestId"] == "" {
		t.Errorf("daily 429 body: %s", r.body)
	}
}

func TestRollingRateLimit(t *testing.T) {
	s, clock := newTestServer(t, Options{RateLimit: 3})
	get := func() reply { return api(t, s, http.MethodGet, propsPath+"/email", nil) }

	for i, wantRemaining := range []string{"2", "1", "0"} {
		r := get()
		if r.status != http.StatusOK {
			t.Fatalf("request %d: %s", i, r)
		}
		h := r.header
		if h.Get("X-HubSpot-RateLimit-Max") != "3" || h.Get("X-HubSpot-RateLimit-Remaining") != wantRemaining ||
			h.Get("X-HubSpot-RateLimit-Interval-Milliseconds") != "10000" {
			t.Errorf("request %d headers: %v", i, h)
		}
		if h.Get("X-HubSpot-RateLimit-Daily") != "" {
			t.Errorf("daily header without DailyLimit")
		}
		clock.Advance(time.Second) // requests at t=0,1,2 s
	}
	r := get() // t=3 s
	checkTenSecondly429(t, r)
	if r.header.Get("X-HubSpot-RateLimit-Remaining") != "0" {
		t.Errorf("429 headers: %v", r.header)
	}
	clock.Advance(7 * time.Second) // t=10 s: the t=0 request leaves the window
	if r := get(); r.status != http.StatusOK || r.header.Get("X-HubSpot-RateLimit-Remaining") != "0" {
		t.Errorf("after the window rolled: %s %v", r, r.header)
	}
	checkTenSecondly429(t, get())
	// Rejected requests do not use up the window: at t=11 s one more fits.
	clock.Advance(time.Second)
	if r := get(); r.status != http.StatusOK {
		t.Errorf("t=11s: %s", r)
	}
	st := s.Stats()
	if st.Requests != 7 || st.Served != 5 || st.RateLimited != 2 || st.ByStatus[429] != 2 || st.ByStatus[200] != 5 {
		t.Errorf("stats = %+v", st)
	}
	if st.ByEndpoint["GET /crm/properties/2026-09/contacts/{propertyName}"] != 7 {
		t.Errorf("ByEndpoint = %v", st.ByEndpoint)
	}
}

func TestUnauthorizedRequestsAreNotRateLimited(t *testing.T) {
	s, _ := newTestServer(t, Options{RateLimit: 1})
	for range 3 {
		if r := call(t, s, "", http.MethodGet, propsPath, nil); r.status != http.StatusUnauthorized {
			t.Fatalf("got %s", r)
		}
	}
	if r := api(t, s, http.MethodGet, propsPath, nil); r.status != http.StatusOK {
		t.Errorf("got %s", r)
	}
}

func TestDailyLimit(t *testing.T) {
	s, clock := newTestServer(t, Options{DailyLimit: 2, RateLimit: 100})
	get := func() reply { return api(t, s, http.MethodGet, propsPath+"/email", nil) }
	for i, want := range []string{"1", "0"} {
		r := get()
		if r.status != http.StatusOK || r.header.Get("X-HubSpot-RateLimit-Daily") != "2" || r.header.Get("X-HubSpot-RateLimit-Daily-Remaining") != want {
			t.Errorf("request %d: %s %v", i, r, r.header)
		}
	}
	checkDaily429(t, get())
	clock.Advance(24 * time.Hour) // the next UTC day
	if r := get(); r.status != http.StatusOK {
		t.Errorf("next day: %s", r)
	}
	if st := s.Stats(); st.RateLimited != 1 || st.Served != 3 {
		t.Errorf("stats = %+v", st)
	}
}

func TestSearchRateLimit(t *testing.T) {
	s, clock := newTestServer(t, Options{RateLimit: 2})
	for i := range 5 {
		if r := api(t, s, http.MethodPost, searchPath, map[string]any{}); r.status != http.StatusOK {
			t.Fatalf("search %d: %s", i, r)
		}
	}
	r := api(t, s, http.MethodPost, searchPath, map[string]any{})
	if r.status != http.StatusTooManyRequests || r.obj(t)["policyName"] != "SECONDLY" ||
		r.obj(t)["message"] != "You have reached your secondly limit." || r.header.Get("X-HubSpot-RateLimit-Max") != "" {
		t.Errorf("6th search: %s %v", r, r.header)
	}
	// Search is exempt from the 10-second limit: both of those are left.
	for range 2 {
		if r := api(t, s, http.MethodGet, propsPath, nil); r.status != http.StatusOK {
			t.Errorf("non-search: %s", r)
		}
	}
	clock.Advance(time.Second)
	if r := api(t, s, http.MethodPost, searchPath, map[string]any{}); r.status != http.StatusOK {
		t.Errorf("next second: %s", r)
	}
}

func TestFaults(t *testing.T) {
	tests := []struct {
		name   string
		faults Faults
		check  func(t *testing.T, r reply)
	}{
		{"all 429", Faults{Rate429: 1}, func(t *testing.T, r reply) { checkTenSecondly429(t, r) }},
		{"daily exhausted", Faults{DailyExhausted: true}, func(t *testing.T, r reply) { checkDaily429(t, r) }},
		{"all 5xx", Faults{Rate5xx: 1}, func(t *testing.T, r reply) {
			switch r.status {
			case 500, 503:
				if r.obj(t)["status"] != "error" {
					t.Errorf("body: %s", r.body)
				}
			case 502, 504:
				if !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") || !strings.Contains(string(r.body), fmt.Sprint(r.status)) {
					t.Errorf("gateway error: %v %s", r.header, r.body)
				}
			default:
				t.Errorf("status %d", r.status)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestServer(t, Options{Seed: 5, RateLimit: 100})
			defineStudentProps(s)
			id := s.AddContact("ada@example.com", nil, nil)
			s.SetFaults(tt.faults)
			for range 8 {
				r := api(t, s, http.MethodPost, updatePath, updateBody(upd{id, map[string]any{"stu_note": "x"}}))
				tt.check(t, r)
			}
			if c, _ := s.Contact(id); c.Properties["stu_note"] != "" {
				t.Errorf("a faulted update was applied")
			}
			st := s.Stats()
			if st.Faults != 8 || st.Served != 0 || st.BatchUpdates != 0 || len(st.BatchUpdateInputs) != 8 || st.Requests != 8 {
				t.Errorf("stats = %+v", st)
			}
			s.SetFaults(Faults{})
			if r := api(t, s, http.MethodPost, updatePath, updateBody(upd{id, map[string]any{"stu_note": "x"}})); r.status != http.StatusOK {
				t.Errorf("after clearing faults: %s", r)
			}
		})
	}
}

func TestFaultsAreSeeded(t *testing.T) {
	run := func(seed int64) []int {
		s, _ := newTestServer(t, Options{Seed: seed})
		s.SetFaults(Faults{Rate429: 0.3, Rate5xx: 0.3})
		var statuses []int
		for range 60 {
			statuses = append(statuses, api(t, s, http.MethodGet, propsPath+"/email", nil).status)
		}
		return statuses
	}
	a := run(42)
	if b := run(42); !slices.Equal(a, b) {
		t.Errorf("same seed, different faults:\n%v\n%v", a, b)
	}
	seen := map[int]bool{}
	for _, st := range a {
		seen[st/100*100] = true
	}
	if !seen[200] || !seen[400] || !seen[500] {
		t.Errorf("expected a mix of 200, 429 and 5xx: %v", a)
	}
}

func TestLatencyRespectsCancellation(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	defineStudentProps(s)
	id := s.AddContact("ada@example.com", nil, nil)
	waiting, waited := make(chan struct{}, 1), make(chan struct{}, 1)
	s.onWaitStart = func() { waiting <- struct{}{} }
	s.onWaitEnd = func() { waited <- struct{}{} }
	s.SetFaults(Faults{Latency: time.Hour})

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := tryCall(ctx, s, testToken, http.MethodPost, updatePath, updateBody(upd{id, map[string]any{"stu_note": "x"}}))
		errc <- err
	}()
	<-waiting // the server is holding the request
	cancel()
	if err := <-errc; err == nil {
		t.Fatalf("request succeeded despite an hour of latency")
	}
	<-waited  // the server noticed the cancellation
	s.Close() // waits for the handler to finish
	if c, _ := s.Contact(id); c.Properties["stu_note"] != "" {
		t.Errorf("canceled update was applied")
	}
	if st := s.Stats(); st.ByStatus[statusClientClosed] != 1 || st.Served != 0 {
		t.Errorf("stats = %+v", st)
	}
}

func TestUnknownRoute(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	r := api(t, s, http.MethodGet, "/crm/v3/objects/widgets", nil)
	if r.status != http.StatusNotFound || r.obj(t)["status"] != "error" || r.obj(t)["category"] != "OBJECT_NOT_FOUND" {
		t.Errorf("got %s", r)
	}
	r = call(t, s, "", http.MethodGet, "/crm/v3/objects/widgets", nil)
	if r.status != http.StatusUnauthorized {
		t.Errorf("unauthenticated unknown route: %s", r)
	}
}

func TestConcurrentUse(t *testing.T) {
	s, _ := newTestServer(t, Options{Seed: 9, RateLimit: 1000})
	defineStudentProps(s)
	var ids []string
	for i := range 20 {
		ids = append(ids, s.AddContact(fmt.Sprintf("c%02d@example.com", i), nil, nil))
	}
	const workers, rounds = 8, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				id := ids[(w*rounds+i)%len(ids)]
				if _, err := tryCall(context.Background(), s, testToken, http.MethodPost, updatePath,
					updateBody(upd{id, map[string]any{"stu_progress_pct": fmt.Sprint(i)}})); err != nil {
					t.Error(err)
				}
				if _, err := tryCall(context.Background(), s, testToken, http.MethodPost, readPath,
					readByEmail([]string{"c00@example.com"}, "stu_progress_pct")); err != nil {
					t.Error(err)
				}
				_ = s.Stats()
				_ = s.Contacts()
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Requests != 2*workers*rounds || st.BatchUpdates != workers*rounds || st.BatchReads != workers*rounds {
		t.Errorf("stats = %+v", st)
	}
}

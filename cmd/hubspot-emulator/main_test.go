package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			if c.listen != "127.0.0.1:8089" || c.token != "test-token" || c.tokenSource != "default" || c.rateLimit != 100 ||
				c.dailyLimit != 0 || c.faults != (hubspottest.Faults{}) || c.contactsFile != "" {
				t.Errorf("config = %+v", c)
			}
		}},
		{name: "token from env", env: map[string]string{"HUBSPOT_ACCESS_TOKEN": "pat-env"}, check: func(t *testing.T, c config) {
			if c.token != "pat-env" || c.tokenSource != "env" {
				t.Errorf("token source %s", c.tokenSource)
			}
		}},
		{name: "flag beats env", args: []string{"-token", "pat-flag"}, env: map[string]string{"HUBSPOT_ACCESS_TOKEN": "pat-env"},
			check: func(t *testing.T, c config) {
				if c.token != "pat-flag" || c.tokenSource != "flag" {
					t.Errorf("token source %s", c.tokenSource)
				}
			}},
		{name: "all flags", args: []string{"-listen", ":9000", "-rate-limit", "0", "-daily-limit", "500", "-seed", "7",
			"-fault-429", "0.1", "-fault-5xx", "0.2", "-latency", "150ms", "-contacts", "x.json"},
			check: func(t *testing.T, c config) {
				want := hubspottest.Faults{Rate429: 0.1, Rate5xx: 0.2, Latency: 150 * time.Millisecond}
				if c.listen != ":9000" || c.rateLimit != 0 || c.dailyLimit != 500 || c.seed != 7 || c.faults != want || c.contactsFile != "x.json" {
					t.Errorf("config = %+v", c)
				}
			}},
		{name: "fault rates over 1", args: []string{"-fault-429", "0.6", "-fault-5xx", "0.6"}, wantErr: true},
		{name: "negative rate limit", args: []string{"-rate-limit", "-1"}, wantErr: true},
		{name: "bad latency", args: []string{"-latency", "soon"}, wantErr: true},
		{name: "empty token", args: []string{"-token", ""}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, env(tt.env), io.Discard)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestLoadContacts(t *testing.T) {
	in, err := loadContacts("testdata/contacts.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(in) != 3 || in[1].AdditionalEmails[0] != "bob.work@example.com" || in[0].Properties["lastname"] != "Lovelace" {
		t.Errorf("contacts = %+v", in)
	}
	if _, err := loadContacts("testdata/missing.json"); err == nil {
		t.Errorf("missing file: no error")
	}
	if _, err := loadContacts("main.go"); err == nil {
		t.Errorf("not JSON: no error")
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestRunServesAndShutsDown(t *testing.T) {
	const token = "pat-na1-secret"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	addrc := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-contacts", "testdata/contacts.json", "-latency", "1h"},
			env(map[string]string{"HUBSPOT_ACCESS_TOKEN": token}), logs, func(a net.Addr) { addrc <- a })
	}()
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-done:
		t.Fatalf("run returned early: %v", err)
	}

	do := func(method, path, body string, auth bool) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		if auth {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, raw
	}

	// Admin API: the seeded contacts; then drop the latency from the flags.
	status, raw := do(http.MethodGet, "/_emulator/contacts", "", false)
	var contacts []hubspottest.Contact
	if err := json.Unmarshal(raw, &contacts); status != http.StatusOK || err != nil || len(contacts) != 3 || contacts[1].Email != "bob@example.com" {
		t.Fatalf("contacts: %d %s", status, raw)
	}
	if status, raw := do(http.MethodPut, "/_emulator/faults", `{"latency":"0s"}`, false); status != http.StatusOK {
		t.Fatalf("faults: %d %s", status, raw)
	}

	if status, _ := do(http.MethodGet, "/crm/v3/properties/contacts/email", "", false); status != http.StatusUnauthorized {
		t.Errorf("no token: %d", status)
	}
	status, raw = do(http.MethodPost, "/crm/v3/objects/contacts/batch/read",
		`{"idProperty":"email","properties":["firstname"],"inputs":[{"id":"bob.work@example.com"}]}`, true)
	if status != http.StatusOK || !strings.Contains(string(raw), `"firstname":"Bob"`) {
		t.Errorf("batch read: %d %s", status, raw)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	out := logs.String()
	if strings.Contains(out, token) {
		t.Errorf("the token was logged:\n%s", out)
	}
	for _, want := range []string{"token_source=env", "method=POST", "path=/crm/v3/objects/contacts/batch/read", "status=200", "status=401", "duration=", "shutting down"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

func TestRunRejectsBadContactsFile(t *testing.T) {
	err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-contacts", "testdata/missing.json"}, env(nil), io.Discard, nil)
	if err == nil {
		t.Fatal("no error for a missing contacts file")
	}
}

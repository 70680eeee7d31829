package hubspottest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

const testToken = "secret-test-token"

// fakeClock drives the rate-limit windows without sleeping.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 10, 10, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTestServer starts a server with the test token and a fake clock.
func newTestServer(t *testing.T, opts Options) (*Server, *fakeClock) {
	t.Helper()
	clock := newFakeClock()
	if opts.Token == "" {
		opts.Token = testToken
	}
	if opts.Now == nil {
		opts.Now = clock.Now
	}
	s := NewServer(opts)
	t.Cleanup(s.Close)
	return s, clock
}

type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) obj(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("reply %d is not a JSON object: %v\n%s", r.status, err, r.body)
	}
	return m
}

func (r reply) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// call sends a request with the test token (token "" = no Authorization).
func call(t *testing.T, s *Server, token, method, path string, body any) reply {
	t.Helper()
	return callCtx(t, context.Background(), s, token, method, path, body)
}

func callCtx(t *testing.T, ctx context.Context, s *Server, token, method, path string, body any) reply {
	t.Helper()
	rep, err := tryCall(ctx, s, token, method, path, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return rep
}

func tryCall(ctx context.Context, s *Server, token, method, path string, body any) (reply, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return reply{}, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.URL()+path, rd)
	if err != nil {
		return reply{}, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{}, err
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: raw}, nil
}

func api(t *testing.T, s *Server, method, path string, body any) reply {
	t.Helper()
	return call(t, s, testToken, method, path, body)
}

// The paths of the 2026-09 version; the legacy v3 paths are tested where they differ.
const (
	readPath   = "/crm/objects/2026-09/contacts/batch/read"
	updatePath = "/crm/objects/2026-09/contacts/batch/update"
	propsPath  = "/crm/properties/2026-09/contacts"
	groupsPath = "/crm/properties/2026-09/contacts/groups"
	searchPath = "/crm/objects/2026-09/contacts/search"
)

func readByEmail(emails []string, props ...string) map[string]any {
	inputs := make([]map[string]string, len(emails))
	for i, e := range emails {
		inputs[i] = map[string]string{"id": e}
	}
	return map[string]any{"idProperty": "email", "properties": props, "inputs": inputs}
}

type upd struct {
	id    string
	props map[string]any
}

func updateBody(in ...upd) map[string]any {
	inputs := make([]map[string]any, len(in))
	for i, u := range in {
		inputs[i] = map[string]any{"id": u.id, "properties": u.props}
	}
	return map[string]any{"inputs": inputs}
}

// results returns the "results" array of a batch answer.
func results(t *testing.T, r reply) []map[string]any {
	t.Helper()
	raw, _ := r.obj(t)["results"].([]any)
	out := make([]map[string]any, len(raw))
	for i, x := range raw {
		out[i] = x.(map[string]any)
	}
	return out
}

func props(o map[string]any) map[string]any {
	p, _ := o["properties"].(map[string]any)
	return p
}

// defineStudentProps adds the custom properties the tests write.
func defineStudentProps(s *Server) {
	s.DefineGroup(Group{Name: "student_progress", Label: "Student progress"})
	s.DefineProperty(Property{Name: "stu_progress_pct", Label: "Progress %", Type: "number", FieldType: "number", GroupName: "student_progress"})
	s.DefineProperty(Property{Name: "stu_last_lesson", Label: "Last lesson", Type: "date", FieldType: "date", GroupName: "student_progress"})
	s.DefineProperty(Property{Name: "stu_level", Label: "Level", Type: "enumeration", FieldType: "select", GroupName: "student_progress",
		Options: []Option{{Label: "A1", Value: "a1"}, {Label: "A2", Value: "a2"}, {Label: "B1", Value: "b1"}}})
	s.DefineProperty(Property{Name: "stu_courses", Label: "Courses", Type: "enumeration", FieldType: "checkbox", GroupName: "student_progress",
		Options: []Option{{Label: "Grammar", Value: "grammar"}, {Label: "Speaking", Value: "speaking"}, {Label: "Writing", Value: "writing"}}})
	s.DefineProperty(Property{Name: "stu_note", Label: "Note", Type: "string", FieldType: "text", GroupName: "student_progress"})
	s.DefineProperty(Property{Name: "stu_active", Label: "Active", Type: "bool", FieldType: "booleancheckbox", GroupName: "student_progress"})
}

func mustJSON(t *testing.T, raw string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		t.Fatalf("decoding %q: %v", raw, err)
	}
}

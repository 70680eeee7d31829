package hubspottest

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func TestAdminAPI(t *testing.T) {
	s, _ := newTestServer(t, Options{RateLimit: 1})

	r := call(t, s, "", http.MethodPost, "/_emulator/contacts",
		`[{"email":"Ada@Example.com","additionalEmails":["ada2@example.com"],"properties":{"firstname":"Ada"}},{"email":"bob@example.com"}]`)
	if r.status != http.StatusCreated {
		t.Fatalf("add: %s", r)
	}
	var added struct{ IDs []string }
	mustJSON(t, string(r.body), &added)
	if len(added.IDs) != 2 {
		t.Fatalf("ids = %v", added.IDs)
	}
	if r := call(t, s, "", http.MethodPost, "/_emulator/contacts", `[{"email":"ADA2@example.com"}]`); r.status != http.StatusConflict {
		t.Errorf("duplicate email: %s", r)
	}

	r = call(t, s, "", http.MethodGet, "/_emulator/contacts", nil)
	var contacts []Contact
	mustJSON(t, string(r.body), &contacts)
	if len(contacts) != 2 || contacts[0].ID != added.IDs[0] || contacts[0].Email != "ada@example.com" ||
		contacts[0].AdditionalEmails[0] != "ada2@example.com" || contacts[0].Properties["firstname"] != "Ada" {
		t.Errorf("contacts = %+v", contacts)
	}

	r = call(t, s, "", http.MethodPut, "/_emulator/faults", `{"rate429":0.25,"rate5xx":0.5,"latency":"200ms"}`)
	if r.status != http.StatusOK {
		t.Fatalf("faults: %s", r)
	}
	if f := s.CurrentFaults(); f != (Faults{Rate429: 0.25, Rate5xx: 0.5, Latency: 200 * time.Millisecond}) {
		t.Errorf("faults = %+v", f)
	}
	if r := call(t, s, "", http.MethodPut, "/_emulator/faults", `{"rate429":0.8,"rate5xx":0.5}`); r.status != http.StatusBadRequest {
		t.Errorf("rates over 1: %s", r)
	}
	if r := call(t, s, "", http.MethodPut, "/_emulator/faults", `{"latency":"soon"}`); r.status != http.StatusBadRequest {
		t.Errorf("bad latency: %s", r)
	}
	r = call(t, s, "", http.MethodGet, "/_emulator/faults", nil)
	var f Faults
	if err := json.Unmarshal(r.body, &f); err != nil || f.Latency != 200*time.Millisecond {
		t.Errorf("GET faults: %s (%v)", r, err)
	}
	s.SetFaults(Faults{})

	// Two API requests with RateLimit 1: one served, one limited; the admin
	// requests count for neither.
	api(t, s, http.MethodPost, "/crm/v3/objects/contacts", map[string]any{"properties": map[string]string{"email": "x@example.com"}})
	api(t, s, http.MethodGet, propsPath, nil)

	r = call(t, s, "", http.MethodGet, "/_emulator/stats", nil)
	var st Stats
	mustJSON(t, string(r.body), &st)
	if st.Requests != 2 || st.Served != 1 || st.RateLimited != 1 || st.ByStatus[403] != 1 || st.ByEndpoint["POST /crm/v3/objects/contacts"] != 1 {
		t.Errorf("stats = %s", r.body)
	}
	r = call(t, s, "", http.MethodGet, "/_emulator/violations", nil)
	var v []string
	mustJSON(t, string(r.body), &v)
	if len(v) != 1 || v[0] != "contact-creating endpoint called: POST /crm/v3/objects/contacts" {
		t.Errorf("violations = %q", v)
	}
	if r := call(t, s, "", http.MethodDelete, "/_emulator/stats", nil); r.status != http.StatusNoContent || s.Stats().Requests != 0 {
		t.Errorf("reset: %s", r)
	}
	if r := call(t, s, "", http.MethodDelete, "/_emulator/contacts/"+added.IDs[1], nil); r.status != http.StatusNoContent || len(s.Contacts()) != 1 {
		t.Errorf("delete: %s", r)
	}
	if r := call(t, s, "", http.MethodGet, "/_emulator/nope", nil); r.status != http.StatusNotFound {
		t.Errorf("unknown admin route: %s", r)
	}
	if n := len(s.Violations()); n != 1 {
		t.Errorf("ResetStats dropped violations")
	}
}

func TestUnstartedHandler(t *testing.T) {
	s := NewUnstartedHandler(Options{})
	defer s.Close()
	if s.URL() != "" {
		t.Errorf("URL = %q", s.URL())
	}
	if s.opts.Token != "test-token" {
		t.Errorf("default token = %q", s.opts.Token)
	}
	if s.Handler() == nil {
		t.Errorf("nil handler")
	}
}

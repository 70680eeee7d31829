package hubspottest

import (
	"net/http"
	"strings"
	"testing"
)

func TestBothPathFamiliesServeTheSamePortal(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	id := s.AddContact("ada@example.com", nil, map[string]string{"firstname": "Ada"})
	read := map[string]any{"idProperty": "email", "properties": []string{"firstname"}, "inputs": []map[string]string{{"id": "ada@example.com"}}}
	for _, tc := range []struct {
		family, read, props string
	}{
		{"v3", "/crm/v3/objects/contacts/batch/read", "/crm/v3/properties/contacts"},
		{"2026-09", "/crm/objects/2026-09/contacts/batch/read", "/crm/properties/2026-09/contacts"},
		{"2026-03", "/crm/objects/2026-03/0-1/batch/read", "/crm/properties/2026-03/0-1"},
	} {
		if r := api(t, s, http.MethodPost, tc.read, read); r.status != http.StatusOK || !strings.Contains(string(r.body), `"id":"`+id+`"`) {
			t.Errorf("%s batch/read: %s", tc.family, r)
		}
		if r := api(t, s, http.MethodGet, tc.props, nil); r.status != http.StatusOK {
			t.Errorf("%s properties: %s", tc.family, r)
		}
	}
	st := s.Stats()
	if st.ByFamily["v3"] != 2 || st.ByFamily["2026-09"] != 2 || st.ByFamily["2026-03"] != 2 {
		t.Errorf("by family %v", st.ByFamily)
	}
	if st.ByEndpoint["POST /crm/objects/2026-09/contacts/batch/read"] != 1 {
		t.Errorf("by endpoint %v", st.ByEndpoint)
	}
	if r := api(t, s, http.MethodPost, "/crm/objects/2031-01/contacts/batch/read", read); r.status != http.StatusNotFound {
		t.Errorf("an unknown version: %s", r)
	}
	// Creating is a violation on every path family.
	api(t, s, http.MethodPost, "/crm/objects/2026-09/contacts/batch/upsert", map[string]any{"inputs": []any{}})
	if v := s.Violations(); len(v) != 1 || !strings.Contains(v[0], "creat") {
		t.Errorf("violations %v", v)
	}
}

func TestValidationRulesAreEnforcedFrom2026_09Only(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	s.DefineProperty(Property{Name: "stu_score", Type: "number", FieldType: "number"})
	s.AddValidationRule("stu_score", MaxNumber(100))
	id := s.AddContact("ada@example.com", nil, nil)
	body := map[string]any{"inputs": []map[string]any{{"id": id, "properties": map[string]string{"stu_score": "150"}}}}
	if r := api(t, s, http.MethodPost, updatePath, body); r.status != http.StatusBadRequest ||
		!strings.Contains(string(r.body), "greater than the maximum") || strings.Contains(string(r.body), `"errors"`) {
		t.Errorf("2026-09: %s, want a 400 with the message alone", r)
	}
	if c, _ := s.Contact(id); c.Properties["stu_score"] != "" {
		t.Fatalf("a refused value was stored: %v", c.Properties)
	}
	if r := api(t, s, http.MethodPost, "/crm/v3/objects/contacts/batch/update", body); r.status != http.StatusOK {
		t.Errorf("v3: %s, want the value taken (rules were not enforced on API writes)", r)
	}
	if c, _ := s.Contact(id); c.Properties["stu_score"] != "150" {
		t.Fatalf("v3 write not applied: %v", c.Properties)
	}
}

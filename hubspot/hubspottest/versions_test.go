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
		{"v3", readPath, propsPath},
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

package hubspottest

import (
	"net/http"
	"strings"
	"testing"
)

func TestScopes(t *testing.T) {
	for _, tc := range []struct{ method, path, scope string }{
		{"POST", readPath, scopeContactsRead},
		{"POST", searchPath, scopeContactsRead},
		{"POST", updatePath, scopeContactsWrite},
		{"GET", propsPath, scopeSchemasRead},
		{"GET", groupsPath + "/progresstracking", scopeSchemasRead},
		{"POST", groupsPath, scopeSchemasWrite},
		{"POST", "/crm/properties/2026-09/contacts/batch/create", scopeSchemasWrite},
		{"PATCH", "/crm/properties/2026-09/contacts/total_xp", scopeSchemasWrite},
	} {
		s, _ := newTestServer(t, Options{})
		if r := api(t, s, tc.method, tc.path, map[string]any{"inputs": []any{}}); r.status == http.StatusForbidden {
			t.Errorf("%s %s with every scope: %s", tc.method, tc.path, r)
		}
		var others []string
		for _, sc := range []string{scopeContactsRead, scopeContactsWrite, scopeSchemasRead, scopeSchemasWrite} {
			if sc != tc.scope {
				others = append(others, sc)
			}
		}
		s.SetScopes(others...)
		r := api(t, s, tc.method, tc.path, map[string]any{"inputs": []any{}})
		if r.status != http.StatusForbidden || !strings.Contains(string(r.body), `"MISSING_SCOPES"`) || !strings.Contains(string(r.body), tc.scope) {
			t.Errorf("%s %s without %s: %s", tc.method, tc.path, tc.scope, r)
		}
	}
}

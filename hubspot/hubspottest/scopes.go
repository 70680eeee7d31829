package hubspottest

import (
	"net/http"
	"slices"
	"strings"
)

// The scopes of the endpoints the emulator serves.
const (
	scopeContactsRead  = "crm.objects.contacts.read"
	scopeContactsWrite = "crm.objects.contacts.write"
	scopeSchemasRead   = "crm.schemas.contacts.read"
	scopeSchemasWrite  = "crm.schemas.contacts.write"
)

// SetScopes limits what the token may do to the given scopes, as a service key created with
// fewer scopes would; a call that needs another gets HubSpot's 403 MISSING_SCOPES. No call
// (the default) grants every scope.
func (s *Server) SetScopes(scopes ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scopes = append([]string{}, scopes...)
	s.scoped = true
}

// requiredScope is the scope a request to pattern needs.
func requiredScope(method, pattern string) string {
	read := method == http.MethodGet || strings.HasSuffix(pattern, "/batch/read") || strings.HasSuffix(pattern, "/search")
	switch {
	case strings.Contains(pattern, "/properties/") && read:
		return scopeSchemasRead
	case strings.Contains(pattern, "/properties/"):
		return scopeSchemasWrite
	case read:
		return scopeContactsRead
	}
	return scopeContactsWrite
}

// missingScope answers 403 when the token lacks the scope the request needs; the caller must
// not hold s.mu.
func (s *Server) missingScope(w http.ResponseWriter, r *http.Request, pattern string) bool {
	need := requiredScope(r.Method, pattern)
	s.mu.Lock()
	granted := !s.scoped || slices.Contains(s.scopes, need)
	s.mu.Unlock()
	if granted {
		return false
	}
	e := newAPIError("MISSING_SCOPES", "This app hasn't been granted all required scopes to make this call. Read more about required scopes here: https://developers.hubspot.com/scopes.")
	e.Errors = []errorDetail{{Message: "One or more of the following scopes are required.", Context: map[string][]string{"requiredGranularScopes": {need}}}}
	writeError(w, http.StatusForbidden, e)
	return true
}

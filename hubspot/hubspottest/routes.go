package hubspottest

import (
	"net/http"
	"slices"
	"strings"
)

// versions are the date versions of the API the emulator serves besides the legacy v3 paths:
// /crm/objects/2026-09/contacts/... and /crm/properties/2026-09/contacts/....
func versions() []string { return []string{"2026-03", "2026-09"} }

// routes registers the HubSpot API in both path families, the legacy /crm/v3/... and the date
// versions' /crm/objects/{version}/... (for both "contacts" and its object type id "0-1"),
// and the admin API.
func (s *Server) routes() {
	s.api = http.NewServeMux()
	s.forbiddenPatterns = map[string]string{}
	for _, obj := range []string{"contacts", "0-1"} {
		s.family("/crm/v3/objects/"+obj, "/crm/v3/properties/"+obj, func(h http.HandlerFunc) http.HandlerFunc { return h })
		s.family("/crm/objects/{version}/"+obj, "/crm/properties/{version}/"+obj, knownVersion)
	}

	s.admin = http.NewServeMux()
	s.admin.HandleFunc("GET /_emulator/contacts", s.adminListContacts)
	s.admin.HandleFunc("POST /_emulator/contacts", s.adminAddContacts)
	s.admin.HandleFunc("DELETE /_emulator/contacts/{id}", s.adminDeleteContact)
	s.admin.HandleFunc("GET /_emulator/stats", s.adminStats)
	s.admin.HandleFunc("DELETE /_emulator/stats", s.adminResetStats)
	s.admin.HandleFunc("GET /_emulator/violations", s.adminViolations)
	s.admin.HandleFunc("GET /_emulator/faults", s.adminGetFaults)
	s.admin.HandleFunc("PUT /_emulator/faults", s.adminSetFaults)
	s.admin.HandleFunc("/_emulator/", adminNotFound)
}

// family registers one path family's endpoints under the objects and properties prefixes,
// each handler wrapped by wrap.
func (s *Server) family(o, p string, wrap func(http.HandlerFunc) http.HandlerFunc) {
	handle := func(pattern string, h http.HandlerFunc) { s.api.HandleFunc(pattern, wrap(h)) }
	handle("POST "+o+"/batch/read", s.handleBatchRead)
	handle("POST "+o+"/batch/update", s.handleBatchUpdate)
	handle("POST "+o+"/search", s.handleSearch)
	handle("GET "+o+"/{contactId}", s.handleGetContact)
	handle("PATCH "+o+"/{contactId}", s.handlePatchContact)
	handle("GET "+o, notImplemented)
	for _, pattern := range []string{"POST " + o, "POST " + o + "/batch/create", "POST " + o + "/batch/upsert"} {
		s.forbiddenPatterns[pattern] = "creating"
		handle(pattern, forbidden("create"))
	}
	for _, pattern := range []string{"DELETE " + o + "/{contactId}", "POST " + o + "/batch/archive", "POST " + o + "/merge", "POST " + o + "/gdpr-delete"} {
		s.forbiddenPatterns[pattern] = "deleting"
		handle(pattern, forbidden("delete"))
	}
	handle("GET "+p, s.handleListProperties)
	handle("POST "+p, s.handleCreateProperty)
	handle("POST "+p+"/batch/create", s.handleBatchCreateProperties)
	handle("POST "+p+"/batch/read", s.handleBatchReadProperties)
	handle("POST "+p+"/batch/archive", notImplemented)
	handle("GET "+p+"/groups", s.handleListGroups)
	handle("POST "+p+"/groups", s.handleCreateGroup)
	handle("GET "+p+"/groups/{groupName}", s.handleGetGroup)
	handle("PATCH "+p+"/groups/{groupName}", s.handleUpdateGroup)
	handle("DELETE "+p+"/groups/{groupName}", s.handleArchiveGroup)
	handle("GET "+p+"/{propertyName}", s.handleGetProperty)
	handle("PATCH "+p+"/{propertyName}", s.handleUpdateProperty)
	handle("DELETE "+p+"/{propertyName}", s.handleArchiveProperty)
}

// knownVersion answers 404, as HubSpot does, for a date version that does not exist.
func knownVersion(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !slices.Contains(versions(), r.PathValue("version")) {
			writeError(w, http.StatusNotFound, newAPIError("NOT_FOUND", "API version "+r.PathValue("version")+" does not exist"))
			return
		}
		h(w, r)
	}
}

// pathFamily names the path family of an API path: "v3", a date version, or "" for neither.
func pathFamily(path string) string {
	rest, ok := strings.CutPrefix(path, "/crm/")
	if !ok {
		return ""
	}
	if strings.HasPrefix(rest, "v3/") {
		return "v3"
	}
	for _, kind := range []string{"objects/", "properties/"} {
		if v, ok := strings.CutPrefix(rest, kind); ok {
			version, _, _ := strings.Cut(v, "/")
			return version
		}
	}
	return ""
}

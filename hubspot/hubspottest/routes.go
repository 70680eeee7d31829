package hubspottest

import "net/http"

// routes registers the HubSpot API (for both "contacts" and its object type
// id "0-1") and the admin API.
func (s *Server) routes() {
	s.api = http.NewServeMux()
	s.forbiddenPatterns = map[string]string{}
	for _, obj := range []string{"contacts", "0-1"} {
		o := "/crm/v3/objects/" + obj
		s.api.HandleFunc("POST "+o+"/batch/read", s.handleBatchRead)
		s.api.HandleFunc("POST "+o+"/batch/update", s.handleBatchUpdate)
		s.api.HandleFunc("POST "+o+"/search", s.handleSearch)
		s.api.HandleFunc("GET "+o+"/{contactId}", s.handleGetContact)
		s.api.HandleFunc("PATCH "+o+"/{contactId}", s.handlePatchContact)
		s.api.HandleFunc("GET "+o, notImplemented)

		for _, pattern := range []string{"POST " + o, "POST " + o + "/batch/create", "POST " + o + "/batch/upsert"} {
			s.forbiddenPatterns[pattern] = "creating"
			s.api.HandleFunc(pattern, forbidden("create"))
		}
		for _, pattern := range []string{"DELETE " + o + "/{contactId}", "POST " + o + "/batch/archive", "POST " + o + "/merge", "POST " + o + "/gdpr-delete"} {
			s.forbiddenPatterns[pattern] = "deleting"
			s.api.HandleFunc(pattern, forbidden("delete"))
		}

		p := "/crm/v3/properties/" + obj
		s.api.HandleFunc("GET "+p, s.handleListProperties)
		s.api.HandleFunc("POST "+p, s.handleCreateProperty)
		s.api.HandleFunc("POST "+p+"/batch/create", s.handleBatchCreateProperties)
		s.api.HandleFunc("POST "+p+"/batch/read", s.handleBatchReadProperties)
		s.api.HandleFunc("POST "+p+"/batch/archive", notImplemented)
		s.api.HandleFunc("GET "+p+"/groups", s.handleListGroups)
		s.api.HandleFunc("POST "+p+"/groups", s.handleCreateGroup)
		s.api.HandleFunc("GET "+p+"/groups/{groupName}", s.handleGetGroup)
		s.api.HandleFunc("PATCH "+p+"/groups/{groupName}", s.handleUpdateGroup)
		s.api.HandleFunc("DELETE "+p+"/groups/{groupName}", s.handleArchiveGroup)
		s.api.HandleFunc("GET "+p+"/{propertyName}", s.handleGetProperty)
		s.api.HandleFunc("PATCH "+p+"/{propertyName}", s.handleUpdateProperty)
		s.api.HandleFunc("DELETE "+p+"/{propertyName}", s.handleArchiveProperty)
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

package hubspottest

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// Admin API under /_emulator: no authentication, not counted in Stats or
// rate limits. Errors are {"error": "..."}.

func adminError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, map[string]string{"error": fmt.Sprintf(format, args...)})
}

func adminNotFound(w http.ResponseWriter, r *http.Request) {
	adminError(w, http.StatusNotFound, "no admin route %s %s", r.Method, r.URL.Path)
}

func (s *Server) adminListContacts(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Contacts())
}

func (s *Server) adminAddContacts(w http.ResponseWriter, r *http.Request) {
	var in []ContactInput
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 50<<20)).Decode(&in); err != nil {
		adminError(w, http.StatusBadRequest, "body must be a JSON array of {email, additionalEmails, properties}: %v", err)
		return
	}
	ids, err := s.AddContacts(in)
	if err != nil {
		adminError(w, http.StatusConflict, "%v", err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string][]string{"ids": ids})
}

func (s *Server) adminDeleteContact(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, ok := s.Contact(id); !ok {
		adminError(w, http.StatusNotFound, "no contact %s", id)
		return
	}
	s.DeleteContact(id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) adminStats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Stats())
}

func (s *Server) adminResetStats(w http.ResponseWriter, _ *http.Request) {
	s.ResetStats()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) adminViolations(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.Violations())
}

func (s *Server) adminGetFaults(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.CurrentFaults())
}

func (s *Server) adminSetFaults(w http.ResponseWriter, r *http.Request) {
	var f Faults
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&f); err != nil {
		adminError(w, http.StatusBadRequest, "body must be {rate429, rate5xx, latency, dailyExhausted}: %v", err)
		return
	}
	if err := f.Validate(); err != nil {
		adminError(w, http.StatusBadRequest, "%v", err)
		return
	}
	s.SetFaults(f)
	writeJSON(w, http.StatusOK, f)
}

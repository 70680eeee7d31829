package hubspottest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/google/uuid"
)

// HubSpot error categories used by the emulator.
const (
	categoryValidation     = "VALIDATION_ERROR"
	categoryNotFound       = "OBJECT_NOT_FOUND"
	categoryConflict       = "CONFLICT"
	categoryAuthentication = "INVALID_AUTHENTICATION"
	categoryForbidden      = "EMULATOR_FORBIDDEN"
	categoryNotImplemented = "EMULATOR_NOT_IMPLEMENTED"
)

// apiError is HubSpot's top-level error body (SPEC-C "Error").
type apiError struct {
	Status        string              `json:"status"`
	Message       string              `json:"message"`
	CorrelationID string              `json:"correlationId"`
	Context       map[string][]string `json:"context,omitempty"`
	Errors        []errorDetail       `json:"errors,omitempty"`
	Category      string              `json:"category"`
	SubCategory   string              `json:"subCategory,omitempty"`
}

// errorDetail is one entry of apiError.Errors (SPEC-C "ErrorDetail").
type errorDetail struct {
	Message string              `json:"message"`
	Code    string              `json:"code,omitempty"`
	In      string              `json:"in,omitempty"`
	Context map[string][]string `json:"context,omitempty"`
}

// standardError is a per-item error inside a 207 batch answer (SPEC-C
// "StandardError", in the shape HubSpot is observed to send).
type standardError struct {
	Status   string              `json:"status"`
	Category string              `json:"category"`
	Message  string              `json:"message"`
	Context  map[string][]string `json:"context,omitempty"`
}

// rateLimitError is the 429 body; HubSpot uses errorType and policyName here,
// not category.
type rateLimitError struct {
	Status        string `json:"status"`
	Message       string `json:"message"`
	ErrorType     string `json:"errorType"`
	CorrelationID string `json:"correlationId"`
	PolicyName    string `json:"policyName"`
	GroupName     string `json:"groupName,omitempty"`
	RequestID     string `json:"requestId,omitempty"`
}

func newAPIError(category, message string) *apiError {
	return &apiError{
		Status:        "error",
		Message:       message,
		CorrelationID: uuid.NewString(),
		Category:      category,
	}
}

// marshal encodes v as HubSpot does: no HTML escaping of <, > and &.
func marshal(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		// Only emulator-defined types are encoded; failing here is a bug.
		panic(fmt.Sprintf("hubspottest: encoding response: %v", err))
	}
	return bytes.TrimRight(buf.Bytes(), "\n")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body := marshal(v)
	w.Header().Set("Content-Type", "application/json;charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, e *apiError) {
	writeJSON(w, status, e)
}

// writeInvalidJSON answers a body that could not be decoded.
func writeInvalidJSON(w http.ResponseWriter, err error) {
	writeError(w, http.StatusBadRequest, newAPIError(categoryValidation,
		"Invalid input JSON: "+err.Error()))
}

// hubspotTime formats t like HubSpot: UTC with millisecond precision.
func hubspotTime(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

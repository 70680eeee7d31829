package hubspot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrDailyLimit reports that the portal spent its daily API allowance (a 429
// with policyName DAILY). Retrying cannot help before the reset, so callers
// should park their work rather than spin.
var ErrDailyLimit = errors.New("hubspot: daily API request limit reached; it resets at midnight in the HubSpot account's time zone")

// ErrUnauthorized reports a 401: HubSpot did not accept the access token.
var ErrUnauthorized = errors.New("hubspot: access token rejected (401); check that the service key or private app token is correct and has not been rotated or revoked")

// ErrUnavailable marks a call that failed for want of an answer: no connection, a timeout, or
// server errors and rate limits until the retries ran out. It passes; the call can be tried
// again later as it is.
var ErrUnavailable = errors.New("hubspot: out of reach")

// unavailable wraps the last failure of a call that ran out of retries: its text stays the
// failure's, and errors.Is finds ErrUnavailable.
type unavailable struct{ err error }

func (u unavailable) Error() string        { return u.err.Error() }
func (u unavailable) Unwrap() error        { return u.err }
func (u unavailable) Is(target error) bool { return target == ErrUnavailable }

// ErrMissingScopes reports a 403: the token is valid but lacks a scope.
var ErrMissingScopes = errors.New("hubspot: access denied (403); check the scopes of the service key or private app: " + scopeList)

// The scopes the sync's key needs.
const (
	ScopeContactsRead  = "crm.objects.contacts.read"
	ScopeContactsWrite = "crm.objects.contacts.write"
	ScopeSchemasRead   = "crm.schemas.contacts.read"
	ScopeSchemasWrite  = "crm.schemas.contacts.write"

	scopeList = ScopeContactsRead + ", " + ScopeContactsWrite + ", " + ScopeSchemasRead + ", " + ScopeSchemasWrite
)

// RequiredScopes lists the private app scopes this package needs, for a
// preflight check to show.
func RequiredScopes() []string { return strings.Split(scopeList, ", ") }

// APIError is a non-2xx answer from HubSpot after any retries.
type APIError struct {
	StatusCode    int
	Category      string // e.g. VALIDATION_ERROR; for 429 bodies, HubSpot's errorType
	Message       string
	CorrelationID string
	PolicyName    string // 429 only: TEN_SECONDLY_ROLLING, DAILY, ...
	// Context and Errors carry HubSpot's structured details; UpdateContacts
	// reads them as hints to find the input behind a 400.
	Context map[string][]string
	Errors  []ErrorDetail
}

// ErrorDetail is one entry of an error body's "errors" array.
type ErrorDetail struct {
	Message string
	Code    string
	Context map[string][]string
}

// Error includes what an operator needs to act: the status, HubSpot's category
// and message, what to check for auth failures, and the correlation id that
// HubSpot support asks for.
func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "hubspot: HTTP %d", e.StatusCode)
	if e.Category != "" {
		b.WriteString(" " + e.Category)
	}
	if e.PolicyName != "" {
		b.WriteString(" (policy " + e.PolicyName + ")")
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	switch {
	case e.isDailyLimit():
		b.WriteString("; the daily API limit resets at midnight in the HubSpot account's time zone")
	case e.StatusCode == 401:
		b.WriteString("; check that the service key or private app token is correct and has not been rotated or revoked")
	case e.StatusCode == 403:
		b.WriteString("; check the scopes of the service key or private app: " + scopeList)
	}
	if e.CorrelationID != "" {
		b.WriteString(" (correlation id " + e.CorrelationID + ")")
	}
	return b.String()
}

// Is lets callers branch with errors.Is on the sentinels instead of status codes.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrDailyLimit:
		return e.isDailyLimit()
	case ErrUnauthorized:
		return e.StatusCode == 401
	case ErrMissingScopes:
		return e.StatusCode == 403
	}
	return false
}

func (e *APIError) isDailyLimit() bool {
	return e.StatusCode == 429 && strings.EqualFold(e.PolicyName, "DAILY")
}

// stringLists decodes HubSpot "context" objects. The spec types them as
// string arrays, but observed bodies also hold plain strings; anything else is
// dropped because it is only ever used as a hint.
type stringLists map[string][]string

func (s *stringLists) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		// Hints only: a surprising shape must not fail the whole call.
		return nil
	}
	out := make(map[string][]string, len(raw))
	for k, v := range raw {
		var list []string
		if err := json.Unmarshal(v, &list); err == nil {
			out[k] = list
			continue
		}
		var one string
		if err := json.Unmarshal(v, &one); err == nil {
			out[k] = []string{one}
		}
	}
	*s = out
	return nil
}

type errorBody struct {
	Message       string      `json:"message"`
	Category      string      `json:"category"`
	ErrorType     string      `json:"errorType"`
	CorrelationID string      `json:"correlationId"`
	PolicyName    string      `json:"policyName"`
	Context       stringLists `json:"context"`
	Errors        []struct {
		Message string      `json:"message"`
		Code    string      `json:"code"`
		Context stringLists `json:"context"`
	} `json:"errors"`
}

// newAPIError builds an APIError from a response body. Every field is
// optional (HubSpot's error guide says so), and proxies in front of HubSpot
// answer with HTML, so a body that is not JSON becomes a short message.
// Everything taken from the body is scrubbed of the token: a misbehaving proxy
// or fake could echo the Authorization header back.
func newAPIError(status int, body []byte, sec secrets) *APIError {
	e := &APIError{StatusCode: status}
	var eb errorBody
	if err := json.Unmarshal(body, &eb); err != nil {
		// Redact before cutting: a token across the cut would leave its first part.
		e.Message = snippet([]byte(sec.redact(string(body))))
		return e
	}
	e.Message = sec.redact(eb.Message)
	e.Category = sec.redact(eb.Category)
	if e.Category == "" {
		e.Category = sec.redact(eb.ErrorType)
	}
	e.CorrelationID = sec.redact(eb.CorrelationID)
	e.PolicyName = sec.redact(eb.PolicyName)
	e.Context = redactLists(eb.Context, sec)
	for _, d := range eb.Errors {
		e.Errors = append(e.Errors, ErrorDetail{
			Message: sec.redact(d.Message),
			Code:    sec.redact(d.Code),
			Context: redactLists(d.Context, sec),
		})
	}
	return e
}

func snippet(body []byte) string {
	const max = 200
	s := string(bytes.TrimSpace(body))
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

const redacted = "[REDACTED]"

// secrets are the tokens the client has used: the current one and those rotated away, none of
// which may appear in an error or a log line.
type secrets []string

func (sec secrets) redact(s string) string {
	for _, token := range sec {
		if token != "" && strings.Contains(s, token) {
			s = strings.ReplaceAll(s, token, redacted)
		}
	}
	return s
}

func redactLists(m map[string][]string, sec secrets) map[string][]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, list := range m {
		cp := make([]string, len(list))
		for i, v := range list {
			cp[i] = sec.redact(v)
		}
		out[k] = cp
	}
	return out
}

// redactedError keeps errors.Is/As working on transport errors while making
// sure their text cannot carry the token.
type redactedError struct {
	err error
	sec secrets
}

func (r *redactedError) Error() string { return r.sec.redact(r.err.Error()) }
func (r *redactedError) Unwrap() error { return r.err }

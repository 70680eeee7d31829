package hubspottest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// flexString accepts a JSON string, number, boolean or null (""), as
// HubSpot does for ids and property values.
type flexString string

func (f *flexString) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0:
		return errors.New("empty value")
	case string(b) == "null":
		*f = ""
	case b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*f = flexString(s)
	case string(b) == "true" || string(b) == "false" || b[0] == '-' || (b[0] >= '0' && b[0] <= '9'):
		*f = flexString(b)
	default:
		return fmt.Errorf("expected a string, number or boolean, got %s", b)
	}
	return nil
}

// simpleObject is SPEC-C "SimplePublicObject".
type simpleObject struct {
	ID                    string                          `json:"id"`
	Properties            map[string]*string              `json:"properties"`
	PropertiesWithHistory map[string][]valueWithTimestamp `json:"propertiesWithHistory,omitempty"`
	CreatedAt             string                          `json:"createdAt"`
	UpdatedAt             string                          `json:"updatedAt"`
	Archived              bool                            `json:"archived"`
	ObjectWriteTraceID    string                          `json:"objectWriteTraceId,omitempty"`
}

type valueWithTimestamp struct {
	Value      string `json:"value"`
	Timestamp  string `json:"timestamp"`
	SourceType string `json:"sourceType"`
}

// batchResponse is SPEC-C "BatchResponseSimplePublicObject(WithErrors)".
type batchResponse struct {
	Status      string          `json:"status"`
	Results     []simpleObject  `json:"results"`
	NumErrors   int             `json:"numErrors,omitempty"`
	Errors      []standardError `json:"errors,omitempty"`
	StartedAt   string          `json:"startedAt"`
	CompletedAt string          `json:"completedAt"`
}

var defaultContactProperties = []string{"email", "firstname", "lastname"}

const notFoundMessage = "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid."

// render builds the API view of c with the requested properties. Unknown
// properties are omitted, unset ones are null; hs_object_id, createdate and
// lastmodifieddate are always present. The caller holds s.mu.
func (s *Server) render(c *contact, names, withHistory []string) simpleObject {
	o := simpleObject{
		ID:         strconv.FormatInt(c.id, 10),
		Properties: map[string]*string{},
		CreatedAt:  hubspotTime(c.createdAt),
		UpdatedAt:  hubspotTime(c.updatedAt),
	}
	for _, name := range append(slices.Clone(names), propObjectID, propCreateDate, propLastModified) {
		if _, defined := s.props[name]; !defined && !isComputed(name) {
			continue
		}
		if v, ok := c.value(name); ok {
			o.Properties[name] = &v
		} else {
			o.Properties[name] = nil
		}
	}
	for _, name := range withHistory {
		if _, defined := s.props[name]; !defined {
			continue
		}
		if o.PropertiesWithHistory == nil {
			o.PropertiesWithHistory = map[string][]valueWithTimestamp{}
		}
		hist := []valueWithTimestamp{}
		entries := c.history[name]
		for i := len(entries) - 1; i >= 0; i-- { // newest first
			e := entries[i]
			hist = append(hist, valueWithTimestamp{Value: e.value, Timestamp: hubspotTime(e.at), SourceType: e.sourceType})
		}
		o.PropertiesWithHistory[name] = hist
	}
	return o
}

// resolve finds a contact by id or by idProperty; the caller holds s.mu.
func (s *Server) resolve(idProperty, id string) *contact {
	switch idProperty {
	case "", propObjectID:
		c, _ := s.lookupID(id)
		return c
	case propEmail:
		if cid, ok := s.emailIndex[normEmail(id)]; ok {
			return s.contacts[cid]
		}
		return nil
	}
	for _, c := range s.contacts { // a custom unique property
		if v, ok := c.props[idProperty]; ok && v == id {
			return c
		}
	}
	return nil
}

// checkIDProperty validates idProperty for reads; the caller holds s.mu.
func (s *Server) checkIDProperty(idProperty string) *apiError {
	switch idProperty {
	case "", propObjectID, propEmail:
		return nil
	}
	if p, ok := s.props[idProperty]; ok && p.HasUniqueValue {
		return nil
	}
	return newAPIError(categoryValidation, fmt.Sprintf("Unable to perform read by non-unique 0-1 property %s", idProperty))
}

func (s *Server) shuffle(objs []simpleObject) {
	s.rng.Shuffle(len(objs), func(i, j int) { objs[i], objs[j] = objs[j], objs[i] })
}

func dedupe(ids []string) []string {
	var out []string
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// tooManyInputs answers a batch over 100 inputs (inspect recorded the
// violation).
func tooManyInputs(w http.ResponseWriter, n int) {
	writeError(w, http.StatusBadRequest, newAPIError(categoryValidation,
		fmt.Sprintf("Batch input size of %d exceeds the maximum of %d inputs.", n, maxBatch)))
}

// ---- POST /crm/v3/objects/contacts/batch/read ----

type batchReadRequest struct {
	IDProperty            string   `json:"idProperty"`
	Properties            []string `json:"properties"`
	PropertiesWithHistory []string `json:"propertiesWithHistory"`
	Inputs                []struct {
		ID flexString `json:"id"`
	} `json:"inputs"`
}

func (s *Server) handleBatchRead(w http.ResponseWriter, r *http.Request) {
	var req batchReadRequest
	if err := decodeJSON(r, &req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	if req.Inputs == nil {
		writeError(w, http.StatusBadRequest, newAPIError(categoryValidation, "Some required fields were not set: [inputs]"))
		return
	}
	if len(req.Inputs) > maxBatch {
		tooManyInputs(w, len(req.Inputs))
		return
	}
	if len(req.PropertiesWithHistory) > 0 && len(req.Inputs) > 50 {
		writeError(w, http.StatusBadRequest, newAPIError(categoryValidation,
			fmt.Sprintf("Batch input size of %d exceeds the maximum of 50 inputs when propertiesWithHistory is requested.", len(req.Inputs))))
		return
	}
	archived := r.URL.Query().Get("archived") == "true"

	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.checkIDProperty(req.IDProperty); e != nil {
		writeError(w, http.StatusBadRequest, e)
		return
	}
	started := s.now()
	names := req.Properties
	if len(names) == 0 {
		names = defaultContactProperties
	}
	results := []simpleObject{}
	var missing []string
	seen := map[int64]bool{}
	for _, in := range req.Inputs {
		var c *contact
		if !archived { // the emulator keeps no archived contacts
			c = s.resolve(req.IDProperty, string(in.ID))
		}
		if c == nil {
			missing = append(missing, string(in.ID))
			continue
		}
		if !seen[c.id] {
			seen[c.id] = true
			results = append(results, s.render(c, names, req.PropertiesWithHistory))
		}
	}
	s.shuffle(results)
	s.stats.BatchReads++
	resp := batchResponse{Status: "COMPLETE", Results: results, StartedAt: hubspotTime(started), CompletedAt: hubspotTime(s.now())}
	status := http.StatusOK
	if len(missing) > 0 {
		status = http.StatusMultiStatus
		resp.NumErrors = 1
		resp.Errors = []standardError{{Status: "error", Category: categoryNotFound, Message: notFoundMessage,
			Context: map[string][]string{"ids": dedupe(missing)}}}
	}
	writeJSON(w, status, resp)
}

// ---- property writes shared by batch/update and PATCH ----

type propertyWrite struct {
	name  string
	value string // normalized; "" clears
	raw   string
}

// invalidEntry is one item of the JSON array embedded in the message.
type invalidEntry struct {
	IsValid               bool   `json:"isValid"`
	Message               string `json:"message"`
	Error                 string `json:"error"`
	Name                  string `json:"name"`
	LocalizedErrorMessage string `json:"localizedErrorMessage"`
	PropertyValue         string `json:"propertyValue,omitempty"`
	PortalID              int    `json:"portalId"`
}

// validateWrites checks the values of one input; the caller holds s.mu.
func (s *Server) validateWrites(c *contact, props map[string]flexString, rules bool) ([]propertyWrite, []*invalidValue) {
	var writes []propertyWrite
	var bad []*invalidValue
	for _, name := range sortedKeys(props) {
		raw := string(props[name])
		p, ok := s.props[name]
		if !ok {
			bad = append(bad, &invalidValue{name: name, code: "PROPERTY_DOESNT_EXIST",
				message: fmt.Sprintf("Property %q does not exist", name)})
			continue
		}
		current := ""
		if c != nil {
			current = c.props[name]
		}
		v, invalid := s.normalizeValue(p, raw, current, rules)
		if invalid != nil {
			bad = append(bad, invalid)
			continue
		}
		writes = append(writes, propertyWrite{name: name, value: v, raw: raw})
	}
	return writes, bad
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// invalidValuesError builds HubSpot's 400 "Property values were not valid".
func (s *Server) invalidValuesError(bad []*invalidValue) *apiError {
	var entries []invalidEntry
	var details []errorDetail
	seen := map[string]bool{}
	for _, b := range bad {
		key := b.name + "\x00" + b.code + "\x00" + b.message
		if seen[key] {
			continue
		}
		seen[key] = true
		e := invalidEntry{Message: b.message, Error: b.code, Name: b.name, LocalizedErrorMessage: b.message, PortalID: s.opts.PortalID}
		if b.hasValue {
			e.PropertyValue = b.value
		}
		entries = append(entries, e)
		details = append(details, errorDetail{Message: b.message, Code: b.code,
			Context: map[string][]string{"propertyName": {b.name}}})
	}
	e := newAPIError(categoryValidation, "Property values were not valid: "+string(marshal(entries)))
	if !onlyRules(bad) {
		e.Errors = details
	}
	return e
}

// onlyRules reports whether every refusal comes from a portal validation rule: HubSpot then
// answers with the message alone, without errors[].
func onlyRules(bad []*invalidValue) bool {
	for _, b := range bad {
		if !b.rule {
			return false
		}
	}
	return len(bad) > 0
}

// enforcesRules reports whether HubSpot enforces the portal's validation rules on this write:
// from the 2026-09 API version on, not on the legacy v3 paths.
func enforcesRules(r *http.Request) bool { return pathFamily(r.URL.Path) != "v3" }

// emailConflict reports a write of an email owned by another contact; the
// caller holds s.mu. claimed collects emails written earlier in the batch.
func (s *Server) emailConflict(c *contact, writes []propertyWrite, claimed map[string]int64) *apiError {
	for _, wr := range writes {
		if wr.name != propEmail || wr.value == "" {
			continue
		}
		owner, ok := s.emailIndex[wr.value]
		if !ok {
			owner, ok = claimed[wr.value]
		}
		if ok && owner != c.id {
			e := newAPIError(categoryConflict, fmt.Sprintf("Contact already exists. Existing ID: %d", owner))
			return e
		}
		claimed[wr.value] = c.id
	}
	return nil
}

// apply writes validated values to c; the caller holds s.mu.
func (s *Server) apply(c *contact, writes []propertyWrite) simpleObject {
	now := s.now()
	s.unindex(c)
	written := make([]string, 0, len(writes))
	for _, wr := range writes {
		v := wr.value
		if p := s.props[wr.name]; p != nil && p.Type == "enumeration" && p.FieldType == "checkbox" && strings.HasPrefix(wr.raw, ";") {
			v, _ = normEnumeration(p, wr.raw, c.props[wr.name]) // append to the value current at apply time
		}
		c.set(wr.name, v, now, "API")
		written = append(written, wr.name)
	}
	c.updatedAt = now
	s.index(c)
	o := s.render(c, written, nil)
	delete(o.Properties, propCreateDate)
	for _, name := range written { // a cleared value reads back as "" in the write answer
		if o.Properties[name] == nil {
			empty := ""
			o.Properties[name] = &empty
		}
	}
	return o
}

// ---- POST /crm/v3/objects/contacts/batch/update ----

type updateInput struct {
	ID                 flexString            `json:"id"`
	IDProperty         string                `json:"idProperty"`
	ObjectWriteTraceID string                `json:"objectWriteTraceId"`
	Properties         map[string]flexString `json:"properties"`
}

func nonUniqueError(prop string) *apiError {
	return newAPIError(categoryValidation, "Unable to perform update/upsert by non-unique 0-1 property "+prop)
}

func (s *Server) handleBatchUpdate(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Inputs []updateInput `json:"inputs"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	if req.Inputs == nil {
		writeError(w, http.StatusBadRequest, newAPIError(categoryValidation, "Some required fields were not set: [inputs]"))
		return
	}
	if len(req.Inputs) > maxBatch {
		tooManyInputs(w, len(req.Inputs))
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// Whole-batch validation first: nothing is applied on a 400.
	for _, in := range req.Inputs {
		if in.IDProperty != "" && in.IDProperty != propObjectID {
			if p, ok := s.props[in.IDProperty]; !ok || !p.HasUniqueValue || in.IDProperty == propEmail {
				writeError(w, http.StatusBadRequest, nonUniqueError(in.IDProperty))
				return
			}
		}
	}
	ids := make([]string, len(req.Inputs))
	for i, in := range req.Inputs {
		ids[i] = string(in.ID)
	}
	if dups := duplicateIDs(ids); len(dups) > 0 { // inspect recorded the violation
		e := newAPIError(categoryValidation, fmt.Sprintf("Duplicate IDs found in batch input: [%s]. IDs must be unique", strings.Join(dups, ", ")))
		e.Context = map[string][]string{"ids": dups}
		writeError(w, http.StatusBadRequest, e)
		return
	}
	targets := make([]*contact, len(req.Inputs))
	writes := make([][]propertyWrite, len(req.Inputs))
	var bad []*invalidValue
	for i, in := range req.Inputs {
		targets[i] = s.resolve(in.IDProperty, string(in.ID))
		var b []*invalidValue
		writes[i], b = s.validateWrites(targets[i], in.Properties, enforcesRules(r))
		bad = append(bad, b...)
	}
	if len(bad) > 0 {
		writeError(w, http.StatusBadRequest, s.invalidValuesError(bad))
		return
	}
	claimed := map[string]int64{}
	for i, c := range targets {
		if c == nil {
			continue
		}
		if e := s.emailConflict(c, writes[i], claimed); e != nil {
			writeError(w, http.StatusConflict, e)
			return
		}
	}

	started := s.now()
	results := []simpleObject{}
	var missing []string
	var errs []standardError
	for i, in := range req.Inputs {
		c := targets[i]
		if c == nil {
			id := strings.TrimSpace(string(in.ID))
			if _, err := strconv.ParseInt(id, 10, 64); err != nil && in.IDProperty == "" {
				id = "" // HubSpot reports a non-numeric id as ""
			}
			if in.ObjectWriteTraceID != "" {
				errs = append(errs, standardError{Status: "error", Category: categoryNotFound, Message: notFoundMessage,
					Context: map[string][]string{"ids": {id}, "objectWriteTraceId": {in.ObjectWriteTraceID}}})
			} else {
				missing = append(missing, id)
			}
			continue
		}
		if category, ok := s.inputFailures[c.id]; ok {
			delete(s.inputFailures, c.id)
			errs = append(errs, standardError{Status: "error", Category: category, Message: "Something went wrong; try again",
				Context: map[string][]string{"ids": {strconv.FormatInt(c.id, 10)}}})
			continue
		}
		o := s.apply(c, writes[i])
		o.ObjectWriteTraceID = in.ObjectWriteTraceID
		results = append(results, o)
	}
	if len(missing) > 0 {
		errs = append([]standardError{{Status: "error", Category: categoryNotFound, Message: notFoundMessage,
			Context: map[string][]string{"ids": dedupe(missing)}}}, errs...)
	}
	s.shuffle(results)
	s.stats.BatchUpdates++
	resp := batchResponse{Status: "COMPLETE", Results: results, StartedAt: hubspotTime(started), CompletedAt: hubspotTime(s.now())}
	status := http.StatusOK
	if len(errs) > 0 {
		status = http.StatusMultiStatus
		resp.NumErrors = len(errs)
		resp.Errors = errs
	}
	writeJSON(w, status, resp)
}

// ---- GET / PATCH /crm/v3/objects/contacts/{contactId} ----

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func contactNotFound(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, newAPIError(categoryNotFound, "resource not found"))
}

func (s *Server) handleGetContact(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	s.mu.Lock()
	defer s.mu.Unlock()
	idProperty := q.Get("idProperty")
	if e := s.checkIDProperty(idProperty); e != nil {
		writeError(w, http.StatusBadRequest, e)
		return
	}
	c := s.resolve(idProperty, r.PathValue("contactId"))
	if c == nil || q.Get("archived") == "true" {
		contactNotFound(w)
		return
	}
	names := splitList(strings.Join(q["properties"], ","))
	if len(names) == 0 {
		names = defaultContactProperties
	}
	writeJSON(w, http.StatusOK, s.render(c, names, splitList(strings.Join(q["propertiesWithHistory"], ","))))
}

func (s *Server) handlePatchContact(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Properties map[string]flexString `json:"properties"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	idProperty := r.URL.Query().Get("idProperty")
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.checkIDProperty(idProperty); e != nil {
		writeError(w, http.StatusBadRequest, e)
		return
	}
	c := s.resolve(idProperty, r.PathValue("contactId"))
	writes, bad := s.validateWrites(c, req.Properties, enforcesRules(r))
	if len(bad) > 0 {
		writeError(w, http.StatusBadRequest, s.invalidValuesError(bad))
		return
	}
	if c == nil {
		contactNotFound(w)
		return
	}
	if e := s.emailConflict(c, writes, map[string]int64{}); e != nil {
		writeError(w, http.StatusConflict, e)
		return
	}
	writeJSON(w, http.StatusOK, s.apply(c, writes))
}

// ---- endpoints the sync must never call ----

// forbidden answers 403 (inspect recorded the violation); verb is "create"
// or "delete".
func forbidden(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, newAPIError(categoryForbidden, fmt.Sprintf(
			"hubspottest: %s %s would %s contacts; progress-sync must never do that (recorded as a violation)", r.Method, r.URL.Path, verb)))
	}
}

func notImplemented(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotImplemented, newAPIError(categoryNotImplemented,
		fmt.Sprintf("hubspottest does not emulate %s %s", r.Method, r.URL.Path)))
}

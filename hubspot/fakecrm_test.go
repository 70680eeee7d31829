package hubspot

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
)

// hintMode controls how much a fake 400 tells about the offending inputs.
type hintMode int

const (
	hintsFull      hintMode = iota // embedded JSON with propertyValue, plus errors[].context.propertyName
	hintsNoValue                   // embedded JSON without propertyValue; the message still quotes the value
	hintsFirstOnly                 // like hintsFull, but only the first offence is named
	hintsNone                      // "Property values were not valid" and nothing else
	hintsMislead                   // names a property and value of an innocent input
)

// fakeCRM is a small stand-in for HubSpot's contacts batch endpoints, enough
// to check this package's side of the contract.
type fakeCRM struct {
	t *testing.T

	mu       sync.Mutex
	contacts map[string]map[string]string // id -> properties
	merged   map[string]bool              // ids silently left out of update results
	survivor map[string]string            // merged-away id -> the contact it was merged into
	hints    hintMode
	rng      *rand.Rand

	reads, updates int
	readInputs     [][]string
}

// schema is the portal's property list: name -> type.
var fakeSchema = map[string]string{
	"email": "string", "hs_additional_emails": "string", "firstname": "string",
	"current_lesson": "string", "total_xp": "number", "study_streak": "number",
	"lessons_completed": "number", "last_activity_date": "date",
}

func newFakeCRM(t *testing.T) *fakeCRM {
	return &fakeCRM{t: t, contacts: map[string]map[string]string{}, merged: map[string]bool{}, survivor: map[string]string{}, rng: rand.New(rand.NewSource(7))}
}

func (f *fakeCRM) add(id, email, additional string, props map[string]string) {
	p := map[string]string{"email": email, "hs_additional_emails": additional}
	for k, v := range props {
		p[k] = v
	}
	f.contacts[id] = p
}

func (f *fakeCRM) get(id, prop string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.contacts[id][prop]
}

func (f *fakeCRM) updateCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updates
}

func (f *fakeCRM) sentReads() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]string(nil), f.readInputs...)
}

func (f *fakeCRM) serve(w http.ResponseWriter, r *http.Request, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.URL.Path {
	case apiPaths.batchRead:
		f.read(w, body)
	case apiPaths.batchUpdate:
		f.update(w, body)
	default:
		f.t.Errorf("fakeCRM: unexpected %s %s", r.Method, r.URL.Path)
		writeJSON(w, 404, map[string]string{"message": "no such endpoint"})
	}
}

func (f *fakeCRM) read(w http.ResponseWriter, body []byte) {
	f.reads++
	var req struct {
		IDProperty string   `json:"idProperty"`
		Properties []string `json:"properties"`
		Inputs     []struct {
			ID string `json:"id"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(body, &req); err != nil || (req.IDProperty != "email" && req.IDProperty != "") {
		f.t.Errorf("batch/read: bad request %s", body)
		writeJSON(w, 400, map[string]string{"category": "VALIDATION_ERROR", "message": "bad request"})
		return
	}
	if len(req.Inputs) > maxBatch {
		writeJSON(w, 400, map[string]string{"category": "VALIDATION_ERROR", "message": "too many inputs"})
		return
	}
	has := map[string]bool{}
	for _, p := range req.Properties {
		has[p] = true
	}
	if strings.Contains(string(body), `"idProperty"`) && req.IDProperty == "" {
		f.t.Errorf("batch/read by id must omit idProperty, got %s", body)
	}
	if !has["email"] || !has["hs_additional_emails"] {
		f.t.Errorf("batch/read must request email and hs_additional_emails, got %v", req.Properties)
	}
	var ids []string
	for _, in := range req.Inputs {
		ids = append(ids, in.ID)
	}
	f.readInputs = append(f.readInputs, ids)

	var results []map[string]any
	var missing []string
	found := map[string]bool{}
	for _, in := range req.Inputs {
		id := f.lookup(in.ID)
		if req.IDProperty == "" {
			id = f.byID(in.ID)
		}
		if id == "" {
			missing = append(missing, in.ID)
			continue
		}
		if found[id] {
			continue
		}
		found[id] = true
		props := map[string]any{"hs_object_id": id, "createdate": "2024-01-17T19:55:04.281Z"}
		for _, p := range req.Properties {
			if _, known := fakeSchema[p]; !known {
				continue // HubSpot omits unknown properties
			}
			if v := f.contacts[id][p]; v != "" {
				props[p] = v
			} else {
				props[p] = nil
			}
		}
		results = append(results, map[string]any{"id": id, "archived": false, "properties": props})
	}
	f.rng.Shuffle(len(results), func(i, j int) { results[i], results[j] = results[j], results[i] })
	resp := map[string]any{"status": "COMPLETE", "results": nonNil(results),
		"startedAt": "2026-10-10T10:00:00.000Z", "completedAt": "2026-10-10T10:00:00.050Z"}
	status := 200
	if len(missing) > 0 {
		status = 207
		resp["numErrors"] = 1
		resp["errors"] = []any{map[string]any{"status": "error", "category": "OBJECT_NOT_FOUND",
			"message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
			"context": map[string]any{"ids": missing}}}
	}
	writeJSON(w, status, resp)
}

func nonNil(v []map[string]any) []map[string]any {
	if v == nil {
		return []map[string]any{}
	}
	return v
}

// byID finds a contact by record id; a merged-away id answers with its survivor, as HubSpot does.
func (f *fakeCRM) byID(id string) string {
	if s, ok := f.survivor[id]; ok {
		return s
	}
	if _, ok := f.contacts[id]; ok {
		return id
	}
	return ""
}

// lookup finds a contact by primary or additional email, case-insensitively.
func (f *fakeCRM) lookup(email string) string {
	email = strings.ToLower(email)
	for id, p := range f.contacts {
		if strings.ToLower(p["email"]) == email {
			return id
		}
		for _, a := range strings.Split(p["hs_additional_emails"], ";") {
			if a != "" && strings.ToLower(a) == email {
				return id
			}
		}
	}
	return ""
}

type offence struct {
	name, value, message, code string
}

var (
	numberRe = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`)
	dateRe   = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)
)

func validate(props map[string]string) []offence {
	var out []offence
	names := make([]string, 0, len(props))
	for name := range props {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		v := props[name]
		typ, ok := fakeSchema[name]
		switch {
		case !ok:
			out = append(out, offence{name, v, fmt.Sprintf("Property %q does not exist", name), "PROPERTY_DOESNT_EXIST"})
		case v == "":
		case typ == "number" && !numberRe.MatchString(v):
			out = append(out, offence{name, v, v + " was not a valid number.", "INVALID_INTEGER"})
		case typ == "date" && !dateRe.MatchString(v):
			out = append(out, offence{name, v, fmt.Sprintf("%s is not a valid date; use YYYY-MM-DD.", v), "INVALID_DATE"})
		}
	}
	return out
}

func (f *fakeCRM) update(w http.ResponseWriter, body []byte) {
	f.updates++
	var req struct {
		Inputs []struct {
			ID         string            `json:"id"`
			Properties map[string]string `json:"properties"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		writeJSON(w, 400, map[string]string{"category": "VALIDATION_ERROR", "message": "bad json"})
		return
	}
	if len(req.Inputs) > maxBatch {
		writeJSON(w, 400, map[string]string{"category": "VALIDATION_ERROR", "message": "too many inputs"})
		return
	}
	seen := map[string]bool{}
	var offences []offence
	for _, in := range req.Inputs {
		if seen[in.ID] {
			f.t.Errorf("batch/update with duplicate id %s", in.ID)
			writeJSON(w, 400, map[string]any{"status": "error", "category": "VALIDATION_ERROR",
				"message": "Duplicate IDs found in batch input: [" + in.ID + "]. IDs must be unique"})
			return
		}
		seen[in.ID] = true
		offences = append(offences, validate(in.Properties)...)
	}
	if len(offences) > 0 {
		if f.hints == hintsMislead {
			for _, in := range req.Inputs {
				if v, ok := in.Properties["current_lesson"]; ok && len(validate(in.Properties)) == 0 {
					offences = []offence{{"current_lesson", v, v + " is not allowed.", "INVALID_OPTION"}}
					break
				}
			}
		}
		writeJSON(w, 400, f.validationBody(offences))
		return
	}
	var results []map[string]any
	var missing []string
	for _, in := range req.Inputs {
		c, ok := f.contacts[in.ID]
		if !ok {
			missing = append(missing, in.ID)
			continue
		}
		for k, v := range in.Properties {
			c[k] = v
		}
		if f.merged[in.ID] {
			continue
		}
		results = append(results, map[string]any{"id": in.ID, "properties": in.Properties})
	}
	f.rng.Shuffle(len(results), func(i, j int) { results[i], results[j] = results[j], results[i] })
	resp := map[string]any{"status": "COMPLETE", "results": nonNil(results)}
	status := 200
	if len(missing) > 0 {
		status = 207
		resp["errors"] = []any{map[string]any{"status": "error", "category": "OBJECT_NOT_FOUND",
			"message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
			"context": map[string]any{"ids": missing}}}
	}
	writeJSON(w, status, resp)
}

func (f *fakeCRM) validationBody(offences []offence) map[string]any {
	body := map[string]any{"status": "error", "correlationId": "0f0e-400", "category": "VALIDATION_ERROR"}
	if f.hints == hintsNone {
		body["message"] = "Property values were not valid"
		return body
	}
	if f.hints == hintsFirstOnly {
		offences = offences[:1]
	}
	var entries []map[string]any
	var errs []map[string]any
	for _, o := range offences {
		e := map[string]any{"isValid": false, "message": o.message, "error": o.code, "name": o.name, "localizedErrorMessage": o.message}
		if f.hints != hintsNoValue {
			e["propertyValue"] = o.value
		}
		entries = append(entries, e)
		errs = append(errs, map[string]any{"message": o.message, "code": o.code, "context": map[string]any{"propertyName": []string{o.name}}})
	}
	arr, _ := json.Marshal(entries)
	body["message"] = "Property values were not valid: " + string(arr)
	body["errors"] = errs
	return body
}

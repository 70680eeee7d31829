package hubspot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/sirupsen/logrus"
)

// Update sets properties on one existing contact.
type Update struct {
	ContactID  string
	Properties map[string]string
}

// Rejection is an update HubSpot refused, with HubSpot's reason.
type Rejection struct {
	ContactID string
	Message   string
}

// UpdateResult says what became of each update.
type UpdateResult struct {
	Updated  []string    // contact ids HubSpot accepted
	NotFound []string    // ids HubSpot no longer knows (deleted or merged): resolve the email again
	Rejected []Rejection // updates HubSpot refused for their values (400, or a VALIDATION_ERROR input)
	// Retry are ids whose input HubSpot answered with an error it does not document as
	// permanent (anything but VALIDATION_ERROR and OBJECT_NOT_FOUND): send them again later.
	Retry []string
}

// UpdateContacts writes updates by contact id, 100 per request. It never
// creates a contact: an unknown id lands in NotFound.
//
// One invalid value makes HubSpot refuse a whole batch, so a 400 is narrowed
// down to the offending updates, which end in Rejected, while every valid
// update is still sent. Requests are scarce (100 per 10 s), so the search
// starts from the inputs the 400 body points at and infers, where it can,
// instead of asking.
//
// Two updates for the same contact are refused before anything is sent:
// HubSpot would 400 the batch, and which one should win is the caller's call.
// On error the result still lists what was settled before the failure;
// resending the rest is safe because updates are idempotent.
func (c *Client) UpdateContacts(ctx context.Context, updates []Update) (UpdateResult, error) {
	first := make(map[string]int, len(updates))
	for i, u := range updates {
		if u.ContactID == "" {
			return UpdateResult{}, fmt.Errorf("hubspot: update contacts: input %d has an empty contact id", i)
		}
		if j, dup := first[u.ContactID]; dup {
			return UpdateResult{}, fmt.Errorf("hubspot: update contacts: contact id %q appears at inputs %d and %d; merge updates per contact before sending", u.ContactID, j, i)
		}
		first[u.ContactID] = i
	}

	up := &updater{c: c}
	for start := 0; start < len(updates); start += maxBatch {
		chunk := updates[start:min(start+maxBatch, len(updates))]
		if err := up.test(ctx, chunk, true); err != nil {
			return up.res, fmt.Errorf("hubspot: update contacts: %w", err)
		}
	}
	if len(up.res.Rejected) > 0 {
		c.log.WithFields(logrus.Fields{"rejected": len(up.res.Rejected), "requests": up.requests}).
			Info("hubspot refused some contact updates")
	}
	return up.res, nil
}

// updater runs one UpdateContacts call, including the search for inputs that
// make HubSpot refuse a batch.
type updater struct {
	c        *Client
	res      UpdateResult
	requests int
}

// test sends batch and, if HubSpot refuses it, isolates the offenders.
func (u *updater) test(ctx context.Context, batch []Update, useHints bool) error {
	bad, err := u.send(ctx, batch)
	if err != nil || bad == nil {
		return err
	}
	// A property missing from the portal is not any contact's fault: every contact would
	// be "rejected" and never retried. Stop and say what to do instead.
	if names := missingProperties(bad); len(names) > 0 {
		// Names decoded from the JSON in the message were not redacted with it.
		return fmt.Errorf("%w: %s (run `progress-sync provision`): %w", ErrPropertyMissing, u.c.redact(strings.Join(names, ", ")), bad)
	}
	return u.isolate(ctx, batch, bad, useHints)
}

// ErrPropertyMissing means HubSpot refused an update because a property it names does not
// exist in the portal.
var ErrPropertyMissing = errors.New("HubSpot has no such contact property")

// missingProperties lists the properties a 400 says do not exist.
func missingProperties(e *APIError) []string {
	seen := map[string]bool{}
	var out []string
	add := func(name string) {
		if name != "" && !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	for _, d := range e.Errors {
		if d.Code == codePropertyMissing {
			for _, name := range d.Context["propertyName"] {
				add(name)
			}
		}
	}
	if i := strings.IndexByte(e.Message, '['); i >= 0 {
		var entries []struct {
			Name  string `json:"name"`
			Error string `json:"error"`
		}
		if json.NewDecoder(strings.NewReader(e.Message[i:])).Decode(&entries) == nil {
			for _, en := range entries {
				if en.Error == codePropertyMissing {
					add(en.Name)
				}
			}
		}
	}
	return out
}

const codePropertyMissing = "PROPERTY_DOESNT_EXIST"

// isolate handles a batch known to hold at least one input HubSpot refuses;
// cause is the 400 from this batch or from a batch that contained it. It
// relies on one fact: a batch is refused if and only if it holds a refused
// input. So when one part of a refused batch passes, the other part is known
// to be guilty without being sent, and a lone guilty input is settled without
// another request.
//
// The first split follows the 400's hints; once hints have pointed at
// innocent inputs, the rest of this search halves instead, so a misleading
// body costs a couple of requests rather than one request per input.
func (u *updater) isolate(ctx context.Context, batch []Update, cause *APIError, useHints bool) error {
	if len(batch) == 1 {
		u.reject(batch[0], cause)
		return nil
	}
	var suspects, rest []Update
	if useHints {
		suspects, rest = splitByHints(batch, violations(cause))
	}
	hinted := len(suspects) > 0 && len(rest) > 0
	if !hinted {
		half := len(batch) / 2
		suspects, rest = batch[half:], batch[:half]
	}
	// Send the likely-innocent part; the guilt of the other part follows
	// from the answer.
	bad, err := u.send(ctx, rest)
	if err != nil {
		return err
	}
	if bad == nil {
		return u.isolate(ctx, suspects, cause, useHints)
	}
	if !hinted {
		if err := u.isolate(ctx, rest, bad, useHints); err != nil {
			return err
		}
		return u.test(ctx, suspects, useHints)
	}
	// Both parts may be guilty, or the hint missed. The suspects must be
	// sent anyway, and their answer says whether the hints can be trusted.
	sbad, err := u.send(ctx, suspects)
	if err != nil {
		return err
	}
	if sbad == nil {
		return u.isolate(ctx, rest, bad, false)
	}
	if err := u.isolate(ctx, suspects, sbad, true); err != nil {
		return err
	}
	return u.isolate(ctx, rest, bad, true)
}

func (u *updater) reject(in Update, cause *APIError) {
	// The hints are JSON inside the message, decoded after newAPIError redacted it: an
	// escaped token comes out whole.
	msg := u.c.redact(rejectionMessage(in, cause))
	u.res.Rejected = append(u.res.Rejected, Rejection{ContactID: in.ContactID, Message: msg})
	u.c.log.WithFields(logrus.Fields{"contact_id": in.ContactID, "reason": msg}).Warn("hubspot refused a contact update")
}

type updateInput struct {
	ID         string            `json:"id"`
	Properties map[string]string `json:"properties"`
}

type batchUpdateRequest struct {
	Inputs []updateInput `json:"inputs"`
}

// send posts one batch/update. A 400 comes back as the *APIError to isolate;
// any other failure is returned as err. On success the outcome of every input
// is recorded.
func (u *updater) send(ctx context.Context, batch []Update) (*APIError, error) {
	req := batchUpdateRequest{Inputs: make([]updateInput, len(batch))}
	for i, in := range batch {
		props := in.Properties
		if props == nil {
			props = map[string]string{}
		}
		req.Inputs[i] = updateInput{ID: in.ContactID, Properties: props}
	}
	u.requests++
	_, body, err := u.c.do(ctx, call{method: http.MethodPost, path: u.c.paths.batchUpdate, body: req, writes: true})
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.StatusCode == http.StatusBadRequest {
			return ae, nil
		}
		return nil, err
	}
	var resp batchResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("decode batch/update response: %w", err)
	}
	u.record(batch, resp)
	return nil, nil
}

// record sorts a 200/207 answer into the result. Ids are compared rather than
// trusting the errors alone, because a merged-away contact can be left out of
// the results without any error.
func (u *updater) record(batch []Update, resp batchResponse) {
	pending := make(map[string]bool, len(batch))
	for _, in := range batch {
		pending[in.ContactID] = true
	}
	for _, r := range resp.Results {
		if pending[r.ID] {
			delete(pending, r.ID)
			u.res.Updated = append(u.res.Updated, r.ID)
		}
	}
	for _, e := range resp.Errors {
		msg := u.c.redact(e.Message)
		for _, id := range e.Context["ids"] {
			if !pending[id] {
				continue
			}
			delete(pending, id)
			switch e.Category {
			case categoryNotFound:
				u.res.NotFound = append(u.res.NotFound, id)
			case categoryValidation:
				u.res.Rejected = append(u.res.Rejected, Rejection{ContactID: id, Message: msg})
			default:
				u.res.Retry = append(u.res.Retry, id)
			}
		}
		if e.Category != categoryNotFound {
			u.c.log.WithFields(logrus.Fields{"category": u.c.redact(e.Category), "message": msg}).
				Warn("hubspot batch/update reported an error for some inputs")
		}
	}
	for _, in := range batch {
		if pending[in.ContactID] {
			u.res.NotFound = append(u.res.NotFound, in.ContactID)
		}
	}
}

// violation is what a 400 body says about one property.
type violation struct {
	property string
	message  string
	value    string // the offending value, when HubSpot echoed it
	hasValue bool
}

// violations extracts per-property hints from a 400. HubSpot gives them twice:
// as errors[].context.propertyName, and as a JSON array embedded in the
// message ("Property values were not valid: [{...,"name":...}]") whose
// entries may carry the offending propertyValue.
func violations(e *APIError) []violation {
	var out []violation
	if i := strings.IndexByte(e.Message, '['); i >= 0 {
		var entries []struct {
			Name          string          `json:"name"`
			Message       string          `json:"message"`
			PropertyValue json.RawMessage `json:"propertyValue"`
		}
		// Decode only the array; text may follow it.
		if json.NewDecoder(strings.NewReader(e.Message[i:])).Decode(&entries) == nil {
			for _, en := range entries {
				if en.Name == "" {
					continue
				}
				v := violation{property: en.Name, message: en.Message}
				if len(en.PropertyValue) > 0 && string(en.PropertyValue) != "null" {
					v.value, v.hasValue = rawString(en.PropertyValue), true
				}
				out = append(out, v)
			}
		}
	}
	for _, d := range e.Errors {
		for _, name := range d.Context["propertyName"] {
			out = append(out, violation{property: name, message: d.Message})
		}
	}
	for _, name := range e.Context["propertyName"] {
		out = append(out, violation{property: name})
	}
	return out
}

// splitByHints picks the inputs a 400 most likely refers to: those setting a
// named property, narrowed to those whose value HubSpot quoted when that
// narrows anything. The split is only a guess; isolate stays correct when it
// is wrong.
func splitByHints(batch []Update, vs []violation) (suspects, rest []Update) {
	if len(vs) == 0 {
		return nil, batch
	}
	suspect := make([]bool, len(batch))
	for _, v := range vs {
		var setters, exact, quoted []int
		for i, in := range batch {
			val, ok := in.Properties[v.property]
			if !ok {
				continue
			}
			setters = append(setters, i)
			if v.hasValue && (val == v.value || strings.TrimSpace(val) == strings.TrimSpace(v.value)) {
				exact = append(exact, i)
			}
			if val != "" && containsToken(v.message, val) {
				quoted = append(quoted, i)
			}
		}
		pick := setters
		switch {
		case len(exact) > 0:
			pick = exact
		case len(quoted) > 0:
			pick = quoted
		}
		for _, i := range pick {
			suspect[i] = true
		}
	}
	for i, in := range batch {
		if suspect[i] {
			suspects = append(suspects, in)
		} else {
			rest = append(rest, in)
		}
	}
	return suspects, rest
}

// containsToken reports whether val occurs in msg as a whole token, so that
// "1" does not match inside "1.5 was not a valid number".
func containsToken(msg, val string) bool {
	for off := 0; ; {
		i := strings.Index(msg[off:], val)
		if i < 0 {
			return false
		}
		start := off + i
		end := start + len(val)
		if (start == 0 || !tokenByte(msg[start-1])) && (end == len(msg) || !tokenByte(msg[end])) {
			return true
		}
		off = start + 1
	}
}

func tokenByte(b byte) bool {
	switch {
	case b >= '0' && b <= '9', b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z':
		return true
	}
	return strings.IndexByte(".-_+:@", b) >= 0
}

// rejectionMessage picks HubSpot's words about this input: the messages for
// properties it sets whose value HubSpot quoted, else those that name no
// value, else the whole batch message.
func rejectionMessage(in Update, cause *APIError) string {
	vs := violations(cause)
	var specific, general []string
	seen := map[string]bool{}
	for _, v := range vs {
		val, ok := in.Properties[v.property]
		if !ok || v.message == "" {
			continue
		}
		line := v.property + ": " + v.message
		if seen[line] {
			continue
		}
		switch {
		case v.hasValue && strings.TrimSpace(val) == strings.TrimSpace(v.value),
			!v.hasValue && val != "" && containsToken(v.message, val):
			seen[line] = true
			specific = append(specific, line)
		case !v.hasValue:
			seen[line] = true
			general = append(general, line)
		}
	}
	switch {
	case len(specific) > 0:
		return strings.Join(specific, "; ")
	case len(general) > 0:
		return strings.Join(general, "; ")
	case cause.Message != "":
		return cause.Message
	}
	return cause.Error()
}

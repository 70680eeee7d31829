package hubspot

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/metrics"
)

const (
	// maxBatch is HubSpot's input limit for contacts batch endpoints.
	maxBatch = 100

	propEmail            = "email"
	propAdditionalEmails = "hs_additional_emails"

	categoryNotFound   = "OBJECT_NOT_FOUND"
	categoryValidation = "VALIDATION_ERROR"
)

// Contact is an existing HubSpot contact found by email.
type Contact struct {
	ID               string
	Email            string            // primary email, lower-case
	AdditionalEmails []string          // hs_additional_emails, lower-case
	Properties       map[string]string // requested properties; unset is ""
}

// ReadByEmail looks up contacts by email without ever creating one. The result
// is keyed by the normalized input email; emails that match no contact are
// absent. Every requested property appears in Contact.Properties, with ""
// for unset values, which is also how HubSpot spells "clear".
func (c *Client) ReadByEmail(ctx context.Context, emails []string, properties []string) (map[string]Contact, error) {
	var want []string
	seen := make(map[string]bool, len(emails))
	for _, e := range emails {
		n := metrics.NormalizeEmail(e)
		// An input without "@" cannot name a contact; sending it would only
		// risk HubSpot refusing the whole batch.
		if n == "" || !strings.Contains(n, "@") || seen[n] {
			continue
		}
		seen[n] = true
		want = append(want, n)
	}
	props := withLookupProperties(properties)

	out := make(map[string]Contact, len(want))
	for start := 0; start < len(want); start += maxBatch {
		chunk := want[start:min(start+maxBatch, len(want))]
		if err := c.readChunk(ctx, chunk, props, out); err != nil {
			return nil, fmt.Errorf("hubspot: read contacts by email: %w", err)
		}
	}
	return out, nil
}

// ReadByID reads contacts by record id, for contacts already linked to a student. The result is
// keyed by the requested id; ids HubSpot no longer has (deleted, or merged away) are absent,
// and so is a record returned under an id that was not asked for (a merge's survivor), since
// a merged contact must be found again by email.
func (c *Client) ReadByID(ctx context.Context, ids []string, properties []string) (map[string]Contact, error) {
	var want []string
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		if id != "" && !seen[id] {
			seen[id] = true
			want = append(want, id)
		}
	}
	props := withLookupProperties(properties)
	out := make(map[string]Contact, len(want))
	for start := 0; start < len(want); start += maxBatch {
		chunk := want[start:min(start+maxBatch, len(want))]
		resp, err := c.batchRead(ctx, "", chunk, props)
		if err != nil {
			return nil, fmt.Errorf("hubspot: read contacts by id: %w", err)
		}
		for _, r := range resp.Results {
			if seen[r.ID] {
				out[r.ID] = toContact(r, props)
			}
		}
	}
	return out, nil
}

func withLookupProperties(properties []string) []string {
	props := []string{propEmail, propAdditionalEmails}
	seen := map[string]bool{propEmail: true, propAdditionalEmails: true}
	for _, p := range properties {
		if p != "" && !seen[p] {
			seen[p] = true
			props = append(props, p)
		}
	}
	return props
}

type idInput struct {
	ID string `json:"id"`
}

type batchReadRequest struct {
	IDProperty string    `json:"idProperty,omitempty"`
	Properties []string  `json:"properties"`
	Inputs     []idInput `json:"inputs"`
}

type batchResponse struct {
	Status  string          `json:"status"`
	Results []objectResult  `json:"results"`
	Errors  []standardError `json:"errors"`
}

type objectResult struct {
	ID         string                     `json:"id"`
	Properties map[string]json.RawMessage `json:"properties"`
}

// standardError is a per-input error inside a 207 body.
type standardError struct {
	Category string      `json:"category"`
	Message  string      `json:"message"`
	Context  stringLists `json:"context"`
}

// batchRead sends one batch/read: by record id when idProperty is "", else by that property.
func (c *Client) batchRead(ctx context.Context, idProperty string, chunk, props []string) (batchResponse, error) {
	req := batchReadRequest{IDProperty: idProperty, Properties: props, Inputs: make([]idInput, len(chunk))}
	for i, e := range chunk {
		req.Inputs[i] = idInput{ID: e}
	}
	var resp batchResponse
	_, body, err := c.do(ctx, call{method: http.MethodPost, path: c.paths.batchRead, body: req})
	if err != nil {
		return resp, err
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return resp, fmt.Errorf("decode batch/read response: %w", err)
	}
	for _, e := range resp.Errors {
		// Misses are the normal "no such contact" case; anything else leaves those inputs
		// unmatched too, but deserves a look.
		if e.Category != categoryNotFound {
			c.log.WithFields(logrus.Fields{"category": c.redact(e.Category), "message": c.redact(e.Message)}).
				Warn("hubspot batch/read reported an error for some inputs; treating them as not found")
		}
	}
	return resp, nil
}

func (c *Client) readChunk(ctx context.Context, chunk, props []string, out map[string]Contact) error {
	resp, err := c.batchRead(ctx, propEmail, chunk, props)
	if err != nil {
		return err
	}
	asked := make(map[string]bool, len(chunk))
	for _, e := range chunk {
		asked[e] = true
	}
	for _, r := range resp.Results {
		ct := toContact(r, props)
		// Results neither come back in input order nor echo the input, so
		// an input matches through the primary or any additional email.
		matched := false
		for _, key := range append([]string{ct.Email}, ct.AdditionalEmails...) {
			if !asked[key] {
				continue
			}
			matched = true
			if _, dup := out[key]; !dup {
				out[key] = ct
			}
		}
		if !matched {
			c.log.WithField("contact_id", c.redact(ct.ID)).Warn("hubspot batch/read returned a contact that matches no requested email; ignoring it")
		}
	}
	return nil
}

func toContact(r objectResult, props []string) Contact {
	ct := Contact{ID: r.ID, Properties: make(map[string]string, len(props))}
	for _, p := range props {
		ct.Properties[p] = rawString(r.Properties[p])
	}
	ct.Email = metrics.NormalizeEmail(ct.Properties[propEmail])
	for _, e := range strings.Split(ct.Properties[propAdditionalEmails], ";") {
		if n := metrics.NormalizeEmail(e); n != "" {
			ct.AdditionalEmails = append(ct.AdditionalEmails, n)
		}
	}
	return ct
}

// rawString reads a property value. HubSpot sends strings or null; a bare
// JSON number or boolean is kept as written rather than failing the batch.
func rawString(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s
	}
	return string(raw)
}

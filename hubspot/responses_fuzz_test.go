package hubspot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/metrics"
)

// FuzzResponses feeds one HubSpot response body, answered with one status, to everything
// that reads response bodies: newAPIError (error and 429 bodies), the 400 hints that
// UpdateContacts isolates refused inputs with (violations, splitByHints, rejectionMessage,
// and missingProperties, which stops the batch when a property does not exist),
// the 200/207 batch answers (toContact, updater.record), and ReadByEmail and UpdateContacts
// end to end through a client whose transport gives that answer to every request.
//
// In the body, $T stands for the token, $U for the token with every character written as a
// JSON \u escape, and $W for the same escapes escaped once more (a token inside the JSON that
// HubSpot embeds in a 400 message): a proxy that echoes the Authorization header is the leak
// the client guards against.
//
// Properties: nothing panics; an error's Error() never holds a token of at least 8 of the
// characters [A-Za-z0-9_-] that is not part of Error()'s own fixed wording; errors, log output
// and rejection messages never hold a token shaped like HubSpot's private app tokens
// ("pat-" and at least 8 more of [A-Za-z0-9-]), nor its first 12 characters unless the body
// held them before the token was put in; each update lands in exactly one of Updated,
// NotFound or Rejected; a batch refused input by input costs at most 2n-1 requests; errors.Is
// agrees with the status and policy. The seeds in testdata/fuzz/FuzzResponses are the body
// shapes of the team's HUBSPOT-API.md notes, plus a few that echo the token.
func FuzzResponses(f *testing.F) {
	f.Fuzz(func(t *testing.T, code uint16, body []byte, token string) {
		status := int(code)
		if status < 100 || status > 599 {
			status = 200 + status%400
		}
		raw := body
		body = withToken(body, token)
		checkError := errorTokenCheckable(token, status)
		checkAll := realTokenShape.MatchString(token)
		// For a pat- token, its first 12 characters must not show either (a cut token is
		// still a leak), unless the body held them before the token was put in.
		var prefix string
		if checkAll && !bytes.Contains(raw, []byte(token[:12])) {
			prefix = token[:12]
		}
		leaks := func(s string) bool {
			return checkAll && (strings.Contains(s, token) || prefix != "" && strings.Contains(s, prefix))
		}

		// Error and 429 bodies.
		e := newAPIError(status, body, secrets{token})
		if e.StatusCode != status {
			t.Fatalf("status %d became %d", status, e.StatusCode)
		}
		msg := e.Error()
		if checkError && strings.Contains(msg, token) || leaks(msg) {
			t.Fatalf("Error() holds the token %q (or its first 12 characters): %s", token, msg)
		}
		daily := status == 429 && strings.EqualFold(e.PolicyName, "DAILY")
		if errors.Is(e, ErrDailyLimit) != daily || errors.Is(e, ErrUnauthorized) != (status == 401) || errors.Is(e, ErrMissingScopes) != (status == 403) {
			t.Fatalf("errors.Is disagrees with status %d policy %q", status, e.PolicyName)
		}
		if daily && retryableStatus(e) {
			t.Fatal("a spent daily limit is retried")
		}

		// The 400 hints.
		missing := missingProperties(e)
		for i, name := range missing {
			if name == "" || slices.Contains(missing[:i], name) {
				t.Fatalf("missingProperties = %q: empty or repeated name", missing)
			}
		}
		vs := violations(e)
		batch := hintedBatch(vs, nil)
		suspects, rest := splitByHints(batch, vs)
		if !isPartition(batch, suspects, rest) {
			t.Fatalf("splitByHints(%v) = %v, %v: not a partition of the batch", batch, suspects, rest)
		}
		for _, in := range batch {
			if rejectionMessage(in, e) == "" {
				t.Fatalf("empty rejection message for %v", in)
			}
		}

		// 200/207 batch answers, read directly.
		var resp batchResponse
		jsonOK := json.Unmarshal(body, &resp) == nil
		if jsonOK {
			props := withLookupProperties([]string{"total_xp", "course_status"})
			for _, r := range resp.Results {
				ct := toContact(r, props)
				for _, p := range props {
					if _, ok := ct.Properties[p]; !ok {
						t.Fatalf("contact %q lacks requested property %q", ct.ID, p)
					}
				}
				if ct.Email != metrics.NormalizeEmail(ct.Email) || slices.ContainsFunc(ct.AdditionalEmails, func(a string) bool { return a == "" || a != metrics.NormalizeEmail(a) }) {
					t.Fatalf("contact %q: emails not normalized: %q %q", ct.ID, ct.Email, ct.AdditionalEmails)
				}
			}
		}

		// Through a client.
		env := newFuzzClient(t, token, status, body)
		if env == nil {
			return // New refuses the token (whitespace, control characters): nothing to send
		}
		checkText := func(what, s string) {
			t.Helper()
			if leaks(s) {
				t.Fatalf("%s holds the token %q (or its first 12 characters): %s", what, token, s)
			}
		}
		if jsonOK {
			u := &updater{c: env.client}
			b := hintedBatch(nil, responseIDs(resp))
			u.record(b, resp)
			checkOutcomes(t, b, u.res)
			for _, r := range u.res.Rejected {
				checkText("a 207 rejection", r.Message)
			}
		}

		ctx := context.Background()
		asked := []string{" Ada@Example.com", "bob@example.com", "nobody@example.com", "not-an-email"}
		found, err := env.client.ReadByEmail(ctx, asked, []string{"total_xp", "course_status"})
		if err != nil {
			checkText("the ReadByEmail error", err.Error())
		}
		for email, ct := range found {
			if !slices.Contains(asked, email) && !slices.ContainsFunc(asked, func(a string) bool { return metrics.NormalizeEmail(a) == email }) {
				t.Fatalf("ReadByEmail returned %q, which was not asked for", email)
			}
			if ct.Email != email && !slices.Contains(ct.AdditionalEmails, email) {
				t.Fatalf("ReadByEmail matched %q to contact %q with emails %q %q", email, ct.ID, ct.Email, ct.AdditionalEmails)
			}
		}

		if jsonOK {
			batch = hintedBatch(vs, responseIDs(resp))
		}
		env.requests = 0
		res, err := env.client.UpdateContacts(ctx, batch)
		if err != nil {
			checkText("the UpdateContacts error", err.Error())
		} else {
			checkOutcomes(t, batch, res)
			if status == http.StatusBadRequest {
				if len(res.Rejected) != len(batch) {
					t.Fatalf("every request refused, yet only %d of %d updates rejected", len(res.Rejected), len(batch))
				}
				if env.requests > 2*len(batch)-1 {
					t.Fatalf("isolating %d refused updates took %d requests", len(batch), env.requests)
				}
			}
		}
		for _, r := range res.Rejected {
			checkText("a rejection", r.Message)
		}
		checkText("the log output", env.log.String())
	})
}

// realTokenShape is what HubSpot private app tokens look like (pat-na1-<uuid>); fixed text
// in errors and logs never starts with "pat-", so such a token found there was leaked.
var realTokenShape = regexp.MustCompile(`^pat-[A-Za-z0-9-]{8,}$`)

var tokenChars = regexp.MustCompile(`^[A-Za-z0-9_-]{8,}$`)

// errorTokenCheckable says whether an APIError's text can promise to hide token: every
// character of the token is one that Error() never puts next to a field (it separates them
// with spaces, colons, parentheses and semicolons, and marks a cut body with "..."), so an
// occurrence lies within one field or within Error()'s own wording; a token that is part of
// that wording, such as "HubSpot" or "REDACTED", cannot be hidden.
func errorTokenCheckable(token string, status int) bool {
	if !tokenChars.MatchString(token) {
		return false
	}
	const gap = "\x00"
	for _, e := range []*APIError{
		{StatusCode: status, Category: gap, PolicyName: gap, Message: gap, CorrelationID: gap},
		{StatusCode: 429, PolicyName: "DAILY"},
		{StatusCode: 401}, {StatusCode: 403},
	} {
		if strings.Contains(e.Error(), token) {
			return false
		}
	}
	return !strings.Contains(redacted, token)
}

// withToken puts the token into the body where the placeholders are.
func withToken(body []byte, token string) []byte {
	if !bytes.Contains(body, []byte("$")) {
		return body
	}
	var u, w strings.Builder
	for _, r := range token {
		if r > 0xffff {
			r = '?'
		}
		fmt.Fprintf(&u, `\u%04x`, r)
		fmt.Fprintf(&w, `\\u%04x`, r)
	}
	return []byte(strings.NewReplacer("$T", token, "$U", u.String(), "$W", w.String()).Replace(string(body)))
}

// hintedBatch is a batch of updates that the hints concern: contact ids from ids, then 1, 2, ...
// up to four updates at least; each sets total_xp, and the named properties are spread over
// them with the quoted values.
func hintedBatch(vs []violation, ids []string) []Update {
	seen := map[string]bool{}
	var batch []Update
	add := func(id string) {
		if id != "" && !seen[id] && len(batch) < 8 {
			seen[id] = true
			batch = append(batch, Update{ContactID: id, Properties: map[string]string{"total_xp": strconv.Itoa(len(batch))}})
		}
	}
	for _, id := range ids {
		add(id)
	}
	for i := 1; len(batch) < 4; i++ {
		add(strconv.Itoa(i))
	}
	for i, v := range vs[:min(len(vs), 16)] {
		val := "1.5"
		if v.hasValue {
			val = v.value
		}
		batch[i%len(batch)].Properties[v.property] = val
	}
	return batch
}

// responseIDs are the contact ids a 200/207 answer mentions.
func responseIDs(resp batchResponse) []string {
	var ids []string
	for _, r := range resp.Results {
		ids = append(ids, r.ID)
	}
	for _, e := range resp.Errors {
		ids = append(ids, e.Context["ids"]...)
	}
	return ids
}

func isPartition(batch, a, b []Update) bool {
	if len(a)+len(b) != len(batch) {
		return false
	}
	i, j := 0, 0
	for _, in := range batch {
		switch {
		case i < len(a) && a[i].ContactID == in.ContactID:
			i++
		case j < len(b) && b[j].ContactID == in.ContactID:
			j++
		default:
			return false
		}
	}
	return true
}

// checkOutcomes: every update of batch (ids are distinct) is settled exactly once.
func checkOutcomes(t *testing.T, batch []Update, res UpdateResult) {
	t.Helper()
	count := map[string]int{}
	for _, id := range res.Updated {
		count[id]++
	}
	for _, id := range res.NotFound {
		count[id]++
	}
	for _, r := range res.Rejected {
		count[r.ContactID]++
	}
	for _, id := range res.Retry {
		count[id]++
	}
	for _, in := range batch {
		if count[in.ContactID] != 1 {
			t.Fatalf("update of %q settled %d times: %+v", in.ContactID, count[in.ContactID], res)
		}
	}
	if n := len(res.Updated) + len(res.NotFound) + len(res.Rejected) + len(res.Retry); n != len(batch) {
		t.Fatalf("%d outcomes for %d updates: %+v", n, len(batch), res)
	}
}

type fuzzEnv struct {
	client   *Client
	log      *bytes.Buffer
	requests int
}

// cannedTransport answers every request with one status and body.
type cannedTransport struct {
	env    *fuzzEnv
	status int
	body   []byte
}

func (c cannedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.env.requests++
	if r.Body != nil {
		_ = r.Body.Close()
	}
	return &http.Response{StatusCode: c.status, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(bytes.NewReader(c.body)), Request: r}, nil
}

type noPacing struct{}

func (noPacing) Wait(context.Context) error { return nil }

// newFuzzClient returns a client whose every request gets status and body, retries without
// sleeping, and logs everything (without timestamps) to a buffer; nil if New refuses token.
func newFuzzClient(t *testing.T, token string, status int, body []byte) *fuzzEnv {
	env := &fuzzEnv{log: &bytes.Buffer{}}
	l := logrus.New()
	l.SetOutput(env.log)
	l.SetLevel(logrus.DebugLevel)
	l.SetFormatter(&logrus.JSONFormatter{DisableTimestamp: true})
	c, err := New(Config{
		BaseURL:         "https://api.hubapi.com",
		Token:           token,
		HTTPClient:      &http.Client{Transport: cannedTransport{env: env, status: status, body: body}},
		Log:             logrus.NewEntry(l),
		MaxRetryElapsed: time.Second,
		InitialBackoff:  time.Millisecond,
	})
	if err != nil {
		return nil
	}
	ft := &fakeTime{now: time.Date(2026, 10, 10, 10, 0, 0, 0, time.UTC)}
	c.clock, c.newTimer, c.pace = ft, ft.newTimer, noPacing{}
	env.client = c
	return env
}

package hubspot

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
)

// batchOf builds n valid updates for contacts 1..n; every one sets total_xp
// and current_lesson, so a property name alone does not single anyone out.
func batchOf(n int) []Update {
	out := make([]Update, n)
	for i := range out {
		out[i] = Update{ContactID: fmt.Sprint(i + 1), Properties: map[string]string{
			"total_xp":       fmt.Sprint(100 + i),
			"current_lesson": fmt.Sprintf("lesson-%d", i),
		}}
	}
	return out
}

// A property missing from the portal is not one contact's fault: no contact may be marked
// rejected for it, and the caller learns what to run.
func TestUpdateContactsStopsOnMissingProperty(t *testing.T) {
	crm := newFakeCRM(t)
	crm.hints = hintsFull
	updates := batchOf(100)
	for i, u := range updates {
		crm.add(u.ContactID, fmt.Sprintf("s%d@example.com", i), "", nil)
	}
	updates[99].Properties["favourite_colour"] = "blue"
	srv, _ := newServer(t, crm.serve)
	res, err := newTestClient(t, srv.URL).client.UpdateContacts(context.Background(), updates)
	if !errors.Is(err, ErrPropertyMissing) || !strings.Contains(err.Error(), "favourite_colour") {
		t.Fatalf("err = %v, want ErrPropertyMissing naming favourite_colour", err)
	}
	if len(res.Rejected) != 0 {
		t.Fatalf("rejected %v", res.Rejected)
	}
	if crm.updateCount() != 1 {
		t.Fatalf("%d requests, want 1", crm.updateCount())
	}
}

func TestUpdateContacts(t *testing.T) {
	type result struct {
		updated, notFound, rejected []string
	}
	tests := []struct {
		name    string
		n       int
		hints   hintMode
		spoil   map[int]map[string]string // input index -> properties to overwrite
		missing []int                     // inputs whose contact does not exist
		merged  []int                     // inputs left out of results silently
		maxReqs int
		wantMsg map[string]string // contact id -> substring of the rejection
	}{
		{name: "all valid", n: 100, maxReqs: 1},
		{name: "250 inputs split in three", n: 250, maxReqs: 3},
		{name: "one bad of 100, value echoed", n: 100, hints: hintsFull,
			spoil: map[int]map[string]string{57: {"total_xp": "abc"}}, maxReqs: 3,
			wantMsg: map[string]string{"58": "total_xp: abc was not a valid number."}},
		{name: "one bad of 100, value only in message", n: 100, hints: hintsNoValue,
			spoil: map[int]map[string]string{3: {"total_xp": "12.5.1"}}, maxReqs: 3,
			wantMsg: map[string]string{"4": "12.5.1 was not a valid number."}},
		{name: "clearing a date is valid", n: 100, hints: hintsFull,
			spoil: map[int]map[string]string{10: {"last_activity_date": ""}}, maxReqs: 1},
		{name: "one bad of 100, no hints", n: 100, hints: hintsNone,
			spoil: map[int]map[string]string{42: {"total_xp": "NaN"}}, maxReqs: 15,
			wantMsg: map[string]string{"43": "Property values were not valid"}},
		{name: "one bad of 100, misleading hint", n: 100, hints: hintsMislead,
			spoil: map[int]map[string]string{70: {"total_xp": "x"}}, maxReqs: 20},
		{name: "three bad of 100, all named", n: 100, hints: hintsFull,
			spoil:   map[int]map[string]string{5: {"total_xp": "a"}, 50: {"last_activity_date": "2026-09-01T10:00:00Z"}, 95: {"study_streak": "-"}},
			maxReqs: 8, wantMsg: map[string]string{"51": "2026-09-01T10:00:00Z is not a valid date"}},
		{name: "three bad of 100, only the first named", n: 100, hints: hintsFirstOnly,
			spoil: map[int]map[string]string{5: {"total_xp": "a"}, 50: {"total_xp": "b"}, 95: {"total_xp": "c"}}, maxReqs: 20},
		{name: "every input bad", n: 5, hints: hintsFull,
			spoil:   map[int]map[string]string{0: {"total_xp": "a"}, 1: {"total_xp": "b"}, 2: {"total_xp": "c"}, 3: {"total_xp": "d"}, 4: {"total_xp": "e"}},
			maxReqs: 12},
		{name: "207 not found and silent merge with one bad", n: 100, hints: hintsFull,
			spoil: map[int]map[string]string{20: {"total_xp": "1e5x"}}, missing: []int{3, 77}, merged: []int{12}, maxReqs: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			crm := newFakeCRM(t)
			crm.hints = tt.hints
			updates := batchOf(tt.n)
			for i, props := range tt.spoil {
				for k, v := range props {
					updates[i].Properties[k] = v
				}
			}
			missing := map[int]bool{}
			for _, i := range tt.missing {
				missing[i] = true
			}
			var want result
			for i, u := range updates {
				if !missing[i] {
					crm.add(u.ContactID, fmt.Sprintf("s%d@example.com", i), "", nil)
				}
				switch {
				case len(validate(u.Properties)) > 0:
					want.rejected = append(want.rejected, u.ContactID)
				case missing[i]:
					want.notFound = append(want.notFound, u.ContactID)
				default:
					want.updated = append(want.updated, u.ContactID)
				}
			}
			for _, i := range tt.merged {
				crm.merged[updates[i].ContactID] = true
				want.updated = remove(want.updated, updates[i].ContactID)
				want.notFound = append(want.notFound, updates[i].ContactID)
			}
			srv, _ := newServer(t, crm.serve)
			env := newTestClient(t, srv.URL)

			res, err := env.client.UpdateContacts(context.Background(), updates)
			if err != nil {
				t.Fatal(err)
			}
			var rejected []string
			for _, r := range res.Rejected {
				rejected = append(rejected, r.ContactID)
				if sub, ok := tt.wantMsg[r.ContactID]; ok && !strings.Contains(r.Message, sub) {
					t.Errorf("rejection of %s = %q, want containing %q", r.ContactID, r.Message, sub)
				}
			}
			got := result{sorted(res.Updated), sorted(res.NotFound), sorted(rejected)}
			want = result{sorted(want.updated), sorted(want.notFound), sorted(want.rejected)}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("result = %+v\nwant %+v", got, want)
			}
			// Nothing valid is lost: every valid input reached the contact.
			for i, u := range updates {
				if missing[i] || len(validate(u.Properties)) > 0 {
					continue
				}
				if v := crm.get(u.ContactID, "total_xp"); v != u.Properties["total_xp"] {
					t.Fatalf("contact %s total_xp = %q, want %q", u.ContactID, v, u.Properties["total_xp"])
				}
			}
			t.Logf("%d inputs, %d rejected: %d batch/update requests", tt.n, len(rejected), crm.updateCount())
			if crm.updateCount() > tt.maxReqs {
				t.Fatalf("used %d requests, want at most %d", crm.updateCount(), tt.maxReqs)
			}
		})
	}
}

func remove(s []string, v string) []string {
	var out []string
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

// TestIsolationRequestCounts pins the exact cost of the common cases.
func TestIsolationRequestCounts(t *testing.T) {
	tests := []struct {
		name  string
		hints hintMode
		bad   int
		want  int
	}{
		{"hint with value", hintsFull, 61, 2},
		{"hint in message only", hintsNoValue, 0, 2},
		{"no hint, offender in first half", hintsNone, 10, 15},
		{"no hint, offender first", hintsNone, 0, 15},
		{"no hint, offender last", hintsNone, 99, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			crm := newFakeCRM(t)
			crm.hints = tt.hints
			updates := batchOf(100)
			updates[tt.bad].Properties["total_xp"] = "seven"
			for _, u := range updates {
				crm.add(u.ContactID, u.ContactID+"@example.com", "", nil)
			}
			srv, _ := newServer(t, crm.serve)
			env := newTestClient(t, srv.URL)
			res, err := env.client.UpdateContacts(context.Background(), updates)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Updated) != 99 || len(res.Rejected) != 1 || res.Rejected[0].ContactID != updates[tt.bad].ContactID {
				t.Fatalf("result = %+v", res)
			}
			if crm.updateCount() > tt.want {
				t.Fatalf("used %d requests, want at most %d", crm.updateCount(), tt.want)
			}
			t.Logf("%s: %d requests", tt.name, crm.updateCount())
		})
	}
}

func TestUpdateContactsRefusesBadInput(t *testing.T) {
	tests := []struct {
		name    string
		updates []Update
		wantErr string
	}{
		{"duplicate id", []Update{{ContactID: "1"}, {ContactID: "2"}, {ContactID: "1"}}, `contact id "1" appears at inputs 0 and 2`},
		{"empty id", []Update{{ContactID: "1"}, {ContactID: ""}}, "input 1 has an empty contact id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, rec := newServer(t, newFakeCRM(t).serve)
			env := newTestClient(t, srv.URL)
			_, err := env.client.UpdateContacts(context.Background(), tt.updates)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want containing %q", err, tt.wantErr)
			}
			if n := len(rec.all()); n != 0 {
				t.Fatalf("sent %d requests, want none", n)
			}
		})
	}
}

// TestUpdateStopsOnDailyLimit: isolation must not keep spending requests once
// HubSpot says the day's budget is gone, and must report what it settled.
func TestUpdateStopsOnDailyLimit(t *testing.T) {
	var calls atomic.Int32
	srv, _ := newServer(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if calls.Add(1) == 1 {
			writeJSON(w, 400, map[string]any{"category": "VALIDATION_ERROR", "message": "Property values were not valid"})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(429)
		_, _ = w.Write([]byte(dailyBody))
	})
	env := newTestClient(t, srv.URL)
	_, err := env.client.UpdateContacts(context.Background(), batchOf(10))
	if !errors.Is(err, ErrDailyLimit) {
		t.Fatalf("error = %v, want ErrDailyLimit", err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("calls = %d, want 2", n)
	}
}

// TestOnlyAllowedEndpoints runs the whole read-then-update flow, including
// isolation and misses, and checks that nothing but batch/read and
// batch/update was called: no upsert, no create.
func TestOnlyAllowedEndpoints(t *testing.T) {
	crm := newFakeCRM(t)
	crm.hints = hintsNone
	for i := 0; i < 30; i++ {
		crm.add(fmt.Sprint(i+1), fmt.Sprintf("s%d@example.com", i), "", nil)
	}
	srv, rec := newServer(t, crm.serve)
	env := newTestClient(t, srv.URL)
	var emails []string
	for i := 0; i < 35; i++ {
		emails = append(emails, fmt.Sprintf("S%d@example.com", i))
	}
	found, err := env.client.ReadByEmail(context.Background(), emails, []string{"total_xp"})
	if err != nil {
		t.Fatal(err)
	}
	var updates []Update
	for _, c := range found {
		updates = append(updates, Update{ContactID: c.ID, Properties: map[string]string{"total_xp": "7"}})
	}
	updates[4].Properties["total_xp"] = "seven"
	updates = append(updates, Update{ContactID: "999", Properties: map[string]string{"total_xp": "1"}})
	res, err := env.client.UpdateContacts(context.Background(), updates)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Updated) != 29 || len(res.Rejected) != 1 || !reflect.DeepEqual(res.NotFound, []string{"999"}) {
		t.Fatalf("result = %+v", res)
	}
	paths := map[string]bool{}
	for _, r := range rec.all() {
		paths[r.Method+" "+r.Path] = true
	}
	want := map[string]bool{"POST " + apiPaths.batchRead: true, "POST " + apiPaths.batchUpdate: true}
	if !reflect.DeepEqual(paths, want) {
		t.Fatalf("endpoints called = %v, want only %v", paths, want)
	}
}

func TestContainsToken(t *testing.T) {
	tests := []struct {
		msg, val string
		want     bool
	}{
		{"1.5 was not a valid number.", "1.5", true},
		{"1.5 was not a valid number.", "1", false},
		{"1.5 was not a valid number.", "5", false},
		{`"abc" is not valid`, "abc", true},
		{"abcd is not valid", "abc", false},
		{"value x, then abc!", "abc", true},
		{"2026-09-01T10:00:00Z is not a valid date", "2026-09-01", false},
	}
	for _, tt := range tests {
		if got := containsToken(tt.msg, tt.val); got != tt.want {
			t.Errorf("containsToken(%q, %q) = %v, want %v", tt.msg, tt.val, got, tt.want)
		}
	}
}

func TestAWriteFenceStopsEveryAttempt(t *testing.T) {
	// HubSpot answers 503 twice; between the attempts the instance loses the slot: the retry
	// must not be sent.
	calls := 0
	srv, rec := newServer(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		calls++
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "error", "message": "try later"})
	})
	holding := true
	env := newTestClient(t, srv.URL, func(c *Config) {
		c.Fence = fenceFunc(func(context.Context) error {
			if !holding {
				return errors.New("no longer holds the slot")
			}
			holding = false // the next attempt finds the slot taken
			return nil
		})
	})
	_, err := env.client.UpdateContacts(context.Background(), []Update{{ContactID: "1", Properties: map[string]string{"total_xp": "5"}}})
	if err == nil || !strings.Contains(err.Error(), "no longer holds the slot") {
		t.Fatalf("err = %v, want the fence's", err)
	}
	if n := len(rec.all()); n != 1 || calls != 1 {
		t.Fatalf("%d requests sent (%d answered), want the one before the fence closed", n, calls)
	}
}

// fenceFunc is a Fence from a function.
type fenceFunc func(context.Context) error

func (f fenceFunc) Confirm(ctx context.Context) error { return f(ctx) }

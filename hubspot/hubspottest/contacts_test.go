package hubspottest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAuth(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	tests := []struct {
		name   string
		header string
		want   int
	}{
		{"missing", "", http.StatusUnauthorized},
		{"wrong token", "Bearer nope", http.StatusUnauthorized},
		{"not bearer", "Basic " + testToken, http.StatusUnauthorized},
		{"bearer without token", "Bearer ", http.StatusUnauthorized},
		{"valid", "Bearer " + testToken, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + testToken, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodGet, s.URL()+propsPath+"/email", nil)
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if tt.want == http.StatusUnauthorized {
				body, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				r := reply{status: resp.StatusCode, body: body}
				m := r.obj(t)
				if m["category"] != "INVALID_AUTHENTICATION" || m["status"] != "error" || m["correlationId"] == "" {
					t.Errorf("401 body: %s", r.body)
				}
				if strings.Contains(string(r.body), testToken) {
					t.Errorf("401 body leaks the token")
				}
			}
		})
	}
	if v := s.Violations(); len(v) != 0 {
		t.Errorf("violations: %v", v)
	}
}

func TestBatchRead(t *testing.T) {
	s, _ := newTestServer(t, Options{Seed: 1})
	defineStudentProps(s)
	ada := s.AddContact("Ada@Example.com", nil, map[string]string{"firstname": "Ada", "stu_progress_pct": "42.5"})
	bob := s.AddContact("bob@example.com", []string{"Bobby@Work.example", "bob.alt@example.com"}, nil)

	tests := []struct {
		name       string
		body       any
		wantStatus int
		wantIDs    []string // result ids, any order
		wantMissed []any    // context.ids of the OBJECT_NOT_FOUND error
		check      func(t *testing.T, res []map[string]any)
	}{
		{
			name:       "all matched",
			body:       readByEmail([]string{"ada@example.com", "bob@example.com"}, "email", "stu_progress_pct"),
			wantStatus: http.StatusOK,
			wantIDs:    []string{ada, bob},
		},
		{
			name:       "miss gives 207 with the ids as given",
			body:       readByEmail([]string{"ada@example.com", " Nobody@Example.com", "ghost@example.com"}, "email"),
			wantStatus: http.StatusMultiStatus,
			wantIDs:    []string{ada},
			wantMissed: []any{" Nobody@Example.com", "ghost@example.com"},
		},
		{
			name:       "nothing matched",
			body:       readByEmail([]string{"ghost@example.com"}, "email"),
			wantStatus: http.StatusMultiStatus,
			wantMissed: []any{"ghost@example.com"},
		},
		{
			name:       "case and padding",
			body:       readByEmail([]string{"  ADA@example.COM\t"}, "email"),
			wantStatus: http.StatusOK,
			wantIDs:    []string{ada},
			check: func(t *testing.T, res []map[string]any) {
				if got := props(res[0])["email"]; got != "ada@example.com" {
					t.Errorf("email = %v, want stored lower-case", got)
				}
			},
		},
		{
			name:       "secondary email resolves to its contact",
			body:       readByEmail([]string{"bobby@work.example"}, "email", "hs_additional_emails"),
			wantStatus: http.StatusOK,
			wantIDs:    []string{bob},
			check: func(t *testing.T, res []map[string]any) {
				p := props(res[0])
				if p["email"] != "bob@example.com" || p["hs_additional_emails"] != "bobby@work.example;bob.alt@example.com" {
					t.Errorf("properties = %v", p)
				}
			},
		},
		{
			name:       "primary and secondary of one contact give one result",
			body:       readByEmail([]string{"bob@example.com", "bob.alt@example.com"}, "email"),
			wantStatus: http.StatusOK,
			wantIDs:    []string{bob},
		},
		{
			name:       "unset is null, unknown omitted, system properties always present",
			body:       readByEmail([]string{"bob@example.com"}, "stu_progress_pct", "no_such_prop"),
			wantStatus: http.StatusOK,
			wantIDs:    []string{bob},
			check: func(t *testing.T, res []map[string]any) {
				p := props(res[0])
				if v, ok := p["stu_progress_pct"]; !ok || v != nil {
					t.Errorf("stu_progress_pct = %v (present %v), want null", v, ok)
				}
				if _, ok := p["no_such_prop"]; ok {
					t.Errorf("unknown property returned")
				}
				if p["hs_object_id"] != bob || p["createdate"] == nil || p["lastmodifieddate"] == nil {
					t.Errorf("system properties missing: %v", p)
				}
				if _, ok := p["email"]; ok {
					t.Errorf("email returned though not requested")
				}
				o := res[0]
				if o["archived"] != false || o["createdAt"] == nil || o["updatedAt"] == nil {
					t.Errorf("object = %v", o)
				}
			},
		},
		{
			name:       "by record id without idProperty",
			body:       map[string]any{"properties": []string{"email"}, "inputs": []map[string]string{{"id": ada}, {"id": "999"}, {"id": "ada@example.com"}}},
			wantStatus: http.StatusMultiStatus,
			wantIDs:    []string{ada},
			wantMissed: []any{"999", "ada@example.com"},
		},
		{
			name:       "propertiesWithHistory",
			body:       map[string]any{"idProperty": "email", "properties": []string{}, "propertiesWithHistory": []string{"stu_progress_pct"}, "inputs": []map[string]string{{"id": "ada@example.com"}}},
			wantStatus: http.StatusOK,
			wantIDs:    []string{ada},
			check: func(t *testing.T, res []map[string]any) {
				h, _ := res[0]["propertiesWithHistory"].(map[string]any)
				list, _ := h["stu_progress_pct"].([]any)
				if len(list) != 1 || list[0].(map[string]any)["value"] != "42.5" {
					t.Errorf("history = %v", h)
				}
				if p := props(res[0]); p["email"] != "ada@example.com" || p["firstname"] != "Ada" {
					t.Errorf("default properties = %v", p)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := api(t, s, http.MethodPost, readPath, tt.body)
			if r.status != tt.wantStatus {
				t.Fatalf("got %s, want status %d", r, tt.wantStatus)
			}
			m := r.obj(t)
			if m["status"] != "COMPLETE" || m["startedAt"] == nil || m["completedAt"] == nil {
				t.Errorf("envelope: %s", r.body)
			}
			res := results(t, r)
			var ids []string
			for _, o := range res {
				ids = append(ids, o["id"].(string))
			}
			slices.Sort(ids)
			want := slices.Clone(tt.wantIDs)
			slices.Sort(want)
			if !slices.Equal(ids, want) {
				t.Errorf("ids %v, want %v", ids, want)
			}
			if tt.wantMissed == nil {
				if _, ok := m["errors"]; ok {
					t.Errorf("unexpected errors: %s", r.body)
				}
			} else {
				if m["numErrors"] != float64(1) {
					t.Errorf("numErrors = %v", m["numErrors"])
				}
				errs := m["errors"].([]any)
				e := errs[0].(map[string]any)
				if len(errs) != 1 || e["status"] != "error" || e["category"] != "OBJECT_NOT_FOUND" ||
					e["message"] != "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid." {
					t.Errorf("errors = %v", errs)
				}
				got := e["context"].(map[string]any)["ids"].([]any)
				if !slices.Equal(got, tt.wantMissed) {
					t.Errorf("context.ids = %q, want %q", got, tt.wantMissed)
				}
			}
			if tt.check != nil {
				tt.check(t, res)
			}
		})
	}
	if st := s.Stats(); st.BatchReads != len(tests) {
		t.Errorf("BatchReads = %d, want %d", st.BatchReads, len(tests))
	}
}

func TestBatchReadShuffledDeterministically(t *testing.T) {
	order := func(seed int64) []string {
		s, _ := newTestServer(t, Options{Seed: seed})
		var emails []string
		for i := range 30 {
			e := fmt.Sprintf("s%02d@example.com", i)
			s.AddContact(e, nil, nil)
			emails = append(emails, e)
		}
		var got []string
		for _, o := range results(t, api(t, s, http.MethodPost, readPath, readByEmail(emails, "email"))) {
			got = append(got, props(o)["email"].(string))
		}
		if len(got) != 30 {
			t.Fatalf("got %d results", len(got))
		}
		if slices.Equal(got, emails) {
			t.Errorf("seed %d: results came back in input order", seed)
		}
		return got
	}
	if a, b := order(7), order(7); !slices.Equal(a, b) {
		t.Errorf("same seed, different order:\n%v\n%v", a, b)
	}
}

func TestBatchTooManyInputs(t *testing.T) {
	for _, path := range []string{readPath, updatePath} {
		t.Run(path, func(t *testing.T) {
			s, _ := newTestServer(t, Options{})
			id := s.AddContact("a@example.com", nil, nil)
			var inputs []map[string]any
			inputs = append(inputs, map[string]any{"id": id, "properties": map[string]string{"firstname": "x"}})
			for i := range 100 {
				inputs = append(inputs, map[string]any{"id": fmt.Sprint(5000 + i), "properties": map[string]string{"firstname": "x"}})
			}
			r := api(t, s, http.MethodPost, path, map[string]any{"inputs": inputs})
			if r.status != http.StatusBadRequest || r.obj(t)["category"] != "VALIDATION_ERROR" {
				t.Fatalf("got %s", r)
			}
			v := s.Violations()
			if len(v) != 1 || !strings.Contains(v[0], "batch of 101 inputs") {
				t.Errorf("violations = %q", v)
			}
			if c, _ := s.Contact(id); c.Properties["firstname"] != "" {
				t.Errorf("applied: %v", c.Properties)
			}
		})
	}
}

// invalidEntries decodes the JSON array embedded in a validation message.
func invalidEntries(t *testing.T, m map[string]any) []map[string]any {
	t.Helper()
	msg, _ := m["message"].(string)
	const prefix = "Property values were not valid: "
	if !strings.HasPrefix(msg, prefix) {
		t.Fatalf("message = %q", msg)
	}
	var entries []map[string]any
	mustJSON(t, strings.TrimPrefix(msg, prefix), &entries)
	return entries
}

func TestBatchUpdate(t *testing.T) {
	type fixture struct {
		s        *Server
		ada, bob string
	}
	setup := func(t *testing.T) fixture {
		s, _ := newTestServer(t, Options{Seed: 3})
		defineStudentProps(s)
		s.AddValidationRule("stu_progress_pct", MinNumber(0))
		s.AddValidationRule("stu_progress_pct", MaxNumber(100))
		ada := s.AddContact("ada@example.com", nil, map[string]string{"stu_progress_pct": "10", "stu_note": "keep", "stu_courses": "grammar"})
		bob := s.AddContact("bob@example.com", nil, nil)
		return fixture{s, ada, bob}
	}
	// invalid asserts a whole-batch 400 naming prop with code, and that
	// nothing was applied.
	invalid := func(prop, code, valueInMessage string) func(t *testing.T, f fixture, r reply) {
		return func(t *testing.T, f fixture, r reply) {
			m := r.obj(t)
			if m["category"] != "VALIDATION_ERROR" || m["status"] != "error" || m["correlationId"] == "" {
				t.Errorf("body: %s", r.body)
			}
			entries := invalidEntries(t, m)
			if len(entries) != 1 || entries[0]["isValid"] != false || entries[0]["error"] != code || entries[0]["name"] != prop {
				t.Fatalf("entries = %v", entries)
			}
			if msg := entries[0]["message"].(string); !strings.Contains(msg, valueInMessage) {
				t.Errorf("entry message %q does not mention %q", msg, valueInMessage)
			}
			if code == "INVALID_PROPERTY_VALUE" { // a portal validation rule: the message alone
				if _, ok := m["errors"]; ok {
					t.Errorf("a validation rule's 400 carries errors[]: %s", r.body)
				}
			} else {
				errs := m["errors"].([]any)
				e := errs[0].(map[string]any)
				if e["code"] != code || e["message"] != entries[0]["message"] ||
					e["context"].(map[string]any)["propertyName"].([]any)[0] != prop {
					t.Errorf("errors = %v", errs)
				}
			}
			if c, _ := f.s.Contact(f.bob); c.Properties["firstname"] != "" {
				t.Errorf("valid input was applied despite the 400: %v", c.Properties)
			}
			if c, _ := f.s.Contact(f.ada); c.Properties["stu_progress_pct"] != "10" {
				t.Errorf("ada changed: %v", c.Properties)
			}
			if st := f.s.Stats(); st.BatchUpdates != 0 {
				t.Errorf("BatchUpdates = %d", st.BatchUpdates)
			}
		}
	}
	// bad writes prop=value for ada plus a valid write for bob.
	bad := func(prop string, value any) func(f fixture) any {
		return func(f fixture) any {
			return updateBody(upd{f.bob, map[string]any{"firstname": "Bob"}}, upd{f.ada, map[string]any{prop: value}})
		}
	}
	stored := func(prop, want string) func(t *testing.T, f fixture, r reply) {
		return func(t *testing.T, f fixture, r reply) {
			c, _ := f.s.Contact(f.ada)
			if got := c.Properties[prop]; got != want {
				t.Errorf("%s = %q, want %q", prop, got, want)
			}
		}
	}

	tests := []struct {
		name   string
		body   func(f fixture) any
		status int
		check  func(t *testing.T, f fixture, r reply)
	}{
		{
			name: "applied",
			body: func(f fixture) any {
				return updateBody(upd{f.ada, map[string]any{"stu_progress_pct": "42.5", "stu_last_lesson": "2026-09-01", "stu_level": "b1"}},
					upd{f.bob, map[string]any{"stu_progress_pct": 7, "stu_active": "TRUE"}})
			},
			status: http.StatusOK,
			check: func(t *testing.T, f fixture, r reply) {
				res := results(t, r)
				if len(res) != 2 {
					t.Fatalf("results: %s", r.body)
				}
				for _, o := range res {
					p := props(o)
					if p["hs_object_id"] != o["id"] || p["lastmodifieddate"] == nil {
						t.Errorf("result properties = %v", p)
					}
					if o["id"] == f.ada && (p["stu_progress_pct"] != "42.5" || p["stu_last_lesson"] != "2026-09-01" || p["stu_level"] != "b1") {
						t.Errorf("ada result = %v", p)
					}
					if _, ok := p["stu_note"]; ok {
						t.Errorf("unwritten property in result: %v", p)
					}
				}
				a, _ := f.s.Contact(f.ada)
				b, _ := f.s.Contact(f.bob)
				if a.Properties["stu_progress_pct"] != "42.5" || a.Properties["stu_note"] != "keep" ||
					b.Properties["stu_progress_pct"] != "7" || b.Properties["stu_active"] != "true" {
					t.Errorf("stored: %v / %v", a.Properties, b.Properties)
				}
				if st := f.s.Stats(); st.BatchUpdates != 1 || !slices.Equal(st.BatchUpdateInputs, []int{2}) {
					t.Errorf("stats = %+v", st)
				}
			},
		},
		{
			name: "unknown and deleted ids give 207, others applied",
			body: func(f fixture) any {
				f.s.DeleteContact(f.bob)
				return updateBody(upd{f.ada, map[string]any{"stu_progress_pct": "50"}}, upd{f.bob, map[string]any{"stu_note": "x"}},
					upd{"987654", map[string]any{"stu_note": "x"}}, upd{"ghost@example.com", map[string]any{"stu_note": "x"}})
			},
			status: http.StatusMultiStatus,
			check: func(t *testing.T, f fixture, r reply) {
				m := r.obj(t)
				errs := m["errors"].([]any)
				e := errs[0].(map[string]any)
				ids := e["context"].(map[string]any)["ids"].([]any)
				if m["numErrors"] != float64(1) || len(errs) != 1 || e["category"] != "OBJECT_NOT_FOUND" ||
					!slices.Equal(ids, []any{f.bob, "987654", ""}) {
					t.Errorf("errors = %v", errs)
				}
				if res := results(t, r); len(res) != 1 || res[0]["id"] != f.ada {
					t.Errorf("results = %v", res)
				}
				stored("stu_progress_pct", "50")(t, f, r)
			},
		},
		{
			name: "duplicate id",
			body: func(f fixture) any {
				return updateBody(upd{f.bob, map[string]any{"firstname": "Bob"}}, upd{f.ada, map[string]any{"stu_progress_pct": "1"}},
					upd{f.ada, map[string]any{"stu_progress_pct": "2"}})
			},
			status: http.StatusBadRequest,
			check: func(t *testing.T, f fixture, r reply) {
				m := r.obj(t)
				want := fmt.Sprintf("Duplicate IDs found in batch input: [%s]. IDs must be unique", f.ada)
				if m["message"] != want || m["category"] != "VALIDATION_ERROR" || m["status"] != "error" || m["correlationId"] == "" ||
					!slices.Equal(m["context"].(map[string]any)["ids"].([]any), []any{f.ada}) {
					t.Errorf("body: %s", r.body)
				}
				if v := f.s.Violations(); len(v) != 1 || !strings.Contains(v[0], "duplicate ids") {
					t.Errorf("violations = %q", v)
				}
				if c, _ := f.s.Contact(f.bob); c.Properties["firstname"] != "" {
					t.Errorf("applied")
				}
			},
		},
		{
			name:   "unknown property",
			body:   bad("stu_nope", "1"),
			status: http.StatusBadRequest,
			check: func(t *testing.T, f fixture, r reply) {
				invalid("stu_nope", "PROPERTY_DOESNT_EXIST", `Property "stu_nope" does not exist`)(t, f, r)
			},
		},
		{name: "number with letters", body: bad("stu_progress_pct", "abc"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_INTEGER", "abc")},
		{name: "number with exponent", body: bad("stu_progress_pct", "1e5"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_INTEGER", "1e5")},
		{name: "number with two points", body: bad("stu_progress_pct", "1.2.3"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_INTEGER", "1.2.3")},
		{name: "number with plus", body: bad("stu_progress_pct", "+5"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_INTEGER", "+5")},
		{name: "negative decimal breaks min rule", body: bad("stu_progress_pct", "-0.5"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_PROPERTY_VALUE", "-0.5")},
		{name: "above max rule", body: bad("stu_progress_pct", "100.01"), status: http.StatusBadRequest,
			check: invalid("stu_progress_pct", "INVALID_PROPERTY_VALUE", "100.01")},
		{name: "at max rule", body: bad("stu_progress_pct", "100"), status: http.StatusOK,
			check: stored("stu_progress_pct", "100")},
		{name: "date epoch not midnight", body: bad("stu_last_lesson", "1430438400001"), status: http.StatusBadRequest,
			check: invalid("stu_last_lesson", "INVALID_DATE", "not midnight")},
		{name: "date with time", body: bad("stu_last_lesson", "2026-09-01T10:00:00Z"), status: http.StatusBadRequest,
			check: invalid("stu_last_lesson", "INVALID_DATE", "2026-09-01T10:00:00Z")},
		{name: "date impossible", body: bad("stu_last_lesson", "2026-02-30"), status: http.StatusBadRequest,
			check: invalid("stu_last_lesson", "INVALID_DATE", "2026-02-30")},
		{name: "date epoch midnight", body: bad("stu_last_lesson", "1430438400000"), status: http.StatusOK,
			check: stored("stu_last_lesson", "2015-05-01")},
		{name: "date epoch midnight as JSON number", body: bad("stu_last_lesson", 1430438400000), status: http.StatusOK,
			check: stored("stu_last_lesson", "2015-05-01")},
		{name: "enumeration invalid option", body: bad("stu_level", "c2"), status: http.StatusBadRequest,
			check: invalid("stu_level", "INVALID_OPTION", "c2 was not one of the allowed options: [a1, a2, b1]")},
		{name: "enumeration label is not a value", body: bad("stu_level", "A1"), status: http.StatusBadRequest,
			check: invalid("stu_level", "INVALID_OPTION", "A1")},
		{name: "multi-select replaces", body: bad("stu_courses", "speaking;writing"), status: http.StatusOK,
			check: stored("stu_courses", "speaking;writing")},
		{name: "multi-select leading semicolon appends", body: bad("stu_courses", ";speaking"), status: http.StatusOK,
			check: stored("stu_courses", "grammar;speaking")},
		{name: "multi-select invalid option", body: bad("stu_courses", "grammar;dancing"), status: http.StatusBadRequest,
			check: invalid("stu_courses", "INVALID_OPTION", "dancing")},
		{name: "bool invalid", body: bad("stu_active", "yes"), status: http.StatusBadRequest,
			check: invalid("stu_active", "INVALID_BOOLEAN", "yes")},
		{name: "string too long", body: bad("stu_note", strings.Repeat("x", 65537)), status: http.StatusBadRequest,
			check: invalid("stu_note", "INVALID_STRING_LENGTH", "65537")},
		{name: "string at limit", body: bad("stu_note", strings.Repeat("é", 65536)), status: http.StatusOK,
			check: stored("stu_note", strings.Repeat("é", 65536))},
		{name: "read-only hs_object_id", body: bad("hs_object_id", "5"), status: http.StatusBadRequest,
			check: invalid("hs_object_id", "READ_ONLY_VALUE", "hs_object_id")},
		{name: "read-only lastmodifieddate", body: bad("lastmodifieddate", "2026-01-01"), status: http.StatusBadRequest,
			check: invalid("lastmodifieddate", "READ_ONLY_VALUE", "lastmodifieddate")},
		{name: "read-only hs_additional_emails", body: bad("hs_additional_emails", "x@example.com"), status: http.StatusBadRequest,
			check: invalid("hs_additional_emails", "READ_ONLY_VALUE", "hs_additional_emails")},
		{
			name:   "empty string clears and reads back as null",
			body:   bad("stu_progress_pct", ""),
			status: http.StatusOK,
			check: func(t *testing.T, f fixture, r reply) {
				for _, o := range results(t, r) {
					if o["id"] == f.ada {
						if v, ok := props(o)["stu_progress_pct"]; !ok || v != "" {
							t.Errorf("write result = %v", props(o))
						}
					}
				}
				c, _ := f.s.Contact(f.ada)
				if _, ok := c.Properties["stu_progress_pct"]; ok {
					t.Errorf("still stored: %v", c.Properties)
				}
				rr := api(t, f.s, http.MethodPost, readPath, readByEmail([]string{"ada@example.com"}, "stu_progress_pct"))
				if v, ok := props(results(t, rr)[0])["stu_progress_pct"]; !ok || v != nil {
					t.Errorf("read back %v, want null", v)
				}
			},
		},
		{
			name: "idProperty email is refused",
			body: func(f fixture) any {
				return map[string]any{"inputs": []map[string]any{{"id": "ada@example.com", "idProperty": "email", "properties": map[string]string{"stu_note": "x"}}}}
			},
			status: http.StatusBadRequest,
			check: func(t *testing.T, f fixture, r reply) {
				m := r.obj(t)
				if m["message"] != "Unable to perform update/upsert by non-unique 0-1 property email" || m["category"] != "VALIDATION_ERROR" {
					t.Errorf("body: %s", r.body)
				}
				stored("stu_note", "keep")(t, f, r)
			},
		},
		{
			name: "several invalid values are all listed",
			body: func(f fixture) any {
				return updateBody(upd{f.ada, map[string]any{"stu_progress_pct": "x", "stu_nope": "1"}}, upd{f.bob, map[string]any{"stu_level": "zz"}})
			},
			status: http.StatusBadRequest,
			check: func(t *testing.T, f fixture, r reply) {
				m := r.obj(t)
				if n := len(invalidEntries(t, m)); n != 3 {
					t.Errorf("%d entries: %s", n, m["message"])
				}
				if n := len(m["errors"].([]any)); n != 3 {
					t.Errorf("%d errors", n)
				}
			},
		},
		{
			name:   "invalid JSON",
			body:   func(f fixture) any { return `{"inputs": [` },
			status: http.StatusBadRequest,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := setup(t)
			r := api(t, f.s, http.MethodPost, updatePath, tt.body(f))
			if r.status != tt.status {
				t.Fatalf("got %s, want status %d", shortReply(r), tt.status)
			}
			if tt.check != nil {
				tt.check(t, f, r)
			}
		})
	}
}

func shortReply(r reply) string {
	s := r.String()
	if len(s) > 600 {
		s = s[:600] + "..."
	}
	return s
}

func TestContactCreatingEndpointsAreViolations(t *testing.T) {
	tests := []struct{ method, path string }{
		{http.MethodPost, "/crm/v3/objects/contacts"},
		{http.MethodPost, "/crm/v3/objects/contacts/batch/create"},
		{http.MethodPost, "/crm/v3/objects/contacts/batch/upsert"},
		{http.MethodPost, "/crm/v3/objects/0-1/batch/upsert"},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			s, _ := newTestServer(t, Options{})
			body := map[string]any{"inputs": []map[string]any{{"idProperty": "email", "id": "new@example.com", "properties": map[string]string{"email": "new@example.com"}}}}
			r := api(t, s, tt.method, tt.path, body)
			if r.status != http.StatusForbidden || r.obj(t)["status"] != "error" {
				t.Fatalf("got %s", r)
			}
			v := s.Violations()
			if len(v) != 1 || v[0] != "contact-creating endpoint called: "+tt.method+" "+tt.path {
				t.Errorf("violations = %q", v)
			}
			if n := len(s.Contacts()); n != 0 {
				t.Errorf("%d contacts created", n)
			}
		})
	}
}

// Violations are recorded even when the request is then rejected by
// authentication, a rate limit or an injected fault.
func TestViolationsRecordedBeforeRejection(t *testing.T) {
	dupUpdate := updateBody(upd{"101", map[string]any{"firstname": "a"}}, upd{"101", map[string]any{"firstname": "b"}})
	upsert := map[string]any{"inputs": []any{}}
	tests := []struct {
		name      string
		opts      Options
		faults    Faults
		token     string
		path      string
		body      any
		status    int
		violation string
	}{
		{"upsert without token", Options{}, Faults{}, "", "/crm/v3/objects/contacts/batch/upsert", upsert, 401,
			"contact-creating endpoint called: POST /crm/v3/objects/contacts/batch/upsert"},
		{"upsert under daily fault", Options{}, Faults{DailyExhausted: true}, testToken, "/crm/v3/objects/contacts/batch/upsert", upsert, 429,
			"contact-creating endpoint called: POST /crm/v3/objects/contacts/batch/upsert"},
		{"duplicate ids under 5xx fault", Options{}, Faults{Rate5xx: 1}, testToken, updatePath, dupUpdate, 0,
			"duplicate ids in one batch: POST " + updatePath + ": [101]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := newTestServer(t, tt.opts)
			s.SetFaults(tt.faults)
			r := call(t, s, tt.token, http.MethodPost, tt.path, tt.body)
			if tt.status != 0 && r.status != tt.status {
				t.Errorf("got %s, want %d", r, tt.status)
			}
			if v := s.Violations(); len(v) != 1 || v[0] != tt.violation {
				t.Errorf("violations = %q", v)
			}
		})
	}
}

func TestContactAccessors(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	b := s.AddContact("  B@Example.com ", []string{"B2@example.com"}, map[string]string{"firstname": "B"})
	a := s.AddContact("a@example.com", nil, nil)
	if c, ok := s.ContactByEmail("b2@EXAMPLE.com"); !ok || c.ID != b || c.Email != "b@example.com" ||
		!slices.Equal(c.AdditionalEmails, []string{"b2@example.com"}) || c.Properties["firstname"] != "B" {
		t.Errorf("ContactByEmail = %+v, %v", c, ok)
	}
	all := s.Contacts()
	if len(all) != 2 || all[0].ID != b || all[1].ID != a {
		t.Errorf("Contacts = %+v", all)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Errorf("AddContact with a taken email did not panic")
			}
		}()
		s.AddContact("x@example.com", []string{"B@example.com"}, nil)
	}()
	s.DeleteContact(b)
	if _, ok := s.ContactByEmail("b2@example.com"); ok {
		t.Errorf("deleted contact still found")
	}
	r := api(t, s, http.MethodPost, readPath, readByEmail([]string{"b@example.com"}, "email"))
	if r.status != http.StatusMultiStatus {
		t.Errorf("read of a deleted contact: %s", r)
	}
	// The email is free again.
	s.AddContact("b@example.com", nil, nil)
}

func TestSingleContactEndpoints(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	defineStudentProps(s)
	id := s.AddContact("ada@example.com", nil, map[string]string{"stu_note": "n"})

	r := api(t, s, http.MethodGet, "/crm/v3/objects/contacts/ADA@example.com?idProperty=email&properties=stu_note", nil)
	if r.status != http.StatusOK || r.obj(t)["id"] != id || props(r.obj(t))["stu_note"] != "n" {
		t.Errorf("GET by email: %s", r)
	}
	if r := api(t, s, http.MethodGet, "/crm/v3/objects/contacts/999", nil); r.status != http.StatusNotFound {
		t.Errorf("GET missing: %s", r)
	}
	r = api(t, s, http.MethodPatch, "/crm/v3/objects/contacts/ada@example.com?idProperty=email", map[string]any{"properties": map[string]string{"stu_progress_pct": "5"}})
	if r.status != http.StatusOK {
		t.Errorf("PATCH by email: %s", r)
	}
	if c, _ := s.Contact(id); c.Properties["stu_progress_pct"] != "5" {
		t.Errorf("not applied: %v", c.Properties)
	}
	if r := api(t, s, http.MethodPatch, "/crm/v3/objects/contacts/nobody@example.com?idProperty=email", map[string]any{"properties": map[string]string{"stu_note": "x"}}); r.status != http.StatusNotFound {
		t.Errorf("PATCH never creates: %s", r)
	}
	if n := len(s.Contacts()); n != 1 {
		t.Errorf("%d contacts", n)
	}
	if r := api(t, s, http.MethodDelete, "/crm/v3/objects/contacts/"+id, nil); r.status != http.StatusForbidden {
		t.Errorf("DELETE: %s", r)
	}
	if v := s.Violations(); len(v) != 1 || !strings.HasPrefix(v[0], "contact-deleting endpoint called") {
		t.Errorf("violations = %q", v)
	}
}

func TestEmailUpdateConflict(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	a := s.AddContact("a@example.com", nil, nil)
	b := s.AddContact("b@example.com", nil, nil)
	r := api(t, s, http.MethodPost, updatePath, updateBody(upd{a, map[string]any{"email": "B@example.com"}}))
	if r.status != http.StatusConflict || r.obj(t)["message"] != "Contact already exists. Existing ID: "+b {
		t.Fatalf("got %s", r)
	}
	r = api(t, s, http.MethodPost, updatePath, updateBody(upd{a, map[string]any{"email": "New@example.com"}}))
	if r.status != http.StatusOK {
		t.Fatalf("got %s", r)
	}
	if c, ok := s.ContactByEmail("new@example.com"); !ok || c.ID != a {
		t.Errorf("new email not indexed")
	}
	if _, ok := s.ContactByEmail("a@example.com"); ok {
		t.Errorf("old email still indexed")
	}
}

func TestSearch(t *testing.T) {
	s, clock := newTestServer(t, Options{RateLimit: 100})
	ada := s.AddContact("ada@example.com", []string{"ada.work@example.com"}, map[string]string{"firstname": "Ada"})
	for i := range 12 {
		s.AddContact(fmt.Sprintf("s%02d@example.com", i), nil, nil)
	}
	eq := func(email string) map[string]any {
		return map[string]any{"filterGroups": []any{map[string]any{"filters": []any{
			map[string]any{"propertyName": "email", "operator": "EQ", "value": email}}}},
			"properties": []string{"email", "firstname"}}
	}
	tests := []struct {
		name    string
		body    any
		status  int
		total   int
		results int
		paging  bool
	}{
		{"primary email, any case", eq("ADA@example.com"), http.StatusOK, 1, 1, false},
		{"additional email", eq("ada.work@example.com"), http.StatusOK, 1, 1, false},
		{"no match", eq("zed@example.com"), http.StatusOK, 0, 0, false},
		{"no filters, default page of 10", map[string]any{}, http.StatusOK, 13, 10, true},
		{"second page", map[string]any{"after": "10", "limit": 10}, http.StatusOK, 13, 3, false},
		{"limit over 200", map[string]any{"limit": 201}, http.StatusBadRequest, 0, 0, false},
		{"too many groups", map[string]any{"filterGroups": []any{
			map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}, map[string]any{}}}, http.StatusBadRequest, 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock.Advance(time.Second) // stay under the 5/s search limit
			r := api(t, s, http.MethodPost, searchPath, tt.body)
			if r.status != tt.status {
				t.Fatalf("got %s", r)
			}
			for k := range r.header {
				if strings.HasPrefix(strings.ToLower(k), "x-hubspot-ratelimit") {
					t.Errorf("search reply has %s", k)
				}
			}
			if tt.status != http.StatusOK {
				return
			}
			m := r.obj(t)
			if m["total"] != float64(tt.total) || len(results(t, r)) != tt.results {
				t.Errorf("body: %s", r.body)
			}
			if _, has := m["paging"]; has != tt.paging {
				t.Errorf("paging present = %v", has)
			}
			if tt.total == 1 && results(t, r)[0]["id"] != ada {
				t.Errorf("wrong contact: %s", r.body)
			}
		})
	}
}

package hubspot

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"testing"
)

func TestReadByEmail(t *testing.T) {
	crm := newFakeCRM(t)
	crm.add("512", "ada@example.com", "", map[string]string{"total_xp": "42", "current_lesson": "l-7"})
	crm.add("513", "bob@example.com", "", nil)
	crm.add("514", "carol@example.com", "alias@example.com;Carol.Work@Example.com", map[string]string{"study_streak": "3"})
	srv, _ := newServer(t, crm.serve)
	env := newTestClient(t, srv.URL)

	tests := []struct {
		name      string
		emails    []string
		props     []string
		want      map[string]string // normalized input -> contact id
		wantSent  []string
		wantProps map[string]map[string]string // id -> selected properties
	}{
		{
			name:     "mixed case, padding, duplicates, secondary email, miss",
			emails:   []string{"  ADA@Example.com ", "bob@example.com", "ada@example.com", "ALIAS@example.com", "nobody@example.com", "", "not-an-email"},
			props:    []string{"total_xp", "current_lesson", "study_streak", "no_such_property"},
			want:     map[string]string{"ada@example.com": "512", "bob@example.com": "513", "alias@example.com": "514"},
			wantSent: []string{"ada@example.com", "bob@example.com", "alias@example.com", "nobody@example.com"},
			wantProps: map[string]map[string]string{
				"512": {"total_xp": "42", "current_lesson": "l-7", "study_streak": "", "no_such_property": ""},
				"513": {"total_xp": "", "current_lesson": "", "study_streak": "", "no_such_property": ""},
				"514": {"total_xp": "", "current_lesson": "", "study_streak": "3", "no_such_property": ""},
			},
		},
		{
			name:     "primary and secondary of one contact both asked",
			emails:   []string{"carol@example.com", "carol.work@example.com"},
			want:     map[string]string{"carol@example.com": "514", "carol.work@example.com": "514"},
			wantSent: []string{"carol@example.com", "carol.work@example.com"},
		},
		{
			name:     "nothing matches",
			emails:   []string{"x@example.com", "y@example.com"},
			want:     map[string]string{},
			wantSent: []string{"x@example.com", "y@example.com"},
		},
		{
			name:   "empty input sends nothing",
			emails: nil,
			want:   map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(crm.sentReads())
			got, err := env.client.ReadByEmail(context.Background(), tt.emails, tt.props)
			if err != nil {
				t.Fatal(err)
			}
			ids := map[string]string{}
			for k, c := range got {
				ids[k] = c.ID
			}
			if !reflect.DeepEqual(ids, tt.want) {
				t.Fatalf("ReadByEmail ids = %v, want %v", ids, tt.want)
			}
			sent := crm.sentReads()[before:]
			if tt.wantSent == nil {
				if len(sent) != 0 {
					t.Fatalf("sent %v, want no request", sent)
				}
				return
			}
			if len(sent) != 1 || !reflect.DeepEqual(sent[0], tt.wantSent) {
				t.Fatalf("sent %v, want one request with %v", sent, tt.wantSent)
			}
			for _, c := range got {
				want, ok := tt.wantProps[c.ID]
				if !ok {
					continue
				}
				for p, v := range want {
					if c.Properties[p] != v {
						t.Errorf("contact %s property %s = %q, want %q", c.ID, p, c.Properties[p], v)
					}
				}
			}
		})
	}

	got, err := env.client.ReadByEmail(context.Background(), []string{"alias@example.com"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	carol := got["alias@example.com"]
	if carol.Email != "carol@example.com" || !reflect.DeepEqual(carol.AdditionalEmails, []string{"alias@example.com", "carol.work@example.com"}) {
		t.Fatalf("contact = %+v, want lower-cased primary and additional emails", carol)
	}
}

func TestReadByEmailSplitsLargeInput(t *testing.T) {
	crm := newFakeCRM(t)
	var emails []string
	for i := 0; i < 250; i++ {
		e := fmt.Sprintf("student%03d@example.com", i)
		emails = append(emails, e)
		if i%5 != 0 {
			crm.add(fmt.Sprint(1000+i), e, "", nil)
		}
	}
	srv, _ := newServer(t, crm.serve)
	env := newTestClient(t, srv.URL)

	got, err := env.client.ReadByEmail(context.Background(), emails, []string{"total_xp"})
	if err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, in := range crm.sentReads() {
		sizes = append(sizes, len(in))
	}
	if !reflect.DeepEqual(sizes, []int{100, 100, 50}) {
		t.Fatalf("request sizes = %v, want [100 100 50]", sizes)
	}
	if len(got) != 200 {
		t.Fatalf("matched %d contacts, want 200", len(got))
	}
	for i, e := range emails {
		c, ok := got[e]
		if (i%5 != 0) != ok || (ok && c.ID != fmt.Sprint(1000+i)) {
			t.Fatalf("email %s -> %+v (found %v)", e, c, ok)
		}
	}
}

func TestWithLookupProperties(t *testing.T) {
	got := withLookupProperties([]string{"total_xp", "email", "", "total_xp", "study_streak"})
	want := []string{"email", "hs_additional_emails", "total_xp", "study_streak"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

func TestReadByID(t *testing.T) {
	crm := newFakeCRM(t)
	crm.add("512", "ada@example.com", "", map[string]string{"total_xp": "42"})
	crm.add("513", "bob@example.com", "", nil)
	crm.add("600", "carol@example.com", "", map[string]string{"total_xp": "7"})
	crm.survivor["599"] = "600" // 599 was merged into 600
	srv, _ := newServer(t, crm.serve)
	env := newTestClient(t, srv.URL)

	tests := []struct {
		name     string
		ids      []string
		want     map[string]string // requested id -> total_xp
		wantSent [][]string
	}{
		{name: "found, duplicate, missing", ids: []string{"512", "513", "512", "404"},
			want: map[string]string{"512": "42", "513": ""}, wantSent: [][]string{{"512", "513", "404"}}},
		// The survivor of a merge answers for the old id; it is not the contact that was
		// linked, so the caller must look the student up by email again.
		{name: "merged away", ids: []string{"599"}, want: map[string]string{}, wantSent: [][]string{{"599"}}},
		{name: "nothing asked", ids: nil, want: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(crm.sentReads())
			got, err := env.client.ReadByID(context.Background(), tt.ids, []string{"total_xp"})
			if err != nil {
				t.Fatal(err)
			}
			xp := map[string]string{}
			for id, c := range got {
				if c.ID != id {
					t.Errorf("result keyed %s holds contact %s", id, c.ID)
				}
				xp[id] = c.Properties["total_xp"]
			}
			if !reflect.DeepEqual(xp, tt.want) {
				t.Errorf("ReadByID = %v, want %v", xp, tt.want)
			}
			if sent := crm.sentReads()[before:]; !reflect.DeepEqual(sent, tt.wantSent) && (len(sent) != 0 || tt.wantSent != nil) {
				t.Errorf("sent %v, want %v", sent, tt.wantSent)
			}
		})
	}
}

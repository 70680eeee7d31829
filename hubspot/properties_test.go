package hubspot

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// fakeProps is a small stand-in for HubSpot's contact properties API.
type fakeProps struct {
	t  *testing.T
	mu sync.Mutex

	groups map[string]bool
	props  map[string]propertyJSON
	// hidden properties exist but are missing from the list, as if another
	// instance created them between our read and our create.
	hidden           map[string]propertyJSON
	groupConflict    bool // POST groups answers 409
	batchPartialFail string
	calls            []string
}

func newFakeProps(t *testing.T) *fakeProps {
	return &fakeProps{t: t, groups: map[string]bool{}, props: map[string]propertyJSON{}, hidden: map[string]propertyJSON{}}
}

func (f *fakeProps) callList() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeProps) prop(name string) propertyJSON {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.props[name]
}

func (f *fakeProps) exists(name string) bool {
	_, a := f.props[name]
	_, b := f.hidden[name]
	return a || b
}

func (f *fakeProps) serve(w http.ResponseWriter, r *http.Request, body []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path := r.URL.Path
	f.calls = append(f.calls, r.Method+" "+path)
	groups := apiPaths.propertyGroups + "/"
	props := apiPaths.properties + "/"
	notFound := map[string]string{"status": "error", "category": "OBJECT_NOT_FOUND", "message": "not found"}
	conflict := map[string]string{"status": "error", "category": "CONFLICT", "message": "already exists"}
	switch {
	case r.Method == http.MethodGet && strings.HasPrefix(path, groups):
		name := strings.TrimPrefix(path, groups)
		if !f.groups[name] {
			writeJSON(w, 404, notFound)
			return
		}
		writeJSON(w, 200, map[string]any{"name": name, "label": name, "displayOrder": -1, "archived": false})
	case r.Method == http.MethodPost && path == apiPaths.propertyGroups:
		var g groupJSON
		_ = json.Unmarshal(body, &g)
		if f.groupConflict || f.groups[g.Name] {
			writeJSON(w, 409, conflict)
			return
		}
		f.groups[g.Name] = true
		writeJSON(w, 201, g)
	case r.Method == http.MethodGet && path == apiPaths.properties:
		var list []propertyJSON
		for _, p := range f.props {
			list = append(list, p)
		}
		writeJSON(w, 200, map[string]any{"results": list})
	case r.Method == http.MethodPost && path == apiPaths.propsCreate:
		var req struct {
			Inputs []propertyJSON `json:"inputs"`
		}
		_ = json.Unmarshal(body, &req)
		for _, p := range req.Inputs {
			if f.exists(p.Name) {
				writeJSON(w, 409, conflict)
				return
			}
		}
		var created []propertyJSON
		var errs []map[string]any
		for _, p := range req.Inputs {
			if p.Name == f.batchPartialFail {
				errs = append(errs, map[string]any{"status": "error", "category": "VALIDATION_ERROR", "message": "try again"})
				continue
			}
			f.props[p.Name] = p
			created = append(created, p)
		}
		status := 201
		resp := map[string]any{"status": "COMPLETE", "results": created}
		if len(errs) > 0 {
			status, resp["errors"] = 207, errs
		}
		writeJSON(w, status, resp)
	case r.Method == http.MethodPost && path == apiPaths.properties:
		var p propertyJSON
		_ = json.Unmarshal(body, &p)
		if f.exists(p.Name) {
			if h, ok := f.hidden[p.Name]; ok {
				f.props[p.Name] = h
				delete(f.hidden, p.Name)
			}
			writeJSON(w, 409, conflict)
			return
		}
		f.props[p.Name] = p
		writeJSON(w, 201, p)
	case r.Method == http.MethodGet && strings.HasPrefix(path, props):
		p, ok := f.props[strings.TrimPrefix(path, props)]
		if !ok {
			writeJSON(w, 404, notFound)
			return
		}
		writeJSON(w, 200, p)
	case r.Method == http.MethodPatch && strings.HasPrefix(path, props):
		name := strings.TrimPrefix(path, props)
		p, ok := f.props[name]
		if !ok {
			writeJSON(w, 404, notFound)
			return
		}
		var upd struct {
			Options []optionJSON `json:"options"`
		}
		_ = json.Unmarshal(body, &upd)
		p.Options = upd.Options
		f.props[name] = p
		writeJSON(w, 200, p)
	default:
		f.t.Errorf("fakeProps: unexpected %s %s", r.Method, path)
		writeJSON(w, 404, notFound)
	}
}

// contractProps are the product contract's ten properties.
func contractProps() []Property {
	num := func(name string) Property {
		return Property{Name: name, Label: name, Type: "number", FieldType: "number"}
	}
	return []Property{
		num("lessons_completed"),
		{Name: "current_lesson", Label: "Current lesson", Type: "string", FieldType: "text"},
		num("average_score"),
		num("total_study_time"),
		num("progress_percentage"),
		{Name: "last_activity_date", Label: "Last activity", Type: "date", FieldType: "date"},
		num("study_streak"),
		num("total_xp"),
		{Name: "course_completed_date", Label: "Course completed", Type: "date", FieldType: "date"},
		{Name: "course_status", Label: "Course status", Type: "enumeration", FieldType: "select", Options: []Option{
			{Label: "Not started", Value: "not_started", DisplayOrder: 0},
			{Label: "In progress", Value: "in_progress", DisplayOrder: 1},
			{Label: "Completed", Value: "completed", DisplayOrder: 2},
		}},
	}
}

var testGroup = PropertyGroup{Name: "progresstracking", Label: "Seguimiento de Progreso", DisplayOrder: -1}

func existing(p Property) propertyJSON {
	pj := toCreateJSON(p)
	pj.GroupName = "contactinformation"
	return pj
}

func TestProvision(t *testing.T) {
	props := contractProps()
	names := func(ps []Property) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name)
		}
		return out
	}
	tests := []struct {
		name       string
		setup      func(f *fakeProps)
		want       ProvisionReport
		wantCalls  []string
		wantErr    string
		mismatched []string
		check      func(t *testing.T, f *fakeProps)
	}{
		{
			name: "empty portal: create group and all properties in one batch",
			want: ProvisionReport{GroupCreated: true, Created: names(props)},
			wantCalls: []string{
				"GET " + apiPaths.properties,
				"GET " + apiPaths.propertyGroups + "/progresstracking",
				"POST " + apiPaths.propertyGroups,
				"POST " + apiPaths.propsCreate,
			},
			check: func(t *testing.T, f *fakeProps) {
				p := f.prop("course_status")
				if p.GroupName != "progresstracking" || len(p.Options) != 3 || p.Options[1].Value != "in_progress" {
					t.Fatalf("created %+v", p)
				}
			},
		},
		{
			name: "first eight exist with the same types",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				for _, p := range props[:8] {
					f.props[p.Name] = existing(p)
				}
			},
			want: ProvisionReport{Created: names(props[8:]), Existing: names(props[:8])},
			wantCalls: []string{
				"GET " + apiPaths.properties,
				"GET " + apiPaths.propertyGroups + "/progresstracking",
				"POST " + apiPaths.propsCreate,
			},
		},
		{
			name: "everything exists: read-only",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				for _, p := range props {
					f.props[p.Name] = existing(p)
				}
			},
			want:      ProvisionReport{Existing: names(props)},
			wantCalls: []string{"GET " + apiPaths.properties, "GET " + apiPaths.propertyGroups + "/progresstracking"},
		},
		{
			name: "different type is reported and left alone",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				f.props["study_streak"] = propertyJSON{Name: "study_streak", Type: "enumeration", FieldType: "select",
					Options: []optionJSON{{Label: "Hot", Value: "hot"}}}
				f.props["total_xp"] = propertyJSON{Name: "total_xp", Type: "number", FieldType: "calculation_equation"}
			},
			want: ProvisionReport{Created: remove(remove(names(props), "study_streak"), "total_xp")},
			wantErr: `hubspot: property "study_streak" exists with type enumeration/select, want number/number; ` +
				`property "total_xp" exists with type number/calculation_equation, want number/number`,
			mismatched: []string{"study_streak", "total_xp"},
			check: func(t *testing.T, f *fakeProps) {
				if p := f.prop("study_streak"); p.Type != "enumeration" || len(p.Options) != 1 {
					t.Fatalf("study_streak was changed: %+v", p)
				}
			},
		},
		{
			name: "read-only property is a mismatch",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				p := existing(props[0])
				p.ModificationMetadata = &struct {
					ReadOnlyValue bool `json:"readOnlyValue"`
				}{true}
				f.props[p.Name] = p
			},
			want:       ProvisionReport{Created: names(props[1:])},
			wantErr:    `property "lessons_completed" is read-only`,
			mismatched: []string{"lessons_completed"},
		},
		{
			name: "compatible fieldType is accepted",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				f.props["current_lesson"] = propertyJSON{Name: "current_lesson", Type: "string", FieldType: "textarea"}
			},
			want: ProvisionReport{Created: remove(names(props), "current_lesson"), Existing: []string{"current_lesson"}},
		},
		{
			name: "enumeration missing options gets them added, keeping its own",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				for _, p := range props[:9] {
					f.props[p.Name] = existing(p)
				}
				f.props["course_status"] = propertyJSON{Name: "course_status", Type: "enumeration", FieldType: "select", Options: []optionJSON{
					{Label: "Legacy", Value: "legacy", DisplayOrder: 5, Hidden: true, Description: "old"},
					{Label: "Not started", Value: "not_started"},
				}}
			},
			want: ProvisionReport{Existing: names(props), OptionsAdded: []string{"course_status"}},
			wantCalls: []string{
				"GET " + apiPaths.properties,
				"GET " + apiPaths.propertyGroups + "/progresstracking",
				"PATCH " + apiPaths.properties + "/course_status",
			},
			check: func(t *testing.T, f *fakeProps) {
				want := []optionJSON{
					{Label: "Legacy", Value: "legacy", DisplayOrder: 5, Hidden: true, Description: "old"},
					{Label: "Not started", Value: "not_started"},
					{Label: "In progress", Value: "in_progress", DisplayOrder: 1},
					{Label: "Completed", Value: "completed", DisplayOrder: 2},
				}
				if got := f.prop("course_status").Options; !reflect.DeepEqual(got, want) {
					t.Fatalf("options = %+v\nwant %+v", got, want)
				}
			},
		},
		{
			name:  "group create conflict means it exists",
			setup: func(f *fakeProps) { f.groupConflict = true },
			want:  ProvisionReport{Created: names(props)},
		},
		{
			name: "batch create conflict falls back to one by one",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				f.hidden["total_xp"] = existing(props[7])
			},
			want: ProvisionReport{Created: remove(names(props), "total_xp"), Existing: []string{"total_xp"}},
		},
		{
			name: "batch 207 retries the failed one alone",
			setup: func(f *fakeProps) {
				f.groups["progresstracking"] = true
				f.batchPartialFail = "average_score"
			},
			want: ProvisionReport{Created: names(props)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFakeProps(t)
			if tt.setup != nil {
				tt.setup(fake)
			}
			srv, _ := newServer(t, fake.serve)
			env := newTestClient(t, srv.URL)
			got, err := env.client.Provision(context.Background(), testGroup, props)
			if tt.wantErr == "" && err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				var pm *PropertyMismatchError
				if !errors.As(err, &pm) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want PropertyMismatchError containing %q", err, tt.wantErr)
				}
				var names []string
				for _, m := range pm.Mismatches {
					names = append(names, m.Name)
				}
				if !reflect.DeepEqual(names, tt.mismatched) {
					t.Fatalf("mismatches = %v, want %v", names, tt.mismatched)
				}
			}
			norm := func(r ProvisionReport) ProvisionReport {
				return ProvisionReport{r.GroupCreated, sorted(r.Created), sorted(r.Existing), sorted(r.OptionsAdded)}
			}
			if !reflect.DeepEqual(norm(got), norm(tt.want)) {
				t.Fatalf("report = %+v\nwant %+v", got, tt.want)
			}
			if tt.wantCalls != nil && !reflect.DeepEqual(fake.callList(), tt.wantCalls) {
				t.Fatalf("calls = %v\nwant %v", fake.callList(), tt.wantCalls)
			}
			if tt.check != nil {
				tt.check(t, fake)
			}
		})
	}
}

func TestCheckProperties(t *testing.T) {
	props := contractProps()
	fake := newFakeProps(t)
	for _, p := range props {
		fake.props[p.Name] = existing(p)
	}
	delete(fake.props, "total_xp")
	fake.props["study_streak"] = propertyJSON{Name: "study_streak", Type: "string", FieldType: "text"}
	fake.props["course_status"] = propertyJSON{Name: "course_status", Type: "enumeration", FieldType: "radio",
		Options: []optionJSON{{Label: "Completed", Value: "completed"}}}
	srv, _ := newServer(t, fake.serve)
	env := newTestClient(t, srv.URL)

	got, err := env.client.CheckProperties(context.Background(), props)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, m := range got {
		lines = append(lines, m.String())
	}
	want := []string{
		`property "study_streak" exists with type string/text, want number/number`,
		`property "total_xp" does not exist (want number/number)`,
		`property "course_status" lacks options not_started, in_progress`,
	}
	if !reflect.DeepEqual(lines, want) {
		t.Fatalf("mismatches:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range fake.callList() {
		if !strings.HasPrefix(c, "GET ") {
			t.Fatalf("CheckProperties made a write: %s", c)
		}
	}
}

func TestProvisionValidatesDefinitions(t *testing.T) {
	srv, rec := newServer(t, newFakeProps(t).serve)
	env := newTestClient(t, srv.URL)
	_, err := env.client.Provision(context.Background(), testGroup, []Property{{Name: "x", Type: "number"}})
	if err == nil || !strings.Contains(err.Error(), "needs a name, type and fieldType") {
		t.Fatalf("error = %v", err)
	}
	_, err = env.client.Provision(context.Background(), testGroup, []Property{
		{Name: "x", Type: "number", FieldType: "number"}, {Name: "x", Type: "number", FieldType: "number"}})
	if err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("error = %v", err)
	}
	if len(rec.all()) != 0 {
		t.Fatalf("sent requests for invalid definitions")
	}
}

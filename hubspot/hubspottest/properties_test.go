package hubspottest

import (
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestProperties(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	s.DefineGroup(Group{Name: "student_progress", Label: "Student progress"})
	s.DefineProperty(Property{Name: "stu_mismatch", Label: "Mismatch", Type: "string", FieldType: "text", GroupName: "student_progress"})

	create := func(name, typ, field, group string) map[string]any {
		return map[string]any{"name": name, "label": "L " + name, "type": typ, "fieldType": field, "groupName": group}
	}
	tests := []struct {
		name     string
		method   string
		path     string
		body     any
		status   int
		category string
		check    func(t *testing.T, m map[string]any)
	}{
		{name: "get standard property", method: "GET", path: propsPath + "/email", status: 200,
			check: func(t *testing.T, m map[string]any) {
				if m["type"] != "string" || m["groupName"] != "contactinformation" || m["archived"] != false {
					t.Errorf("email = %v", m)
				}
			}},
		{name: "get missing property", method: "GET", path: propsPath + "/stu_missing", status: 404, category: "OBJECT_NOT_FOUND"},
		{name: "existing property with another type is visible", method: "GET", path: propsPath + "/stu_mismatch", status: 200,
			check: func(t *testing.T, m map[string]any) {
				if m["type"] != "string" {
					t.Errorf("type = %v", m["type"])
				}
			}},
		{name: "create", method: "POST", path: propsPath, status: 201,
			body: map[string]any{"name": "stu_progress_pct", "label": "Progress %", "type": "number", "fieldType": "number",
				"groupName": "student_progress", "description": "d", "formField": false},
			check: func(t *testing.T, m map[string]any) {
				for k, want := range map[string]any{"name": "stu_progress_pct", "label": "Progress %", "type": "number",
					"fieldType": "number", "groupName": "student_progress", "description": "d", "archived": false,
					"calculated": false, "externalOptions": false, "hasUniqueValue": false, "hidden": false, "formField": false} {
					if m[k] != want {
						t.Errorf("%s = %v, want %v", k, m[k], want)
					}
				}
				if opts, ok := m["options"].([]any); !ok || len(opts) != 0 {
					t.Errorf("options = %v", m["options"])
				}
				if m["createdAt"] == nil || m["modificationMetadata"] == nil {
					t.Errorf("missing fields: %v", m)
				}
			}},
		{name: "create existing", method: "POST", path: propsPath, body: create("stu_progress_pct", "number", "number", "student_progress"),
			status: 409, category: "CONFLICT"},
		{name: "create standard name", method: "POST", path: propsPath, body: create("email", "string", "text", "contactinformation"),
			status: 409, category: "CONFLICT"},
		{name: "type and fieldType mismatch", method: "POST", path: propsPath, body: create("stu_a", "number", "text", "student_progress"),
			status: 400, category: "VALIDATION_ERROR"},
		{name: "datetime uses date fieldType", method: "POST", path: propsPath, body: create("stu_seen_at", "datetime", "date", "student_progress"),
			status: 201},
		{name: "unknown type", method: "POST", path: propsPath, body: create("stu_b", "float", "number", "student_progress"),
			status: 400, category: "VALIDATION_ERROR"},
		{name: "group must exist", method: "POST", path: propsPath, body: create("stu_c", "number", "number", "nope"),
			status: 400, category: "VALIDATION_ERROR"},
		{name: "required fields", method: "POST", path: propsPath, body: map[string]any{"name": "stu_d", "type": "number"},
			status: 400, category: "VALIDATION_ERROR",
			check: func(t *testing.T, m map[string]any) {
				if msg := m["message"].(string); !strings.Contains(msg, "label") || !strings.Contains(msg, "fieldType") || !strings.Contains(msg, "groupName") {
					t.Errorf("message = %q", msg)
				}
			}},
		{name: "enumeration needs options", method: "POST", path: propsPath, body: create("stu_level", "enumeration", "select", "student_progress"),
			status: 400, category: "VALIDATION_ERROR"},
		{name: "enumeration with options", method: "POST", path: propsPath, status: 201,
			body: map[string]any{"name": "stu_level", "label": "Level", "type": "enumeration", "fieldType": "select", "groupName": "student_progress",
				"options": []map[string]any{{"label": "A1", "value": "a1", "hidden": false, "displayOrder": 0}}},
			check: func(t *testing.T, m map[string]any) {
				opts := m["options"].([]any)
				o := opts[0].(map[string]any)
				if len(opts) != 1 || o["value"] != "a1" || o["label"] != "A1" || o["hidden"] != false {
					t.Errorf("options = %v", opts)
				}
			}},
		{name: "patch adds options", method: "PATCH", path: propsPath + "/stu_level", status: 200,
			body: map[string]any{"options": []map[string]any{{"label": "A1", "value": "a1", "hidden": false}, {"label": "A2", "value": "a2", "hidden": false}}},
			check: func(t *testing.T, m map[string]any) {
				if n := len(m["options"].([]any)); n != 2 {
					t.Errorf("%d options", n)
				}
			}},
		{name: "patch missing", method: "PATCH", path: propsPath + "/stu_missing", body: map[string]any{"label": "x"}, status: 404, category: "OBJECT_NOT_FOUND"},
		{name: "patch hubspot-defined", method: "PATCH", path: propsPath + "/hs_object_id", body: map[string]any{"label": "x"}, status: 400, category: "VALIDATION_ERROR"},
		{name: "list", method: "GET", path: propsPath, status: 200,
			check: func(t *testing.T, m map[string]any) {
				var names []string
				for _, p := range m["results"].([]any) {
					names = append(names, p.(map[string]any)["name"].(string))
				}
				for _, want := range []string{"email", "hs_additional_emails", "firstname", "lastname", "hs_object_id", "createdate", "lastmodifieddate", "stu_progress_pct", "stu_level"} {
					if !slices.Contains(names, want) {
						t.Errorf("list lacks %s: %v", want, names)
					}
				}
			}},
		{name: "batch create", method: "POST", path: propsPath + "/batch/create", status: 201,
			body: map[string]any{"inputs": []any{create("stu_x", "string", "text", "student_progress"), create("stu_y", "bool", "booleancheckbox", "student_progress")}},
			check: func(t *testing.T, m map[string]any) {
				if m["status"] != "COMPLETE" || len(m["results"].([]any)) != 2 {
					t.Errorf("body = %v", m)
				}
			}},
		{name: "batch create with existing", method: "POST", path: propsPath + "/batch/create", status: 207,
			body: map[string]any{"inputs": []any{create("stu_x", "string", "text", "student_progress"), create("stu_z", "string", "text", "student_progress")}},
			check: func(t *testing.T, m map[string]any) {
				errs := m["errors"].([]any)
				e := errs[0].(map[string]any)
				if m["numErrors"] != float64(1) || e["category"] != "CONFLICT" || e["context"].(map[string]any)["name"].([]any)[0] != "stu_x" {
					t.Errorf("errors = %v", errs)
				}
				if r := m["results"].([]any); len(r) != 1 || r[0].(map[string]any)["name"] != "stu_z" {
					t.Errorf("results = %v", r)
				}
			}},
		{name: "groups list", method: "GET", path: groupsPath, status: 200,
			check: func(t *testing.T, m map[string]any) {
				if n := len(m["results"].([]any)); n != 2 {
					t.Errorf("%d groups", n)
				}
			}},
		{name: "group get", method: "GET", path: groupsPath + "/contactinformation", status: 200,
			check: func(t *testing.T, m map[string]any) {
				if m["name"] != "contactinformation" || m["archived"] != false || m["label"] == nil || m["displayOrder"] == nil {
					t.Errorf("group = %v", m)
				}
			}},
		{name: "group get missing", method: "GET", path: groupsPath + "/nope", status: 404, category: "OBJECT_NOT_FOUND"},
		{name: "group create", method: "POST", path: groupsPath, body: map[string]any{"name": "other", "label": "Other", "displayOrder": -1}, status: 201,
			check: func(t *testing.T, m map[string]any) {
				if m["name"] != "other" || m["label"] != "Other" || m["displayOrder"] != float64(-1) {
					t.Errorf("group = %v", m)
				}
			}},
		{name: "group create existing", method: "POST", path: groupsPath, body: map[string]any{"name": "other", "label": "Other"}, status: 409, category: "CONFLICT"},
		{name: "group create without label", method: "POST", path: groupsPath, body: map[string]any{"name": "third"}, status: 400, category: "VALIDATION_ERROR"},
		{name: "object type id alias", method: "GET", path: "/crm/v3/properties/0-1/stu_level", status: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := api(t, s, tt.method, tt.path, tt.body)
			if r.status != tt.status {
				t.Fatalf("got %s, want %d", r, tt.status)
			}
			m := r.obj(t)
			if tt.category != "" && (m["category"] != tt.category || m["status"] != "error" || m["correlationId"] == nil) {
				t.Errorf("error body: %s", r.body)
			}
			if tt.check != nil {
				tt.check(t, m)
			}
		})
	}

	// A property created over the API is writable; its new option too.
	id := s.AddContact("ada@example.com", nil, nil)
	r := api(t, s, http.MethodPost, updatePath, updateBody(upd{id, map[string]any{"stu_level": "a2", "stu_progress_pct": "3"}}))
	if r.status != http.StatusOK {
		t.Fatalf("update: %s", r)
	}
	if p, ok := s.Property("stu_level"); !ok || len(p.Options) != 2 {
		t.Errorf("Property(stu_level) = %+v", p)
	}
}

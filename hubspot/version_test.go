package hubspot

import "testing"

func TestAPIVersions(t *testing.T) {
	for _, tc := range []struct {
		in, batchRead, groups string
		bad                   bool
	}{
		{in: "2026-09", batchRead: "/crm/objects/2026-09/contacts/batch/read", groups: "/crm/properties/2026-09/contacts/groups"},
		{in: "2027-03", batchRead: "/crm/objects/2027-03/contacts/batch/read", groups: "/crm/properties/2027-03/contacts/groups"},
		{in: "v3", batchRead: "/crm/v3/objects/contacts/batch/read", groups: "/crm/v3/properties/contacts/groups"},
		{in: "2025-09", bad: true}, {in: "v4", bad: true}, {in: "2026-13", bad: true}, {in: "2026-9", bad: true}, {in: "", bad: true},
	} {
		v, err := ParseAPIVersion(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("ParseAPIVersion(%q) = %q, %v", tc.in, v, err)
			continue
		}
		if tc.bad {
			continue
		}
		if p := pathsFor(v); p.batchRead != tc.batchRead || p.propertyGroups != tc.groups {
			t.Errorf("paths of %s: %+v", v, p)
		}
	}
}

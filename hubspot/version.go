package hubspot

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
)

// HubSpot's API versions: since March 2026 a date in the path (/crm/objects/2026-09/...),
// shipped each March and September and supported for at least 18 months; before that the
// numeric v3 paths (/crm/v3/objects/...), unsupported from September 2027.
const (
	// DefaultAPIVersion is the date version the client speaks unless told otherwise.
	DefaultAPIVersion = "2026-09"
	// LegacyAPIVersion selects the numeric /crm/v3 paths.
	LegacyAPIVersion = "v3"
)

var dateVersion = regexp.MustCompile(`^(20[0-9]{2})-(0[1-9]|1[0-2])$`)

// ParseAPIVersion checks an API version: "v3", or a date version such as 2026-09 (March 2026,
// the first, or later; a version newer than the client knows is taken as it is).
func ParseAPIVersion(s string) (string, error) {
	if s == LegacyAPIVersion {
		return s, nil
	}
	m := dateVersion.FindStringSubmatch(s)
	if m == nil {
		return "", fmt.Errorf("%q is not a HubSpot API version: use a date version such as %s, or %s for the legacy paths", s, DefaultAPIVersion, LegacyAPIVersion)
	}
	year, _ := strconv.Atoi(m[1])
	if year < 2026 || (year == 2026 && m[2] < "03") {
		return "", fmt.Errorf("%q is older than HubSpot's first date version (2026-03); use %s, or %s for the legacy paths", s, DefaultAPIVersion, LegacyAPIVersion)
	}
	return s, nil
}

// ErrUnknownAPIVersion reports that HubSpot answers 404 on the version's own paths: the portal
// does not serve HUBSPOT_API_VERSION (a typo, or a version not released yet).
var ErrUnknownAPIVersion = errors.New("HubSpot does not serve this API version")

// paths are the endpoints the client calls, for one API version.
type paths struct {
	batchRead, batchUpdate                  string
	properties, propertyGroups, propsCreate string
}

func pathsFor(version string) paths {
	objects, props := "/crm/objects/"+version+"/contacts", "/crm/properties/"+version+"/contacts"
	if version == LegacyAPIVersion {
		objects, props = "/crm/v3/objects/contacts", "/crm/v3/properties/contacts"
	}
	return paths{
		batchRead: objects + "/batch/read", batchUpdate: objects + "/batch/update",
		properties: props, propertyGroups: props + "/groups", propsCreate: props + "/batch/create",
	}
}

package hubspot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/sirupsen/logrus"
)

// PropertyGroup is a contact property group.
type PropertyGroup struct {
	Name         string
	Label        string
	DisplayOrder int
}

// Option is one value of an enumeration property.
type Option struct {
	Label        string
	Value        string
	DisplayOrder int
}

// Property is a contact property definition. GroupName defaults to the group
// given to Provision.
type Property struct {
	Name        string
	Label       string
	Description string
	GroupName   string
	Type        string // bool, enumeration, date, datetime, string, number
	FieldType   string // e.g. number, text, date, select
	Options     []Option
}

// ProvisionReport lists what Provision found and changed.
type ProvisionReport struct {
	GroupCreated bool
	Created      []string // properties created
	Existing     []string // properties that already existed with a compatible type
	OptionsAdded []string // enumeration properties that gained options
}

// Mismatch is one way a portal property differs from its definition.
type Mismatch struct {
	Name           string
	Missing        bool     // the property does not exist
	ReadOnly       bool     // HubSpot computes the value; writes would be refused
	GotType        string   // existing type/fieldType, when it differs or is read-only
	GotFieldType   string   //
	WantType       string   //
	WantFieldType  string   //
	MissingOptions []string // enumeration values the portal lacks (CheckProperties only)
}

func (m Mismatch) String() string {
	switch {
	case m.Missing:
		return fmt.Sprintf("property %q does not exist (want %s/%s)", m.Name, m.WantType, m.WantFieldType)
	case m.ReadOnly:
		return fmt.Sprintf("property %q is read-only (its value is set by HubSpot), want a writable %s/%s", m.Name, m.WantType, m.WantFieldType)
	case m.GotType != "" && (m.GotType != m.WantType || m.GotFieldType != m.WantFieldType):
		return fmt.Sprintf("property %q exists with type %s/%s, want %s/%s", m.Name, m.GotType, m.GotFieldType, m.WantType, m.WantFieldType)
	case len(m.MissingOptions) > 0:
		return fmt.Sprintf("property %q lacks options %s", m.Name, strings.Join(m.MissingOptions, ", "))
	}
	return fmt.Sprintf("property %q differs", m.Name)
}

// PropertyMismatchError reports existing properties that cannot hold our
// values. Provision changes nothing about them: retyping a property other
// people may use is a human decision.
type PropertyMismatchError struct {
	Mismatches []Mismatch
}

func (e *PropertyMismatchError) Error() string {
	parts := make([]string, len(e.Mismatches))
	for i, m := range e.Mismatches {
		parts[i] = m.String()
	}
	return "hubspot: " + strings.Join(parts, "; ")
}

// wire shapes (SPEC-P)
type optionJSON struct {
	Label        string `json:"label"`
	Value        string `json:"value"`
	Description  string `json:"description,omitempty"`
	DisplayOrder int    `json:"displayOrder"`
	Hidden       bool   `json:"hidden"`
}

type propertyJSON struct {
	Name                 string       `json:"name"`
	Label                string       `json:"label,omitempty"`
	Description          string       `json:"description,omitempty"`
	GroupName            string       `json:"groupName,omitempty"`
	Type                 string       `json:"type"`
	FieldType            string       `json:"fieldType"`
	Options              []optionJSON `json:"options,omitempty"`
	Calculated           bool         `json:"calculated,omitempty"`
	ModificationMetadata *struct {
		ReadOnlyValue bool `json:"readOnlyValue"`
	} `json:"modificationMetadata,omitempty"`
}

type groupJSON struct {
	Name         string `json:"name"`
	Label        string `json:"label"`
	DisplayOrder int    `json:"displayOrder"`
}

// Provision makes sure the group and properties exist, with few requests:
// one read of the group, one read of all properties, one batch create for the
// missing ones, and one PATCH per enumeration that lacks some of our options.
// Existing properties are never retyped and options are never removed. If
// some existing property has an incompatible type, the others are still
// provisioned and the error is a *PropertyMismatchError naming each one.
func (c *Client) Provision(ctx context.Context, group PropertyGroup, props []Property) (ProvisionReport, error) {
	var report ProvisionReport
	if err := validateProperties(props); err != nil {
		return report, err
	}
	// The list first: it tells an API version HubSpot does not serve from a missing group.
	existing, err := c.listProperties(ctx)
	if err != nil {
		return report, err
	}
	created, err := c.ensureGroup(ctx, group)
	if err != nil {
		return report, err
	}
	report.GroupCreated = created
	var mismatches []Mismatch
	var missing []Property
	for _, p := range props {
		if p.GroupName == "" {
			p.GroupName = group.Name
		}
		ex, ok := existing[p.Name]
		if !ok {
			missing = append(missing, p)
			continue
		}
		if m, bad := compareProperty(c.log, p, ex); bad {
			mismatches = append(mismatches, m)
			continue
		}
		report.Existing = append(report.Existing, p.Name)
		if err := c.addMissingOptions(ctx, p, ex, &report); err != nil {
			return report, err
		}
	}

	if err := c.createProperties(ctx, missing, &report, &mismatches); err != nil {
		return report, err
	}
	if len(mismatches) > 0 {
		return report, &PropertyMismatchError{Mismatches: mismatches}
	}
	return report, nil
}

// CheckProperties compares the portal with props without changing anything:
// missing properties, incompatible types, read-only properties and missing
// enumeration options each give a Mismatch.
func (c *Client) CheckProperties(ctx context.Context, props []Property) ([]Mismatch, error) {
	if err := validateProperties(props); err != nil {
		return nil, err
	}
	existing, err := c.listProperties(ctx)
	if err != nil {
		return nil, err
	}
	var out []Mismatch
	for _, p := range props {
		ex, ok := existing[p.Name]
		if !ok {
			out = append(out, Mismatch{Name: p.Name, Missing: true, WantType: p.Type, WantFieldType: p.FieldType})
			continue
		}
		if m, bad := compareProperty(c.log, p, ex); bad {
			out = append(out, m)
			continue
		}
		if lacking := missingOptions(p, ex); len(lacking) > 0 {
			vals := make([]string, len(lacking))
			for i, o := range lacking {
				vals[i] = o.Value
			}
			out = append(out, Mismatch{Name: p.Name, WantType: p.Type, WantFieldType: p.FieldType, MissingOptions: vals})
		}
	}
	return out, nil
}

func validateProperties(props []Property) error {
	seen := map[string]bool{}
	for i, p := range props {
		if p.Name == "" || p.Type == "" || p.FieldType == "" {
			return fmt.Errorf("hubspot: property %d (%q) needs a name, type and fieldType", i, p.Name)
		}
		if seen[p.Name] {
			return fmt.Errorf("hubspot: property %q is defined twice", p.Name)
		}
		seen[p.Name] = true
	}
	return nil
}

// readGroup reads the property group name: nil when it exists.
func (c *Client) readGroup(ctx context.Context, name string) error {
	_, _, err := c.do(ctx, call{method: http.MethodGet, path: c.paths.propertyGroups + "/" + url.PathEscape(name), route: c.paths.propertyGroups + "/{groupName}"})
	return err
}

// ensureGroup reads the group and creates it when absent. A 409 on create
// means another instance won the race, which is just as good.
func (c *Client) ensureGroup(ctx context.Context, g PropertyGroup) (bool, error) {
	if g.Name == "" {
		return false, errors.New("hubspot: property group needs a name")
	}
	err := c.readGroup(ctx, g.Name)
	if err == nil {
		return false, nil
	}
	if !isStatus(err, http.StatusNotFound) {
		return false, fmt.Errorf("hubspot: read property group %q: %w", g.Name, err)
	}
	label := g.Label
	if label == "" {
		label = g.Name
	}
	_, _, err = c.do(ctx, call{method: http.MethodPost, path: c.paths.propertyGroups,
		body: groupJSON{Name: g.Name, Label: label, DisplayOrder: g.DisplayOrder}})
	switch {
	case err == nil:
		c.log.WithField("group", g.Name).Info("created hubspot property group")
		return true, nil
	case isStatus(err, http.StatusConflict):
		return false, nil
	}
	return false, fmt.Errorf("hubspot: create property group %q: %w", g.Name, err)
}

func (c *Client) listProperties(ctx context.Context) (map[string]propertyJSON, error) {
	_, body, err := c.do(ctx, call{method: http.MethodGet, path: c.paths.properties})
	if isStatus(err, http.StatusNotFound) {
		// The list of contact properties always exists: a 404 is the version's.
		return nil, fmt.Errorf("hubspot: %w %s (404 on %s); set HUBSPOT_API_VERSION to one it serves, such as %s, or %s for the legacy paths: %w",
			ErrUnknownAPIVersion, c.version, c.paths.properties, DefaultAPIVersion, LegacyAPIVersion, err)
	}
	if err != nil {
		return nil, fmt.Errorf("hubspot: list contact properties: %w", err)
	}
	var resp struct {
		Results []propertyJSON `json:"results"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("hubspot: list contact properties: decode response: %w", err)
	}
	out := make(map[string]propertyJSON, len(resp.Results))
	for _, p := range resp.Results {
		out[p.Name] = p
	}
	return out, nil
}

// compatibleFieldType reports whether an existing fieldType differs from ours
// only in how HubSpot's UI edits the value: the API takes and returns the same
// strings for text/textarea and for select/radio, so such a property works and
// is left alone. Anything else, notably calculation_equation (computed by
// HubSpot, not writable), is a mismatch.
func compatibleFieldType(want, got string) bool {
	pair := func(a, b string) bool { return (want == a && got == b) || (want == b && got == a) }
	return want == got || pair("text", "textarea") || pair("select", "radio")
}

// compareProperty reports whether an existing property cannot hold our values.
func compareProperty(log *logrus.Entry, want Property, got propertyJSON) (Mismatch, bool) {
	m := Mismatch{Name: want.Name, GotType: got.Type, GotFieldType: got.FieldType, WantType: want.Type, WantFieldType: want.FieldType}
	if got.Type != want.Type {
		return m, true
	}
	if got.FieldType != want.FieldType {
		if !compatibleFieldType(want.FieldType, got.FieldType) {
			return m, true
		}
		log.WithFields(logrus.Fields{"property": want.Name, "field_type": got.FieldType, "want_field_type": want.FieldType}).
			Info("hubspot property has a different but compatible fieldType; leaving it as is")
	}
	if got.Calculated || (got.ModificationMetadata != nil && got.ModificationMetadata.ReadOnlyValue) {
		m.ReadOnly = true
		return m, true
	}
	return Mismatch{}, false
}

func missingOptions(want Property, got propertyJSON) []Option {
	if want.Type != "enumeration" {
		return nil
	}
	have := make(map[string]bool, len(got.Options))
	for _, o := range got.Options {
		have[o.Value] = true
	}
	var out []Option
	for _, o := range want.Options {
		if !have[o.Value] {
			out = append(out, o)
		}
	}
	return out
}

// addMissingOptions appends our options to an existing enumeration. The PATCH
// replaces the option list, so it carries every existing option unchanged:
// removing one would orphan values other contacts hold.
func (c *Client) addMissingOptions(ctx context.Context, want Property, got propertyJSON, report *ProvisionReport) error {
	lacking := missingOptions(want, got)
	if len(lacking) == 0 {
		return nil
	}
	opts := append([]optionJSON(nil), got.Options...)
	for _, o := range lacking {
		opts = append(opts, optionJSON{Label: o.Label, Value: o.Value, DisplayOrder: o.DisplayOrder})
	}
	body := struct {
		Options []optionJSON `json:"options"`
	}{opts}
	if _, _, err := c.do(ctx, call{method: http.MethodPatch, path: c.paths.properties + "/" + url.PathEscape(want.Name), route: c.paths.properties + "/{propertyName}", body: body}); err != nil {
		return fmt.Errorf("hubspot: add options to property %q: %w", want.Name, err)
	}
	report.OptionsAdded = append(report.OptionsAdded, want.Name)
	c.log.WithFields(logrus.Fields{"property": want.Name, "options": len(lacking)}).Info("added options to hubspot property")
	return nil
}

func toCreateJSON(p Property) propertyJSON {
	pj := propertyJSON{Name: p.Name, Label: p.Label, Description: p.Description, GroupName: p.GroupName, Type: p.Type, FieldType: p.FieldType}
	if pj.Label == "" {
		pj.Label = p.Name
	}
	for _, o := range p.Options {
		pj.Options = append(pj.Options, optionJSON{Label: o.Label, Value: o.Value, DisplayOrder: o.DisplayOrder})
	}
	return pj
}

// createProperties creates the missing properties in one batch. Whatever the
// batch did not create (a 409 because another instance got there first, or
// a 207 with errors) is created one by one, where a 409 means "now exists" and
// the existing definition is checked like any other.
func (c *Client) createProperties(ctx context.Context, props []Property, report *ProvisionReport, mismatches *[]Mismatch) error {
	if len(props) == 0 {
		return nil
	}
	inputs := make([]propertyJSON, len(props))
	for i, p := range props {
		inputs[i] = toCreateJSON(p)
	}
	done := map[string]bool{}
	_, body, err := c.do(ctx, call{method: http.MethodPost, path: c.paths.propsCreate, body: struct {
		Inputs []propertyJSON `json:"inputs"`
	}{inputs}})
	switch {
	case err == nil:
		var resp struct {
			Results []propertyJSON  `json:"results"`
			Errors  []standardError `json:"errors"`
		}
		if err := json.Unmarshal(body, &resp); err != nil {
			return fmt.Errorf("hubspot: create properties: decode response: %w", err)
		}
		for _, r := range resp.Results {
			done[r.Name] = true
		}
		for _, e := range resp.Errors {
			c.log.WithFields(logrus.Fields{"category": e.Category, "message": c.redact(e.Message)}).
				Warn("hubspot batch property create reported an error; creating the rest one by one")
		}
	case isStatus(err, http.StatusConflict):
		c.log.Info("hubspot batch property create conflicted; creating properties one by one")
	default:
		return fmt.Errorf("hubspot: create properties: %w", err)
	}

	for _, p := range props {
		if done[p.Name] {
			report.Created = append(report.Created, p.Name)
			continue
		}
		if err := c.createOne(ctx, p, report, mismatches); err != nil {
			return err
		}
	}
	if len(report.Created) > 0 {
		c.log.WithField("properties", strings.Join(report.Created, ",")).Info("created hubspot properties")
	}
	return nil
}

func (c *Client) createOne(ctx context.Context, p Property, report *ProvisionReport, mismatches *[]Mismatch) error {
	_, _, err := c.do(ctx, call{method: http.MethodPost, path: c.paths.properties, body: toCreateJSON(p)})
	if err == nil {
		report.Created = append(report.Created, p.Name)
		return nil
	}
	if !isStatus(err, http.StatusConflict) {
		return fmt.Errorf("hubspot: create property %q: %w", p.Name, err)
	}
	_, body, err := c.do(ctx, call{method: http.MethodGet, path: c.paths.properties + "/" + url.PathEscape(p.Name), route: c.paths.properties + "/{propertyName}"})
	if err != nil {
		return fmt.Errorf("hubspot: read property %q after a create conflict: %w", p.Name, err)
	}
	var ex propertyJSON
	if err := json.Unmarshal(body, &ex); err != nil {
		return fmt.Errorf("hubspot: read property %q: decode response: %w", p.Name, err)
	}
	if m, bad := compareProperty(c.log, p, ex); bad {
		*mismatches = append(*mismatches, m)
		return nil
	}
	report.Existing = append(report.Existing, p.Name)
	return c.addMissingOptions(ctx, p, ex, report)
}

func isStatus(err error, status int) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == status
}

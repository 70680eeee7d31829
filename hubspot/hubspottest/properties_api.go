package hubspottest

import (
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

// validFieldTypes maps a property type to its allowed field types
// (HubSpot properties guide).
var validFieldTypes = map[string][]string{
	"bool":         {"booleancheckbox", "calculation_equation"},
	"enumeration":  {"booleancheckbox", "checkbox", "radio", "select", "calculation_equation"},
	"date":         {"date"},
	"datetime":     {"date"},
	"string":       {"text", "textarea", "file", "html", "phonenumber", "calculation_equation"},
	"number":       {"number", "calculation_equation"},
	"phone_number": {"phonenumber"},
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

type modificationMetadata struct {
	Archivable         bool `json:"archivable"`
	ReadOnlyDefinition bool `json:"readOnlyDefinition"`
	ReadOnlyOptions    bool `json:"readOnlyOptions"`
	ReadOnlyValue      bool `json:"readOnlyValue"`
}

// propertyJSON is SPEC-P "Property" on the wire.
type propertyJSON struct {
	UpdatedAt            string               `json:"updatedAt,omitempty"`
	CreatedAt            string               `json:"createdAt,omitempty"`
	Name                 string               `json:"name"`
	Label                string               `json:"label"`
	Type                 string               `json:"type"`
	FieldType            string               `json:"fieldType"`
	Description          string               `json:"description"`
	GroupName            string               `json:"groupName"`
	Options              []Option             `json:"options"`
	DisplayOrder         int                  `json:"displayOrder"`
	Calculated           bool                 `json:"calculated"`
	ExternalOptions      bool                 `json:"externalOptions"`
	HasUniqueValue       bool                 `json:"hasUniqueValue"`
	Hidden               bool                 `json:"hidden"`
	HubspotDefined       bool                 `json:"hubspotDefined,omitempty"`
	NumberDisplayHint    string               `json:"numberDisplayHint,omitempty"`
	ModificationMetadata modificationMetadata `json:"modificationMetadata"`
	FormField            bool                 `json:"formField"`
	DataSensitivity      string               `json:"dataSensitivity"`
	Archived             bool                 `json:"archived"`
}

func toJSON(p *Property) propertyJSON {
	opts := slices.Clone(p.Options)
	if opts == nil {
		opts = []Option{}
	}
	sens := p.DataSensitivity
	if sens == "" {
		sens = "non_sensitive"
	}
	out := propertyJSON{
		Name: p.Name, Label: p.Label, Type: p.Type, FieldType: p.FieldType, Description: p.Description,
		GroupName: p.GroupName, Options: opts, DisplayOrder: p.DisplayOrder, Calculated: p.Calculated,
		ExternalOptions: p.ExternalOptions, HasUniqueValue: p.HasUniqueValue, Hidden: p.Hidden,
		HubspotDefined: p.HubspotDefined, NumberDisplayHint: p.NumberDisplayHint, FormField: p.FormField,
		DataSensitivity: sens,
		ModificationMetadata: modificationMetadata{
			Archivable:         !p.HubspotDefined,
			ReadOnlyDefinition: p.ReadOnlyDef,
			ReadOnlyOptions:    p.ReadOnlyDef,
			ReadOnlyValue:      p.ReadOnlyValue || p.Calculated,
		},
	}
	if !p.CreatedAt.IsZero() {
		out.CreatedAt = hubspotTime(p.CreatedAt)
	}
	if !p.UpdatedAt.IsZero() {
		out.UpdatedAt = hubspotTime(p.UpdatedAt)
	}
	return out
}

// optionInput is SPEC-P "OptionInput" (label, value, hidden required).
type optionInput struct {
	Label        *string `json:"label"`
	Value        *string `json:"value"`
	Description  string  `json:"description"`
	DisplayOrder *int    `json:"displayOrder"`
	Hidden       *bool   `json:"hidden"`
}

// propertyCreate is SPEC-P "PropertyCreate".
type propertyCreate struct {
	Name              string        `json:"name"`
	Label             string        `json:"label"`
	Type              string        `json:"type"`
	FieldType         string        `json:"fieldType"`
	GroupName         string        `json:"groupName"`
	Description       string        `json:"description"`
	DisplayOrder      *int          `json:"displayOrder"`
	Hidden            bool          `json:"hidden"`
	FormField         bool          `json:"formField"`
	HasUniqueValue    bool          `json:"hasUniqueValue"`
	ExternalOptions   bool          `json:"externalOptions"`
	Options           []optionInput `json:"options"`
	NumberDisplayHint string        `json:"numberDisplayHint"`
	DataSensitivity   string        `json:"dataSensitivity"`
}

// propertyUpdate is SPEC-P "PropertyUpdate"; nil fields are left alone.
type propertyUpdate struct {
	Label             *string        `json:"label"`
	Type              *string        `json:"type"`
	FieldType         *string        `json:"fieldType"`
	GroupName         *string        `json:"groupName"`
	Description       *string        `json:"description"`
	DisplayOrder      *int           `json:"displayOrder"`
	Hidden            *bool          `json:"hidden"`
	FormField         *bool          `json:"formField"`
	Options           *[]optionInput `json:"options"`
	NumberDisplayHint *string        `json:"numberDisplayHint"`
}

func validationError(format string, args ...any) *apiError {
	return newAPIError(categoryValidation, fmt.Sprintf(format, args...))
}

func convertOptions(in []optionInput) ([]Option, *apiError) {
	out := make([]Option, 0, len(in))
	seen := map[string]bool{}
	for i, o := range in {
		var missing []string
		if o.Label == nil {
			missing = append(missing, "label")
		}
		if o.Value == nil {
			missing = append(missing, "value")
		}
		if len(missing) > 0 {
			return nil, validationError("Some required fields were not set in options[%d]: [%s]", i, strings.Join(missing, ", "))
		}
		if *o.Value == "" || strings.Contains(*o.Value, ";") {
			return nil, validationError("options[%d]: option value %q is invalid", i, *o.Value)
		}
		if seen[*o.Value] {
			return nil, validationError("options[%d]: duplicate option value %q", i, *o.Value)
		}
		seen[*o.Value] = true
		opt := Option{Label: *o.Label, Value: *o.Value, Description: o.Description, DisplayOrder: -1}
		if o.DisplayOrder != nil {
			opt.DisplayOrder = *o.DisplayOrder
		}
		if o.Hidden != nil {
			opt.Hidden = *o.Hidden
		}
		out = append(out, opt)
	}
	return out, nil
}

func checkTypes(typ, fieldType string) *apiError {
	allowed, ok := validFieldTypes[typ]
	if !ok {
		return validationError("Invalid property type %q. Valid types: [%s]", typ, strings.Join(slices.Sorted(maps.Keys(validFieldTypes)), ", "))
	}
	if !slices.Contains(allowed, fieldType) {
		return validationError("Invalid fieldType %q for property type %q. Valid field types: [%s]", fieldType, typ, strings.Join(allowed, ", "))
	}
	return nil
}

// newProperty validates a create request. A conflict is reported with
// status 409; other problems with 400. The caller holds s.mu.
func (s *Server) newProperty(in propertyCreate) (*Property, int, *apiError) {
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"name", in.Name}, {"label", in.Label}, {"type", in.Type}, {"fieldType", in.FieldType}, {"groupName", in.GroupName},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return nil, http.StatusBadRequest, validationError("Some required fields were not set: [%s]", strings.Join(missing, ", "))
	}
	if _, exists := s.props[in.Name]; exists {
		e := newAPIError(categoryConflict, fmt.Sprintf("Property named '%s' already exists.", in.Name))
		e.Context = map[string][]string{"name": {in.Name}}
		return nil, http.StatusConflict, e
	}
	if !nameRE.MatchString(in.Name) || strings.HasPrefix(in.Name, "hs_") {
		return nil, http.StatusBadRequest, validationError(
			"Property name %q is invalid: use lower-case letters, digits and underscores, starting with a letter; the hs_ prefix is reserved.", in.Name)
	}
	if e := checkTypes(in.Type, in.FieldType); e != nil {
		return nil, http.StatusBadRequest, e
	}
	if _, ok := s.groups[in.GroupName]; !ok {
		return nil, http.StatusBadRequest, validationError("Property group %q does not exist.", in.GroupName)
	}
	if in.Type == "enumeration" && in.Options == nil && !in.ExternalOptions {
		return nil, http.StatusBadRequest, validationError("Some required fields were not set: [options] (required for enumeration properties)")
	}
	opts, e := convertOptions(in.Options)
	if e != nil {
		return nil, http.StatusBadRequest, e
	}
	if in.HasUniqueValue {
		n := 0
		for _, p := range s.props {
			if p.HasUniqueValue {
				n++
			}
		}
		if n >= maxUniqueProp {
			return nil, http.StatusBadRequest, validationError("A maximum of %d unique value properties is allowed per object.", maxUniqueProp)
		}
	}
	now := s.now()
	p := &Property{
		Name: in.Name, Label: in.Label, Type: in.Type, FieldType: in.FieldType, GroupName: in.GroupName,
		Description: in.Description, Options: opts, DisplayOrder: -1, Hidden: in.Hidden, FormField: in.FormField,
		HasUniqueValue: in.HasUniqueValue, ExternalOptions: in.ExternalOptions, NumberDisplayHint: in.NumberDisplayHint,
		DataSensitivity: in.DataSensitivity, CreatedAt: now, UpdatedAt: now,
	}
	if in.DisplayOrder != nil {
		p.DisplayOrder = *in.DisplayOrder
	}
	return p, http.StatusCreated, nil
}

func propertyNotFound(w http.ResponseWriter, name string) {
	writeError(w, http.StatusNotFound, newAPIError(categoryNotFound, fmt.Sprintf("Property %s does not exist", name)))
}

func (s *Server) handleListProperties(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	results := []propertyJSON{}
	if r.URL.Query().Get("archived") != "true" {
		for _, name := range slices.Sorted(maps.Keys(s.props)) {
			results = append(results, toJSON(s.props[name]))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (s *Server) handleGetProperty(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("propertyName")
	p, ok := s.props[name]
	if !ok {
		propertyNotFound(w, name)
		return
	}
	writeJSON(w, http.StatusOK, toJSON(p))
}

func (s *Server) handleCreateProperty(w http.ResponseWriter, r *http.Request) {
	var in propertyCreate
	if err := decodeJSON(r, &in); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p, status, e := s.newProperty(in)
	if e != nil {
		writeError(w, status, e)
		return
	}
	s.props[p.Name] = p
	writeJSON(w, http.StatusCreated, toJSON(p))
}

func (s *Server) handleBatchCreateProperties(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Inputs []propertyCreate `json:"inputs"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	if req.Inputs == nil {
		writeError(w, http.StatusBadRequest, validationError("Some required fields were not set: [inputs]"))
		return
	}
	if len(req.Inputs) > maxBatch {
		tooManyInputs(w, len(req.Inputs))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	started := s.now()
	results := []propertyJSON{}
	var errs []standardError
	for _, in := range req.Inputs {
		p, _, e := s.newProperty(in)
		if e != nil {
			errs = append(errs, standardError{Status: "error", Category: e.Category, Message: e.Message,
				Context: map[string][]string{"name": {in.Name}}})
			continue
		}
		s.props[p.Name] = p
		results = append(results, toJSON(p))
	}
	resp := map[string]any{
		"status": "COMPLETE", "results": results,
		"startedAt": hubspotTime(started), "completedAt": hubspotTime(s.now()),
	}
	status := http.StatusCreated
	if len(errs) > 0 {
		status = http.StatusMultiStatus
		resp["numErrors"] = len(errs)
		resp["errors"] = errs
	}
	writeJSON(w, status, resp)
}

func (s *Server) handleBatchReadProperties(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Archived bool `json:"archived"`
		Inputs   []struct {
			Name string `json:"name"`
		} `json:"inputs"`
	}
	if err := decodeJSON(r, &req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	started := s.now()
	results := []propertyJSON{}
	var missing []string
	for _, in := range req.Inputs {
		if p, ok := s.props[in.Name]; ok && !req.Archived {
			results = append(results, toJSON(p))
		} else {
			missing = append(missing, in.Name)
		}
	}
	resp := map[string]any{
		"status": "COMPLETE", "results": results,
		"startedAt": hubspotTime(started), "completedAt": hubspotTime(s.now()),
	}
	status := http.StatusOK
	if len(missing) > 0 {
		status = http.StatusMultiStatus
		resp["numErrors"] = 1
		resp["errors"] = []standardError{{Status: "error", Category: categoryNotFound,
			Message: "Could not find some properties.", Context: map[string][]string{"names": missing}}}
	}
	writeJSON(w, status, resp)
}

func (s *Server) handleUpdateProperty(w http.ResponseWriter, r *http.Request) {
	var in propertyUpdate
	if err := decodeJSON(r, &in); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("propertyName")
	cur, ok := s.props[name]
	if !ok {
		propertyNotFound(w, name)
		return
	}
	if cur.ReadOnlyDef {
		writeError(w, http.StatusBadRequest, validationError("Property %s is a HubSpot defined property; its definition is read-only.", name))
		return
	}
	p := cloneProperty(*cur)
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&p.Label, in.Label)
	set(&p.Type, in.Type)
	set(&p.FieldType, in.FieldType)
	set(&p.GroupName, in.GroupName)
	set(&p.Description, in.Description)
	set(&p.NumberDisplayHint, in.NumberDisplayHint)
	if in.DisplayOrder != nil {
		p.DisplayOrder = *in.DisplayOrder
	}
	if in.Hidden != nil {
		p.Hidden = *in.Hidden
	}
	if in.FormField != nil {
		p.FormField = *in.FormField
	}
	if in.Options != nil { // options replace the whole list
		opts, e := convertOptions(*in.Options)
		if e != nil {
			writeError(w, http.StatusBadRequest, e)
			return
		}
		p.Options = opts
	}
	if e := checkTypes(p.Type, p.FieldType); e != nil {
		writeError(w, http.StatusBadRequest, e)
		return
	}
	if _, ok := s.groups[p.GroupName]; !ok {
		writeError(w, http.StatusBadRequest, validationError("Property group %q does not exist.", p.GroupName))
		return
	}
	p.UpdatedAt = s.now()
	s.props[name] = &p
	writeJSON(w, http.StatusOK, toJSON(&p))
}

func (s *Server) handleArchiveProperty(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("propertyName")
	p, ok := s.props[name]
	if !ok {
		propertyNotFound(w, name)
		return
	}
	if p.HubspotDefined {
		writeError(w, http.StatusBadRequest, validationError("Property %s is a HubSpot defined property and cannot be archived.", name))
		return
	}
	delete(s.props, name)
	w.WriteHeader(http.StatusNoContent)
}

// ---- groups ----

func groupNotFound(w http.ResponseWriter, name string) {
	writeError(w, http.StatusNotFound, newAPIError(categoryNotFound, fmt.Sprintf("Property group %s does not exist", name)))
}

func (s *Server) handleListGroups(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	results := []Group{}
	for _, name := range slices.Sorted(maps.Keys(s.groups)) {
		results = append(results, *s.groups[name])
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (s *Server) handleGetGroup(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("groupName")
	g, ok := s.groups[name]
	if !ok {
		groupNotFound(w, name)
		return
	}
	writeJSON(w, http.StatusOK, g)
}

func (s *Server) handleCreateGroup(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name         string `json:"name"`
		Label        string `json:"label"`
		DisplayOrder *int   `json:"displayOrder"`
	}
	if err := decodeJSON(r, &in); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	var missing []string
	if in.Name == "" {
		missing = append(missing, "name")
	}
	if in.Label == "" {
		missing = append(missing, "label")
	}
	if len(missing) > 0 {
		writeError(w, http.StatusBadRequest, validationError("Some required fields were not set: [%s]", strings.Join(missing, ", ")))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, exists := s.groups[in.Name]; exists {
		e := newAPIError(categoryConflict, fmt.Sprintf("Property group named '%s' already exists.", in.Name))
		e.Context = map[string][]string{"name": {in.Name}}
		writeError(w, http.StatusConflict, e)
		return
	}
	if !nameRE.MatchString(in.Name) {
		writeError(w, http.StatusBadRequest, validationError(
			"Property group name %q is invalid: use lower-case letters, digits and underscores, starting with a letter.", in.Name))
		return
	}
	g := &Group{Name: in.Name, Label: in.Label, DisplayOrder: -1}
	if in.DisplayOrder != nil {
		g.DisplayOrder = *in.DisplayOrder
	}
	s.groups[g.Name] = g
	writeJSON(w, http.StatusCreated, g)
}

func (s *Server) handleUpdateGroup(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Label        *string `json:"label"`
		DisplayOrder *int    `json:"displayOrder"`
	}
	if err := decodeJSON(r, &in); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("groupName")
	g, ok := s.groups[name]
	if !ok {
		groupNotFound(w, name)
		return
	}
	ng := *g
	if in.Label != nil {
		ng.Label = *in.Label
	}
	if in.DisplayOrder != nil {
		ng.DisplayOrder = *in.DisplayOrder
	}
	s.groups[name] = &ng
	writeJSON(w, http.StatusOK, ng)
}

func (s *Server) handleArchiveGroup(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	name := r.PathValue("groupName")
	if _, ok := s.groups[name]; !ok {
		groupNotFound(w, name)
		return
	}
	for _, p := range s.props {
		if p.GroupName == name {
			writeError(w, http.StatusBadRequest, validationError("Property group %s still contains properties (e.g. %s).", name, p.Name))
			return
		}
	}
	delete(s.groups, name)
	w.WriteHeader(http.StatusNoContent)
}

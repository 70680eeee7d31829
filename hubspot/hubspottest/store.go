package hubspottest

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Contact is a snapshot of one emulated contact record.
type Contact struct {
	ID               string            `json:"id"`
	Email            string            `json:"email"`
	AdditionalEmails []string          `json:"additionalEmails"`
	Properties       map[string]string `json:"properties"` // every stored (non-empty) value, incl. email and hs_additional_emails
	CreatedAt        time.Time         `json:"createdAt"`
	UpdatedAt        time.Time         `json:"updatedAt"`
}

// ContactInput describes a contact to seed with AddContacts or the admin API.
type ContactInput struct {
	Email            string            `json:"email"`
	AdditionalEmails []string          `json:"additionalEmails,omitempty"`
	Properties       map[string]string `json:"properties,omitempty"`
}

// Option is one choice of an enumeration property (SPEC-P "Option").
type Option struct {
	Label        string `json:"label"`
	Value        string `json:"value"`
	Description  string `json:"description,omitempty"`
	DisplayOrder int    `json:"displayOrder"`
	Hidden       bool   `json:"hidden"`
}

// Property is a contact property definition (SPEC-P "Property").
type Property struct {
	Name              string
	Label             string
	Type              string // bool, enumeration, date, datetime, string, number, phone_number
	FieldType         string
	GroupName         string
	Description       string
	Options           []Option
	DisplayOrder      int
	Hidden            bool
	FormField         bool
	HasUniqueValue    bool
	Calculated        bool
	ExternalOptions   bool
	HubspotDefined    bool
	ReadOnlyValue     bool // writes through the API are rejected (like hs_object_id)
	ReadOnlyDef       bool // the definition cannot be changed through the API
	NumberDisplayHint string
	DataSensitivity   string
	CreatedAt         time.Time
	UpdatedAt         time.Time
}

// Group is a property group (SPEC-P "PropertyGroup").
type Group struct {
	Name         string `json:"name"`
	Label        string `json:"label"`
	DisplayOrder int    `json:"displayOrder"`
	Archived     bool   `json:"archived"`
}

// ValidationRule is a portal validation rule on a property, named like
// HubSpot's property-validations API (ruleType + ruleArguments).
// Supported rule types:
//
//	MIN_NUMBER [min]   MAX_NUMBER [max]   DECIMAL [max decimal places]
//	MIN_LENGTH [n]     MAX_LENGTH [n]     REGEX [Go regexp]
//
// A value breaking a rule is rejected with a 400 VALIDATION_ERROR.
type ValidationRule struct {
	RuleType      string   `json:"ruleType"`
	RuleArguments []string `json:"ruleArguments"`
}

// MinNumber returns a rule rejecting numbers below min.
func MinNumber(min float64) ValidationRule {
	return ValidationRule{RuleType: "MIN_NUMBER", RuleArguments: []string{strconv.FormatFloat(min, 'f', -1, 64)}}
}

// MaxNumber returns a rule rejecting numbers above max.
func MaxNumber(max float64) ValidationRule {
	return ValidationRule{RuleType: "MAX_NUMBER", RuleArguments: []string{strconv.FormatFloat(max, 'f', -1, 64)}}
}

// compiledRule is a ValidationRule with its argument parsed.
type compiledRule struct {
	ValidationRule
	num float64
	n   int
	re  *regexp.Regexp
}

func compileRule(r ValidationRule) (compiledRule, error) {
	c := compiledRule{ValidationRule: r}
	if len(r.RuleArguments) == 0 {
		return c, fmt.Errorf("rule %s needs an argument", r.RuleType)
	}
	arg := r.RuleArguments[0]
	var err error
	switch r.RuleType {
	case "MIN_NUMBER", "MAX_NUMBER":
		c.num, err = strconv.ParseFloat(arg, 64)
	case "DECIMAL", "MIN_LENGTH", "MAX_LENGTH":
		c.n, err = strconv.Atoi(arg)
		if err == nil && c.n < 0 {
			err = fmt.Errorf("negative argument %d", c.n)
		}
	case "REGEX":
		c.re, err = regexp.Compile(arg)
	default:
		err = fmt.Errorf("unsupported rule type %q", r.RuleType)
	}
	if err != nil {
		return c, fmt.Errorf("rule %s: %w", r.RuleType, err)
	}
	return c, nil
}

// contact is the stored record.
type contact struct {
	id        int64
	props     map[string]string // non-empty values only
	createdAt time.Time
	updatedAt time.Time
	history   map[string][]historyEntry // oldest first
}

type historyEntry struct {
	value      string
	at         time.Time
	sourceType string
}

const (
	propEmail            = "email"
	propAdditionalEmails = "hs_additional_emails"
	propObjectID         = "hs_object_id"
	propCreateDate       = "createdate"
	propLastModified     = "lastmodifieddate"

	standardGroup = "contactinformation"
	firstID       = 101
	maxBatch      = 100
	maxStringLen  = 65536
	maxUniqueProp = 10
)

// computed properties are derived from the record, never stored in props.
func isComputed(name string) bool {
	return name == propObjectID || name == propCreateDate || name == propLastModified
}

func normEmail(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

func splitEmails(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ";") {
		if e = normEmail(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func (c *contact) emails() []string {
	var out []string
	if e := c.props[propEmail]; e != "" {
		out = append(out, e)
	}
	return append(out, splitEmails(c.props[propAdditionalEmails])...)
}

// value returns the property value as HubSpot would report it and whether
// it is set.
func (c *contact) value(name string) (string, bool) {
	switch name {
	case propObjectID:
		return strconv.FormatInt(c.id, 10), true
	case propCreateDate:
		return hubspotTime(c.createdAt), true
	case propLastModified:
		return hubspotTime(c.updatedAt), true
	}
	v, ok := c.props[name]
	return v, ok
}

func (c *contact) set(name, value string, at time.Time, source string) {
	if value == "" {
		delete(c.props, name)
	} else {
		c.props[name] = value
	}
	c.history[name] = append(c.history[name], historyEntry{value: value, at: at, sourceType: source})
}

func (c *contact) snapshot() Contact {
	out := Contact{
		ID:               strconv.FormatInt(c.id, 10),
		Email:            c.props[propEmail],
		AdditionalEmails: splitEmails(c.props[propAdditionalEmails]),
		Properties:       maps.Clone(c.props),
		CreatedAt:        c.createdAt,
		UpdatedAt:        c.updatedAt,
	}
	if out.AdditionalEmails == nil {
		out.AdditionalEmails = []string{}
	}
	return out
}

func standardProperties(at time.Time) []Property {
	p := func(name, label, typ, field string) Property {
		return Property{Name: name, Label: label, Type: typ, FieldType: field, GroupName: standardGroup,
			FormField: typ == "string", HubspotDefined: true, ReadOnlyDef: true, CreatedAt: at, UpdatedAt: at}
	}
	props := []Property{
		p(propEmail, "Email", "string", "text"),
		p(propAdditionalEmails, "Additional email addresses", "enumeration", "checkbox"),
		p("firstname", "First Name", "string", "text"),
		p("lastname", "Last Name", "string", "text"),
		p(propObjectID, "Record ID", "number", "number"),
		p(propCreateDate, "Create Date", "datetime", "date"),
		p(propLastModified, "Last Modified Date", "datetime", "date"),
	}
	for i := range props {
		props[i].DisplayOrder = -1
		switch props[i].Name {
		case propAdditionalEmails:
			props[i].ReadOnlyValue, props[i].Calculated, props[i].ExternalOptions = true, true, true
		case propObjectID, propCreateDate, propLastModified:
			props[i].ReadOnlyValue = true
		}
	}
	return props
}

func cloneProperty(p Property) Property {
	p.Options = slices.Clone(p.Options)
	return p
}

// ---- exported accessors (all take s.mu) ----

// AddContact stores a contact and returns its numeric id. Emails are trimmed
// and lower-cased. props are stored as given, without validation (an
// undefined property stays invisible to the API until it is defined).
// It panics if an email already belongs to another contact, as HubSpot keeps
// primary and additional emails unique.
func (s *Server) AddContact(email string, additionalEmails []string, props map[string]string) string {
	ids, err := s.AddContacts([]ContactInput{{Email: email, AdditionalEmails: additionalEmails, Properties: props}})
	if err != nil {
		panic("hubspottest: AddContact: " + err.Error())
	}
	return ids[0]
}

// AddContacts stores several contacts at once, all or none, and returns
// their ids in input order. It fails if an email is used twice.
func (s *Server) AddContacts(in []ContactInput) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	for i, c := range in {
		all := append([]string{normEmail(c.Email)}, splitEmails(strings.Join(c.AdditionalEmails, ";"))...)
		for _, e := range all {
			if e == "" {
				continue
			}
			if strings.ContainsAny(e, " \t;") {
				return nil, fmt.Errorf("contact %d: invalid email %q", i, e)
			}
			if seen[e] {
				return nil, fmt.Errorf("contact %d: email %q used twice", i, e)
			}
			if id, ok := s.emailIndex[e]; ok {
				return nil, fmt.Errorf("contact %d: email %q already belongs to contact %d", i, e, id)
			}
			seen[e] = true
		}
	}
	now := s.now()
	ids := make([]string, 0, len(in))
	for _, ci := range in {
		c := &contact{id: s.nextID, props: map[string]string{}, createdAt: now, updatedAt: now,
			history: map[string][]historyEntry{}}
		s.nextID++
		for k, v := range ci.Properties {
			if v == "" || isComputed(k) || k == propEmail || k == propAdditionalEmails {
				continue
			}
			c.set(k, v, now, "CONTACTS")
		}
		if e := normEmail(ci.Email); e != "" {
			c.set(propEmail, e, now, "CONTACTS")
		}
		if extra := splitEmails(strings.Join(ci.AdditionalEmails, ";")); len(extra) > 0 {
			c.set(propAdditionalEmails, strings.Join(extra, ";"), now, "CONTACTS")
		}
		s.contacts[c.id] = c
		s.index(c)
		ids = append(ids, strconv.FormatInt(c.id, 10))
	}
	return ids, nil
}

func (s *Server) index(c *contact) {
	for _, e := range c.emails() {
		s.emailIndex[e] = c.id
	}
}

func (s *Server) unindex(c *contact) {
	for _, e := range c.emails() {
		if s.emailIndex[e] == c.id {
			delete(s.emailIndex, e)
		}
	}
}

func (s *Server) lookupID(id string) (*contact, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(id), 10, 64)
	if err != nil {
		return nil, false
	}
	c, ok := s.contacts[n]
	return c, ok
}

// Contact returns the contact with the given id.
func (s *Server) Contact(id string) (Contact, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.lookupID(id)
	if !ok {
		return Contact{}, false
	}
	return c.snapshot(), true
}

// ContactByEmail finds a contact by primary or additional email,
// case-insensitively and ignoring surrounding blanks.
func (s *Server) ContactByEmail(email string) (Contact, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.emailIndex[normEmail(email)]
	if !ok {
		return Contact{}, false
	}
	return s.contacts[id].snapshot(), true
}

// Contacts returns every contact, sorted by id.
func (s *Server) Contacts() []Contact {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := slices.Sorted(maps.Keys(s.contacts))
	out := make([]Contact, 0, len(ids))
	for _, id := range ids {
		out = append(out, s.contacts[id].snapshot())
	}
	return out
}

// DeleteContact removes a contact, as a deletion or a merge into another
// record would: its id and emails stop resolving.
func (s *Server) DeleteContact(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.lookupID(id); ok {
		s.unindex(c)
		delete(s.contacts, c.id)
	}
}

// EditContact changes properties of a contact the way a person in HubSpot, a workflow or an
// import would, behind the API client's back ("" clears a value). Emails cannot be edited
// this way. It reports whether the contact exists.
func (s *Server) EditContact(id string, props map[string]string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.lookupID(id)
	if !ok {
		return false
	}
	now := s.now()
	for _, k := range slices.Sorted(maps.Keys(props)) {
		if isComputed(k) || k == propEmail || k == propAdditionalEmails {
			continue
		}
		c.set(k, props[k], now, "CRM_UI")
	}
	c.updatedAt = now
	return true
}

// DefineProperty creates or replaces a property definition, like a property
// that already exists in the portal. A missing group is created.
func (s *Server) DefineProperty(p Property) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if p.CreatedAt.IsZero() {
		p.CreatedAt = now
	}
	if p.UpdatedAt.IsZero() {
		p.UpdatedAt = now
	}
	if p.GroupName == "" {
		p.GroupName = standardGroup
	}
	if _, ok := s.groups[p.GroupName]; !ok {
		s.groups[p.GroupName] = &Group{Name: p.GroupName, Label: p.GroupName, DisplayOrder: -1}
	}
	cp := cloneProperty(p)
	s.props[p.Name] = &cp
}

// Property returns a property definition.
func (s *Server) Property(name string) (Property, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.props[name]
	if !ok {
		return Property{}, false
	}
	return cloneProperty(*p), true
}

// Properties returns every property definition, sorted by name.
func (s *Server) Properties() []Property {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Property, 0, len(s.props))
	for _, name := range slices.Sorted(maps.Keys(s.props)) {
		out = append(out, cloneProperty(*s.props[name]))
	}
	return out
}

// DefineGroup creates or replaces a property group.
func (s *Server) DefineGroup(g Group) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.groups[g.Name] = &g
}

// Group returns a property group.
func (s *Server) Group(name string) (Group, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.groups[name]
	if !ok {
		return Group{}, false
	}
	return *g, true
}

// AddValidationRule adds a portal validation rule to a property (the
// property need not exist yet). A rule replaces an earlier rule of the same
// RuleType, as in HubSpot. It panics on an unsupported or malformed rule.
func (s *Server) AddValidationRule(property string, rule ValidationRule) {
	c, err := compileRule(rule)
	if err != nil {
		panic("hubspottest: AddValidationRule: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rules := slices.DeleteFunc(s.rules[property], func(r compiledRule) bool { return r.RuleType == rule.RuleType })
	s.rules[property] = append(rules, c)
}

// FailInputsOnce makes the next batch/update that names each of these contacts answer that
// input with a 207 per-input error of the given category (say "INTERNAL_ERROR", which HubSpot
// does not document as permanent) instead of applying it.
func (s *Server) FailInputsOnce(category string, contactIDs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inputFailures == nil {
		s.inputFailures = map[int64]string{}
	}
	for _, id := range contactIDs {
		if n, err := strconv.ParseInt(id, 10, 64); err == nil {
			s.inputFailures[n] = category
		}
	}
}

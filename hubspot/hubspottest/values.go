package hubspottest

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// invalidValue describes one rejected property value, the way HubSpot lists
// it inside "Property values were not valid: [...]".
type invalidValue struct {
	name     string
	value    string
	hasValue bool // echo propertyValue (HubSpot omits it for unknown properties)
	code     string
	message  string
	rule     bool // refused by a portal validation rule, not by the property's type
}

var numberRE = regexp.MustCompile(`^-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$`)

const dayMillis = 24 * 60 * 60 * 1000

func invalid(p *Property, raw, code, format string, args ...any) *invalidValue {
	return &invalidValue{name: p.Name, value: raw, hasValue: true, code: code, message: fmt.Sprintf(format, args...)}
}

// normalizeValue checks raw against the definition of p, and its validation rules when rules
// is set (HubSpot enforces them on API writes from the 2026-09 version on), and returns the
// value to store ("" clears). current is the value stored now; it matters for multi-select
// appends (";a"). The caller holds s.mu.
func (s *Server) normalizeValue(p *Property, raw, current string, rules bool) (string, *invalidValue) {
	if p.ReadOnlyValue || p.Calculated {
		return "", invalid(p, raw, "READ_ONLY_VALUE", "%s is a read only property; its value cannot be set.", p.Name)
	}
	if raw == "" {
		return "", nil
	}
	var (
		out string
		bad *invalidValue
	)
	switch p.Type {
	case "number":
		out, bad = normNumber(p, raw)
	case "bool":
		out, bad = normBool(p, raw)
	case "enumeration":
		out, bad = normEnumeration(p, raw, current)
	case "date":
		out, bad = normDate(p, raw)
	case "datetime":
		out, bad = normDatetime(p, raw)
	default: // string, phone_number, and anything unknown
		out, bad = normString(p, raw)
	}
	if bad != nil {
		return "", bad
	}
	if !rules {
		return out, nil
	}
	for _, rule := range s.rules[p.Name] {
		if bad := checkRule(p, rule, out); bad != nil {
			bad.rule = true
			return "", bad
		}
	}
	return out, nil
}

func normNumber(p *Property, raw string) (string, *invalidValue) {
	if !numberRE.MatchString(raw) {
		return "", invalid(p, raw, "INVALID_INTEGER", "%s was not a valid number.", raw)
	}
	return raw, nil
}

func normBool(p *Property, raw string) (string, *invalidValue) {
	switch strings.ToLower(raw) {
	case "true":
		return "true", nil
	case "false":
		return "false", nil
	}
	return "", invalid(p, raw, "INVALID_BOOLEAN", "%s was not a valid boolean value.", raw)
}

func normEnumeration(p *Property, raw, current string) (string, *invalidValue) {
	if p.ExternalOptions {
		return raw, nil
	}
	allowed := make([]string, 0, len(p.Options))
	for _, o := range p.Options {
		allowed = append(allowed, o.Value)
	}
	if len(allowed) == 0 && p.FieldType == "booleancheckbox" {
		allowed = []string{"true", "false"}
	}
	notAllowed := func(v string) *invalidValue {
		return invalid(p, raw, "INVALID_OPTION", "%s was not one of the allowed options: [%s]", v, strings.Join(allowed, ", "))
	}
	if p.FieldType != "checkbox" { // single choice
		if !slices.Contains(allowed, raw) {
			return "", notAllowed(raw)
		}
		return raw, nil
	}
	var values []string
	if strings.HasPrefix(raw, ";") && current != "" { // ";x" appends to the current selection
		values = strings.Split(current, ";")
	}
	for _, v := range strings.Split(raw, ";") {
		if v == "" {
			continue
		}
		if !slices.Contains(allowed, v) {
			return "", notAllowed(v)
		}
		if !slices.Contains(values, v) {
			values = append(values, v)
		}
	}
	return strings.Join(values, ";"), nil
}

// parseEpochMillis accepts an optional minus and digits only.
func parseEpochMillis(raw string) (int64, bool) {
	digits := strings.TrimPrefix(raw, "-")
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	return n, err == nil
}

func parseCalendarDate(raw string) (time.Time, bool) {
	if len(raw) != len("2006-01-02") {
		return time.Time{}, false
	}
	t, err := time.Parse("2006-01-02", raw)
	return t, err == nil
}

func normDate(p *Property, raw string) (string, *invalidValue) {
	if t, ok := parseCalendarDate(raw); ok {
		return t.Format("2006-01-02"), nil
	}
	if ms, ok := parseEpochMillis(raw); ok {
		t := time.UnixMilli(ms).UTC()
		if ms%dayMillis != 0 {
			return "", invalid(p, raw, "INVALID_DATE", "%s is at %s UTC, not midnight!", raw, t.Format("15:04:05.000"))
		}
		return t.Format("2006-01-02"), nil
	}
	return "", invalid(p, raw, "INVALID_DATE", "%s was not a valid date.", raw)
}

func normDatetime(p *Property, raw string) (string, *invalidValue) {
	if ms, ok := parseEpochMillis(raw); ok {
		return hubspotTime(time.UnixMilli(ms)), nil
	}
	if t, ok := parseCalendarDate(raw); ok {
		return hubspotTime(t), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, raw); err == nil {
		return hubspotTime(t), nil
	}
	return "", invalid(p, raw, "INVALID_DATETIME", "%s was not a valid datetime.", raw)
}

func normString(p *Property, raw string) (string, *invalidValue) {
	if n := utf8.RuneCountInString(raw); n > maxStringLen {
		return "", invalid(p, shorten(raw), "INVALID_STRING_LENGTH",
			"value for %s is %d characters long; the maximum is %d.", p.Name, n, maxStringLen)
	}
	if p.Name == propEmail {
		e := normEmail(raw)
		at := strings.LastIndexByte(e, '@')
		if at <= 0 || at == len(e)-1 || strings.ContainsAny(e, " \t;,") || strings.Count(e, "@") != 1 {
			return "", invalid(p, raw, "INVALID_EMAIL", "Email address %s is invalid", raw)
		}
		return e, nil
	}
	return raw, nil
}

func shorten(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:61] + "..."
}

func checkRule(p *Property, r compiledRule, v string) *invalidValue {
	const code = "INVALID_PROPERTY_VALUE"
	switch r.RuleType {
	case "MIN_NUMBER", "MAX_NUMBER":
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil
		}
		if r.RuleType == "MIN_NUMBER" && f < r.num {
			return invalid(p, v, code, "%s is less than the minimum value of %s allowed for %s.", v, r.RuleArguments[0], p.Name)
		}
		if r.RuleType == "MAX_NUMBER" && f > r.num {
			return invalid(p, v, code, "%s is greater than the maximum value of %s allowed for %s.", v, r.RuleArguments[0], p.Name)
		}
	case "DECIMAL":
		if i := strings.IndexByte(v, '.'); i >= 0 && len(v)-i-1 > r.n {
			return invalid(p, v, code, "%s has more than %d decimal places allowed for %s.", v, r.n, p.Name)
		}
	case "MIN_LENGTH":
		if utf8.RuneCountInString(v) < r.n {
			return invalid(p, v, code, "%s is shorter than the minimum length of %d allowed for %s.", shorten(v), r.n, p.Name)
		}
	case "MAX_LENGTH":
		if utf8.RuneCountInString(v) > r.n {
			return invalid(p, shorten(v), code, "%s is longer than the maximum length of %d allowed for %s.", shorten(v), r.n, p.Name)
		}
	case "REGEX":
		if !r.re.MatchString(v) {
			return invalid(p, v, code, "%s does not match the pattern required for %s.", shorten(v), p.Name)
		}
	}
	return nil
}

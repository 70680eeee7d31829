package hubspottest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Search limits from HubSpot's search guide.
const (
	searchMaxBody       = 3000
	searchMaxGroups     = 5
	searchMaxPerGroup   = 6
	searchMaxFilters    = 18
	searchDefaultLimit  = 10
	searchMaxLimit      = 200
	searchMaxResultsPos = 10000
)

type searchFilter struct {
	PropertyName string       `json:"propertyName"`
	Operator     string       `json:"operator"`
	Value        *flexString  `json:"value"`
	HighValue    *flexString  `json:"highValue"`
	Values       []flexString `json:"values"`
}

type searchSort struct {
	PropertyName string `json:"propertyName"`
	Direction    string `json:"direction"`
}

type searchRequest struct {
	FilterGroups []struct {
		Filters []searchFilter `json:"filters"`
	} `json:"filterGroups"`
	Properties []string     `json:"properties"`
	Limit      *int         `json:"limit"`
	After      flexString   `json:"after"`
	Sorts      []searchSort `json:"sorts"`
	Query      string       `json:"query"`
}

type searchResponse struct {
	Total   int            `json:"total"`
	Results []simpleObject `json:"results"`
	Paging  *struct {
		Next struct {
			After string `json:"after"`
		} `json:"next"`
	} `json:"paging,omitempty"`
}

func searchError(w http.ResponseWriter, format string, args ...any) {
	writeError(w, http.StatusBadRequest, newAPIError(categoryValidation, fmt.Sprintf(format, args...)))
}

// handleSearch emulates POST /crm/v3/objects/contacts/search (filters are
// ORed groups of ANDed filters; email EQ also matches additional emails).
func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeInvalidJSON(w, err)
		return
	}
	if len(body) > searchMaxBody {
		searchError(w, "Request body is %d characters long; the maximum is %d.", len(body), searchMaxBody)
		return
	}
	var req searchRequest
	if err := json.NewDecoder(bytes.NewReader(body)).Decode(&req); err != nil {
		writeInvalidJSON(w, err)
		return
	}
	total := 0
	if len(req.FilterGroups) > searchMaxGroups {
		searchError(w, "Too many filter groups: %d. The maximum is %d.", len(req.FilterGroups), searchMaxGroups)
		return
	}
	for _, g := range req.FilterGroups {
		if len(g.Filters) > searchMaxPerGroup {
			searchError(w, "Too many filters in a filter group: %d. The maximum is %d.", len(g.Filters), searchMaxPerGroup)
			return
		}
		total += len(g.Filters)
		for _, f := range g.Filters {
			if !knownOperator(f.Operator) {
				searchError(w, "Unsupported filter operator %q.", f.Operator)
				return
			}
		}
	}
	if total > searchMaxFilters {
		searchError(w, "Too many filters: %d. The maximum is %d.", total, searchMaxFilters)
		return
	}
	if len(req.Sorts) > 1 {
		searchError(w, "Only one sort is supported.")
		return
	}
	limit := searchDefaultLimit
	if req.Limit != nil {
		limit = *req.Limit
	}
	if limit < 0 || limit > searchMaxLimit {
		searchError(w, "limit must be between 0 and %d.", searchMaxLimit)
		return
	}
	after := 0
	if req.After != "" {
		if after, err = strconv.Atoi(string(req.After)); err != nil || after < 0 {
			searchError(w, "after must be a non-negative integer, got %q.", req.After)
			return
		}
	}
	if after+limit > searchMaxResultsPos {
		searchError(w, "Paging past %d results is not supported.", searchMaxResultsPos)
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	var matches []*contact
	for _, id := range slices.Sorted(maps.Keys(s.contacts)) {
		c := s.contacts[id]
		if matchQuery(c, req.Query) && s.matchGroups(c, req) {
			matches = append(matches, c)
		}
	}
	if len(req.Sorts) == 1 {
		so := req.Sorts[0]
		slices.SortStableFunc(matches, func(a, b *contact) int {
			va, _ := a.value(so.PropertyName)
			vb, _ := b.value(so.PropertyName)
			cmp := compareValues(va, vb)
			if strings.EqualFold(so.Direction, "DESCENDING") {
				cmp = -cmp
			}
			return cmp
		})
	}
	names := req.Properties
	if len(names) == 0 {
		names = defaultContactProperties
	}
	resp := searchResponse{Total: len(matches), Results: []simpleObject{}}
	for i := after; i < len(matches) && i < after+limit; i++ {
		resp.Results = append(resp.Results, s.render(matches[i], names, nil))
	}
	if after+limit < len(matches) {
		resp.Paging = &struct {
			Next struct {
				After string `json:"after"`
			} `json:"next"`
		}{}
		resp.Paging.Next.After = strconv.Itoa(after + limit)
	}
	writeJSON(w, http.StatusOK, resp)
}

func knownOperator(op string) bool {
	switch op {
	case "EQ", "NEQ", "LT", "LTE", "GT", "GTE", "BETWEEN", "IN", "NOT_IN",
		"HAS_PROPERTY", "NOT_HAS_PROPERTY", "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN":
		return true
	}
	return false
}

func matchQuery(c *contact, q string) bool {
	q = strings.ToLower(strings.TrimSpace(q))
	if q == "" {
		return true
	}
	for _, name := range []string{propEmail, propAdditionalEmails, "firstname", "lastname"} {
		if strings.Contains(strings.ToLower(c.props[name]), q) {
			return true
		}
	}
	return false
}

// matchGroups: no groups match everything; otherwise any group whose
// filters all match. The caller holds s.mu.
func (s *Server) matchGroups(c *contact, req searchRequest) bool {
	if len(req.FilterGroups) == 0 {
		return true
	}
	for _, g := range req.FilterGroups {
		ok := true
		for _, f := range g.Filters {
			if !s.matchFilter(c, f) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func compareValues(a, b string) int {
	fa, ea := strconv.ParseFloat(a, 64)
	fb, eb := strconv.ParseFloat(b, 64)
	if ea == nil && eb == nil {
		switch {
		case fa < fb:
			return -1
		case fa > fb:
			return 1
		}
		return 0
	}
	return strings.Compare(strings.ToLower(a), strings.ToLower(b))
}

func (s *Server) matchFilter(c *contact, f searchFilter) bool {
	v, set := c.value(f.PropertyName)
	// Values to compare: email also matches the additional emails.
	candidates := []string{v}
	if f.PropertyName == propEmail {
		candidates = c.emails()
		set = len(candidates) > 0
	}
	p := s.props[f.PropertyName]
	caseSensitive := p != nil && p.Type == "enumeration"
	eq := func(a, b string) bool {
		if caseSensitive {
			return a == b
		}
		return strings.EqualFold(strings.TrimSpace(a), strings.TrimSpace(b))
	}
	val := ""
	if f.Value != nil {
		val = string(*f.Value)
	}
	anyOf := func(pred func(string) bool) bool {
		if !set {
			return false
		}
		return slices.ContainsFunc(candidates, pred)
	}
	switch f.Operator {
	case "HAS_PROPERTY":
		return set
	case "NOT_HAS_PROPERTY":
		return !set
	case "EQ":
		return anyOf(func(x string) bool { return eq(x, val) })
	case "NEQ":
		return !anyOf(func(x string) bool { return eq(x, val) })
	case "IN", "NOT_IN":
		in := anyOf(func(x string) bool {
			return slices.ContainsFunc(f.Values, func(w flexString) bool { return eq(x, string(w)) })
		})
		return in == (f.Operator == "IN")
	case "CONTAINS_TOKEN", "NOT_CONTAINS_TOKEN":
		tok := strings.ToLower(strings.Trim(val, "*"))
		has := anyOf(func(x string) bool { return strings.Contains(strings.ToLower(x), tok) })
		return has == (f.Operator == "CONTAINS_TOKEN")
	case "LT":
		return anyOf(func(x string) bool { return compareValues(x, val) < 0 })
	case "LTE":
		return anyOf(func(x string) bool { return compareValues(x, val) <= 0 })
	case "GT":
		return anyOf(func(x string) bool { return compareValues(x, val) > 0 })
	case "GTE":
		return anyOf(func(x string) bool { return compareValues(x, val) >= 0 })
	case "BETWEEN":
		high := ""
		if f.HighValue != nil {
			high = string(*f.HighValue)
		}
		return anyOf(func(x string) bool { return compareValues(x, val) >= 0 && compareValues(x, high) <= 0 })
	}
	return false
}

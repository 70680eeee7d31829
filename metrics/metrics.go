// Package metrics is what a student's learning metrics are (docs/contract.md §3): the ten
// HubSpot properties, their types and canonical forms, computed values, and how a student's
// email is matched to a contact. Which tables feed the values and how they are computed is
// the progress model's business (package model).
//
// Values are strings in the form HubSpot takes: numbers as plain decimal strings without
// trailing zeros ("85.5", "12", "0"), dates as YYYY-MM-DD, "" to clear a property. They are
// computed in PostgreSQL on numeric (exact decimal) and never pass through a float64.
package metrics

import (
	"context"
	"fmt"
	"net/mail"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Querier runs a query: *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Values maps a HubSpot property name to its value as HubSpot takes it ("" clears it).
type Values map[string]string

// Student is one student's computed metrics.
type Student struct {
	ID    uuid.UUID
	Email string // raw, as stored in the students table
	// Values holds the properties the progress model computes; a property absent here is
	// never written.
	Values Values
}

// IDs are the students' ids, in order.
func IDs(students []Student) []uuid.UUID {
	ids := make([]uuid.UUID, len(students))
	for i, s := range students {
		ids[i] = s.ID
	}
	return ids
}

// Course status values (the options of CourseStatus).
const (
	StatusNotStarted = "not_started"
	StatusInProgress = "in_progress"
	StatusCompleted  = "completed"
)

// NormalizeEmail is how emails are matched (docs/contract.md §3): trimmed of Unicode white
// space and lower-cased (Unicode), as HubSpot stores them. It is the one rule: SQL only
// narrows rows down for it (EmailCandidatesSQL); it decides.
func NormalizeEmail(email string) string {
	return strings.ToLower(strings.TrimSpace(email))
}

// EmailCandidatesSQL is the email rule as a SQL condition on column: true for every row whose
// email NormalizeEmail maps to one of the normalized emails in param (a text[]), and for some
// more, which the caller drops by applying NormalizeEmail to what it reads. SQL decides only
// pure-ASCII emails, exactly (ASCII white space, ASCII lower case under the C collation,
// whatever the database's own); any other goes to Go: lower() under a database collation does
// not follow Go's Unicode rule (a C database leaves É, and the Turkish İ differs), and btrim
// knows no no-break space.
func EmailCandidatesSQL(column, param string) string {
	return fmt.Sprintf(`(lower(btrim(%[1]s, E' \t\n\x0b\f\r') COLLATE "C") = ANY(%[2]s) OR octet_length(%[1]s) <> char_length(%[1]s))`, column, param)
}

// MatchableEmail normalizes a student's email for matching a contact, or says why it cannot
// be an address worth looking up.
func MatchableEmail(raw string) (email, problem string) {
	e := NormalizeEmail(raw)
	if e == "" {
		return "", "student has no email"
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || a.Name != "" {
		return "", "email is not an address"
	}
	local, domain, _ := strings.Cut(e, "@")
	if local == "" || !strings.Contains(domain, ".") || strings.HasSuffix(domain, ".") || len(e) > 254 {
		return "", "email is not an address"
	}
	return e, ""
}

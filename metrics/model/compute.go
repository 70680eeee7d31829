package model

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
)

// Querier runs a query: *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy it. The model's SQL
// must run in a read-only transaction (a model reads the platform, never changes it): every
// caller passes one, such as replication.ReadComplete's.
type Querier = metrics.Querier

// ErrNotVerified is returned by a model used before Verify learnt which properties it
// computes.
var ErrNotVerified = errors.New("the progress model was not verified against the database")

// Computes lists the properties the model's query computes, in docs/contract.md §3 order
// (known after Verify). The others are never written.
func (m *Model) Computes() []string { return m.computes }

// format is how a property's value leaves the database in the form HubSpot takes: numbers as
// plain decimal strings without trailing zeros, dates as YYYY-MM-DD (through timestamp, so
// neither DateStyle nor TimeZone can change them), NULL as "" (clear).
func format(column, hubspotType string) string {
	switch hubspotType {
	case metrics.TypeNumber:
		return fmt.Sprintf("coalesce(trim_scale(m.%s::numeric)::text, '')", column)
	case metrics.TypeDate:
		return fmt.Sprintf("coalesce(to_char(m.%s::timestamp, 'YYYY-MM-DD'), '')", column)
	default:
		return fmt.Sprintf("coalesce(m.%s::text, '')", column)
	}
}

// computeSQL wraps the properties query: every student of $1 gets one row with its email, a
// flag set when the model's query returned no row for it, and the formatted values; a
// student the query returns twice comes twice (both are model errors, reported by collect).
func (m *Model) computeSQL() string {
	var cols []string
	for _, name := range m.computes {
		cols = append(cols, format(name, typeOf(name)))
	}
	s := m.Students
	return fmt.Sprintf("SELECT s.%s, coalesce(s.%s::text, ''), m.id IS NULL, %s\nFROM %s s LEFT JOIN (\n%s\n) m ON m.id = s.%s\nWHERE s.%s = ANY($1::uuid[])\nORDER BY s.%s",
		s.ID, s.Email, strings.Join(cols, ", "), s.Table, m.Properties.SQL, s.ID, s.ID, s.ID)
}

// ForStudents computes the properties of the given students in one round trip. Ids that are
// not students are absent from the result; duplicates count once. The result is ordered by id.
func (m *Model) ForStudents(ctx context.Context, q Querier, ids []uuid.UUID) ([]metrics.Student, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if m.computeQuery == "" {
		return nil, ErrNotVerified
	}
	rows, err := q.Query(ctx, m.computeQuery, ids)
	if err != nil {
		return nil, fmt.Errorf("compute the properties of %d students (%s): %w", len(ids), m.Source(), err)
	}
	out, err := m.collect(rows)
	if err != nil {
		return nil, fmt.Errorf("compute the properties of %d students (%s): %w", len(ids), m.Source(), err)
	}
	return out, nil
}

func (m *Model) collect(rows pgx.Rows) ([]metrics.Student, error) {
	defer rows.Close()
	var out []metrics.Student
	vals := make([]string, len(m.computes))
	var missing bool
	dest := make([]any, 0, 3+len(vals))
	for rows.Next() {
		var s metrics.Student
		dest = append(dest[:0], &s.ID, &s.Email, &missing)
		for i := range vals {
			dest = append(dest, &vals[i])
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		if missing {
			return nil, m.errorf(m.Properties, 0, "returned no row for student %s: return one row for every id of $1 that is a student (select FROM %s and LEFT JOIN the rest)", s.ID, m.Students.Table)
		}
		if n := len(out); n > 0 && out[n-1].ID == s.ID {
			return nil, m.errorf(m.Properties, 0, "returned more than one row for student %s: return one row per student (aggregate with GROUP BY, or pick one row with DISTINCT ON)", s.ID)
		}
		s.Values = make(metrics.Values, len(vals))
		for i, name := range m.computes {
			s.Values[name] = vals[i]
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// Page computes the properties of up to limit students with id > after (keyset pagination
// over the students table; uuid.Nil starts), ordered by id. A page shorter than limit is the
// last one; the next page starts after the last id returned. q should be one transaction, so
// that the students listed are the students computed.
func (m *Model) Page(ctx context.Context, q Querier, after uuid.UUID, limit int) ([]metrics.Student, error) {
	if limit <= 0 {
		return nil, errors.New("metrics page: limit must be positive")
	}
	limit = min(limit, 1<<31-1)
	ids, err := queryIDs(ctx, q, "list the students after "+after.String(),
		fmt.Sprintf("SELECT %s FROM %s WHERE %s > $1::uuid ORDER BY %s LIMIT $2::int", m.Students.ID, m.Students.Table, m.Students.ID, m.Students.ID), after, limit)
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	return m.ForStudents(ctx, q, ids)
}

// AllStudents lists every student.
func (m *Model) AllStudents(ctx context.Context, q Querier) ([]uuid.UUID, error) {
	return queryIDs(ctx, q, "list every student", fmt.Sprintf("SELECT %s FROM %s", m.Students.ID, m.Students.Table))
}

// CountStudents returns how many students there are, for a backfill's progress.
func (m *Model) CountStudents(ctx context.Context, q Querier) (int, error) {
	rows, err := q.Query(ctx, "SELECT count(*) FROM "+m.Students.Table)
	if err != nil {
		return 0, fmt.Errorf("count the students: %w", err)
	}
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int])
	if err != nil {
		return 0, fmt.Errorf("count the students: %w", err)
	}
	return n, nil
}

// StudentsOfKeys runs the students query of a reference table for changed keys: keys holds
// one tuple per changed row, its values in the table's Keys order.
func (m *Model) StudentsOfKeys(ctx context.Context, q Querier, table string, keys [][]string) ([]uuid.UUID, error) {
	t, ok := m.Table(table)
	if !ok || t.StudentsOf.SQL == "" {
		return nil, fmt.Errorf("%s has no students query for changed keys", table)
	}
	args := make([]any, len(t.Keys))
	for i := range t.Keys {
		col := make([]string, len(keys))
		for j, k := range keys {
			col[j] = k[i]
		}
		args[i] = col
	}
	rows, err := q.Query(ctx, t.StudentsOf.SQL, args...)
	if err != nil {
		return nil, fmt.Errorf("find the students of %d changed rows of %s: %w", len(keys), table, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.NullUUID])
	if err != nil {
		return nil, fmt.Errorf("find the students of %d changed rows of %s: %w", len(keys), table, err)
	}
	out := make([]uuid.UUID, 0, len(ids))
	for _, id := range ids {
		if !id.Valid {
			// A NULL would be read as the nil uuid and the change would concern no one.
			return nil, m.errorf(t.StudentsOf, 0, "returned a NULL student id: return the ids of the students the changed keys affect, never NULL")
		}
		out = append(out, id.UUID)
	}
	return out, nil
}

func queryIDs(ctx context.Context, q Querier, what, sql string, args ...any) ([]uuid.UUID, error) {
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ids, nil
}

// IDsByEmail returns the ids of students whose email, trimmed and lower-cased, equals one of
// the given emails (also trimmed and lower-cased), keyed by the normalized email each
// matched, ids in ascending order. Emails that match nobody are absent. One round trip; it
// scans the students table (there is no index on the normalized email), so it is meant for a
// handful of emails.
//
// The candidates are chosen in SQL and metrics.NormalizeEmail decides, so the database's
// collation never changes the answer: an ASCII email is a candidate when btrim of ASCII white
// space and lower() match, which for ASCII text is exactly NormalizeEmail; an email with any
// non-ASCII character (rare) is always a candidate, since lower() in a C-collation database
// leaves É alone where strings.ToLower does not.
func (m *Model) IDsByEmail(ctx context.Context, q Querier, emails []string) (map[string][]uuid.UUID, error) {
	want := make(map[string]bool, len(emails))
	list := make([]string, 0, len(emails))
	for _, e := range emails {
		n := metrics.NormalizeEmail(e)
		if n == "" || want[n] {
			continue
		}
		want[n] = true
		list = append(list, n)
	}
	out := map[string][]uuid.UUID{}
	if len(list) == 0 {
		return out, nil
	}
	s := m.Students
	sql := fmt.Sprintf(`SELECT %s, %s FROM %s WHERE %s ORDER BY %s`, s.ID, s.Email, s.Table, metrics.EmailCandidatesSQL(s.Email, "$1::text[]"), s.ID)
	rows, err := q.Query(ctx, sql, list)
	if err != nil {
		return nil, fmt.Errorf("look up %d emails: %w", len(list), err)
	}
	var id uuid.UUID
	var email *string
	_, err = pgx.ForEachRow(rows, []any{&id, &email}, func() error {
		if email != nil && want[metrics.NormalizeEmail(*email)] {
			n := metrics.NormalizeEmail(*email)
			out[n] = append(out[n], id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up %d emails: %w", len(list), err)
	}
	return out, nil
}

// typeOf is a property's HubSpot type.
func typeOf(name string) string {
	for _, d := range metrics.Definitions() {
		if d.Name == name {
			return d.Type
		}
	}
	return ""
}

// Trial runs the properties query as the service will: on an empty batch, then on the first
// students (up to 100), so that a query that fails on real rows, or returns a student twice
// or not at all, is found before the service depends on it. It returns how many students it
// computed.
func (m *Model) Trial(ctx context.Context, q Querier) (int, error) {
	if m.computeQuery == "" {
		return 0, ErrNotVerified
	}
	rows, err := q.Query(ctx, m.computeQuery, []uuid.UUID{})
	if err == nil {
		_, err = m.collect(rows)
	}
	if err != nil {
		return 0, fmt.Errorf("on an empty batch: %w", err)
	}
	students, err := m.Page(ctx, q, uuid.Nil, 100)
	return len(students), err
}

// Problems runs one of the model's checks and returns its rows, one problem each.
func (m *Model) Problems(ctx context.Context, q Querier, c Check) ([]string, error) {
	rows, err := q.Query(ctx, c.Problems.SQL)
	if err != nil {
		return nil, m.sqlError(c.Problems, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, m.sqlError(c.Problems, err)
	}
	return out, nil
}

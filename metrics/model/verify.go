package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/focusenglish/progress-sync/metrics"
)

// TxBeginner opens transactions: *pgxpool.Pool and *pgx.Conn have it.
type TxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// Verify checks the model against the database, before anything is computed or written: its
// tables and columns exist with the types the service needs, its queries parse and return
// what they must, and the properties query reads no table the model does not list (a change
// there would never reach HubSpot). It learns which properties the model computes. A problem
// is an *Error naming the part and, for SQL, the line of the file. Everything runs in a
// read-only transaction and nothing is executed but EXPLAIN.
func (m *Model) Verify(ctx context.Context, db TxBeginner) error {
	return pgx.BeginTxFunc(ctx, db, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		for _, t := range m.Tables {
			if err := m.verifyTable(ctx, tx, t); err != nil {
				return err
			}
		}
		computes, err := m.verifyProperties(ctx, tx.Conn().PgConn())
		if err != nil {
			return err
		}
		for _, t := range m.Tables {
			if t.StudentsOf.SQL != "" {
				if err := m.verifyStudentsOf(ctx, tx.Conn().PgConn(), t); err != nil {
					return err
				}
			}
		}
		for _, c := range m.Checks {
			if err := m.verifyCheck(ctx, tx.Conn().PgConn(), c); err != nil {
				return err
			}
		}
		if err := m.verifyReads(ctx, tx); err != nil {
			return err
		}
		m.computes = computes
		m.computeQuery = m.computeSQL()
		return nil
	})
}

// verifyTable checks that a table exists and that its student, key, id and email columns do,
// with a uuid where a student id must be.
func (m *Model) verifyTable(ctx context.Context, tx pgx.Tx, t Table) error {
	part := Part{Name: "tables " + t.Name, Line: t.Line}
	if t.Name == m.Students.Table {
		part.Name = "students"
	}
	rows, err := tx.Query(ctx, `SELECT a.attname::text, format_type(a.atttypid, NULL) FROM pg_attribute a
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, t.Name)
	if err != nil {
		return fmt.Errorf("read the columns of %s: %w", t.Name, err)
	}
	types := map[string]string{}
	var names []string
	var name, typ string
	if _, err := pgx.ForEachRow(rows, []any{&name, &typ}, func() error {
		types[name] = typ
		names = append(names, name)
		return nil
	}); err != nil {
		return fmt.Errorf("read the columns of %s: %w", t.Name, err)
	}
	if len(names) == 0 {
		return m.errorf(part, 0, "no table %s in the database (or the connecting role may not see it)", t.Name)
	}
	need := map[string]string{} // column -> required type ("" for any)
	for _, k := range t.Keys {
		need[k] = ""
	}
	if t.Student != "" {
		need[t.Student] = "uuid"
	}
	if t.Name == m.Students.Table {
		need[m.Students.Email] = "text"
	}
	for _, col := range slices.Sorted(maps.Keys(need)) {
		have, ok := types[col]
		switch {
		case !ok:
			return m.errorf(part, 0, "%s has no column %s (it has %s)", t.Name, col, strings.Join(names, ", "))
		case need[col] == "uuid" && have != "uuid":
			return m.errorf(part, 0, "column %s of %s is %s: a student id must be a uuid", col, t.Name, have)
		case need[col] == "text" && !slices.Contains([]string{"text", "character varying", "citext", "character"}, have):
			return m.errorf(part, 0, "email column %s of %s is %s, not text", col, t.Name, have)
		}
	}
	return nil
}

// Property types a column may have, by HubSpot type. Binary floating point is refused:
// numbers are exact decimals (docs/contract.md §3).
var acceptedTypes = map[string][]uint32{
	metrics.TypeNumber:      {pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.NumericOID},
	metrics.TypeDate:        {pgtype.DateOID},
	metrics.TypeString:      {pgtype.TextOID, pgtype.VarcharOID},
	metrics.TypeEnumeration: {pgtype.TextOID, pgtype.VarcharOID},
}

var typeAdvice = map[string]string{
	metrics.TypeNumber:      "an integer or numeric (cast a float with ::numeric, and round it yourself)",
	metrics.TypeDate:        "a date (from a timestamptz: (x AT TIME ZONE 'UTC')::date)",
	metrics.TypeString:      "text (cast with ::text)",
	metrics.TypeEnumeration: "text, one of the property's options",
}

// verifyProperties prepares the properties query and checks its columns: id (uuid), then only
// properties of docs/contract.md §3, each once, with a type HubSpot takes. It returns the
// properties computed, in §3 order.
func (m *Model) verifyProperties(ctx context.Context, conn *pgconn.PgConn) ([]string, error) {
	p := m.Properties
	sd, err := conn.Prepare(ctx, "", p.SQL, []uint32{pgtype.UUIDArrayOID})
	if err != nil {
		return nil, m.sqlError(p, err)
	}
	if len(sd.ParamOIDs) != 1 {
		return nil, m.errorf(p, 0, "uses $%d: the query takes one parameter, $1, the student ids (uuid[])", len(sd.ParamOIDs))
	}
	if !slices.ContainsFunc(sd.Fields, func(f pgconn.FieldDescription) bool { return f.Name == "id" }) {
		return nil, m.errorf(p, 0, "returns no column id: return the student's id as id, and one column per property")
	}
	seen := map[string]bool{}
	for _, f := range sd.Fields {
		name := f.Name
		if seen[name] {
			return nil, m.errorf(p, p.lineOfColumn(name), "returns column %s twice", name)
		}
		seen[name] = true
		if name == "id" {
			if f.DataTypeOID != pgtype.UUIDOID {
				return nil, m.errorf(p, p.lineOfColumn(name), "column id must be the student's uuid, not %s", typeName(f.DataTypeOID))
			}
			continue
		}
		typ := typeOf(name)
		if typ == "" {
			return nil, m.errorf(p, p.lineOfColumn(name), "returns column %s, which is not a property: name each column after the property it computes (%s), besides id",
				name, strings.Join(metrics.Names(), ", "))
		}
		if !slices.Contains(acceptedTypes[typ], f.DataTypeOID) {
			return nil, m.errorf(p, p.lineOfColumn(name), "column %s is %s; HubSpot's %s property %s takes %s", name, typeName(f.DataTypeOID), typ, name, typeAdvice[typ])
		}
	}
	var computes []string
	for _, name := range metrics.Names() {
		if seen[name] {
			computes = append(computes, name)
		}
	}
	if len(computes) == 0 {
		return nil, m.errorf(p, 0, "computes no property: return columns named after properties (%s)", strings.Join(metrics.Names(), ", "))
	}
	return computes, nil
}

// verifyStudentsOf prepares a reference table's students query: $1..$n are text[] of the key
// columns, and it returns one uuid column.
func (m *Model) verifyStudentsOf(ctx context.Context, conn *pgconn.PgConn, t Table) error {
	p := t.StudentsOf
	oids := make([]uint32, len(t.Keys))
	for i := range oids {
		oids[i] = pgtype.TextArrayOID
	}
	sd, err := conn.Prepare(ctx, "", p.SQL, oids)
	if err != nil {
		return m.sqlError(p, err)
	}
	if len(sd.ParamOIDs) != len(t.Keys) {
		return m.errorf(p, 0, "uses $%d, but the table has %d key columns (%s): $1..$%d are their changed values as text[]",
			len(sd.ParamOIDs), len(t.Keys), strings.Join(t.Keys, ", "), len(t.Keys))
	}
	if len(sd.Fields) != 1 || sd.Fields[0].DataTypeOID != pgtype.UUIDOID {
		return m.errorf(p, 0, "must return one column: the ids (uuid) of the students the changed keys affect")
	}
	return nil
}

func (m *Model) verifyCheck(ctx context.Context, conn *pgconn.PgConn, c Check) error {
	sd, err := conn.Prepare(ctx, "", c.Problems.SQL, nil)
	if err != nil {
		return m.sqlError(c.Problems, err)
	}
	if len(sd.Fields) != 1 || (sd.Fields[0].DataTypeOID != pgtype.TextOID && sd.Fields[0].DataTypeOID != pgtype.VarcharOID) {
		return m.errorf(c.Problems, 0, "must return one text column: a line per problem")
	}
	return nil
}

// verifyReads asks the planner which tables the properties query reads: each must be one of
// the model's tables, or its changes would never make a student's values be recomputed.
// (Tables read inside functions the query calls are out of the planner's sight.)
func (m *Model) verifyReads(ctx context.Context, tx pgx.Tx) error {
	var plan []byte
	some := []string{"00000000-0000-0000-0000-000000000000"}
	if err := tx.QueryRow(ctx, "EXPLAIN (VERBOSE, FORMAT JSON) "+m.Properties.SQL, some).Scan(&plan); err != nil {
		return m.sqlError(m.Properties, err)
	}
	var nodes []map[string]any
	if err := json.Unmarshal(plan, &nodes); err != nil {
		return fmt.Errorf("read the plan of the properties query: %w", err)
	}
	read := map[string]bool{}
	writes := false
	var walk func(n map[string]any)
	walk = func(n map[string]any) {
		writes = writes || n["Node Type"] == "ModifyTable"
		if rel, ok := n["Relation Name"].(string); ok {
			schema, _ := n["Schema"].(string)
			read[schema+"."+rel] = true
		}
		if sub, ok := n["Plans"].([]any); ok {
			for _, s := range sub {
				if c, ok := s.(map[string]any); ok {
					walk(c)
				}
			}
		}
	}
	for _, n := range nodes {
		if p, ok := n["Plan"].(map[string]any); ok {
			walk(p)
		}
	}
	if writes {
		return m.errorf(m.Properties, m.Properties.lineOf(`(?i)\b(INSERT|UPDATE|DELETE|MERGE)\b`), "changes the database (INSERT, UPDATE or DELETE): a model reads the platform, it never changes it")
	}
	for _, table := range slices.Sorted(maps.Keys(read)) {
		if _, ok := m.Table(table); !ok {
			return m.errorf(m.Properties, m.Properties.lineOf(`(?i)\b(`+regexp.QuoteMeta(table)+`|`+regexp.QuoteMeta(table[strings.IndexByte(table, '.')+1:])+`)\b`), "reads %s, which tables does not list: its changes would never reach HubSpot; list it under tables with its student column, or its keys and a students query", table)
		}
	}
	return nil
}

// lineOf is the file's line of the last match of pattern in the part's SQL, or 0.
func (p Part) lineOf(pattern string) int {
	if p.Line == 0 {
		return 0
	}
	found := regexp.MustCompile(pattern).FindAllStringIndex(p.SQL, -1)
	if len(found) == 0 {
		return 0
	}
	return p.Line + strings.Count(p.SQL[:found[len(found)-1][0]], "\n")
}

// lineOfColumn is the line where the query names an output column: its last "AS name", or
// failing that the last mention of the name (the final select list comes last).
func (p Part) lineOfColumn(name string) int {
	if line := p.lineOf(`(?i)\bAS\s+"?` + regexp.QuoteMeta(name) + `\b`); line > 0 {
		return line
	}
	return p.lineOf(`\b` + regexp.QuoteMeta(name) + `\b`)
}

// sqlError turns a database error about a part's SQL into an *Error on the line it points at.
func (m *Model) sqlError(p Part, err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return fmt.Errorf("%s: %s: %w", m.Source(), p.Name, err)
	}
	line := p.Line
	if pgErr.Position > 0 && p.Line > 0 {
		before := []rune(p.SQL)
		before = before[:min(int(pgErr.Position)-1, len(before))]
		line += strings.Count(string(before), "\n")
	}
	msg := pgErr.Message
	if pgErr.Hint != "" {
		msg += " (" + pgErr.Hint + ")"
	}
	if pgErr.Code == "25006" {
		msg += ": a model reads the platform, it never changes it"
	}
	return m.errorf(p, line, "%s", msg)
}

func typeName(oid uint32) string {
	if t, ok := pgtype.NewMap().TypeForOID(oid); ok {
		return t.Name
	}
	return fmt.Sprintf("type %d", oid)
}

package replication

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Row-level security filters every query of a role that is not the table's owner (or is, when
// the table forces it) and has no BYPASSRLS. On Supabase the policies match the signed-in
// user's JWT claims, which a service connection never carries, so such a role sees no rows at
// all, and metrics computed from that view are zeros, not errors. Logical decoding is not
// filtered, so the stream keeps naming students whose rows the queries cannot see. Hence: the
// sync reads every row of the source tables, or it does not compute anything.

// ReadPolicyName names the policy that lets the service's role read a whole table.
const ReadPolicyName = "progress_sync_read"

// HiddenTable is a source table whose rows a role would see only in part.
type HiddenTable struct {
	Table string
	Role  string
	// Why says what hides the rows, in a sentence.
	Why string
	// Fix is the SQL that lets Role read every row, for the table's owner to run.
	Fix string
}

func (h HiddenTable) String() string {
	return fmt.Sprintf("%s: %s; fix (as the table's owner): %s", h.Table, h.Why, h.Fix)
}

// HiddenRowsError says which source tables the service's role cannot read in full.
type HiddenRowsError struct {
	Tables []HiddenTable
}

func (e *HiddenRowsError) Error() string {
	return "the database hides rows the metrics need from role " + e.Tables[0].Role + " (row-level security or grants): " +
		strings.Join(e.Lines(), " | ")
}

// Lines is one line per table: which, why, and the SQL that fixes it.
func (e *HiddenRowsError) Lines() []string {
	lines := make([]string, len(e.Tables))
	for i, t := range e.Tables {
		lines[i] = t.String()
	}
	return lines
}

// ReadPolicySQL is the policy that lets role read every row of table and nobody else more.
func ReadPolicySQL(table, role string) string {
	return fmt.Sprintf("CREATE POLICY %s ON %s FOR SELECT TO %s USING (true);", ReadPolicyName, table, QuoteIdent(role))
}

// tableAccess is what the catalog says about one role's view of one source table.
type tableAccess struct {
	table       string
	role        string
	canSelect   bool
	rls, forced bool
	owns        bool
	bypass      bool // superuser or BYPASSRLS
	openPolicy  bool // a permissive SELECT policy USING (true) applies to the role
	restrictive []string
	policies    []string
}

// visibilitySQL reads, for each table of $1, how role $2 (empty: the current user) sees it. A
// policy applies to a role when it names PUBLIC (oid 0) or a role whose privileges it has.
const visibilitySQL = `WITH me AS (SELECT coalesce(nullif($2::text, ''), current_user)::name AS role),
applies AS (
	SELECT p.oid, p.polrelid, p.polname, p.polpermissive, pg_get_expr(p.polqual, p.polrelid) AS qual
	FROM pg_policy p, me
	WHERE p.polcmd IN ('r', '*') AND EXISTS (
		SELECT 1 FROM unnest(p.polroles) r WHERE CASE WHEN r = 0 THEN true ELSE pg_has_role(me.role, r, 'USAGE') END)
)
SELECT t.name, me.role::text, has_table_privilege(me.role, c.oid, 'SELECT'),
	c.relrowsecurity, c.relforcerowsecurity, pg_has_role(me.role, c.relowner, 'USAGE'),
	coalesce((SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = me.role), false),
	EXISTS (SELECT 1 FROM applies a WHERE a.polrelid = c.oid AND a.polpermissive AND a.qual = 'true'),
	array(SELECT a.polname::text FROM applies a WHERE a.polrelid = c.oid AND NOT a.polpermissive
		AND coalesce(a.qual, 'true') <> 'true' ORDER BY 1),
	array(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY 1)
FROM unnest($1::text[]) t(name)
JOIN pg_class c ON c.oid = to_regclass(t.name), me
ORDER BY t.name`

// HiddenTables lists the source tables that role (empty: the connecting role) would see only
// in part. A table is read in full when the role may select from it and row-level security
// is off, or the role bypasses it (superuser, BYPASSRLS), or owns the table and RLS is not
// forced, or a permissive SELECT policy USING (true) applies to it and no restrictive one
// narrows it. Tables that do not exist are left to the publication check.
func HiddenTables(ctx context.Context, db DB, role string) ([]HiddenTable, error) {
	rows, err := db.Query(ctx, visibilitySQL, tableNames(), role)
	if err != nil {
		return nil, fmt.Errorf("read row-level security of the source tables: %w", err)
	}
	var out []HiddenTable
	var a tableAccess
	_, err = pgx.ForEachRow(rows, []any{&a.table, &a.role, &a.canSelect, &a.rls, &a.forced, &a.owns, &a.bypass,
		&a.openPolicy, &a.restrictive, &a.policies}, func() error {
		if h, hidden := a.hidden(); hidden {
			out = append(out, h)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read row-level security of the source tables: %w", err)
	}
	return out, nil
}

// CheckVisibility returns a *HiddenRowsError when the connecting role cannot read every row
// of the source tables; nothing may be computed from such a view.
func CheckVisibility(ctx context.Context, db DB) error {
	hidden, err := HiddenTables(ctx, db, "")
	if err != nil {
		return err
	}
	if len(hidden) > 0 {
		return &HiddenRowsError{Tables: hidden}
	}
	return nil
}

func (a tableAccess) hidden() (HiddenTable, bool) {
	h := HiddenTable{Table: a.table, Role: a.role}
	role := QuoteIdent(a.role)
	switch {
	case !a.canSelect:
		h.Why = fmt.Sprintf("role %s may not read it", a.role)
		h.Fix = fmt.Sprintf("GRANT SELECT ON %s TO %s;", a.table, role)
	case !a.rls || a.bypass:
		return h, false
	case len(a.restrictive) > 0:
		// A restrictive policy narrows every permissive one: only bypassing helps.
		h.Why = fmt.Sprintf("row-level security is on and the restrictive policy %s narrows what role %s sees",
			strings.Join(a.restrictive, ", "), a.role)
		h.Fix = fmt.Sprintf("ALTER ROLE %s BYPASSRLS; (or exempt %s from policy %s)", role, a.role, strings.Join(a.restrictive, ", "))
	case a.owns && !a.forced, a.openPolicy:
		return h, false
	case a.owns:
		h.Why = fmt.Sprintf("row-level security is forced on it (FORCE ROW LEVEL SECURITY), so even its owner %s sees only what a policy allows", a.role)
		h.Fix = ReadPolicySQL(a.table, a.role)
	default:
		h.Why = fmt.Sprintf("row-level security is on and no policy lets role %s read every row (%s)", a.role, policyNote(a.policies))
		h.Fix = ReadPolicySQL(a.table, a.role)
	}
	return h, true
}

func policyNote(policies []string) string {
	if len(policies) == 0 {
		return "the table has no policies, so the role sees no rows"
	}
	return "policies: " + strings.Join(policies, ", ")
}

// RLSTables lists the source tables that have row-level security enabled.
func RLSTables(ctx context.Context, db DB) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT t.name FROM unnest($1::text[]) t(name)
		JOIN pg_class c ON c.oid = to_regclass(t.name) WHERE c.relrowsecurity ORDER BY t.name`, tableNames())
	if err != nil {
		return nil, fmt.Errorf("find the source tables with row-level security: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("find the source tables with row-level security: %w", err)
	}
	return names, nil
}

// grantReadPolicies creates the read policy for role on each table that hides rows from it
// and that the connecting role owns; the rest are left for the visibility check to report.
func grantReadPolicies(ctx context.Context, db DB, role string) ([]string, error) {
	hidden, err := HiddenTables(ctx, db, role)
	if err != nil {
		return nil, err
	}
	var done []string
	for _, h := range hidden {
		if !strings.HasPrefix(h.Fix, "CREATE POLICY") {
			continue
		}
		var mayCreate, exists bool
		err := db.QueryRow(ctx, `SELECT pg_has_role(current_user, c.relowner, 'USAGE'),
				EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = $2)
			FROM pg_class c WHERE c.oid = $1::regclass`, h.Table, ReadPolicyName).Scan(&mayCreate, &exists)
		if err != nil {
			return done, fmt.Errorf("look up the owner of %s: %w", h.Table, err)
		}
		if !mayCreate || exists {
			continue // an existing policy of that name is a DBA's: the check names the problem
		}
		if _, err := db.Exec(ctx, strings.TrimSuffix(h.Fix, ";")); err != nil {
			return done, fmt.Errorf("create the read policy on %s: %w", h.Table, err)
		}
		done = append(done, fmt.Sprintf("created policy %s on %s: role %s reads every row despite row-level security", ReadPolicyName, h.Table, role))
	}
	return done, nil
}

var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// QuoteIdent quotes a role name for SQL unless it is a plain lower-case identifier.
func QuoteIdent(name string) string {
	if plainIdent.MatchString(name) {
		return name
	}
	return pgx.Identifier{name}.Sanitize()
}

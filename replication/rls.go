package replication

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
)

// Row-level security filters every query of a role that is not the table's owner (or is, when
// the table forces it) and has no BYPASSRLS. On Supabase the policies match the signed-in
// user's JWT claims, which a service connection never carries, so such a role sees no rows at
// all, and metrics computed from that view are zeros, not errors. Logical decoding is not
// filtered, so the stream keeps naming students whose rows the queries cannot see. Hence: the
// sync reads every row of the progress model's tables, or it does not compute anything.

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
	return fmt.Sprintf("%s: %s; fix: %s", h.Table, h.Why, h.Fix)
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
	return readPolicySQL(ReadPolicyName, table, role)
}

func readPolicySQL(name, table, role string) string {
	return fmt.Sprintf("CREATE POLICY %s ON %s FOR SELECT TO %s USING (true);", QuoteIdent(name), table, QuoteIdent(role))
}

// readPolicyFor names the read policy for role on a table that has the given policies: the
// usual name, unless a policy of that name already exists there (for another role).
func readPolicyFor(table, role string, policies []string) string {
	name := ReadPolicyName
	if slices.Contains(policies, name) {
		name += "_" + role
	}
	return readPolicySQL(name, table, role)
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

// HiddenTables lists the model's tables that role (empty: the connecting role) would see only
// in part. A table is read in full when the role may select from it and row-level security
// is off, or the role bypasses it (superuser, BYPASSRLS), or owns the table and RLS is not
// forced, or a permissive SELECT policy USING (true) applies to it and no restrictive one
// narrows it. Tables that do not exist are left to the publication check.
func HiddenTables(ctx context.Context, db DB, m *model.Model, role string) ([]HiddenTable, error) {
	rows, err := db.Query(ctx, visibilitySQL, m.TableNames(), role)
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
// of the model's tables; nothing may be computed from such a view.
func CheckVisibility(ctx context.Context, db DB, m *model.Model) error {
	hidden, err := HiddenTables(ctx, db, m, "")
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
	case !a.rls || a.bypass || (a.owns && !a.forced):
		return h, false // no policy applies to this role at all
	case len(a.restrictive) > 0:
		// A restrictive policy narrows every permissive one: only bypassing helps.
		h.Why = fmt.Sprintf("row-level security is on and the restrictive policy %s narrows what role %s sees",
			strings.Join(a.restrictive, ", "), a.role)
		h.Fix = fmt.Sprintf("ALTER ROLE %s BYPASSRLS; (as a superuser; or the table's owner changes policy %s so that it does not apply to %s)",
			role, strings.Join(a.restrictive, ", "), a.role)
	case a.openPolicy:
		return h, false
	case a.owns:
		h.Why = fmt.Sprintf("row-level security is forced on it (FORCE ROW LEVEL SECURITY), so even its owner %s sees only what a policy allows", a.role)
		h.Fix = readPolicyFor(a.table, a.role, a.policies)
	default:
		h.Why = fmt.Sprintf("row-level security is on and no policy lets role %s read every row (%s)", a.role, policyNote(a.policies))
		h.Fix = readPolicyFor(a.table, a.role, a.policies)
	}
	return h, true
}

func policyNote(policies []string) string {
	if len(policies) == 0 {
		return "the table has no policies, so the role sees no rows"
	}
	return "policies: " + strings.Join(policies, ", ")
}

// ReadPolicies is the read policy role needs on each source table with row-level security
// enabled, named so that it does not clash with a policy already there.
func ReadPolicies(ctx context.Context, db DB, m *model.Model, role string) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT t.name, array(SELECT polname::text FROM pg_policy WHERE polrelid = c.oid)
		FROM unnest($1::text[]) t(name) JOIN pg_class c ON c.oid = to_regclass(t.name) WHERE c.relrowsecurity ORDER BY t.name`, m.TableNames())
	if err != nil {
		return nil, fmt.Errorf("find the source tables with row-level security: %w", err)
	}
	var out []string
	var table string
	var policies []string
	_, err = pgx.ForEachRow(rows, []any{&table, &policies}, func() error {
		out = append(out, readPolicyFor(table, role, policies))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find the source tables with row-level security: %w", err)
	}
	return out, nil
}

// AllReadPolicies is the read policy for role on every source table, for when the database
// cannot be asked which have row-level security.
func AllReadPolicies(m *model.Model, role string) []string {
	var out []string
	for _, t := range m.TableNames() {
		out = append(out, ReadPolicySQL(t, role))
	}
	return out
}

// grantReadPolicies creates the read policy for role on each table that hides rows from it
// and that the connecting role owns, and returns what it did and what is still hidden.
func grantReadPolicies(ctx context.Context, db DB, m *model.Model, role string) (done []string, left []HiddenTable, err error) {
	hidden, err := HiddenTables(ctx, db, m, role)
	if err != nil {
		return nil, nil, err
	}
	for _, h := range hidden {
		var mayCreate bool
		if strings.HasPrefix(h.Fix, "CREATE POLICY") {
			err := db.QueryRow(ctx, `SELECT pg_has_role(current_user, relowner, 'USAGE') FROM pg_class WHERE oid = $1::regclass`, h.Table).Scan(&mayCreate)
			if err != nil {
				return done, left, fmt.Errorf("look up the owner of %s: %w", h.Table, err)
			}
		}
		if !mayCreate {
			left = append(left, h)
			continue
		}
		if _, err := db.Exec(ctx, strings.TrimSuffix(h.Fix, ";")); err != nil {
			return done, left, fmt.Errorf("create the read policy on %s: %w", h.Table, err)
		}
		done = append(done, fmt.Sprintf("created a read policy on %s: role %s reads every row despite row-level security (%s)", h.Table, h.Role, h.Fix))
	}
	return done, left, nil
}

// ErrSourceBusy says a migration (or any other holder of a strong lock) kept the source
// tables busy for longer than a read waits; the caller tries again later.
var ErrSourceBusy = errors.New("the source tables are locked by another session (a migration?)")

// ReadComplete runs read in one transaction that holds ACCESS SHARE locks on the source tables
// and has found every row visible to the connecting role. Enabling row-level security and
// creating or dropping a policy need a lock that conflicts with those, so the view read sees is
// the view that was tested, however the policies change meanwhile. A partial view is a
// *HiddenRowsError and read does not run.
//
// The locks are taken with NOWAIT and never waited for while others are held: a reader that
// waits for one table while holding another could deadlock a migration, or hold up every
// session queued behind it. A busy table means a short pause and another try, up to
// busyPatience, then ErrSourceBusy.
func ReadComplete(ctx context.Context, db *pgxpool.Pool, m *model.Model, read func(tx pgx.Tx) error) error {
	wait := 50 * time.Millisecond
	deadline := time.Now().Add(busyPatience)
	for {
		err := readComplete(ctx, db, m, read)
		if !isLockNotAvailable(err) {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %v", ErrSourceBusy, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// busyPatience is how long ReadComplete keeps trying while a source table is locked.
const busyPatience = 30 * time.Second

func readComplete(ctx context.Context, db *pgxpool.Pool, m *model.Model, read func(tx pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, db, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		// First without locks, so a missing grant is reported with its fix (LOCK would only
		// say "permission denied"); then again under the locks, which is what counts.
		if err := CheckVisibility(ctx, tx, m); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(m.TableNames(), ", ")+" IN ACCESS SHARE MODE NOWAIT"); err != nil {
			return fmt.Errorf("lock the source tables for reading: %w", err)
		}
		if err := CheckVisibility(ctx, tx, m); err != nil {
			return err
		}
		return read(tx)
	})
}

func isLockNotAvailable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55P03"
}

var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// QuoteIdent quotes a role name for SQL unless it is a plain lower-case identifier.
func QuoteIdent(name string) string {
	if plainIdent.MatchString(name) {
		return name
	}
	return pgx.Identifier{name}.Sanitize()
}

// CompleteView computes students' metrics through the progress model only from a complete
// view of the model's tables (ReadComplete): where rows are hidden it returns a
// *HiddenRowsError instead of values.
type CompleteView struct {
	DB    *pgxpool.Pool
	Model *model.Model
}

// ForStudents is Model.ForStudents over a complete view.
func (v CompleteView) ForStudents(ctx context.Context, ids []uuid.UUID) (out []metrics.Student, err error) {
	err = ReadComplete(ctx, v.DB, v.Model, func(tx pgx.Tx) error {
		out, err = v.Model.ForStudents(ctx, tx, ids)
		return err
	})
	return out, err
}

// Page is Model.Page over a complete view.
func (v CompleteView) Page(ctx context.Context, after uuid.UUID, limit int) (out []metrics.Student, err error) {
	err = ReadComplete(ctx, v.DB, v.Model, func(tx pgx.Tx) error {
		out, err = v.Model.Page(ctx, tx, after, limit)
		return err
	})
	return out, err
}

// Explain is one student's values and the model's rows behind them, read together over a
// complete view. It returns model.ErrNoStudent for an id the students table does not have.
func (v CompleteView) Explain(ctx context.Context, id uuid.UUID) (student metrics.Student, rows []model.TableRows, err error) {
	err = ReadComplete(ctx, v.DB, v.Model, func(tx pgx.Tx) error {
		if rows, err = v.Model.RowsOf(ctx, tx, id); err != nil {
			return err
		}
		students, err := v.Model.ForStudents(ctx, tx, []uuid.UUID{id})
		if err == nil && len(students) == 1 {
			student = students[0]
		}
		return err
	})
	return student, rows, err
}

package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics/model"
)

// Names identify the publication and slot of one deployment.
type Names struct {
	Slot        string
	Publication string
}

// SetupSQL is what Setup runs, for a DBA to review and run by hand. The publication comes
// before the slot: decoding with a publication created later fails.
//
// Every table but the students table gets REPLICA IDENTITY FULL here, since a delete must name
// its student and the SQL cannot know whether the key is in the primary key; Setup itself
// asks the catalog and leaves a table whose identity already carries its keys alone.
func SetupSQL(n Names, m *model.Model) []string {
	stmts := []string{fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s;", n.Publication, strings.Join(m.TableNames(), ", "))}
	for _, t := range m.Tables[1:] {
		stmts = append(stmts, identityFix(t.Name)+";")
	}
	return append(stmts, fmt.Sprintf("SELECT pg_create_logical_replication_slot('%s', 'pgoutput');", n.Slot))
}

// RoleSQL creates a least-privilege role for the service: it logs in and replicates and reads
// the model's tables; with the state schema it owns (state.SchemaSQL), nothing else. The
// publication and replica identities (SetupSQL) stay with the tables' owner. Each table of
// policies (ReadPolicies) give it read access to the tables with row-level security: without
// them the role sees no rows there.
func RoleSQL(role string, m *model.Model, policies []string) []string {
	quoted := QuoteIdent(role)
	stmts := []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN REPLICATION PASSWORD 'choose-a-strong-password';", quoted),
		fmt.Sprintf("GRANT USAGE ON SCHEMA public TO %s;", quoted),
		fmt.Sprintf("GRANT SELECT ON %s TO %s;", strings.Join(m.TableNames(), ", "), quoted),
	}
	return append(stmts, policies...)
}

// DB is what setup and the visibility check need of a database: *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all have it.
type DB interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SetupReport says what Setup changed.
type SetupReport struct {
	Done []string // one line per change made
	// Added are the tables added to a publication that existed: their changes before now
	// were never streamed.
	Added []string
	// Hidden are the tables whose rows the read role still cannot see in full, because the
	// connecting role may not create the policy: a DBA runs each one's Fix.
	Hidden []HiddenTable
}

// Setup creates the publication (or adds the tables it lacks), the replica identities and,
// on each source table with row-level security that it owns, a read policy for readRole
// (empty: the connecting role). It is idempotent. The slot is left to the stream, which
// creates it with a snapshot for the first backfill; CreateSlot makes it without one.
func Setup(ctx context.Context, db *pgxpool.Pool, n Names, m *model.Model, readRole string) (SetupReport, error) {
	var rep SetupReport
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, n.Publication).Scan(&exists); err != nil {
		return rep, fmt.Errorf("look up publication %s: %w", n.Publication, err)
	}
	missing, err := MissingTables(ctx, db, m, n.Publication)
	if err != nil {
		return rep, err
	}
	switch {
	case !exists:
		stmt := SetupSQL(n, m)[0]
		_, err := db.Exec(ctx, stmt)
		switch {
		case isDuplicateObject(err):
			// Another instance starting at the same moment created it first.
		case err != nil:
			return rep, explainPrivilege(fmt.Errorf("create publication %s: %w", n.Publication, err), stmt)
		default:
			rep.Done = append(rep.Done, "created publication "+n.Publication)
		}
	case len(missing) > 0:
		stmt := fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s", n.Publication, strings.Join(missing, ", "))
		if _, err := db.Exec(ctx, stmt); err != nil && !isDuplicateObject(err) {
			return rep, explainPrivilege(fmt.Errorf("add %s to publication %s: %w", strings.Join(missing, ", "), n.Publication, err), stmt)
		}
		rep.Done = append(rep.Done, fmt.Sprintf("added %s to publication %s", strings.Join(missing, ", "), n.Publication))
		rep.Added = missing
	}
	gaps, err := PublicationGaps(ctx, db, m, n.Publication)
	if err != nil {
		return rep, err
	}
	for _, g := range gaps {
		for _, stmt := range g.Fix {
			if _, err := db.Exec(ctx, strings.TrimSuffix(stmt, ";")); err != nil {
				return rep, explainPrivilege(fmt.Errorf("make publication %s publish every change (%s): %w", n.Publication, g.Problem, err), stmt)
			}
		}
		rep.Done = append(rep.Done, fmt.Sprintf("publication %s: fixed that %s", n.Publication, g.Problem))
	}
	weak, err := WeakIdentities(ctx, db, m)
	if err != nil {
		return rep, err
	}
	for _, w := range weak {
		if _, err := db.Exec(ctx, w.Fix); err != nil {
			return rep, explainPrivilege(fmt.Errorf("set replica identity of %s: %w", w.Table, err), w.Fix)
		}
		rep.Done = append(rep.Done, fmt.Sprintf("set REPLICA IDENTITY FULL on %s (deletes must name the student)", w.Table))
	}
	done, left, err := grantReadPolicies(ctx, db, m, readRole)
	rep.Done, rep.Hidden = append(rep.Done, done...), left
	return rep, err
}

// WeakIdentity is a table whose replica identity would leave deletes without the student (or
// key) columns, and the statement that fixes it.
type WeakIdentity struct{ Table, Fix string }

// WeakIdentities lists the model's tables whose replica identity would leave deletes without
// the student (or key) columns: Setup fixes them, check reports them.
func WeakIdentities(ctx context.Context, db *pgxpool.Pool, m *model.Model) ([]WeakIdentity, error) {
	var out []WeakIdentity
	for _, t := range m.Tables {
		ok, err := identityCovers(ctx, db, t)
		if err != nil {
			return nil, err
		}
		if !ok {
			out = append(out, WeakIdentity{Table: t.Name, Fix: identityFix(t.Name)})
		}
	}
	return out, nil
}

// identityFix makes a table's deletes carry every column: the student column need not be in
// the primary key.
func identityFix(table string) string {
	return fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL", table)
}

// identityCovers reports whether the table's replica identity already makes deletes carry its
// student or key columns: FULL, the primary key (the default) or a DBA's identity index that
// includes them.
func identityCovers(ctx context.Context, db *pgxpool.Pool, t model.Table) (bool, error) {
	var identity string
	var indexed []string
	err := db.QueryRow(ctx, `SELECT c.relreplident::text, coalesce(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}')
		FROM pg_class c
		LEFT JOIN pg_index i ON i.indrelid = c.oid AND CASE c.relreplident WHEN 'i' THEN i.indisreplident WHEN 'd' THEN i.indisprimary ELSE false END
		LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
		WHERE c.oid = $1::regclass GROUP BY c.relreplident`, t.Name).Scan(&identity, &indexed)
	if err != nil {
		return false, fmt.Errorf("read replica identity of %s: %w", t.Name, err)
	}
	switch identity {
	case "f":
		return true, nil
	case "i", "d":
		for _, k := range t.Columns() {
			if !slices.Contains(indexed, k) {
				return false, nil
			}
		}
		return true, nil
	}
	return false, nil
}

// MissingTables lists the source tables the publication does not publish (all six when it
// does not exist).
func MissingTables(ctx context.Context, db DB, m *model.Model, publication string) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, publication)
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list tables of publication %s: %w", publication, err)
	}
	have := map[string]bool{}
	for _, p := range published {
		have[p] = true
	}
	var missing []string
	for _, t := range m.Tables {
		if !have[t.Name] {
			missing = append(missing, t.Name)
		}
	}
	return missing, nil
}

// PublicationGap is something a publication leaves out of the stream for the source tables,
// with the SQL that closes it.
type PublicationGap struct {
	Problem string
	Fix     []string
}

// PublicationGaps lists the changes of the source tables that the publication would not send:
// operations it does not publish (publish = ...), and row filters or column lists on a table.
// A change the stream never sends is a change the sync never sees.
func PublicationGaps(ctx context.Context, db DB, m *model.Model, publication string) ([]PublicationGap, error) {
	var ins, upd, del, trunc bool
	err := db.QueryRow(ctx, `SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1`, publication).
		Scan(&ins, &upd, &del, &trunc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil // no publication: reported as missing tables
	}
	if err != nil {
		return nil, fmt.Errorf("read publication %s: %w", publication, err)
	}
	var gaps []PublicationGap
	if !(ins && upd && del && trunc) {
		gaps = append(gaps, PublicationGap{Problem: "it does not publish every kind of change (publish = insert, update, delete, truncate)",
			Fix: []string{fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate');", publication)}})
	}
	rows, err := db.Query(ctx, `SELECT n.nspname || '.' || c.relname, pr.prqual IS NOT NULL, pr.prattrs IS NOT NULL
		FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1 AND n.nspname || '.' || c.relname = ANY($2) AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)
		ORDER BY 1`, publication, m.TableNames())
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", publication, err)
	}
	var table string
	var filtered, columns bool
	_, err = pgx.ForEachRow(rows, []any{&table, &filtered, &columns}, func() error {
		what := "a row filter (WHERE)"
		if columns {
			what = "a column list"
		}
		gaps = append(gaps, PublicationGap{Problem: fmt.Sprintf("it publishes %s with %s", table, what),
			Fix: []string{fmt.Sprintf("ALTER PUBLICATION %s DROP TABLE %s;", publication, table), fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", publication, table)}})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the tables of publication %s: %w", publication, err)
	}
	return gaps, nil
}

// CheckPublication returns a *MisconfiguredError when the publication leaves changes of the
// source tables out of the stream.
func CheckPublication(ctx context.Context, db DB, m *model.Model, publication string) error {
	gaps, err := PublicationGaps(ctx, db, m, publication)
	if err != nil {
		return err
	}
	// A table of the model dropped from the publication (or dropped and created again, which
	// leaves it out) streams nothing more. A publication that is gone is the stream's to
	// re-create.
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, publication).Scan(&exists); err != nil {
		return fmt.Errorf("look up publication %s: %w", publication, err)
	}
	if exists {
		missing, err := MissingTables(ctx, db, m, publication)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			gaps = append(gaps, PublicationGap{Problem: "it does not publish " + strings.Join(missing, ", "),
				Fix: []string{fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", publication, strings.Join(missing, ", "))}})
		}
	}
	if len(gaps) == 0 {
		return nil
	}
	var lines []string
	for _, g := range gaps {
		lines = append(lines, fmt.Sprintf("%s (fix: %s)", g.Problem, strings.Join(g.Fix, " ")))
	}
	return &MisconfiguredError{Problem: fmt.Sprintf("publication %s would leave changes out of the stream: %s", publication, strings.Join(lines, "; "))}
}

// explainPrivilege adds the SQL to hand a DBA when the role may not run it.
func explainPrivilege(err error, stmt string) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fmt.Errorf("%w; ask a database owner to run: %s; (progress-sync setup --print-sql prints all of it)", err, stmt)
	}
	return err
}

// Slot is the state of a replication slot as pg_replication_slots reports it.
type Slot struct {
	Exists            bool
	Database          string // the database the slot decodes
	InThisDatabase    bool
	Active            bool
	ActivePID         int
	WALStatus         string // reserved, extended, unreserved, lost
	ConfirmedFlushLSN string
	RetainedBytes     int64 // WAL the slot keeps the server from recycling
	LagBytes          int64 // between the server's WAL end and the confirmed position
}

// ReadSlot reports the slot named name.
func ReadSlot(ctx context.Context, db DB, name string) (Slot, error) {
	s := Slot{}
	err := db.QueryRow(ctx, `SELECT coalesce(database, ''), coalesce(database = current_database(), false), active, coalesce(active_pid, 0), coalesce(wal_status, ''),
			coalesce(confirmed_flush_lsn::text, ''),
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, name).
		Scan(&s.Database, &s.InThisDatabase, &s.Active, &s.ActivePID, &s.WALStatus, &s.ConfirmedFlushLSN, &s.RetainedBytes, &s.LagBytes)
	if errors.Is(err, pgx.ErrNoRows) {
		return Slot{}, nil
	}
	if err != nil {
		return Slot{}, fmt.Errorf("read slot %s: %w", name, err)
	}
	s.Exists = true
	return s, nil
}

// inThisDatabase says what is wrong when a slot of this name decodes another database: slot
// names are shared by every database of a server.
func (s Slot) inThisDatabase(name string) error {
	if !s.Exists || s.InThisDatabase {
		return nil
	}
	return &MisconfiguredError{Problem: fmt.Sprintf("replication slot %s belongs to database %q of this server, not to the one in DATABASE_URL "+
		"(slot names are shared by every database of a server): give this deployment its own slot with PROGRESS_SYNC_SLOT", name, s.Database)}
}

// MinServerVersion is the oldest PostgreSQL the service supports. Older servers send an
// empty BEGIN/COMMIT for every transaction, the service's own checkpoint writes included, and
// answering each with another checkpoint write never ends. Supabase runs 15 and 17.
const MinServerVersion = 15

// CheckServer returns a *MisconfiguredError for a server older than MinServerVersion.
func CheckServer(ctx context.Context, db *pgxpool.Pool) error {
	var num int
	var version string
	if err := db.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version')`).Scan(&num, &version); err != nil {
		return fmt.Errorf("read the server version: %w", err)
	}
	if num < MinServerVersion*10000 {
		return &MisconfiguredError{Problem: fmt.Sprintf("PostgreSQL %d or newer is needed; this server runs %s", MinServerVersion, version)}
	}
	return nil
}

// CheckSlot returns a *MisconfiguredError when the slot name is taken in another database.
func CheckSlot(ctx context.Context, db *pgxpool.Pool, name string) error {
	s, err := ReadSlot(ctx, db, name)
	if err != nil {
		return err
	}
	return s.inThisDatabase(name)
}

// CreateSlot creates the logical slot without a snapshot (for setup run ahead of the service).
func CreateSlot(ctx context.Context, db *pgxpool.Pool, name string) (bool, error) {
	s, err := ReadSlot(ctx, db, name)
	if err != nil || s.Exists {
		return false, err
	}
	if _, err := db.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, name); err != nil {
		return false, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	return true, nil
}

// DropSlot drops the slot so the server stops retaining WAL for it. A slot in use by a running
// service is refused unless force, which first ends that walsender.
func DropSlot(ctx context.Context, db *pgxpool.Pool, name string, force bool) (bool, error) {
	s, err := ReadSlot(ctx, db, name)
	if err != nil || !s.Exists {
		return false, err
	}
	if s.Active {
		if !force {
			return false, fmt.Errorf("replication slot %s is in use by process %d (a running progress-sync): stop it first, or pass --force", name, s.ActivePID)
		}
		if _, err := db.Exec(ctx, `SELECT pg_terminate_backend($1)`, s.ActivePID); err != nil {
			return false, fmt.Errorf("end the walsender of slot %s: %w", name, err)
		}
	}
	// A terminated walsender releases the slot a moment later.
	_, err = db.Exec(ctx, `DO $$ BEGIN
		FOR i IN 1..100 LOOP
			BEGIN PERFORM pg_drop_replication_slot(`+quoteLiteral(name)+`); RETURN;
			EXCEPTION WHEN object_in_use THEN PERFORM pg_sleep(0.1); END;
		END LOOP;
		PERFORM pg_drop_replication_slot(`+quoteLiteral(name)+`);
	END $$`)
	if err != nil {
		return false, fmt.Errorf("drop replication slot %s: %w", name, err)
	}
	return true, nil
}

// DropPublication drops the publication.
func DropPublication(ctx context.Context, db *pgxpool.Pool, name string) error {
	if _, err := db.Exec(ctx, "DROP PUBLICATION IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s: %w", name, err)
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// isDuplicateObject reports that the object exists already: duplicate_object (42710) when
// another instance's setup made it a moment earlier, unique_violation (23505) on the catalog
// when both made it at the same instant.
func isDuplicateObject(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505")
}

// Package state owns progress-sync's durable state, the progress_sync schema of the source
// database (docs/contract.md §7), and is the only package with SQL against it: the checkpoint
// and the pending students of each slot (Journal), the email → contact id cache, the values
// last pushed to each contact, the students that could not be written, with why, and the
// summary that status and the metrics read.
//
// Keeping it beside the data (not in a file or a volume) lets a Helm pod move and a systemd host
// be replaced without losing what was synced, and lets the streaming service record a student
// and its replication checkpoint in one transaction.
package state

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Schema is the PostgreSQL schema holding the state.
const Schema = "progress_sync"

// migrationLock serializes migrations across processes starting together.
const migrationLock = 7_311_001

// SchemaSQL creates the state schema owned by role (quoted as SQL needs it), for a DBA to run
// ahead of a service that may not create schemas itself.
func SchemaSQL(role string) string {
	return fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s AUTHORIZATION %s;", Schema, role)
}

// Store reads and writes the sync state.
type Store struct {
	db *pgxpool.Pool
	// students is the progress model's students table, which links point into: a link
	// holds while its student exists with the linked email.
	students model.Students
	// absent marks a read-only store over a database the sync never wrote to: every read
	// finds nothing.
	absent   bool
	readOnly bool
}

// Open applies any pending migrations and returns a Store on db, whose links point into the
// students table of the progress model.
func Open(ctx context.Context, db *pgxpool.Pool, students model.Students) (*Store, error) {
	if err := Migrate(ctx, db); err != nil {
		return nil, err
	}
	return &Store{db: db, students: students}, nil
}

// OpenReadOnly returns a Store that never writes, for dry runs: it neither migrates nor records.
func OpenReadOnly(ctx context.Context, db *pgxpool.Pool, students model.Students) (*Store, error) {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, Schema+".contact_links").Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for the sync state: %w", err)
	}
	return &Store{db: db, students: students, absent: !exists, readOnly: true}, nil
}

// Migrate brings the progress_sync schema to the latest version. It is safe to run from
// several processes at once.
func Migrate(ctx context.Context, db *pgxpool.Pool) error {
	steps, err := loadMigrations()
	if err != nil {
		return err
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrationLock); err != nil {
		return fmt.Errorf("migrate state: lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock) //nolint:errcheck
	// CREATE SCHEMA IF NOT EXISTS checks the right to create schemas even when the schema
	// exists, and a least-privilege role only owns its schema: create it only when missing.
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regnamespace($1) IS NOT NULL`, Schema).Scan(&exists); err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, `CREATE SCHEMA `+Schema); err != nil {
			return fmt.Errorf("migrate state: create schema %s (the role needs CREATE on the database, or a DBA runs the SQL of `setup --print-sql`): %w", Schema, err)
		}
	}
	reset, err := actAsSchemaOwner(ctx, conn)
	if err != nil {
		return err
	}
	defer reset()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+Schema+`.schema_migrations (
			version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate state: %w", err)
	}
	var current int
	if err := conn.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM `+Schema+`.schema_migrations`).Scan(&current); err != nil {
		return fmt.Errorf("migrate state: read version: %w", err)
	}
	for _, m := range steps {
		if m.version <= current {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO `+Schema+`.schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("migrate state: apply %s: %w", m.name, err)
		}
	}
	return nil
}

// actAsSchemaOwner makes the connection act as the owner of the state schema (the service's
// role) when it may: a DBA who runs `setup` as the tables' owner must not leave tables the
// service may not write. reset undoes it before the connection goes back to the pool.
func actAsSchemaOwner(ctx context.Context, conn *pgxpool.Conn) (reset func(), err error) {
	var asOwner bool
	if err := conn.QueryRow(ctx, `SELECT n.nspowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)
			AND pg_has_role(current_user, n.nspowner, 'MEMBER') FROM pg_namespace n WHERE n.nspname = $1`, Schema).Scan(&asOwner); err != nil {
		return nil, fmt.Errorf("migrate state: %w", err)
	}
	if !asOwner {
		return func() {}, nil
	}
	if _, err := conn.Exec(ctx, `SELECT set_config('role', (SELECT r.rolname FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
			WHERE n.nspname = $1), false)`, Schema); err != nil {
		return nil, fmt.Errorf("migrate state: act as the owner of schema %s: %w", Schema, err)
	}
	return func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `RESET ROLE`) }, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	entries, err := fs.ReadDir(migrations, "migrations")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration %s: name must start with a version number", e.Name())
		}
		b, err := migrations.ReadFile("migrations/" + e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	return out, nil
}

// Link records which contact a student's email resolved to.
type Link struct {
	StudentID uuid.UUID
	Email     string // normalized: trimmed, lower-case
	ContactID string
	Primary   bool // Email is the contact's primary address
}

// Links returns the cached links of the given students.
func (s *Store) Links(ctx context.Context, students []uuid.UUID) (map[uuid.UUID]Link, error) {
	if s.absent {
		return map[uuid.UUID]Link{}, nil
	}
	rows, err := s.db.Query(ctx, `SELECT student_id, email, contact_id, is_primary
		FROM `+Schema+`.contact_links WHERE student_id = ANY($1)`, students)
	if err != nil {
		return nil, fmt.Errorf("read contact links: %w", err)
	}
	links, err := pgx.CollectRows(rows, scanLink)
	if err != nil {
		return nil, fmt.Errorf("read contact links: %w", err)
	}
	out := make(map[uuid.UUID]Link, len(links))
	for _, l := range links {
		out[l.StudentID] = l
	}
	return out, nil
}

// Claimants returns the links to the given contacts whose student still exists with the
// linked email: the students that currently claim each contact. Links left behind by deleted
// students or changed emails are ignored.
func (s *Store) Claimants(ctx context.Context, contactIDs []string) ([]Link, error) {
	if s.absent {
		return nil, nil
	}
	st := s.students
	rows, err := s.db.Query(ctx, `SELECT l.student_id, l.email, l.contact_id, l.is_primary, u.`+st.Email+`
		FROM `+Schema+`.contact_links l JOIN `+st.Table+` u ON u.`+st.ID+` = l.student_id
		WHERE l.contact_id = ANY($1) AND `+metrics.EmailCandidatesSQL("u."+st.Email, "array[l.email]"), contactIDs)
	if err != nil {
		return nil, fmt.Errorf("read contact claimants: %w", err)
	}
	var claimants []Link
	var l Link
	var email *string // the student's email now, which the link must still match
	_, err = pgx.ForEachRow(rows, []any{&l.StudentID, &l.Email, &l.ContactID, &l.Primary, &email}, func() error {
		if email != nil && metrics.NormalizeEmail(*email) == l.Email {
			claimants = append(claimants, l)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read contact claimants: %w", err)
	}
	return claimants, nil
}

func scanLink(row pgx.CollectableRow) (Link, error) {
	var l Link
	err := row.Scan(&l.StudentID, &l.Email, &l.ContactID, &l.Primary)
	return l, err
}

// Departed lists the students whose link outlived them: deleted from the students table since
// their contact was found. Their contacts still hold what was last synced.
func (s *Store) Departed(ctx context.Context) ([]uuid.UUID, error) {
	if s.absent {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `SELECT l.student_id FROM `+Schema+`.contact_links l
		WHERE NOT EXISTS (SELECT 1 FROM `+s.students.Table+` u WHERE u.`+s.students.ID+` = l.student_id) ORDER BY l.student_id`)
	if err != nil {
		return nil, fmt.Errorf("read links of deleted students: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("read links of deleted students: %w", err)
	}
	return ids, nil
}

// Pushed returns the values last known to be on each of the given contacts.
func (s *Store) Pushed(ctx context.Context, contactIDs []string) (map[string]map[string]string, error) {
	records, err := s.readRecords(ctx, contactIDs)
	if err != nil {
		return nil, err
	}
	out := make(map[string]map[string]string, len(records))
	for id, r := range records {
		out[id] = r.Properties
	}
	return out, nil
}

// Record is what the sync state holds about one contact's values: the values last known to be
// on it, and when that was last written (on the database's clock).
type Record struct {
	Properties map[string]string
	At         time.Time
}

// Records returns the Record of each of the given contacts, and the database's clock now.
func (s *Store) Records(ctx context.Context, contactIDs []string) (map[string]Record, time.Time, error) {
	var now time.Time
	if err := s.db.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
		return nil, now, fmt.Errorf("read the database clock: %w", err)
	}
	out, err := s.readRecords(ctx, contactIDs)
	return out, now, err
}

func (s *Store) readRecords(ctx context.Context, contactIDs []string) (map[string]Record, error) {
	out := map[string]Record{}
	if s.absent {
		return out, nil
	}
	rows, err := s.db.Query(ctx, `SELECT contact_id, properties, pushed_at FROM `+Schema+`.pushed_values WHERE contact_id = ANY($1)`, contactIDs)
	if err != nil {
		return nil, fmt.Errorf("read pushed values: %w", err)
	}
	var id string
	var r Record
	_, err = pgx.ForEachRow(rows, []any{&id, &r.Properties, &r.At}, func() error {
		out[id] = r
		r.Properties = nil
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read pushed values: %w", err)
	}
	return out, nil
}

// Unsettle forgets, for each contact, the recorded values of the properties about to be
// written (contact id -> property names). A write HubSpot applied but that was never recorded
// (a crash, a timeout after HubSpot took it) must not leave the record claiming the old
// value: a later change back to that value would then look like no change at all. Until
// Record stores the new values, the properties are unknown and are sent again.
func (s *Store) Unsettle(ctx context.Context, properties map[string][]string) error {
	if s.readOnly {
		return errors.New("unsettle pushed values: the store is read-only (dry run)")
	}
	if len(properties) == 0 {
		return nil
	}
	arg, err := json.Marshal(properties)
	if err != nil {
		return fmt.Errorf("unsettle pushed values: %w", err)
	}
	_, err = s.db.Exec(ctx, `UPDATE `+Schema+`.pushed_values p
		SET properties = p.properties - ARRAY(SELECT jsonb_array_elements_text(x.value))
		FROM jsonb_each($1::jsonb) x WHERE p.contact_id = x.key`, arg)
	if err != nil {
		return fmt.Errorf("unsettle pushed values: %w", err)
	}
	return nil
}

// Kind classifies a student that could not be written.
type Kind string

// The kinds of problem.
const (
	Unmatched Kind = "unmatched" // no usable email, or no HubSpot contact with it
	Rejected  Kind = "rejected"  // HubSpot refused a value
	Conflict  Kind = "conflict"  // another student owns the contact the email resolves to
)

// Problem is a student that could not be written, and why.
type Problem struct {
	StudentID  uuid.UUID
	Email      string
	Kind       Kind
	Reason     string
	ContactID  string
	Properties map[string]string // the refused values, for Rejected
	FirstSeen  time.Time
	LastTried  time.Time
	Attempts   int
}

// Pushed is the set of values now on a contact, after a write or as first read.
type Pushed struct {
	ContactID  string
	StudentID  uuid.UUID
	Properties map[string]string
}

// Outcome is what one batch of students did to HubSpot, recorded in one transaction.
type Outcome struct {
	Links     []Link
	DropLinks []string    // contacts HubSpot no longer has (deleted or merged away)
	Unlink    []Link      // links students left (their email changed); removed before Links are stored
	Forget    []uuid.UUID // students deleted from the database: their links and problems go
	Pushed    []Pushed    // merged into the values already recorded for each contact
	Problems  []Problem   // upserted; Attempts counts tries
	Synced    []uuid.UUID // students now equal on HubSpot: their problems are cleared
}

// Record writes an Outcome in one transaction.
func (s *Store) Record(ctx context.Context, o Outcome) error {
	if s.readOnly {
		return errors.New("record sync outcome: the store is read-only (dry run)")
	}
	b := &pgx.Batch{}
	queueLinks(b, o)
	if err := queueValues(b, o); err != nil {
		return err
	}
	if b.Len() == 0 {
		return nil
	}
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("record sync outcome: %w", err)
	}
	return nil
}

// queueLinks queues the outcome's changes to the contact links: removals first, so that a
// link re-made to the same contact survives.
func queueLinks(b *pgx.Batch, o Outcome) {
	if len(o.DropLinks) > 0 {
		b.Queue(`DELETE FROM `+Schema+`.contact_links WHERE contact_id = ANY($1)`, o.DropLinks)
		b.Queue(`DELETE FROM `+Schema+`.pushed_values WHERE contact_id = ANY($1)`, o.DropLinks)
	}
	for _, l := range o.Unlink {
		b.Queue(`DELETE FROM `+Schema+`.contact_links WHERE student_id = $1 AND contact_id = $2`, l.StudentID, l.ContactID)
	}
	if len(o.Forget) > 0 {
		b.Queue(`DELETE FROM `+Schema+`.contact_links WHERE student_id = ANY($1)`, o.Forget)
		b.Queue(`DELETE FROM `+Schema+`.problems WHERE student_id = ANY($1)`, o.Forget)
	}
	for _, l := range o.Links {
		b.Queue(`INSERT INTO `+Schema+`.contact_links (student_id, email, contact_id, is_primary) VALUES ($1, $2, $3, $4)
			ON CONFLICT (student_id) DO UPDATE SET email = excluded.email, contact_id = excluded.contact_id,
				is_primary = excluded.is_primary, resolved_at = now()`, l.StudentID, l.Email, l.ContactID, l.Primary)
	}
}

// queueValues queues the values now on contacts and the students' problems.
func queueValues(b *pgx.Batch, o Outcome) error {
	for _, p := range o.Pushed {
		props, err := json.Marshal(p.Properties)
		if err != nil {
			return fmt.Errorf("record pushed values: %w", err)
		}
		b.Queue(`INSERT INTO `+Schema+`.pushed_values (contact_id, student_id, properties) VALUES ($1, $2, $3)
			ON CONFLICT (contact_id) DO UPDATE SET student_id = excluded.student_id,
				properties = pushed_values.properties || excluded.properties, pushed_at = now()`, p.ContactID, p.StudentID, props)
	}
	if len(o.Synced) > 0 {
		b.Queue(`DELETE FROM `+Schema+`.problems WHERE student_id = ANY($1)`, o.Synced)
	}
	for _, p := range o.Problems {
		var props []byte
		if p.Properties != nil {
			var err error
			if props, err = json.Marshal(p.Properties); err != nil {
				return fmt.Errorf("record problem: %w", err)
			}
		}
		b.Queue(`INSERT INTO `+Schema+`.problems (student_id, email, kind, reason, contact_id, properties)
			VALUES ($1, $2, $3, $4, nullif($5, ''), $6)
			ON CONFLICT (student_id) DO UPDATE SET email = excluded.email, kind = excluded.kind, reason = excluded.reason,
				contact_id = excluded.contact_id, properties = excluded.properties,
				first_seen_at = CASE WHEN problems.kind = excluded.kind THEN problems.first_seen_at ELSE now() END,
				last_tried_at = now(), attempts = problems.attempts + 1`,
			p.StudentID, p.Email, string(p.Kind), p.Reason, p.ContactID, props)
	}
	return nil
}

// ProblemsOf returns the problems recorded for the given students: a push skips values HubSpot
// already refused, and reports again only what is new.
func (s *Store) ProblemsOf(ctx context.Context, students []uuid.UUID) (map[uuid.UUID]Problem, error) {
	out := map[uuid.UUID]Problem{}
	if s.absent {
		return out, nil
	}
	rows, err := s.db.Query(ctx, `SELECT student_id, email, kind, reason, coalesce(contact_id, ''), properties
		FROM `+Schema+`.problems WHERE student_id = ANY($1)`, students)
	if err != nil {
		return nil, fmt.Errorf("read problems: %w", err)
	}
	var p Problem
	var kind string
	_, err = pgx.ForEachRow(rows, []any{&p.StudentID, &p.Email, &kind, &p.Reason, &p.ContactID, &p.Properties}, func() error {
		p.Kind = Kind(kind)
		out[p.StudentID] = p
		p.Properties = nil
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read problems: %w", err)
	}
	return out, nil
}

// StaleUnmatched lists students without a contact, or in conflict over one, not tried for
// olderThan: their contact may have been created since (at checkout, say), or their rival
// may have left it (a student whose email changes away from a contact is no news to the
// students it was in conflict with).
func (s *Store) StaleUnmatched(ctx context.Context, olderThan time.Duration) ([]uuid.UUID, error) {
	rows, err := s.db.Query(ctx, `SELECT student_id FROM `+Schema+`.problems
		WHERE kind IN ('unmatched', 'conflict') AND last_tried_at < now() - $1::interval`, olderThan.String())
	if err != nil {
		return nil, fmt.Errorf("read unmatched students: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("read unmatched students: %w", err)
	}
	return ids, nil
}

// Problems lists the students that could not be written, of the given kinds (all when none
// given), oldest first.
func (s *Store) Problems(ctx context.Context, kinds ...Kind) ([]Problem, error) {
	return s.problems(ctx, kinds, time.Time{}, 0, -1)
}

// ProblemsSince lists the students that became problems of the given kinds (all when none
// given) at since or later, by the database's clock, oldest first: the alerts announce each
// new one. A student whose problem changed kind became a problem anew.
func (s *Store) ProblemsSince(ctx context.Context, since time.Time, kinds ...Kind) ([]Problem, error) {
	return s.problems(ctx, kinds, since, 0, -1)
}

// ProblemPage lists limit of the students that could not be written, of every kind, oldest
// first, skipping the first offset: the status page shows them a page at a time.
func (s *Store) ProblemPage(ctx context.Context, offset, limit int) ([]Problem, error) {
	return s.problems(ctx, nil, time.Time{}, offset, limit)
}

// problems reads the problems of the given kinds (all when none) first seen at since or
// later, in first-seen order; a negative limit reads them all.
func (s *Store) problems(ctx context.Context, kinds []Kind, since time.Time, offset, limit int) ([]Problem, error) {
	if s.absent {
		return nil, nil
	}
	ks := make([]string, len(kinds))
	for i, k := range kinds {
		ks[i] = string(k)
	}
	var lim *int
	if limit >= 0 {
		lim = &limit
	}
	rows, err := s.db.Query(ctx, `SELECT student_id, email, kind, reason, coalesce(contact_id, ''), properties,
			first_seen_at, last_tried_at, attempts
		FROM `+Schema+`.problems WHERE (cardinality($1::text[]) = 0 OR kind = ANY($1)) AND first_seen_at >= $4
		ORDER BY first_seen_at, student_id OFFSET $2 LIMIT $3`, ks, offset, lim, since)
	if err != nil {
		return nil, fmt.Errorf("read problems: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Problem, error) {
		var p Problem
		var kind string
		err := row.Scan(&p.StudentID, &p.Email, &kind, &p.Reason, &p.ContactID, &p.Properties, &p.FirstSeen, &p.LastTried, &p.Attempts)
		p.Kind = Kind(kind)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read problems: %w", err)
	}
	return out, nil
}

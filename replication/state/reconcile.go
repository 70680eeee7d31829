package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
)

// ReconcilePass is where one slot's reconcile stands: the pass under way (Running) or the last
// one completed, and what the pass has found so far.
type ReconcilePass struct {
	Pass        int64
	Running     bool
	After       uuid.UUID // the last student of the last page done (uuid.Nil: none yet)
	StartedAt   time.Time
	CompletedAt time.Time // the last complete pass, or when reconciling began
	// ContactsRead and StudentsDifferent count the pass so far; Differed counts, per
	// property, the contacts found holding another value than the database's.
	ContactsRead      int
	StudentsDifferent int
	Differed          map[string]int
	// Left is how many links remain after After in a running pass (with HubSpot's rate
	// limit, the pass's ETA). Summarize counts it; Load does not (the walk counts its own).
	Left int
}

// LinkedStudent is one link of the walk, with what the student's email is now.
type LinkedStudent struct {
	Link
	// Current is the student's normalized email now; Gone when the student was deleted.
	Current string
	Gone    bool
}

// Reconciliation is the durable side of one slot's reconcile.
type Reconciliation struct {
	db       *pgxpool.Pool
	slot     string
	students model.Students
}

// Reconciliation returns the reconcile state of slot.
func (s *Store) Reconciliation(slot string) *Reconciliation {
	return &Reconciliation{db: s.db, slot: slot, students: s.students}
}

// Load reads where the reconcile stands. The first time it is asked it records that
// reconciling began now, so the first pass comes one interval after the first start.
func (r *Reconciliation) Load(ctx context.Context) (ReconcilePass, error) {
	p, err := readReconcile(ctx, r.db, r.slot)
	if errors.Is(err, pgx.ErrNoRows) {
		if _, err = r.db.Exec(ctx, `INSERT INTO `+Schema+`.reconcile (slot, pass, completed_at) VALUES ($1, 0, now())
			ON CONFLICT (slot) DO NOTHING`, r.slot); err == nil {
			p, err = readReconcile(ctx, r.db, r.slot)
		}
	}
	if err != nil {
		return p, fmt.Errorf("load reconcile state: %w", err)
	}
	return p, nil
}

func readReconcile(ctx context.Context, db RowQuerier, slot string) (ReconcilePass, error) {
	var p ReconcilePass
	var after *uuid.UUID
	var started *time.Time
	err := db.QueryRow(ctx, `SELECT pass, after_student, started_at, completed_at, contacts_read, students_different, differed
		FROM `+Schema+`.reconcile WHERE slot = $1`, slot).
		Scan(&p.Pass, &after, &started, &p.CompletedAt, &p.ContactsRead, &p.StudentsDifferent, &p.Differed)
	if err != nil {
		return p, err
	}
	if after != nil {
		p.Running, p.After = true, *after
	}
	if started != nil {
		p.StartedAt = *started
	}
	if p.Differed == nil {
		p.Differed = map[string]int{}
	}
	return p, nil
}

// Left counts the links after the given student: what a pass standing there has still to read.
func (r *Reconciliation) Left(ctx context.Context, after uuid.UUID) (int, error) {
	return linksAfter(ctx, r.db, after)
}

func linksAfter(ctx context.Context, db RowQuerier, after uuid.UUID) (int, error) {
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM `+Schema+`.contact_links WHERE student_id > $1`, after).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the links left: %w", err)
	}
	return n, nil
}

// BackdateReconcile moves the end of slot's last complete pass back by d, so that the next
// pass falls due sooner (the service looks for a due pass once a minute), and returns that
// pass's number. It fails while a pass is under way. For tools and benchmarks.
func BackdateReconcile(ctx context.Context, db RowQuerier, slot string, d time.Duration) (int64, error) {
	var next int64
	err := db.QueryRow(ctx, `UPDATE `+Schema+`.reconcile SET completed_at = completed_at - $2::interval
		WHERE slot = $1 AND after_student IS NULL RETURNING pass + 1`, slot, d).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("backdate the reconcile of slot %s: no reconcile state, or a pass is under way", slot)
	}
	if err != nil {
		return 0, fmt.Errorf("backdate the reconcile of slot %s: %w", slot, err)
	}
	return next, nil
}

// CountLinks counts the students linked to a contact.
func CountLinks(ctx context.Context, db RowQuerier) (int, error) {
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM `+Schema+`.contact_links`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count contact links: %w", err)
	}
	return n, nil
}

// Start begins the next pass from the first student.
func (r *Reconciliation) Start(ctx context.Context) (ReconcilePass, error) {
	_, err := r.db.Exec(ctx, `UPDATE `+Schema+`.reconcile SET pass = pass + 1, after_student = $2, started_at = now(),
		contacts_read = 0, students_different = 0, differed = '{}' WHERE slot = $1`, r.slot, uuid.Nil)
	if err != nil {
		return ReconcilePass{}, fmt.Errorf("start a reconcile pass: %w", err)
	}
	p, err := readReconcile(ctx, r.db, r.slot)
	if err != nil {
		return p, fmt.Errorf("start a reconcile pass: %w", err)
	}
	return p, nil
}

// Page returns up to limit links after the given student, in student order, each with the
// student's email now.
func (r *Reconciliation) Page(ctx context.Context, after uuid.UUID, limit int) ([]LinkedStudent, error) {
	st := r.students
	rows, err := r.db.Query(ctx, `SELECT l.student_id, l.email, l.contact_id, l.is_primary, u.`+st.Email+`, u.`+st.ID+` IS NULL
		FROM `+Schema+`.contact_links l LEFT JOIN `+st.Table+` u ON u.`+st.ID+` = l.student_id
		WHERE l.student_id > $1 ORDER BY l.student_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("read linked students: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (LinkedStudent, error) {
		var ls LinkedStudent
		var email *string
		err := row.Scan(&ls.StudentID, &ls.Email, &ls.ContactID, &ls.Primary, &email, &ls.Gone)
		if email != nil {
			ls.Current = metrics.NormalizeEmail(*email)
		}
		return ls, err
	})
	if err != nil {
		return nil, fmt.Errorf("read linked students: %w", err)
	}
	return out, nil
}

// Advance records a page done: the pass's new position and counts, and the properties found
// changed on each contact (contact id -> property names), in one transaction.
func (r *Reconciliation) Advance(ctx context.Context, p ReconcilePass, drifted map[string][]string) error {
	differed, err := json.Marshal(p.Differed)
	if err != nil {
		return fmt.Errorf("record reconcile progress: %w", err)
	}
	b := &pgx.Batch{}
	b.Queue(`UPDATE `+Schema+`.reconcile SET after_student = $2, contacts_read = $3, students_different = $4, differed = $5
		WHERE slot = $1 AND pass = $6`, r.slot, p.After, p.ContactsRead, p.StudentsDifferent, differed, p.Pass)
	for contact, props := range drifted {
		b.Queue(`INSERT INTO `+Schema+`.drift (slot, contact_id, property, first_pass, last_pass)
			SELECT $1, $2, unnest($3::text[]), $4, $4
			ON CONFLICT (slot, contact_id, property) DO UPDATE SET last_pass = excluded.last_pass,
				first_pass = CASE WHEN drift.last_pass >= excluded.last_pass - 1 THEN drift.first_pass ELSE excluded.first_pass END`,
			r.slot, contact, props, p.Pass)
	}
	if err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() }); err != nil {
		return fmt.Errorf("record reconcile progress: %w", err)
	}
	return nil
}

// Finish completes the pass and returns, per property, how many contacts it was found changed
// on in this pass and in the one before as well.
func (r *Reconciliation) Finish(ctx context.Context, p ReconcilePass) (recurring map[string]int, err error) {
	recurring = map[string]int{}
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE `+Schema+`.reconcile SET after_student = NULL, completed_at = now()
			WHERE slot = $1 AND pass = $2 AND after_student IS NOT NULL`, r.slot, p.Pass)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return errors.New("the pass was finished or restarted by another instance")
		}
		rows, err := tx.Query(ctx, `SELECT property, count(*)::int FROM `+Schema+`.drift
			WHERE slot = $1 AND last_pass = $2 AND first_pass < $2 GROUP BY property`, r.slot, p.Pass)
		if err != nil {
			return err
		}
		var name string
		var n int
		if _, err := pgx.ForEachRow(rows, []any{&name, &n}, func() error { recurring[name] = n; return nil }); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM `+Schema+`.drift WHERE slot = $1 AND last_pass < $2`, r.slot, p.Pass)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("finish the reconcile pass: %w", err)
	}
	return recurring, nil
}

package state

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Checkpoint is where one slot's stream has durably got to: every change before LSN is either
// written to HubSpot or recorded as a pending student. It never trails the slot's confirmed
// position, so replaying from it is always possible.
type Checkpoint struct {
	Slot      string
	LSN       pglogrepl.LSN // 0: none stored yet (a first start)
	UpdatedAt time.Time
	LastFlush time.Time // zero: nothing pushed yet
}

// PendingStudent is one student of the durable buffer: changed since its last push.
type PendingStudent struct {
	ID uuid.UUID
	// First and Last are when the oldest and the latest change still to push were recorded.
	First, Last time.Time
	// Version grows with every change, so a push removes a student only if it did not
	// change again meanwhile.
	Version int64
}

// Journal is the durable side of one slot's stream: its checkpoint and the pending students,
// always written together.
type Journal struct {
	db   *pgxpool.Pool
	slot string
}

// Journal returns the journal of slot.
func (s *Store) Journal(slot string) *Journal { return &Journal{db: s.db, slot: slot} }

// Load reads the checkpoint and every pending student.
func (j *Journal) Load(ctx context.Context) (Checkpoint, []PendingStudent, error) {
	cp, err := readCheckpoint(ctx, j.db, j.slot)
	if err != nil {
		return cp, nil, err
	}
	rows, err := j.db.Query(ctx, `SELECT student_id, first_change_at, last_change_at, version FROM `+Schema+`.pending`)
	if err != nil {
		return cp, nil, fmt.Errorf("load pending students: %w", err)
	}
	var out []PendingStudent
	var p PendingStudent
	_, err = pgx.ForEachRow(rows, []any{&p.ID, &p.First, &p.Last, &p.Version}, func() error {
		out = append(out, p)
		return nil
	})
	if err != nil {
		return cp, nil, fmt.Errorf("load pending students: %w", err)
	}
	return cp, out, nil
}

// PendingOf reads one student's entry in the buffer, if it has one. It writes nothing.
func (s *Store) PendingOf(ctx context.Context, id uuid.UUID) (PendingStudent, bool, error) {
	p := PendingStudent{ID: id}
	if s.absent {
		return p, false, nil
	}
	err := s.db.QueryRow(ctx, `SELECT first_change_at, last_change_at, version FROM `+Schema+`.pending WHERE student_id = $1`, id).
		Scan(&p.First, &p.Last, &p.Version)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("read the pending student: %w", err)
	}
	return p, true, nil
}

// Checkpoint reads the slot's checkpoint alone: one row, where Load reads every pending
// student too.
func (j *Journal) Checkpoint(ctx context.Context) (Checkpoint, error) {
	return readCheckpoint(ctx, j.db, j.slot)
}

// RecordChanges records, in one transaction, that students changed at the given time (their
// new version) and that the stream has got to end (0 leaves the checkpoint alone). Only after
// it returns may end be confirmed to the slot. Rows are written in key order, so two writers
// of overlapping students (two instances starting at once) wait for each other instead of
// deadlocking.
func (j *Journal) RecordChanges(ctx context.Context, students []uuid.UUID, at time.Time, version int64, end pglogrepl.LSN) error {
	batch := &pgx.Batch{}
	if len(students) > 0 {
		batch.Queue(`INSERT INTO `+Schema+`.pending (student_id, first_change_at, last_change_at, version)
			SELECT DISTINCT s, $2::timestamptz, $2::timestamptz, $3::bigint FROM unnest($1::uuid[]) AS s ORDER BY s
			ON CONFLICT (student_id) DO UPDATE SET last_change_at = excluded.last_change_at, version = excluded.version`,
			binaryUUIDs(students), at, version)
	}
	if end != 0 {
		queueCheckpoint(batch, j.slot, end)
	}
	if batch.Len() == 0 {
		return nil
	}
	if err := pgx.BeginFunc(ctx, j.db, func(tx pgx.Tx) error { return tx.SendBatch(ctx, batch).Close() }); err != nil {
		return fmt.Errorf("persist %d changed students: %w", len(students), err)
	}
	return nil
}

// binaryUUIDs gives ids to pgx in PostgreSQL's binary form. A uuid.UUID is a driver.Valuer,
// which pgx encodes through its text: every id formatted and parsed again, a fifth of the
// stream's CPU when every change is recorded.
func binaryUUIDs(ids []uuid.UUID) [][16]byte {
	out := make([][16]byte, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// AdvanceCheckpoint moves the checkpoint to end when no student changed up to it (WAL of
// other tables, keepalives). It never moves the checkpoint back.
func (j *Journal) AdvanceCheckpoint(ctx context.Context, end pglogrepl.LSN) error {
	batch := &pgx.Batch{}
	queueCheckpoint(batch, j.slot, end)
	if err := j.db.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("advance checkpoint: %w", err)
	}
	return nil
}

func queueCheckpoint(batch *pgx.Batch, slot string, end pglogrepl.LSN) {
	batch.Queue(`INSERT INTO `+Schema+`.checkpoint (slot, lsn) VALUES ($1, $2::pg_lsn)
		ON CONFLICT (slot) DO UPDATE SET lsn = greatest(checkpoint.lsn, excluded.lsn), updated_at = now()`,
		slot, end.String())
}

// RemovePushed removes students HubSpot now holds, each only at the version that was pushed:
// a student that changed again since stays pending.
func (j *Journal) RemovePushed(ctx context.Context, students []uuid.UUID, versions []int64) error {
	batch := &pgx.Batch{}
	batch.Queue(`DELETE FROM `+Schema+`.pending p USING unnest($1::uuid[], $2::bigint[]) AS d(id, v)
		WHERE p.student_id = d.id AND p.version = d.v`, binaryUUIDs(students), versions)
	batch.Queue(`UPDATE `+Schema+`.checkpoint SET last_flush_at = now() WHERE slot = $1`, j.slot)
	if err := j.db.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("remove pushed students from the buffer: %w", err)
	}
	return nil
}

// ForgetCheckpoint deletes the slot's checkpoint, for a dropped slot: the next slot of that
// name starts with a full load. Without a sync state there is nothing to forget.
func ForgetCheckpoint(ctx context.Context, db *pgxpool.Pool, slot string) error {
	_, err := db.Exec(ctx, `DELETE FROM `+Schema+`.checkpoint WHERE slot = $1`, slot)
	if err != nil && !isUndefinedTable(err) {
		return fmt.Errorf("forget the checkpoint of slot %s: %w", slot, err)
	}
	return nil
}

// Drop removes the whole sync state.
func Drop(ctx context.Context, db *pgxpool.Pool) error {
	if _, err := db.Exec(ctx, `DROP SCHEMA IF EXISTS `+Schema+` CASCADE`); err != nil {
		return fmt.Errorf("drop the sync state: %w", err)
	}
	return nil
}

// RowQuerier runs a query for one row: *pgx.Conn, *pgxpool.Pool and pgx.Tx all have it.
type RowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readCheckpoint(ctx context.Context, db RowQuerier, slot string) (Checkpoint, error) {
	cp := Checkpoint{Slot: slot}
	var lsn string
	var lastFlush *time.Time
	err := db.QueryRow(ctx, `SELECT lsn::text, updated_at, last_flush_at FROM `+Schema+`.checkpoint WHERE slot = $1`, slot).
		Scan(&lsn, &cp.UpdatedAt, &lastFlush)
	if errors.Is(err, pgx.ErrNoRows) {
		return cp, nil
	}
	if err != nil {
		return cp, fmt.Errorf("read checkpoint: %w", err)
	}
	if lastFlush != nil {
		cp.LastFlush = *lastFlush
	}
	if cp.LSN, err = pglogrepl.ParseLSN(lsn); err != nil {
		return cp, fmt.Errorf("read checkpoint: %w", err)
	}
	return cp, nil
}

// Summary is the sync state in numbers, for status, the metrics and the tools.
type Summary struct {
	Exists     bool       // false: the service has never run on this database
	Checkpoint Checkpoint // LSN 0 when none is stored for the slot
	Pending    int
	OldestWait time.Duration // how long the oldest pending change has waited; 0 when none
	Problems   map[Kind]int  // every kind present, 0 when none
	// Reconcile is where the slot's reconcile stands; nil before the first run that
	// reconciles (or on a schema from before reconciling).
	Reconcile *ReconcilePass
}

// Summarize reads the Summary of slot's state. It writes nothing and needs no migration.
func Summarize(ctx context.Context, db RowQuerier, slot string) (Summary, error) {
	sum := Summary{Problems: map[Kind]int{Unmatched: 0, Rejected: 0, Conflict: 0}}
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, Schema+".checkpoint").Scan(&sum.Exists); err != nil {
		return sum, fmt.Errorf("read sync state: %w", err)
	}
	if !sum.Exists {
		return sum, nil
	}
	var err error
	if sum.Checkpoint, err = readCheckpoint(ctx, db, slot); err != nil {
		return sum, err
	}
	var oldest *float64
	var unmatched, rejected, conflicts int
	err = db.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+Schema+`.pending),
			(SELECT extract(epoch FROM now() - min(first_change_at))::float8 FROM `+Schema+`.pending),
			count(*) FILTER (WHERE kind = 'unmatched'), count(*) FILTER (WHERE kind = 'rejected'),
			count(*) FILTER (WHERE kind = 'conflict')
		FROM `+Schema+`.problems`).Scan(&sum.Pending, &oldest, &unmatched, &rejected, &conflicts)
	if err != nil {
		return sum, fmt.Errorf("count students: %w", err)
	}
	if oldest != nil {
		sum.OldestWait = time.Duration(*oldest * float64(time.Second))
	}
	sum.Problems[Unmatched], sum.Problems[Rejected], sum.Problems[Conflict] = unmatched, rejected, conflicts
	if rp, err := readReconcile(ctx, db, slot); err == nil {
		if rp.Running {
			if rp.Left, err = linksAfter(ctx, db, rp.After); err != nil {
				return sum, err
			}
		}
		sum.Reconcile = &rp
	} else if !errors.Is(err, pgx.ErrNoRows) && !isUndefinedTable(err) {
		return sum, fmt.Errorf("read the reconcile state: %w", err)
	}
	return sum, nil
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

// Package replication is progress-sync's PostgreSQL logical replication consumer: it sets up
// the publication and slot, streams pgoutput changes, maps each row to the students it
// concerns, and hands them to the durable buffer before confirming their position to the slot.
//
// Two goroutines share the work, joined by a channel: the wire loop only receives messages
// and answers the server (keepalives, status updates), so it never waits on the database or
// HubSpot; the processor decodes, resolves course-wide changes by query and persists. A
// keepalive travels the channel like a change, so positions are confirmed in order.
package replication

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/condition"
)

// Sink durably records changed students together with the stream position that covers them.
type Sink interface {
	Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error
	Advance(ctx context.Context, end pglogrepl.LSN) error
	// Checkpoint reads the stored checkpoint (0: none).
	Checkpoint(ctx context.Context) (pglogrepl.LSN, error)
	// Resume takes in what the sync state holds now: the instance that held the slot before
	// may have recorded students this one has never seen.
	Resume(ctx context.Context) error
}

// Observer hears about the rows the stream delivers, for metrics.
type Observer interface {
	Changes(table string, rows int)
}

// Options configure a Consumer.
type Options struct {
	DatabaseURL string
	Names       Names
	// Model says which tables' changes concern which students (required).
	Model *model.Model
	// StatusInterval is how often the consumer reports its position and asks the server for
	// a keepalive; well inside wal_sender_timeout (60 s by default). Default 10 s.
	StatusInterval time.Duration
	// StandbyRetry is how long a second instance waits between attempts to take over a slot
	// that another instance is using. Default 5 s.
	StandbyRetry time.Duration
	// StopGrace is how long, once ctx ends, the processor may go on persisting transactions
	// already received, so that they need not be streamed again. Default 30 s.
	StopGrace time.Duration
	Log       *logrus.Entry
	Observer  Observer // optional
	// Conditions hears of what keeps the stream from going on (the database out of reach or
	// read-only, the slot lost, rows hidden), and says so. Default: a Set of its own.
	Conditions *condition.Set
}

// Consumer streams the slot into a Sink.
type Consumer struct {
	db   *pgxpool.Pool
	sink Sink
	opts Options
	log  *logrus.Entry

	confirmed atomic.Uint64 // durable position, reported to the server as flushed
	received  atomic.Uint64 // last WAL position received, reported as written
	standby   atomic.Bool   // another instance holds the slot
	lease     *Lease
	conds     *condition.Set
}

// NewConsumer returns a Consumer; db is a regular pool on the same database.
func NewConsumer(db *pgxpool.Pool, sink Sink, opts Options) *Consumer {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.StandbyRetry <= 0 {
		opts.StandbyRetry = 5 * time.Second
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 30 * time.Second
	}
	if opts.Conditions == nil {
		opts.Conditions = condition.NewSet(opts.Log)
	}
	return &Consumer{db: db, sink: sink, opts: opts, log: opts.Log, lease: newLease(db, opts.Names.Slot), conds: opts.Conditions}
}

// Confirmed is the position the consumer has reported as durable.
func (c *Consumer) Confirmed() pglogrepl.LSN { return pglogrepl.LSN(c.confirmed.Load()) }

// Streaming reports whether the consumer is connected and streaming.
func (c *Consumer) Streaming() bool { return c.lease.Streaming() }

// Standby reports whether another instance holds the slot and this one waits for it.
func (c *Consumer) Standby() bool { return c.standby.Load() }

// Lease is this instance's hold on the slot, which every writer to HubSpot asks.
func (c *Consumer) Lease() *Lease { return c.lease }

// ErrReplayTooOld means the slot has already confirmed past the requested LSN: a logical
// slot cannot be rewound.
var ErrReplayTooOld = errors.New("the slot has already confirmed past the requested LSN")

// ErrReplayRefused means a replay would skip changes or destroy the slot it replays from.
var ErrReplayRefused = errors.New("replay refused")

// MisconfiguredError is a stop no retry can fix: an operator must change a setting.
type MisconfiguredError struct{ Problem string }

func (e *MisconfiguredError) Error() string { return e.Problem }

// errStandby says another instance holds the slot.
var errStandby = errors.New("another instance holds the replication slot")

// Run streams from start (0: from the slot's confirmed position) until ctx ends, reconnecting
// with backoff after a lost connection and waiting as a standby while another instance holds
// the slot. Every student is added to the sink before streaming when the sync state has no
// checkpoint, when the slot is missing or lost (read from the new slot's snapshot), and when
// the slot has confirmed past the checkpoint (someone re-created it). It returns early only
// for what no retry fixes: a refused replay or a misconfiguration.
func (c *Consumer) Run(ctx context.Context, start pglogrepl.LSN) error {
	pos := position{lsn: start, explicit: start != 0}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 500*time.Millisecond, 30*time.Second, 0
	for {
		began := time.Now()
		var err error
		pos, err = c.session(ctx, pos)
		if ctx.Err() != nil {
			return nil
		}
		if isPublicationMissing(err) {
			c.log.WithError(err).Error("the publication was dropped while the slot streamed: the slot cannot decode past that point; " +
				"making the publication again, with a new slot, and queueing every student")
			pos.recreate, pos.explicit = true, false
		}
		if errors.Is(err, ErrReplayTooOld) || errors.Is(err, ErrReplayRefused) || errors.As(err, new(*MisconfiguredError)) {
			return err
		}
		if time.Since(began) > time.Minute {
			bo.Reset() // a session that streamed a while failed afresh, not again
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.retryAfter(err, bo)):
		}
	}
}

// retryAfter logs why a session ended and says how long to wait before the next.
func (c *Consumer) retryAfter(err error, bo backoff.BackOff) time.Duration {
	kind, isCondition := condition.Of(err)
	switch {
	case errors.As(err, new(*HiddenRowsError)):
		wait := bo.NextBackOff()
		c.log.WithError(err).WithField("retry_in", wait.String()).
			Error("the database hides rows from the service: the students a change concerns cannot all be found, so streaming waits until it is fixed")
		return wait
	case isCondition && (kind == condition.DatabaseUnreachable || kind == condition.DatabaseReadOnly):
		// A condition to explain, not a line per retry.
		wait := bo.NextBackOff()
		c.conds.Raise(kind, err, logrus.Fields{"retry_in": wait.String()})
		return wait
	case errors.Is(err, errStandby) || isSlotActive(err):
		if !c.standby.Swap(true) {
			c.log.WithField("slot", c.opts.Names.Slot).Warn("replication slot is in use by another instance; waiting as a warm standby (pushing nothing)")
		}
		return c.opts.StandbyRetry
	default:
		wait := bo.NextBackOff()
		c.log.WithError(err).WithField("retry_in", wait.String()).Warn("replication stream interrupted; reconnecting")
		return wait
	}
}

// session is one replication connection, from connect to error. It returns where the next
// session starts.
func (c *Consumer) session(ctx context.Context, pos position) (position, error) {
	conn, err := c.connect(ctx)
	if err != nil {
		return pos, err
	}
	defer conn.Close(context.Background())
	// Policies may have changed while disconnected. The stream itself is not filtered by
	// row-level security, so it goes on recording students; the flusher holds the pushes.
	c.conds.Clear(condition.DatabaseUnreachable)
	if err := CheckVisibility(ctx, c.db, c.opts.Model); errors.As(err, new(*HiddenRowsError)) {
		c.conds.Raise(condition.RowsHidden, err, nil)
	}
	if pos, err = c.prepareSlot(ctx, conn, pos); err != nil {
		return pos, err
	}
	err = pglogrepl.StartReplication(ctx, conn, c.opts.Names.Slot, pos.lsn, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + c.opts.Names.Publication + "'"},
	})
	if err != nil {
		return pos, fmt.Errorf("start replication on slot %s: %w", c.opts.Names.Slot, err)
	}
	c.conds.Clear(condition.SlotLost)
	// The slot is ours: take in what the instance that held it before recorded.
	if err := c.sink.Resume(ctx); err != nil {
		return pos, err
	}
	if c.standby.Swap(false) {
		c.log.WithField("slot", c.opts.Names.Slot).Info("took over the replication slot; pushing what the previous instance recorded")
	}
	pos.explicit = false
	err = c.stream(ctx, conn, pos.lsn)
	pos.lsn = max(pos.lsn, c.Confirmed())
	return pos, err
}

// prepareSlot reads the slot and the checkpoint, plans the start-up (planStart) and carries
// the plan out. It returns where to stream from; errStandby while another instance holds the
// slot.
func (c *Consumer) prepareSlot(ctx context.Context, conn *pgconn.PgConn, pos position) (position, error) {
	name := c.opts.Names.Slot
	slot, err := ReadSlot(ctx, c.db, name)
	if err != nil {
		return pos, err
	}
	var confirmed pglogrepl.LSN
	if slot.Exists && slot.ConfirmedFlushLSN != "" {
		if confirmed, err = pglogrepl.ParseLSN(slot.ConfirmedFlushLSN); err != nil {
			return pos, fmt.Errorf("read slot %s: %w", name, err)
		}
	}
	// Read after the slot: the checkpoint is written before the slot is confirmed, so it
	// can only be ahead of what was just read, never behind, unless the slot is not ours.
	// A standby, or a slot of another database, has no use for it.
	var checkpoint pglogrepl.LSN
	if slot.Exists && slot.InThisDatabase && !slot.Active {
		if checkpoint, err = c.sink.Checkpoint(ctx); err != nil {
			return pos, err
		}
	}
	plan := planStart(slot, confirmed, checkpoint, pos, name)
	if plan.lost {
		c.conds.Raise(condition.SlotLost, nil, logrus.Fields{"slot": name, "slot_confirmed": confirmed.String(), "checkpoint": checkpoint.String()})
	} else if plan.warning != "" {
		c.log.WithFields(logrus.Fields{"slot": name, "slot_confirmed": confirmed.String(), "checkpoint": checkpoint.String()}).Log(plan.level, plan.warning)
	}
	return c.carryOut(ctx, conn, plan, pos, confirmed)
}

// carryOut does what the start-up plan says and returns where to stream from.
func (c *Consumer) carryOut(ctx context.Context, conn *pgconn.PgConn, plan startPlan, pos position, confirmed pglogrepl.LSN) (position, error) {
	switch plan.action {
	case startRefuse:
		return pos, plan.refusal
	case startStandby:
		return pos, errStandby
	}
	if plan.setup {
		if _, err := Setup(ctx, c.db, c.opts.Names, c.opts.Model, ""); err != nil {
			return pos, err
		}
	}
	if plan.drop {
		if _, err := DropSlot(ctx, c.db, c.opts.Names.Slot, plan.force); err != nil {
			return pos, err
		}
	}
	if plan.action == startCreate {
		// A new slot always needs the load; should it fail, the next session does it.
		pos.recreate, pos.needsLoad = false, true
		return c.createSlot(ctx, conn, pos)
	}
	pos.lsn = plan.from
	if plan.queueAll {
		pos.needsLoad = true
		if err := c.initialLoad(ctx, "", confirmed); err != nil {
			return pos, err
		}
		pos.needsLoad = false
	}
	return pos, nil
}

// createSlot creates the slot with an exported snapshot and loads every student from it: the
// stream then starts exactly after the data the load saw.
func (c *Consumer) createSlot(ctx context.Context, conn *pgconn.PgConn, pos position) (position, error) {
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, c.opts.Names.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	if err != nil {
		return pos, fmt.Errorf("create replication slot %s: %w", c.opts.Names.Slot, err)
	}
	point, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return pos, fmt.Errorf("create replication slot %s: %w", c.opts.Names.Slot, err)
	}
	c.log.WithFields(logrus.Fields{"slot": c.opts.Names.Slot, "consistent_point": point.String()}).Info("created replication slot")
	if err := c.initialLoad(ctx, res.SnapshotName, point); err != nil {
		return pos, err
	}
	pos.needsLoad, pos.lsn = false, point
	return pos, nil
}

// stream runs the wire loop and the processor on a started replication connection until
// either fails or ctx ends; on a stop the processor may go on persisting what was received
// for Options.StopGrace.
func (c *Consumer) stream(ctx context.Context, conn *pgconn.PgConn, from pglogrepl.LSN) error {
	c.confirmed.Store(uint64(from))
	c.received.Store(uint64(from))
	c.lease.take(conn.PID())
	c.log.WithFields(logrus.Fields{"slot": c.opts.Names.Slot, "from": from.String()}).Info("streaming")

	events := make(chan event, 1024)
	procDone := make(chan struct{})
	var perr error
	procCtx, stopProc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopProc()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(c.opts.StopGrace, stopProc) })()
	go func() {
		defer close(procDone)
		perr = c.process(procCtx, events)
	}()

	wire := pgConn{conn}
	wireErr := c.receive(ctx, wire, events, procDone)
	c.lease.release(ctx.Err() != nil) // a lost connection: no more pushes, even while the processor finishes
	close(events)
	<-procDone
	if ctx.Err() != nil {
		c.sendStatus(wire, false) // the final, durable position
		return nil
	}
	if errors.Is(wireErr, errProcessorStopped) {
		wireErr = nil
	}
	return errors.Join(wireErr, perr)
}

// initialLoad adds every student, read in the slot's exported snapshot when there is one: the
// stream then starts exactly after the data the load saw. Without one (a slot made by setup)
// the current data is a superset, which is as good: pushes are idempotent.
func (c *Consumer) initialLoad(ctx context.Context, snapshot string, point pglogrepl.LSN) error {
	var ids []uuid.UUID
	err := pgx.BeginTxFunc(ctx, c.db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if snapshot != "" {
			if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+snapshot+"'"); err != nil {
				return fmt.Errorf("use the slot's snapshot: %w", err)
			}
		}
		// A load that misses hidden students would never push them. The snapshot's catalog
		// may predate a policy change, so ask afresh, holding a lock no policy change can
		// get past until the load is done.
		students := c.opts.Model.Students.Table
		if _, err := tx.Exec(ctx, "LOCK TABLE "+students+" IN ACCESS SHARE MODE"); err != nil {
			return fmt.Errorf("lock %s for the load: %w", students, err)
		}
		if err := CheckVisibility(ctx, c.db, c.opts.Model); err != nil {
			return err
		}
		var err error
		ids, err = c.opts.Model.AllStudents(ctx, tx)
		return err
	})
	if err != nil {
		return fmt.Errorf("initial load: %w", err)
	}
	if err := c.sink.Add(ctx, ids, point); err != nil {
		return fmt.Errorf("initial load: %w", err)
	}
	c.log.WithFields(logrus.Fields{"students": len(ids), "from_snapshot": snapshot != ""}).Info("queued every student for the first backfill")
	return nil
}

func (c *Consumer) connect(ctx context.Context) (*pgconn.PgConn, error) {
	return Connect(ctx, c.opts.DatabaseURL)
}

// Connect opens a replication connection (replication=database) with the settings of a
// regular connection string, URL or key=value. A pooler refuses it, which is what `check`
// tests.
func Connect(ctx context.Context, databaseURL string) (*pgconn.PgConn, error) {
	connString := databaseURL + " replication=database"
	if u, err := url.Parse(databaseURL); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("replication", "database")
		u.RawQuery = q.Encode()
		connString = u.String()
	}
	conn, err := pgconn.Connect(ctx, connString)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// isPublicationMissing recognises decoding that stopped on a dropped publication.
func isPublicationMissing(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42704" && strings.Contains(pgErr.Message, "publication")
}

// isSlotActive recognises "replication slot ... is active for PID ...".
func isSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006" && strings.Contains(pgErr.Message, "is active")
}

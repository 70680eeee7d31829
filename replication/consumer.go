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
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
)

// Sink durably records changed students together with the stream position that covers them.
type Sink interface {
	Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error
	Advance(ctx context.Context, end pglogrepl.LSN) error
}

// Observer hears about the rows the stream delivers, for metrics.
type Observer interface {
	Changes(table string, rows int)
}

// Options configure a Consumer.
type Options struct {
	DatabaseURL string
	Names       Names
	// StatusInterval is how often the consumer reports its position and asks the server for
	// a keepalive; well inside wal_sender_timeout (60 s by default). Default 10 s.
	StatusInterval time.Duration
	// StandbyRetry is how long a second instance waits between attempts to take over a slot
	// that another instance is using. Default 5 s.
	StandbyRetry time.Duration
	Log          *logrus.Entry
	Observer     Observer // optional
}

// Consumer streams the slot into a Sink.
type Consumer struct {
	db   *pgxpool.Pool
	sink Sink
	opts Options
	log  *logrus.Entry

	confirmed atomic.Uint64 // durable position, reported to the server as flushed
	received  atomic.Uint64 // last WAL position received, reported as written
	streaming atomic.Bool
}

// NewConsumer returns a Consumer; db is a regular pool on the same database.
func NewConsumer(db *pgxpool.Pool, sink Sink, opts Options) *Consumer {
	if opts.StatusInterval <= 0 {
		opts.StatusInterval = 10 * time.Second
	}
	if opts.StandbyRetry <= 0 {
		opts.StandbyRetry = 5 * time.Second
	}
	return &Consumer{db: db, sink: sink, opts: opts, log: opts.Log}
}

// Confirmed is the position the consumer has reported as durable.
func (c *Consumer) Confirmed() pglogrepl.LSN { return pglogrepl.LSN(c.confirmed.Load()) }

// Streaming reports whether the consumer is connected and streaming.
func (c *Consumer) Streaming() bool { return c.streaming.Load() }

// ErrReplayTooOld means the slot has already confirmed past the requested LSN: a logical
// slot cannot be rewound.
var ErrReplayTooOld = errors.New("the slot has already confirmed past the requested LSN")

// Run streams from start (0: from the slot's confirmed position) until ctx ends, reconnecting
// with backoff after a lost connection. needsLoad says the sync state has no checkpoint yet:
// every student is added to the sink before streaming. A missing or lost slot is (re)created,
// followed by the same full load, read from the new slot's snapshot.
func (c *Consumer) Run(ctx context.Context, start pglogrepl.LSN, needsLoad bool) error {
	// An LSN the operator asked for must not be behind the slot; later sessions resume from
	// wherever the stream got to.
	explicit := start != 0
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 500*time.Millisecond, 30*time.Second, 0
	for {
		began := time.Now()
		err := c.session(ctx, &start, &explicit, &needsLoad)
		if ctx.Err() != nil {
			return nil
		}
		var wait time.Duration
		switch {
		case errors.Is(err, ErrReplayTooOld):
			return err
		case errors.As(err, new(*HiddenRowsError)):
			wait = bo.NextBackOff()
			c.log.WithError(err).WithField("retry_in", wait.String()).
				Error("cannot find the students a change concerns: the database hides rows from the service; the change waits in the slot until it is fixed")
		case isSlotActive(err):
			c.log.WithError(err).Warn("replication slot is in use by another instance; waiting as a warm standby")
			wait = c.opts.StandbyRetry
		default:
			wait = bo.NextBackOff()
			c.log.WithError(err).WithField("retry_in", wait.String()).Warn("replication stream interrupted; reconnecting")
		}
		if time.Since(began) > time.Minute {
			bo.Reset() // a session that streamed a while failed afresh, not again
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// session is one replication connection, from connect to error.
func (c *Consumer) session(ctx context.Context, start *pglogrepl.LSN, explicit, needsLoad *bool) error {
	conn, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	// Policies may have changed while disconnected. The stream itself is not filtered by
	// row-level security, so it goes on recording students; the flusher holds the pushes.
	if err := CheckVisibility(ctx, c.db); err != nil {
		c.log.WithError(err).Error("the database hides rows from the service: changes are recorded but not pushed until it is fixed")
	}
	slot, err := ReadSlot(ctx, c.db, c.opts.Names.Slot)
	if err != nil {
		return err
	}
	if slot.Exists && slot.WALStatus == "lost" {
		c.log.WithField("slot", c.opts.Names.Slot).Error("replication slot is LOST: the server removed WAL it still needed " +
			"(max_slot_wal_keep_size exceeded). Changes since the last checkpoint cannot be streamed; recreating the slot and backfilling every student")
		if _, err := DropSlot(ctx, c.db, c.opts.Names.Slot, true); err != nil {
			return err
		}
		slot = Slot{}
		*needsLoad, *start = true, 0
	}
	if !slot.Exists && *explicit {
		return fmt.Errorf("%w: requested %s, but slot %s does not exist; run `progress-sync run` to create it, which backfills every student",
			ErrReplayTooOld, *start, c.opts.Names.Slot)
	}
	if !slot.Exists {
		res, err := pglogrepl.CreateReplicationSlot(ctx, conn, c.opts.Names.Slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
		if err != nil {
			return fmt.Errorf("create replication slot %s: %w", c.opts.Names.Slot, err)
		}
		point, err := pglogrepl.ParseLSN(res.ConsistentPoint)
		if err != nil {
			return fmt.Errorf("create replication slot %s: %w", c.opts.Names.Slot, err)
		}
		c.log.WithFields(logrus.Fields{"slot": c.opts.Names.Slot, "consistent_point": point.String()}).Info("created replication slot")
		if err := c.initialLoad(ctx, res.SnapshotName, point); err != nil {
			return err
		}
		*needsLoad, *start = false, point
	} else {
		confirmed, err := pglogrepl.ParseLSN(slot.ConfirmedFlushLSN)
		if err != nil {
			return fmt.Errorf("read slot %s: %w", c.opts.Names.Slot, err)
		}
		if *explicit && *start < confirmed {
			return fmt.Errorf("%w: requested %s, slot %s confirmed %s; a logical slot cannot be rewound: run `progress-sync backfill` to recompute every student from current data",
				ErrReplayTooOld, *start, c.opts.Names.Slot, confirmed)
		}
		if *needsLoad {
			if err := c.initialLoad(ctx, "", confirmed); err != nil {
				return err
			}
			*needsLoad = false
		}
		*start = max(*start, confirmed)
	}

	err = pglogrepl.StartReplication(ctx, conn, c.opts.Names.Slot, *start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + c.opts.Names.Publication + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication on slot %s: %w", c.opts.Names.Slot, err)
	}
	*explicit = false
	c.confirmed.Store(uint64(*start))
	c.received.Store(uint64(*start))
	c.streaming.Store(true)
	defer c.streaming.Store(false)
	c.log.WithFields(logrus.Fields{"slot": c.opts.Names.Slot, "from": start.String()}).Info("streaming")

	events := make(chan event, 1024)
	procDone := make(chan struct{})
	var perr error
	// On a stop the processor still persists the transactions already received, for a while.
	procCtx, stopProc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopProc()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(30*time.Second, stopProc) })()
	go func() {
		defer close(procDone)
		perr = c.process(procCtx, events)
	}()

	wireErr := c.receive(ctx, conn, events, procDone)
	close(events)
	<-procDone
	if confirmed := c.Confirmed(); confirmed > *start {
		*start = confirmed
	}
	if ctx.Err() != nil {
		c.sendStatus(conn, false) // the final, durable position
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
		// A load that misses hidden students would never push them.
		if err := CheckVisibility(ctx, tx); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT id FROM public.users`)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
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

// event is one message from the server, in stream order.
type event struct {
	data      []byte        // pgoutput message; nil for a keepalive
	walEnd    pglogrepl.LSN // keepalive: the server's position, safe to confirm when nothing is in flight
	keepalive bool
}

// receive is the wire loop. It hands messages to the processor and answers the server; it
// waits on nothing else.
func (c *Consumer) receive(ctx context.Context, conn *pgconn.PgConn, events chan<- event, procDone <-chan struct{}) error {
	ticker := time.NewTicker(c.opts.StatusInterval)
	defer ticker.Stop()
	deliver := func(ev event) error {
		for {
			select {
			case events <- ev:
				return nil
			case <-ticker.C:
				if err := c.sendStatus(conn, true); err != nil {
					return err
				}
			case <-procDone:
				return errProcessorStopped
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	for {
		select {
		case <-ticker.C:
			if err := c.sendStatus(conn, true); err != nil {
				return err
			}
		case <-procDone:
			return errProcessorStopped
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, c.opts.StatusInterval)
		raw, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive from replication connection: %w", err)
		}
		switch m := raw.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(m))
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return err
				}
				if k.ReplyRequested {
					if err := c.sendStatus(conn, false); err != nil {
						return err
					}
				}
				if err := deliver(event{keepalive: true, walEnd: k.ServerWALEnd}); err != nil {
					return ignoreCancel(err)
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return err
				}
				c.received.Store(max(c.received.Load(), uint64(x.WALStart)+uint64(len(x.WALData))))
				// The connection reuses its read buffer: keep a copy.
				if err := deliver(event{data: append([]byte(nil), x.WALData...)}); err != nil {
					return ignoreCancel(err)
				}
			}
		}
	}
}

// errProcessorStopped ends the wire loop when the processor failed; its error says why.
var errProcessorStopped = errors.New("change processor stopped")

func ignoreCancel(err error) error {
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// sendStatus reports the durable position as flushed and applied; replyRequested asks the
// server for a keepalive, whose WAL end lets an idle slot advance.
func (c *Consumer) sendStatus(conn *pgconn.PgConn, replyRequested bool) error {
	confirmed := c.Confirmed()
	if confirmed == 0 {
		return nil // pglogrepl would report the write position as flushed
	}
	written := max(pglogrepl.LSN(c.received.Load()), confirmed)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: written, WALFlushPosition: confirmed, WALApplyPosition: confirmed, ReplyRequested: replyRequested,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

// groupLimit bounds how many transactions one durable write covers.
const groupLimit = 1000

// process decodes events and persists them. Transactions are grouped while more are queued,
// so a burst costs few database round trips; a lone one is persisted at once.
func (c *Consumer) process(ctx context.Context, events <-chan event) error {
	dec := NewDecoder()
	pending := newChanges()
	var pendingEnd pglogrepl.LSN
	txns := 0
	flush := func() error {
		if txns == 0 {
			return nil
		}
		ids, err := c.resolve(ctx, pending)
		if err != nil {
			return err
		}
		if err := c.sink.Add(ctx, ids, pendingEnd); err != nil {
			return err
		}
		c.confirm(pendingEnd)
		pending, txns = newChanges(), 0
		return nil
	}
	for ev := range events {
		if ev.keepalive {
			if dec.InTransaction() {
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			if ev.walEnd > c.Confirmed() {
				// The stored checkpoint never trails the slot, so replaying from it is always
				// possible; one small write per keepalive is the price.
				if err := c.sink.Advance(ctx, ev.walEnd); err != nil {
					return err
				}
				c.confirm(ev.walEnd)
			}
			continue
		}
		commit, err := dec.Decode(ev.data)
		if err != nil {
			return err
		}
		if commit == nil {
			continue
		}
		pending.Merge(commit.Changes)
		pendingEnd, txns = commit.End, txns+1
		if c.opts.Observer != nil {
			for table, n := range commit.Changes.Rows {
				c.opts.Observer.Changes(table, n)
			}
		}
		if len(events) == 0 || txns >= groupLimit {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (c *Consumer) confirm(lsn pglogrepl.LSN) {
	for {
		cur := c.confirmed.Load()
		if uint64(lsn) <= cur || c.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// resolve turns changes into student ids, querying for course-wide changes.
func (c *Consumer) resolve(ctx context.Context, ch Changes) ([]uuid.UUID, error) {
	ids := make([]uuid.UUID, 0, len(ch.Students))
	for id := range ch.Students {
		ids = append(ids, id)
	}
	var query string
	var args []any
	switch {
	case ch.AllStudents:
		query = `SELECT id FROM public.users`
	case len(ch.Modules) > 0 || len(ch.Courses) > 0:
		var modules, levels, goals []string
		for m := range ch.Modules {
			modules = append(modules, m)
		}
		for k := range ch.Courses {
			levels, goals = append(levels, k[0]), append(goals, k[1])
		}
		query = `SELECT u.id FROM public.users u
			WHERE (u.language_level, u.course_goal) IN (
				SELECT m.course_level, m.course_goal FROM public.course_modules m WHERE m.id = ANY($1)
				UNION SELECT * FROM unnest($2::text[], $3::text[]))`
		args = []any{modules, levels, goals}
	default:
		return ids, nil
	}
	// Students hidden from this query would lose the change; the session fails and retries.
	if err := CheckVisibility(ctx, c.db); err != nil {
		return nil, err
	}
	rows, err := c.db.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("find the students of changed courses: %w", err)
	}
	more, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, fmt.Errorf("find the students of changed courses: %w", err)
	}
	return append(ids, more...), nil
}

// isSlotActive recognises "replication slot ... is active for PID ...".
func isSlotActive(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006" && strings.Contains(pgErr.Message, "is active")
}

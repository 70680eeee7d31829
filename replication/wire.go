package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The wire loop: it receives, answers keepalives and reports the durable position; it waits
// on nothing slow, so the server never times the walsender out.

// wireConn is the replication connection as the wire loop uses it: pgConn, or a scripted
// server in tests of the status-reporting rules.
type wireConn interface {
	ReceiveMessage(ctx context.Context) (pgproto3.BackendMessage, error)
	SendStatus(ctx context.Context, status pglogrepl.StandbyStatusUpdate) error
}

// pgConn is a started replication connection.
type pgConn struct{ *pgconn.PgConn }

func (c pgConn) SendStatus(ctx context.Context, status pglogrepl.StandbyStatusUpdate) error {
	return pglogrepl.SendStandbyStatusUpdate(ctx, c.PgConn, status)
}

// event is one message from the server, in stream order.
type event struct {
	data      []byte        // pgoutput message; nil for a keepalive
	walEnd    pglogrepl.LSN // keepalive: the server's position, safe to confirm when nothing is in flight
	keepalive bool
}

// receive is the wire loop. It hands messages to the processor and answers the server; it
// waits on nothing else.
func (c *Consumer) receive(ctx context.Context, conn wireConn, events chan<- event, procDone <-chan struct{}) error {
	w := &wire{c: c, conn: conn, events: events, procDone: procDone, ticker: time.NewTicker(c.opts.StatusInterval)}
	defer w.ticker.Stop()
	deadline := &receiveDeadline{parent: ctx, every: c.opts.StatusInterval}
	defer deadline.stop()
	for {
		select {
		case <-w.ticker.C:
			if err := c.sendStatus(conn, true); err != nil {
				return err
			}
		case <-procDone:
			return errProcessorStopped
		default:
		}
		raw, err := conn.ReceiveMessage(deadline.current())
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
			if err := w.onCopyData(ctx, m.Data); err != nil {
				return ignoreCancel(err)
			}
		}
	}
}

// receiveDeadline is one deadline that serves every receive until it passes, then the next:
// a context per message cost a tenth of the stream's CPU. It passes at the latest a status
// interval on, so the loop still wakes to report its position.
type receiveDeadline struct {
	parent context.Context
	every  time.Duration
	ctx    context.Context
	cancel context.CancelFunc
}

func (d *receiveDeadline) current() context.Context {
	if d.ctx == nil || d.ctx.Err() != nil {
		d.stop()
		d.ctx, d.cancel = context.WithTimeout(d.parent, d.every)
	}
	return d.ctx
}

func (d *receiveDeadline) stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

// wire is one wire loop's connection, its way to the processor and its status timer.
type wire struct {
	c        *Consumer
	conn     wireConn
	events   chan<- event
	procDone <-chan struct{}
	ticker   *time.Ticker
}

// onCopyData handles one message of the stream: a keepalive (answered at once when the
// server asks) or WAL data, each handed to the processor in order.
func (w *wire) onCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return err
		}
		if k.ReplyRequested {
			if err := w.c.sendStatus(w.conn, false); err != nil {
				return err
			}
		}
		return w.deliver(ctx, event{keepalive: true, walEnd: k.ServerWALEnd})
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return err
		}
		w.c.received.Store(max(w.c.received.Load(), uint64(x.WALStart)+uint64(len(x.WALData))))
		// The connection reuses its read buffer: keep a copy.
		return w.deliver(ctx, event{data: append([]byte(nil), x.WALData...)})
	}
	return nil
}

// deliver hands an event to the processor, still reporting status while the processor is
// busy, so a slow database never times the walsender out.
func (w *wire) deliver(ctx context.Context, ev event) error {
	for {
		select {
		case w.events <- ev:
			return nil
		case <-w.ticker.C:
			if err := w.c.sendStatus(w.conn, true); err != nil {
				return err
			}
		case <-w.procDone:
			return errProcessorStopped
		case <-ctx.Done():
			return ctx.Err()
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
func (c *Consumer) sendStatus(conn wireConn, replyRequested bool) error {
	confirmed := c.Confirmed()
	if confirmed == 0 {
		return nil // pglogrepl would report the write position as flushed
	}
	written := max(pglogrepl.LSN(c.received.Load()), confirmed)
	err := conn.SendStatus(context.Background(), pglogrepl.StandbyStatusUpdate{
		WALWritePosition: written, WALFlushPosition: confirmed, WALApplyPosition: confirmed, ReplyRequested: replyRequested,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	return nil
}

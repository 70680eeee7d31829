package replication

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgproto3"
)

// scriptedServer is a replication connection that hands out the messages it is given, one
// ReceiveMessage each, and records the status updates it receives.
type scriptedServer struct {
	messages chan pgproto3.BackendMessage
	mu       sync.Mutex
	statuses []pglogrepl.StandbyStatusUpdate
}

func newScriptedServer() *scriptedServer {
	return &scriptedServer{messages: make(chan pgproto3.BackendMessage, 16)}
}

func (s *scriptedServer) ReceiveMessage(ctx context.Context) (pgproto3.BackendMessage, error) {
	select {
	case m := <-s.messages:
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (s *scriptedServer) SendStatus(_ context.Context, st pglogrepl.StandbyStatusUpdate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statuses = append(s.statuses, st)
	return nil
}

func (s *scriptedServer) sent() []pglogrepl.StandbyStatusUpdate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]pglogrepl.StandbyStatusUpdate(nil), s.statuses...)
}

// keepalive is a primary keepalive at walEnd.
func keepalive(walEnd pglogrepl.LSN, reply bool) *pgproto3.CopyData {
	b := []byte{pglogrepl.PrimaryKeepaliveMessageByteID}
	b = binary.BigEndian.AppendUint64(b, uint64(walEnd))
	b = binary.BigEndian.AppendUint64(b, 0)
	if reply {
		return &pgproto3.CopyData{Data: append(b, 1)}
	}
	return &pgproto3.CopyData{Data: append(b, 0)}
}

// xlog is WAL data starting at start.
func xlog(start pglogrepl.LSN, data string) *pgproto3.CopyData {
	b := []byte{pglogrepl.XLogDataByteID}
	b = binary.BigEndian.AppendUint64(b, uint64(start))
	b = binary.BigEndian.AppendUint64(b, uint64(start)+uint64(len(data)))
	b = binary.BigEndian.AppendUint64(b, 0)
	return &pgproto3.CopyData{Data: append(b, data...)}
}

// wireUnderTest runs the wire loop of a consumer that has confirmed confirmed, reporting
// every interval, with events of the given capacity nobody reads unless the test does.
func wireUnderTest(t *testing.T, confirmed pglogrepl.LSN, interval time.Duration, capacity int) (*Consumer, *scriptedServer, chan event, func() error) {
	t.Helper()
	c := &Consumer{opts: Options{StatusInterval: interval}}
	c.confirmed.Store(uint64(confirmed))
	c.received.Store(uint64(confirmed))
	srv := newScriptedServer()
	events := make(chan event, capacity)
	stop := inBackground(t, func(ctx context.Context) error { return c.receive(ctx, srv, events, make(chan struct{})) })
	return c, srv, events, stop
}

func TestTheWireLoopsStatusRules(t *testing.T) {
	t.Run("a keepalive that asks for a reply is answered at once with the durable position", func(t *testing.T) {
		_, srv, events, _ := wireUnderTest(t, 100, time.Hour, 16)
		srv.messages <- keepalive(500, true)
		waitFor(t, "the reply", func() bool { return len(srv.sent()) == 1 })
		st := srv.sent()[0]
		if st.WALFlushPosition != 100 || st.WALApplyPosition != 100 || st.WALWritePosition != 100 || st.ReplyRequested {
			t.Fatalf("reply %+v: want flushed = applied = written = 100 (the server's WAL end is not durable here), no reply asked", st)
		}
		if ev := <-events; !ev.keepalive || ev.walEnd != 500 {
			t.Fatalf("event %+v, want the keepalive at 500 passed on in order", ev)
		}
	})
	t.Run("a keepalive that asks for nothing gets no answer", func(t *testing.T) {
		_, srv, events, _ := wireUnderTest(t, 100, time.Hour, 16)
		srv.messages <- keepalive(500, false)
		srv.messages <- keepalive(600, true)
		<-events
		<-events
		if sent := srv.sent(); len(sent) != 1 {
			t.Fatalf("%d status updates for one keepalive asking for a reply: %+v", len(sent), sent)
		}
	})
	t.Run("written covers what was received, flushed only what is durable", func(t *testing.T) {
		_, srv, events, _ := wireUnderTest(t, 100, time.Hour, 16)
		srv.messages <- xlog(200, "0123456789")
		if ev := <-events; string(ev.data) != "0123456789" {
			t.Fatalf("event %+v, want the WAL data", ev)
		}
		srv.messages <- keepalive(300, true)
		waitFor(t, "the reply", func() bool { return len(srv.sent()) == 1 })
		if st := srv.sent()[0]; st.WALWritePosition != 210 || st.WALFlushPosition != 100 {
			t.Fatalf("status %+v, want written 210 (received) and flushed 100 (durable)", st)
		}
	})
	t.Run("nothing is reported before a position is durable", func(t *testing.T) {
		_, srv, events, _ := wireUnderTest(t, 0, time.Millisecond, 16)
		srv.messages <- keepalive(500, true)
		<-events
		srv.messages <- keepalive(600, true)
		<-events
		if sent := srv.sent(); len(sent) != 0 {
			t.Fatalf("status sent with nothing durable: %+v (pglogrepl would report the write position as flushed)", sent)
		}
	})
	t.Run("status goes on while the processor is busy", func(t *testing.T) {
		c, srv, _, stop := wireUnderTest(t, 100, 5*time.Millisecond, 0) // nobody takes the event
		srv.messages <- xlog(200, "x")
		waitFor(t, "the received position", func() bool { return c.received.Load() == 201 })
		before := len(srv.sent())
		waitFor(t, "status updates while the event waits", func() bool { return len(srv.sent()) >= before+3 })
		for _, st := range srv.sent() {
			if !st.ReplyRequested || st.WALFlushPosition != 100 {
				t.Fatalf("timed status %+v: want the durable 100 and a keepalive asked for", st)
			}
		}
		if err := stop(); err != nil {
			t.Fatalf("stopping the wire loop: %v", err)
		}
	})
}

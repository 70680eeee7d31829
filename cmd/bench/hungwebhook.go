package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// hungReceiver is an alert webhook that takes every post and never answers: a receiver
// behind a proxy that stopped forwarding.
type hungReceiver struct {
	srv   *http.Server
	addr  string
	posts atomic.Int64
	stop  chan struct{}
}

func startHungReceiver() (*hungReceiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &hungReceiver{addr: ln.Addr().String(), stop: make(chan struct{})}
	r.srv = &http.Server{ReadHeaderTimeout: time.Minute, Handler: http.HandlerFunc(func(_ http.ResponseWriter, req *http.Request) {
		r.posts.Add(1)
		select {
		case <-r.stop:
		case <-req.Context().Done():
		}
	})}
	go r.srv.Serve(ln) //nolint:errcheck // ends with close
	return r, nil
}

func (r *hungReceiver) env() []string {
	return []string{"PROGRESS_SYNC_ALERT_WEBHOOK=http://" + r.addr + "/hooks/bench", "PROGRESS_SYNC_ALERT_AFTER=1s"}
}

func (r *hungReceiver) close() {
	close(r.stop)
	r.srv.Close() //nolint:errcheck
}

// hangAnAlert refuses the service's key until it has posted an alert to the hung receiver,
// then gives the key back and waits for the student changed meanwhile to reach HubSpot: the
// load that follows runs while the alert and its recovery wait on a receiver that never
// answers.
func hangAnAlert(ctx context.Context, h *harness, conn *pgx.Conn, r *hungReceiver, waitDrained func() error) error {
	h.emu.SetToken("pat-bench-revoked")
	if _, err := conn.Exec(ctx, `UPDATE public.user_xp SET total_xp = total_xp + 1 WHERE user_id = (SELECT user_id FROM public.user_xp LIMIT 1)`); err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for r.posts.Load() == 0 {
		if time.Now().After(deadline) {
			return errors.New("no alert posted within 2 minutes of the key being refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.emu.SetToken(token)
	if err := waitDrained(); err != nil {
		return fmt.Errorf("after the key came back: %w", err)
	}
	h.logf("an alert hangs on the receiver (%d posts taken, none answered); the key works again", r.posts.Load())
	return nil
}

package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// server serves /metrics, /healthz and /readyz, and the status page at / unless it is off.
type server struct {
	http *http.Server
	ln   net.Listener
}

// listen takes the configured address now, so that a port in use fails the start. Port 0
// picks a free port; the log says which.
func (s *service) listen() (*server, error) {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("PROGRESS_SYNC_LISTEN %s: %w", s.cfg.Listen, err)
	}
	addr := ln.Addr().String()
	if s.page != nil {
		s.log.WithFields(logrus.Fields{"addr": addr, "status_page": "http://" + addr + "/"}).
			Info("serving /metrics, /healthz, /readyz and the status page at /")
	} else {
		s.log.WithField("addr", addr).Info("serving /metrics, /healthz and /readyz")
	}
	h := telemetry.Handler(s.tm, s.health, s.page)
	return &server{http: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, ln: ln}, nil
}

// serve answers until the server is shut down. Should it fail, the sync goes on without
// its endpoints: the metrics matter less than the slot's WAL.
func (srv *server) serve(log *logrus.Entry) error {
	if err := srv.http.Serve(srv.ln); !errors.Is(err, http.ErrServerClosed) {
		log.WithError(err).WithField("addr", srv.ln.Addr().String()).Error("stopped serving /metrics, /healthz, /readyz and the status page")
	}
	return nil
}

// shutdownAfter keeps the server up until the pipeline has stopped, grace period included:
// /readyz and the status page answer while the last pushes go.
func (srv *server) shutdownAfter(stopped <-chan struct{}) error {
	<-stopped
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.http.Shutdown(ctx)
	return nil
}

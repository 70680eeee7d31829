package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/config"
	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/statuspage"
	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/telemetry"
	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/flush"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/reconcile"
	"github.com/focusenglish/progress-sync/replication/state"
)

// streamFlags are the tuning knobs of run and replay beyond docs/contract.md §4.
type streamFlags struct {
	grace           time.Duration
	recheck         time.Duration
	statusInterval  time.Duration
	dailyLimitPause time.Duration
	noStatusPage    bool
}

func (f *streamFlags) register(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&f.grace, "grace", 20*time.Second, "on SIGTERM, how long to keep recording what was received and pushing students that are due")
	cmd.Flags().DurationVar(&f.recheck, "recheck-unmatched", time.Hour, "how often students without a HubSpot contact are looked up again")
	cmd.Flags().DurationVar(&f.statusInterval, "status-interval", 10*time.Second, "how often the position is reported to PostgreSQL (keep well under wal_sender_timeout)")
	cmd.Flags().DurationVar(&f.dailyLimitPause, "daily-limit-pause", 15*time.Minute, "how long pushes pause when HubSpot's daily limit is spent (changes keep being recorded)")
	cmd.Flags().BoolVar(&f.noStatusPage, "no-status-page", false, "do not serve the status page at / (/metrics, /healthz and /readyz stay)")
}

func (a *app) runCmd() *cobra.Command {
	var f streamFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Stream changes from the replication slot and keep HubSpot in step",
		Long: `Run the service: set up the publication and replica identities if needed, provision the
HubSpot properties, and on a first start queue every student for a backfill read from the new
slot's snapshot. Then stream changes, debounce them per student, and push what changed.

SIGTERM (or Ctrl-C) stops reading, pushes what is due within --grace, records the checkpoint
and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.stream(cmd.Context(), f, 0)
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) replayCmd() *cobra.Command {
	var f streamFlags
	var from string
	cmd := &cobra.Command{
		Use:   "replay --from-lsn LSN",
		Short: "Stream again from a stored LSN",
		Long: `Run the service starting from the given LSN instead of the slot's position. A logical slot
cannot be rewound: when the slot has already confirmed past the LSN, replay refuses and names
both positions; progress-sync backfill recomputes every student from current data instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lsn, err := pglogrepl.ParseLSN(from)
			if err != nil || lsn == 0 {
				return usageError{fmt.Errorf("--from-lsn %q is not an LSN such as 0/16B3748", from)}
			}
			return a.stream(cmd.Context(), f, lsn)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&from, "from-lsn", "", "LSN to stream from (as stored in progress_sync.checkpoint or printed by status)")
	_ = cmd.MarkFlagRequired("from-lsn")
	return cmd
}

// stream is the service: stream → buffer → flusher, with a clean stop. A stop requested
// while it is still starting is a clean stop too: nothing was in flight.
func (a *app) stream(ctx context.Context, f streamFlags, from pglogrepl.LSN) error {
	err := a.serve(ctx, f, from)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *app) serve(ctx context.Context, f streamFlags, from pglogrepl.LSN) error {
	cfg, log, db, err := a.openDatabase(ctx, config.Needs{Replication: true, HubSpot: true})
	if err != nil {
		return err
	}
	defer db.Close()
	store, added, err := prepareDatabase(ctx, db, cfg, log)
	if err != nil {
		return err
	}
	tm := telemetry.New()
	buf, checkpoint, err := buffer.Open(ctx, store, cfg.Slot, buffer.Options{Debounce: cfg.Debounce, MaxDelay: cfg.MaxDelay})
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"checkpoint": checkpoint.LSN.String(), "pending": buf.Len(), "model": cfg.Model.Name}).Info("loaded sync state")
	started := checkpoint.LSN != 0
	if len(added) > 0 && started {
		// Their changes before now were never streamed.
		if err := queueEveryStudent(ctx, db, cfg.Model, buf, log.WithField("tables", added),
			"tables the progress model reads were added to the publication: queued every student for the changes they had that were never streamed"); err != nil {
			return err
		}
	}
	view := replication.CompleteView{DB: db, Model: cfg.Model}
	consumer := replication.NewConsumer(db, buf, replication.Options{
		DatabaseURL: cfg.DatabaseURL, Names: replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, Model: cfg.Model,
		StatusInterval: f.statusInterval, StopGrace: f.grace, Log: log.WithField("component", "replication"), Observer: tm,
	})
	// Only the slot's holder writes contacts, asked of the server before every attempt.
	hs, err := a.newHubSpot(cfg, log, func(c *hubspot.Config) { c.Observer, c.WriteFence = tm, consumer.Fence })
	if err != nil {
		return err
	}
	p := &pipeline{flags: f, log: log, hs: hs, store: store, buf: buf, consumer: consumer,
		flusher: flush.New(buf, view, push.New(hs, store, log.WithField("component", "push"), push.Options{ShowEmails: a.showEmails, Properties: cfg.Model.Computes()}),
			flush.Options{Log: log.WithField("component", "flush"), DailyLimitPause: f.dailyLimitPause, StopGrace: f.grace, Observer: tm,
				MayWrite: consumer.Holds}),
	}
	health := p.observe(tm)
	var page http.Handler
	if !f.noStatusPage {
		tm.KeepRecent(cfg.RateLimit.Per)
		// Only the holder's buffer is the sync's: a standby's holds what it loaded at start.
		sample := func() {
			if p.consumer.Holds() {
				tm.Sample(buf.Len())
			}
		}
		sample()
		go onEveryTick(ctx, telemetry.SampleEvery, sample)
		page = statuspage.Handler(statuspage.Options{DB: db, Store: store, Slot: cfg.Slot, Model: cfg.Model.Name, Metrics: tm, Health: health,
			RateLimit: cfg.RateLimit, ShowEmails: a.showEmails, Log: log.WithField("component", "status-page")})
	}
	stopServing, err := serveTelemetry(cfg.Listen, telemetry.Handler(tm, health, page), page != nil, log)
	if err != nil {
		return err
	}
	defer stopServing()
	if cfg.Reconcile > 0 {
		go p.reconciler(view, cfg, tm).Run(ctx)
	}
	go tm.WatchDatabase(ctx, db, cfg.Slot, f.statusInterval, log)
	p.followModel = func(ctx context.Context) error { return followModel(ctx, db, cfg, store, buf, started, log) }
	go p.watchSource(ctx, db, cfg.Model, cfg.Publication, f.statusInterval)
	return p.run(ctx, from)
}

// reconciler walks the linked contacts every cfg.Reconcile, on a tenth of the rate limit, while
// this instance holds the slot.
func (p *pipeline) reconciler(view replication.CompleteView, cfg config.Config, tm *telemetry.Metrics) *reconcile.Reconciler {
	return reconcile.New(p.hs, view, p.buf, p.store, p.store.Reconciliation(cfg.Slot), reconcile.Options{
		Every: cfg.Reconcile, Budget: reconcile.Budget(cfg.RateLimit), MayWrite: p.consumer.Holds, Properties: cfg.Model.Computes(),
		DailyLimitPause: p.flags.dailyLimitPause, Log: p.log.WithField("component", "reconcile"), Observer: tm,
	})
}

// prepareDatabase migrates the sync state, sets up the publication and replica identities
// where needed, and refuses a view of the source tables that hides rows. It returns the
// tables it added to an existing publication.
func prepareDatabase(ctx context.Context, db *pgxpool.Pool, cfg config.Config, log *logrus.Entry) (*state.Store, []string, error) {
	if err := replication.CheckServer(ctx, db); err != nil {
		return nil, nil, err
	}
	store, err := state.Open(ctx, db)
	if err != nil {
		return nil, nil, err
	}
	rep, err := replication.Setup(ctx, db, replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, cfg.Model, "")
	if err != nil {
		return nil, nil, err
	}
	for _, line := range rep.Done {
		log.Info(line)
	}
	if err := replication.CheckSlot(ctx, db, cfg.Slot); err != nil {
		return nil, nil, err
	}
	if err := replication.CheckPublication(ctx, db, cfg.Model, cfg.Publication); err != nil {
		return nil, nil, err
	}
	return store, rep.Added, replication.CheckVisibility(ctx, db, cfg.Model)
}

// queueEveryStudent queues every student, listed from a complete view (a student hidden from
// the list would be left out), and logs why.
func queueEveryStudent(ctx context.Context, db *pgxpool.Pool, m *model.Model, buf *buffer.Buffer, log *logrus.Entry, why string) error {
	var ids []uuid.UUID
	err := replication.ReadComplete(ctx, db, m, func(tx pgx.Tx) (err error) {
		ids, err = m.AllStudents(ctx, tx)
		return err
	})
	if err == nil {
		err = buf.Add(ctx, ids, 0)
	}
	if err != nil {
		return err
	}
	log.WithField("students", len(ids)).Warn(why)
	return nil
}

// followModel queues every student once when the deployment's progress model changed since
// the slot's holder last recorded it (another model, or the same one edited): values computed
// the old way are recomputed the new way. Only the instance holding the slot follows: a
// standby with a new model (a rolling deploy) would have its queue drained by the old holder,
// with the old model, before it takes over. The students are queued before the new model is
// recorded, so a crash in between queues them again. A deployment from before models were
// recorded computed with the default model.
func followModel(ctx context.Context, db *pgxpool.Pool, cfg config.Config, store *state.Store, buf *buffer.Buffer, started bool, log *logrus.Entry) error {
	now := state.ModelInUse{Name: cfg.Model.Name, Digest: cfg.Model.Digest}
	before, recorded, err := store.ModelOf(ctx, cfg.Slot)
	if err != nil {
		return err
	}
	if !recorded {
		before = state.ModelInUse{Name: model.Default, Digest: model.Builtin(model.Default).Digest}
	}
	if started && before.Digest != now.Digest {
		err := queueEveryStudent(ctx, db, cfg.Model, buf, log.WithFields(logrus.Fields{"from": before.Name, "from_digest": before.Digest, "to": now.Name, "to_digest": now.Digest}),
			"the progress model changed since the last run: queued every student to recompute with the new model")
		if err != nil {
			return err
		}
	}
	return store.SetModel(ctx, cfg.Slot, now)
}

// pipeline is the running service: the consumer streams into the buffer, the flusher drains
// it to HubSpot.
type pipeline struct {
	flags    streamFlags
	log      *logrus.Entry
	hs       *hubspot.Client
	store    *state.Store
	buf      *buffer.Buffer
	consumer *replication.Consumer
	flusher  *flush.Flusher
	watch    sourceWatch
	// followModel records the model once this instance holds the slot (see followModel).
	followModel func(context.Context) error
}

// sourceWatch tests, every interval, what the service reads (and releases the students held
// back once the stream is back): the view of the source tables,
// so that /readyz and the metric show hidden rows even while nothing waits to be pushed; and
// the publication, which an operator may change under a running service. A test that fails
// (the database is away) is taken for neither.
type sourceWatch struct {
	hidden atomic.Bool
	gap    atomic.Bool // the publication leaves changes out
}

func (p *pipeline) watchSource(ctx context.Context, db *pgxpool.Pool, m *model.Model, publication string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	streamed, followed := false, false
	for {
		// Back on the stream after an outage: students held back by the failures it caused
		// go now, not when their backoff ends.
		if now := p.consumer.Streaming(); now != streamed {
			if streamed = now; now {
				p.buf.Release()
			}
		}
		if !followed && p.consumer.Holds() {
			if err := p.followModel(ctx); err != nil {
				p.log.WithError(err).Warn("could not compare the progress model with the one last recorded; trying again")
			} else {
				followed = true
			}
		}
		err := replication.CheckVisibility(ctx, db, m)
		switch {
		case errors.As(err, new(*replication.HiddenRowsError)):
			p.watch.hidden.Store(true)
		case err == nil:
			p.watch.hidden.Store(false)
		}
		p.watchPublication(ctx, db, m, publication)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// watchPublication says so when the publication starts leaving changes out, and once it
// publishes every change again queues every student: what it left out was never streamed.
func (p *pipeline) watchPublication(ctx context.Context, db *pgxpool.Pool, m *model.Model, publication string) {
	err := replication.CheckPublication(ctx, db, m, publication)
	var gap *replication.MisconfiguredError
	switch {
	case errors.As(err, &gap):
		if !p.watch.gap.Swap(true) {
			p.log.WithError(err).Error("the publication leaves changes out of the stream; run `progress-sync setup` or the SQL given")
		}
	case err == nil && p.watch.gap.Load() && p.consumer.Holds():
		ids, err := m.AllStudents(ctx, db)
		if err == nil {
			err = p.buf.Add(ctx, ids, 0)
		}
		if err != nil {
			p.log.WithError(err).Warn("could not queue every student after the publication was fixed; trying again")
			return
		}
		p.watch.gap.Store(false)
		p.log.WithField("students", len(ids)).Warn("the publication publishes every change again; queueing every student for the changes it left out")
	}
}

// resumeNowAndThen takes in, while this instance holds the slot, students that another
// instance recorded after this one took over (a holder frozen past the slot's timeout may
// still persist what it had received).
func (p *pipeline) resumeNowAndThen(ctx context.Context, every time.Duration) {
	onEveryTick(ctx, every, func() {
		if !p.consumer.Streaming() {
			return
		}
		if err := p.buf.Resume(ctx); err != nil && ctx.Err() == nil {
			p.log.WithError(err).Warn("could not reload the pending students from the sync state")
		}
	})
}

// onEveryTick calls do every interval until ctx ends.
func onEveryTick(ctx context.Context, every time.Duration, do func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			do()
		}
	}
}

// rowsHidden reports whether pushes are, or would be, held because rows are hidden.
func (p *pipeline) rowsHidden() bool { return p.flusher.RowsHidden() || p.watch.hidden.Load() }

// observe registers the pipeline's gauges and returns what /readyz asks.
func (p *pipeline) observe(tm *telemetry.Metrics) *telemetry.Health {
	flag := func(on func() bool) func() float64 {
		return func() float64 {
			if on() {
				return 1
			}
			return 0
		}
	}
	tm.Gauge("progress_sync_pending_students", "Students waiting in the durable buffer.", func() float64 { return float64(p.buf.Len()) })
	tm.Gauge("progress_sync_confirmed_lsn", "The position confirmed to the slot, as a number.", func() float64 { return float64(p.consumer.Confirmed()) })
	tm.Gauge("progress_sync_streaming", "1 while connected to the slot and streaming.", flag(p.consumer.Streaming))
	tm.Gauge("progress_sync_rows_hidden", "1 while pushes are held because the database hides rows of the source tables from the service.", flag(p.rowsHidden))
	return &telemetry.Health{Streaming: p.consumer.Streaming, Standby: p.consumer.Standby, PublicationGap: p.watch.gap.Load, Confirmed: func() uint64 { return uint64(p.consumer.Confirmed()) },
		DailyPaused: p.flusher.DailyLimitPaused, RowsHidden: p.rowsHidden, StallAfter: 3*p.flags.statusInterval + 30*time.Second}
}

// run streams until ctx ends, then pushes what is due for the grace period. A HubSpot setting
// no retry can fix (an API version HubSpot does not serve) stops it with that error.
func (p *pipeline) run(ctx context.Context, from pglogrepl.LSN) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	flushCtx, stopFlushing := context.WithCancel(ctx)
	defer stopFlushing()
	flushed := make(chan struct{})
	provisioned := make(chan struct{})
	go func() {
		defer close(flushed)
		// HubSpot being down, out of daily calls or misconfigured must not stop the stream:
		// the slot would keep WAL. Changes are buffered until the properties are in place.
		if err := provisionUntilDone(ctx, p.hs, p.log); err != nil {
			stop(err)
			return
		}
		close(provisioned)
		_ = p.flusher.Run(flushCtx)
	}()
	go recheckUnmatched(ctx, p.store, p.buf, p.consumer.Holds, p.flags.recheck, p.log)
	go p.resumeNowAndThen(ctx, time.Minute)

	streamErr := p.consumer.Run(ctx, from)
	stopFlushing()
	<-flushed
	if cause := context.Cause(ctx); errors.Is(cause, hubspot.ErrUnknownAPIVersion) {
		return cause
	}
	if streamErr != nil {
		return streamErr
	}
	select {
	case <-provisioned:
		if !p.consumer.Holds() {
			break // a standby has nothing to push
		}
		graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.flags.grace)
		defer cancel()
		if err := p.flusher.Drain(graceCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			p.log.WithError(err).Warn("could not push everything due before stopping; it stays in the buffer")
		}
	default:
	}
	p.log.WithFields(logrus.Fields{"checkpoint": p.consumer.Confirmed().String(), "pending": p.buf.Len()}).Info("stopped")
	return nil
}

// serveTelemetry serves /metrics, /healthz and /readyz, and the status page when withPage, on
// addr until the returned stop is called. Port 0 picks a free port; the log says which.
func serveTelemetry(addr string, h http.Handler, withPage bool, log *logrus.Entry) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("PROGRESS_SYNC_LISTEN %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	if withPage {
		log.WithFields(logrus.Fields{"addr": ln.Addr().String(), "status_page": "http://" + ln.Addr().String() + "/"}).
			Info("serving /metrics, /healthz, /readyz and the status page at /")
	} else {
		log.WithField("addr", ln.Addr().String()).Info("serving /metrics, /healthz and /readyz")
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// provisionUntilDone provisions the HubSpot properties, retrying until it works or ctx ends
// (an error then), or until HubSpot says the API version does not exist.
func provisionUntilDone(ctx context.Context, hs *hubspot.Client, log *logrus.Entry) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 5*time.Second, 5*time.Minute, 0
	for {
		err := provision(ctx, hs, io.Discard)
		if err == nil || errors.Is(err, hubspot.ErrUnknownAPIVersion) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := bo.NextBackOff()
		log.WithError(err).WithField("retry_in", wait.String()).
			Error("cannot provision the HubSpot properties; changes are recorded but not pushed until this works")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// recheckUnmatched queues students without a contact again now and then: the contact may
// have been created since.
func recheckUnmatched(ctx context.Context, store *state.Store, buf *buffer.Buffer, holds func() bool, every time.Duration, log *logrus.Entry) {
	onEveryTick(ctx, every, func() {
		if !holds() {
			return // only the instance holding the slot writes to HubSpot
		}
		ids, err := store.StaleUnmatched(ctx, every)
		if err == nil && len(ids) > 0 {
			err = buf.Add(ctx, ids, 0)
		}
		if err != nil && ctx.Err() == nil {
			log.WithError(err).Warn("could not queue unmatched students for another look")
		}
	})
}

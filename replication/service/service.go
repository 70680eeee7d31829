// Package service is progress-sync's running service as a library: it prepares the database,
// builds the pipeline from a configuration (the stream into the durable buffer, the flusher
// that drains it to HubSpot, the reconcile beside them) and supervises it. Every goroutine it
// starts belongs to one group: the first fatal error stops the rest, and Run returns only
// once all of them have ended.
package service

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/alert"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/flush"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/reconcile"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/statuspage"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// Options are the service's settings: the configuration (docs/contract.md §4) and the tuning
// knobs of run and replay beyond it.
type Options struct {
	Config config.Config
	// From is the LSN a replay starts from; 0 streams from the slot's position.
	From pglogrepl.LSN
	// Grace is how long, on a stop, the service keeps recording what was received and pushing
	// students that are due.
	Grace time.Duration
	// Recheck is how often students without a HubSpot contact, or in conflict over one, are
	// looked up again.
	Recheck time.Duration
	// StatusInterval is how often the position is reported to PostgreSQL.
	StatusInterval time.Duration
	// DailyLimitPause is how long pushes pause when HubSpot's daily limit is spent.
	DailyLimitPause time.Duration
	// NoStatusPage serves /metrics, /healthz and /readyz without the page at /.
	NoStatusPage bool
	// ShowEmails logs and shows email addresses in full.
	ShowEmails bool
	// HubSpotTimeout ends a HubSpot request that takes longer (it is retried).
	HubSpotTimeout time.Duration
	Log            *logrus.Entry
}

// Run is the service on db, whose model has been verified: it streams until ctx ends, then
// pushes what is due for the grace period and returns nil. It returns early with the error
// for what no retry fixes: a refused replay, a misconfiguration, a HubSpot API version that
// does not exist. A stop asked for while it is still starting is a clean stop.
func Run(ctx context.Context, db *pgxpool.Pool, opts Options) error {
	opts.setDefaults()
	err := run(ctx, db, opts)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// setDefaults gives unset durations the command line's defaults.
func (o *Options) setDefaults() {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&o.Grace, 20 * time.Second}, {&o.Recheck, time.Hour}, {&o.StatusInterval, 10 * time.Second},
		{&o.DailyLimitPause, 15 * time.Minute}, {&o.HubSpotTimeout, 30 * time.Second}} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
}

func run(ctx context.Context, db *pgxpool.Pool, opts Options) error {
	s, err := build(ctx, db, opts)
	if err != nil {
		return err
	}
	srv, err := s.listen()
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	stopped := make(chan struct{}) // the pipeline has stopped: the server may go
	g.Go(func() error { return srv.serve(s.log) })
	g.Go(func() error { return srv.shutdownAfter(stopped) })
	g.Go(func() error {
		defer close(stopped)
		return s.pipeline(ctx, gctx, g)
	})
	return g.Wait()
}

// service is the pipeline built from the options, and what watches it.
type service struct {
	opts     Options
	cfg      config.Config
	log      *logrus.Entry
	db       *pgxpool.Pool
	store    *state.Store
	buf      *buffer.Buffer
	consumer *replication.Consumer
	lease    *replication.Lease
	hs       *hubspot.Client
	flusher  *flush.Flusher
	view     replication.CompleteView
	tm       *telemetry.Metrics
	health   *telemetry.Health
	conds    *condition.Set
	alerts   *alert.Alerter // nil without a webhook
	page     http.Handler
	watch    sourceWatch
	// started says the slot had a checkpoint before this run: tables added to the
	// publication and a changed model need every student queued.
	started bool
}

// build prepares the database and assembles the pipeline: stream → buffer → flusher → push.
func build(ctx context.Context, db *pgxpool.Pool, opts Options) (*service, error) {
	cfg, log := opts.Config, opts.Log
	store, added, err := prepareDatabase(ctx, db, cfg, log)
	if err != nil {
		return nil, err
	}
	buf, checkpoint, err := buffer.Open(ctx, store, cfg.Slot, buffer.Options{Debounce: cfg.Debounce, MaxDelay: cfg.MaxDelay})
	if err != nil {
		return nil, err
	}
	log.WithFields(logrus.Fields{"checkpoint": checkpoint.LSN.String(), "pending": buf.Len(), "model": cfg.Model.Name}).Info("loaded sync state")
	s := &service{opts: opts, cfg: cfg, log: log, db: db, store: store, buf: buf, tm: telemetry.New(), started: checkpoint.LSN != 0,
		view: replication.CompleteView{DB: db, Model: cfg.Model}, conds: condition.NewSet(log)}
	if len(added) > 0 && s.started {
		// Their changes before now were never streamed.
		if err := s.queueEveryStudent(ctx, log.WithField("tables", added),
			"tables the progress model reads were added to the publication: queued every student for the changes they had that were never streamed"); err != nil {
			return nil, err
		}
	}
	s.consumer = replication.NewConsumer(db, buf, replication.Options{
		DatabaseURL: cfg.DatabaseURL, Names: replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, Model: cfg.Model,
		StatusInterval: opts.StatusInterval, StopGrace: opts.Grace, Log: log.WithField("component", "replication"), Observer: s.tm,
		Conditions: s.conds,
	})
	s.lease = s.consumer.Lease()
	// Only the slot's holder writes contacts, asked of the server before every attempt.
	s.hs, err = NewHubSpot(cfg, log, opts.HubSpotTimeout, func(c *hubspot.Config) { c.Observer, c.Fence = answers{s.tm, s.conds}, s.lease })
	if err != nil {
		return nil, err
	}
	pusher := push.New(s.hs, store, log.WithField("component", "push"), push.Options{ShowEmails: opts.ShowEmails, Properties: cfg.Model.Computes()})
	s.flusher = flush.New(buf, s.view, pusher, flush.Options{Log: log.WithField("component", "flush"), DailyLimitPause: opts.DailyLimitPause,
		StopGrace: opts.Grace, Observer: s.tm, Lease: s.lease, Conditions: s.conds})
	s.health = s.observe()
	if cfg.AlertWebhook != "" {
		if u, err := url.Parse(cfg.AlertWebhook); err == nil {
			log.WithFields(logrus.Fields{"host": u.Hostname(), "after": cfg.AlertAfter.String()}).Info("alerts go to the webhook on this host")
		}
		s.alerts = alert.New(alert.Watched{Check: s.health.Check, Standby: s.consumer.Standby, MayWrite: s.lease.MayWrite, Conditions: s.conds, Store: store},
			alert.Options{URL: cfg.AlertWebhook, After: cfg.AlertAfter, Instance: instanceName(), Slot: cfg.Slot, Log: log.WithField("component", "alerts")})
	}
	if !opts.NoStatusPage {
		s.tm.KeepRecent(cfg.RateLimit.Per)
		s.page = statuspage.Handler(statuspage.Options{DB: db, Store: store, Slot: cfg.Slot, Model: cfg.Model.Name, Metrics: s.tm, Health: s.health,
			RateLimit: cfg.RateLimit, ShowEmails: opts.ShowEmails, Log: log.WithField("component", "status-page")})
	}
	return s, nil
}

// prepareDatabase migrates the sync state, sets up the publication and replica identities
// where needed, and refuses a view of the source tables that hides rows. It returns the
// tables it added to an existing publication.
func prepareDatabase(ctx context.Context, db *pgxpool.Pool, cfg config.Config, log *logrus.Entry) (*state.Store, []string, error) {
	if err := replication.CheckServer(ctx, db); err != nil {
		return nil, nil, err
	}
	store, err := state.Open(ctx, db, cfg.Model.Students)
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

// pipeline streams until ctx (the caller's) or gctx (the group's: a member failed) ends,
// with the flusher and the watchers beside the stream in the group g; then, on a clean stop,
// pushes what is due for the grace period.
func (s *service) pipeline(ctx, gctx context.Context, g *errgroup.Group) error {
	provisioned, flushed := make(chan struct{}), make(chan struct{})
	g.Go(func() error {
		defer close(flushed)
		// HubSpot being down, out of daily calls or misconfigured must not stop the stream:
		// the slot would keep WAL. Changes are buffered until the properties are in place.
		if err := provisionUntilDone(gctx, s.hs, s.conds, s.log); err != nil {
			return ignoreStop(gctx, err)
		}
		close(provisioned)
		return ignoreStop(gctx, s.flusher.Run(gctx))
	})
	s.startWatchers(gctx, g)
	if err := s.consumer.Run(gctx, s.opts.From); err != nil {
		return err
	}
	if ctx.Err() == nil {
		return nil // another member failed: its error is the group's
	}
	<-flushed
	s.drain(ctx, provisioned)
	s.log.WithFields(logrus.Fields{"checkpoint": s.consumer.Confirmed().String(), "pending": s.buf.Len()}).Info("stopped")
	return nil
}

// drain pushes, on a clean stop, what is due within the grace period; the flusher has
// stopped. A standby has nothing to push; nothing is pushed before the properties exist.
func (s *service) drain(ctx context.Context, provisioned <-chan struct{}) {
	select {
	case <-provisioned:
	default:
		return
	}
	if !s.lease.MayWrite() {
		return
	}
	graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.Grace)
	defer cancel()
	if err := s.flusher.Drain(graceCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		s.log.WithError(err).Warn("could not push everything due before stopping; it stays in the buffer")
	}
}

// ignoreStop drops the error of a member that ended because the group is stopping.
func ignoreStop(gctx context.Context, err error) error {
	if gctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// NewHubSpot builds the HubSpot client the configuration describes; opts adjust it further.
func NewHubSpot(cfg config.Config, log *logrus.Entry, timeout time.Duration, opts ...func(*hubspot.Config)) (*hubspot.Client, error) {
	hc := hubspot.Config{
		BaseURL:    cfg.HubSpotBaseURL,
		APIVersion: cfg.HubSpotAPIVersion,
		Token:      cfg.HubSpotToken,
		RateLimit:  cfg.RateLimit,
		HTTPClient: &http.Client{Timeout: timeout},
		Log:        log.WithField("component", "hubspot"),
	}
	if file := cfg.HubSpotTokenFile; file != "" {
		// A key rotated in the file is taken at HubSpot's next 401, without a restart.
		hc.ReloadToken = func() (string, error) { return config.ReadTokenFile(file) }
	}
	for _, o := range opts {
		o(&hc)
	}
	return hubspot.New(hc)
}

// reconciler walks the linked contacts every Reconcile, on a tenth of the rate limit, while
// this instance holds the slot.
func (s *service) reconciler() *reconcile.Reconciler {
	return reconcile.New(s.hs, s.view, s.buf, s.store, s.store.Reconciliation(s.cfg.Slot), reconcile.Options{
		Every: s.cfg.Reconcile, Budget: reconcile.Budget(s.cfg.RateLimit), Lease: s.lease, Properties: s.cfg.Model.Computes(),
		DailyLimitPause: s.opts.DailyLimitPause, Log: s.log.WithField("component", "reconcile"), Observer: passes{s.tm, s.alerts},
		Conditions: s.conds,
	})
}

// passes hears the reconcile's passes: the metrics count drift, the alerts post properties
// fought over.
type passes struct {
	*telemetry.Metrics
	*alert.Alerter
}

// instanceName names this instance in alerts: the host (in Kubernetes, the pod) and the
// process, which tell two instances on one host apart.
func instanceName() string {
	h, err := os.Hostname()
	if err != nil {
		h = "unknown host"
	}
	return fmt.Sprintf("%s (pid %d)", h, os.Getpid())
}

// answers hears HubSpot's answers for the metrics, and clears the HubSpot conditions on any
// it accepted: the key works, HubSpot answers, calls are left.
type answers struct {
	*telemetry.Metrics
	conds *condition.Set
}

func (a answers) Request(endpoint string, status int, took time.Duration) {
	a.Metrics.Request(endpoint, status, took)
	if status >= 200 && status < 300 {
		a.conds.Clear(condition.HubSpot...)
	}
}

package service

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/alert"
	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// The watchers run beside the stream, each on its own timer, until the group stops: they
// recover from what an operator or an outage did while the service ran.

// startWatchers starts every watcher in the group g.
func (s *service) startWatchers(ctx context.Context, g *errgroup.Group) {
	// every runs do now and then every interval.
	every := func(interval time.Duration, do func(context.Context)) {
		g.Go(func() error {
			do(ctx)
			onEveryTick(ctx, interval, do)
			return nil
		})
	}
	if s.page != nil {
		every(telemetry.SampleEvery, s.sample)
	}
	if s.cfg.Reconcile > 0 {
		g.Go(func() error {
			s.reconciler().Run(ctx)
			return nil
		})
	}
	g.Go(func() error {
		s.tm.WatchDatabase(ctx, s.db, s.cfg.Slot, s.opts.StatusInterval, s.log)
		return nil
	})
	every(s.opts.StatusInterval, s.watchSource)
	every(s.opts.StatusInterval, s.renewReadOnlySessions)
	// Nothing to recheck or resume before the slot is held: these wait an interval first.
	after := func(interval time.Duration, do func(context.Context)) {
		g.Go(func() error {
			onEveryTick(ctx, interval, do)
			return nil
		})
	}
	if s.alerts != nil {
		g.Go(func() error {
			s.alerts.Deliver(ctx)
			return nil
		})
		every(alert.LookEvery, s.alerts.LookAtReadiness)
		every(alert.ProblemsEvery, s.alerts.LookForProblems)
	}
	after(s.opts.Recheck, s.recheckUnmatched)
	after(time.Minute, s.resume)
}

// sample keeps the pending count for the status page's chart. Only the holder's buffer is
// the sync's: a standby's holds what it loaded at start.
func (s *service) sample(context.Context) {
	if s.lease.MayWrite() {
		s.tm.Sample(s.buf.Len())
	}
}

// sourceWatch is what watchSource keeps between looks. (Hidden rows and a publication gap
// are conditions: /readyz and the metrics show them even while nothing waits to be pushed.
// A test that fails, the database being away, is taken for neither.)
type sourceWatch struct {
	streamed atomic.Bool // the consumer streamed at the last look
	followed atomic.Bool // the model was compared and recorded
}

// watchSource tests what the service reads, and releases the students held back once the
// stream is back.
func (s *service) watchSource(ctx context.Context) {
	// Back on the stream after an outage: students held back by the failures it caused go
	// now, not when their backoff ends.
	if now := s.lease.Streaming(); s.watch.streamed.Swap(now) != now && now {
		s.buf.Release()
	}
	if !s.watch.followed.Load() && s.lease.MayWrite() {
		if err := s.followModel(ctx); err != nil {
			s.log.WithError(err).Warn("could not compare the progress model with the one last recorded; trying again")
		} else {
			s.watch.followed.Store(true)
		}
	}
	err := replication.CheckVisibility(ctx, s.db, s.cfg.Model)
	switch {
	case errors.As(err, new(*replication.HiddenRowsError)):
		s.conds.Raise(condition.RowsHidden, err, nil)
	case err == nil:
		if !s.flusher.RowsHidden() {
			s.conds.Clear(condition.RowsHidden)
		}
	}
	s.watchPublication(ctx)
}

// renewReadOnlySessions replaces the pool's connections while the database refuses writes: a
// session opened while the database was read-only (ALTER DATABASE ... SET
// default_transaction_read_only) stays read-only once the setting is reset; only new sessions
// take writes again.
func (s *service) renewReadOnlySessions(context.Context) {
	if s.conds.Holds(condition.DatabaseReadOnly) {
		s.db.Reset()
	}
}

// watchPublication says so when the publication starts leaving changes out, and once it
// publishes every change again queues every student: what it left out was never streamed.
func (s *service) watchPublication(ctx context.Context) {
	err := replication.CheckPublication(ctx, s.db, s.cfg.Model, s.cfg.Publication)
	var gap *replication.MisconfiguredError
	switch {
	case errors.As(err, &gap):
		s.conds.Raise(condition.PublicationGap, err, nil)
	case err == nil && s.conds.Holds(condition.PublicationGap) && s.lease.MayWrite():
		if err := s.queueEveryStudent(ctx, s.log, "the publication publishes every change again; queueing every student for the changes it left out"); err != nil {
			s.log.WithError(err).Warn("could not queue every student after the publication was fixed; trying again")
			return
		}
		s.conds.Clear(condition.PublicationGap)
	}
}

// followModel queues every student once when the deployment's progress model changed since
// the slot's holder last recorded it (another model, or the same one edited): values computed
// the old way are recomputed the new way. Only the instance holding the slot follows: a
// standby with a new model (a rolling deploy) would have its queue drained by the old holder,
// with the old model, before it takes over. The students are queued before the new model is
// recorded, so a crash in between queues them again. A deployment from before models were
// recorded computed with the default model.
func (s *service) followModel(ctx context.Context) error {
	m := s.cfg.Model
	now := state.ModelInUse{Name: m.Name, Digest: m.Digest}
	before, recorded, err := s.store.ModelOf(ctx, s.cfg.Slot)
	if err != nil {
		return err
	}
	if !recorded {
		before = state.ModelInUse{Name: model.Default, Digest: model.Builtin(model.Default).Digest}
	}
	if s.started && before.Digest != now.Digest {
		err := s.queueEveryStudent(ctx, s.log.WithFields(logrus.Fields{"from": before.Name, "from_digest": before.Digest, "to": now.Name, "to_digest": now.Digest}),
			"the progress model changed since the last run: queued every student to recompute with the new model")
		if err != nil {
			return err
		}
	}
	return s.store.SetModel(ctx, s.cfg.Slot, now)
}

// queueEveryStudent queues every student, listed from a complete view (a student hidden from
// the list would be left out), and logs why.
func (s *service) queueEveryStudent(ctx context.Context, log *logrus.Entry, why string) error {
	var ids []uuid.UUID
	m := s.cfg.Model
	err := replication.ReadComplete(ctx, s.db, m, func(tx pgx.Tx) (err error) {
		ids, err = m.AllStudents(ctx, tx)
		return err
	})
	if err == nil {
		err = s.buf.Add(ctx, ids, 0)
	}
	if err != nil {
		return err
	}
	log.WithField("students", len(ids)).Warn(why)
	return nil
}

// recheckUnmatched queues students without a contact, or in conflict over one, again now and
// then: the contact may have been created since, or the rival may have left.
func (s *service) recheckUnmatched(ctx context.Context) {
	if !s.lease.MayWrite() {
		return // only the instance holding the slot writes to HubSpot
	}
	ids, err := s.store.StaleUnmatched(ctx, s.opts.Recheck)
	if err == nil && len(ids) > 0 {
		err = s.buf.Add(ctx, ids, 0)
	}
	if err != nil && ctx.Err() == nil {
		s.log.WithError(err).Warn("could not queue unmatched and conflicting students for another look")
	}
}

// resume takes in, while this instance streams the slot, students that another instance
// recorded after this one took over (a holder frozen past the slot's timeout may still
// persist what it had received).
func (s *service) resume(ctx context.Context) {
	if !s.lease.Streaming() {
		return
	}
	if err := s.buf.Resume(ctx); err != nil && ctx.Err() == nil {
		s.log.WithError(err).Warn("could not reload the pending students from the sync state")
	}
}

// onEveryTick calls do every interval until ctx ends.
func onEveryTick(ctx context.Context, every time.Duration, do func(context.Context)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			do(ctx)
		}
	}
}

// observe registers the pipeline's gauges and returns what /readyz asks.
func (s *service) observe() *telemetry.Health {
	flag := func(on func() bool) func() float64 {
		return func() float64 {
			if on() {
				return 1
			}
			return 0
		}
	}
	c := s.consumer
	s.tm.Gauge("progress_sync_pending_students", "Students waiting in the durable buffer.", func() float64 { return float64(s.buf.Len()) })
	s.tm.Gauge("progress_sync_confirmed_lsn", "The position confirmed to the slot, as a number.", func() float64 { return float64(c.Confirmed()) })
	s.tm.Gauge("progress_sync_streaming", "1 while connected to the slot and streaming.", flag(c.Streaming))
	s.tm.Gauge("progress_sync_rows_hidden", "1 while pushes are held because the database hides rows of the source tables from the service.", flag(func() bool { return s.conds.Holds(condition.RowsHidden) }))
	s.tm.Conditions(s.conds)
	return &telemetry.Health{Streaming: c.Streaming, Standby: c.Standby, Confirmed: func() uint64 { return uint64(c.Confirmed()) },
		Conditions: s.conds, StallAfter: 3*s.opts.StatusInterval + 30*time.Second}
}

// provisionUntilDone provisions the HubSpot properties, retrying until it works or ctx ends
// (an error then), or until HubSpot says the API version does not exist.
func provisionUntilDone(ctx context.Context, hs *hubspot.Client, conds *condition.Set, log *logrus.Entry) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 5*time.Second, 5*time.Minute, 0
	for {
		_, err := push.Provision(ctx, hs)
		if err == nil || errors.Is(err, hubspot.ErrUnknownAPIVersion) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := bo.NextBackOff()
		if k, ok := condition.Of(err); ok {
			conds.Raise(k, err, logrus.Fields{"retry_in": wait.String(), "while": "provisioning the HubSpot properties"})
		} else {
			log.WithError(err).WithField("retry_in", wait.String()).
				Error("cannot provision the HubSpot properties; changes are recorded but not pushed until this works")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

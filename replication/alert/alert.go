// Package alert tells a team when the sync needs a person, by posting to a webhook (Slack,
// Google Chat, Mattermost, or any receiver of JSON): when the instance holding the replication
// slot stays not ready longer than After, and when it is ready again; when students become
// rejected by HubSpot or in conflict over a contact; and when a property is fought over in
// HubSpot pass after pass (docs/contract.md §6, "Alerts"; docs/runbook.md, "Alerts").
//
// Each condition is posted once until it clears. The posts go out from a queue of their own,
// retried with backoff, so a receiver that fails or hangs never slows the pipeline. An alert
// holds no secret and no full email address; a standby posts nothing.
package alert

import (
	"context"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// Options configure an Alerter.
type Options struct {
	// URL is the webhook's address (a secret: it is never logged).
	URL string
	// After is how long the instance holding the slot may stay not ready before an alert.
	// Default 5 min.
	After time.Duration
	// Instance and Slot name who speaks, in every alert.
	Instance, Slot string
	// Timeout bounds one post. Default 10 s.
	Timeout time.Duration
	Log     *logrus.Entry
}

// Watched is what the alerts watch: readiness, whether this instance is a standby or may
// write, the conditions (for a lost slot, which may come and go between two looks), and the
// sync state (the problem students, and the alerts of a spell a restart must close).
type Watched struct {
	Check      func() telemetry.Readiness
	Standby    func() bool
	MayWrite   func() bool
	Conditions *condition.Set // optional
	Store      Store
}

// Store is the sync state the alerts read and write (state.Store is one).
type Store interface {
	ProblemsSince(ctx context.Context, since time.Time, kinds ...state.Kind) ([]state.Problem, error)
	OpenAlerts(ctx context.Context, slot string) ([]state.OpenAlert, error)
	AlertPosted(ctx context.Context, slot, reason string, since time.Time) error
	AlertsClosed(ctx context.Context, slot string) error
}

// Alerter decides what to post, and posts it. A nil *Alerter posts nothing.
type Alerter struct {
	opts   Options
	w      Watched
	poster *poster

	// outage is the current spell of not being ready, as this instance holds the slot;
	// restored says the spell a previous holder recorded was taken up.
	outage   outage
	restored bool
	// slotLosses is condition.SlotLost's count at the last look.
	slotLosses uint64

	mu     sync.Mutex
	news   problemNews
	fought map[string]bool // properties already posted as fought over, until a pass clears them
}

// outage is one spell of not being ready.
type outage struct {
	since   time.Time
	alerted map[string]bool // the reasons (Readiness.Code) posted in this spell
}

// New returns an Alerter. The caller runs Deliver, and calls LookAtReadiness and
// LookForProblems on their tickers.
func New(w Watched, opts Options) *Alerter {
	if opts.After <= 0 {
		opts.After = 5 * time.Minute
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	return &Alerter{opts: opts, w: w, poster: newPoster(opts.URL, opts.Timeout, opts.Log), fought: map[string]bool{},
		news: problemNews{start: time.Now()}}
}

// How often the service calls LookAtReadiness and LookForProblems.
const (
	LookEvery     = time.Second
	ProblemsEvery = 5 * time.Second
)

// Deliver posts the alerts, one at a time and in order, until ctx ends.
func (a *Alerter) Deliver(ctx context.Context) { a.poster.run(ctx) }

// LookAtReadiness looks at readiness now (every LookEvery).
func (a *Alerter) LookAtReadiness(ctx context.Context) { a.lookAtReadiness(ctx, time.Now()) }

// LookForProblems looks for students that became problems (every ProblemsEvery).
func (a *Alerter) LookForProblems(ctx context.Context) { a.lookForProblems(ctx) }

// lookAtReadiness posts when the instance holding the slot has been not ready for After (a
// lost slot at once: changes were lost from the stream), once per reason, and once when the
// spell ends. A standby posts nothing: the holder speaks for the slot. The instance that
// takes the slot takes up the spell its predecessor (or the process before a restart)
// recorded, so that its recovery is posted, and its alerts not again.
func (a *Alerter) lookAtReadiness(ctx context.Context, now time.Time) {
	r, standby, writes := a.w.Check(), a.w.Standby(), a.w.MayWrite()
	a.mu.Lock()
	a.news.holding(writes, standby, now)
	a.mu.Unlock()
	if standby {
		a.endSpell(ctx, now, "another instance holds the replication slot now and pushes")
		a.restored = false
		return
	}
	if writes && !a.restored {
		a.restored = a.restoreSpell(ctx, now)
	}
	if losses := a.w.Conditions.Began(condition.SlotLost); losses != a.slotLosses {
		a.slotLosses = losses
		a.notReady(ctx, telemetry.Readiness{Code: condition.SlotLost.Name(), Reason: condition.SlotLost.Notice()}, now)
	}
	switch {
	case r.Ready:
		a.endSpell(ctx, now, "it is ready again")
	case now.Sub(a.spellSince(now)) >= a.opts.After:
		a.notReady(ctx, r, now)
	}
}

// spellSince opens a spell at now unless one is open, and says when it began.
func (a *Alerter) spellSince(now time.Time) time.Time {
	if a.outage.since.IsZero() {
		a.outage = outage{since: now, alerted: map[string]bool{}}
	}
	return a.outage.since
}

// notReady posts r, unless its reason was posted in this spell already, and records it.
func (a *Alerter) notReady(ctx context.Context, r telemetry.Readiness, now time.Time) {
	since := a.spellSince(now)
	if a.outage.alerted[r.Code] {
		return
	}
	a.outage.alerted[r.Code] = true
	a.post(notReady(a.opts, r, since, now))
	a.record(ctx, "record the alert posted", func(ctx context.Context) error {
		return a.w.Store.AlertPosted(ctx, a.opts.Slot, r.Code, since)
	})
}

// endSpell closes the spell: its recovery is posted if an alert was.
func (a *Alerter) endSpell(ctx context.Context, now time.Time, how string) {
	if len(a.outage.alerted) > 0 {
		a.post(recovered(a.opts, a.outage.since, now, how))
		a.record(ctx, "forget the alerts of the spell", func(ctx context.Context) error { return a.w.Store.AlertsClosed(ctx, a.opts.Slot) })
	}
	a.outage = outage{}
}

// restoreSpell takes up the spell whose alerts were recorded and whose recovery was not, and
// says whether it could look.
func (a *Alerter) restoreSpell(ctx context.Context, now time.Time) bool {
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	open, err := a.w.Store.OpenAlerts(ctx, a.opts.Slot)
	if err != nil {
		a.opts.Log.WithError(err).Debug("alerts: could not read the alerts of a spell not yet over; reading again later")
		return false
	}
	for _, o := range open {
		a.spellSince(now)
		if o.Since.Before(a.outage.since) {
			a.outage.since = o.Since
		}
		a.outage.alerted[o.Reason] = true
	}
	return true
}

// recordTimeout bounds a write of the alerts' record: the database may be what is down.
const recordTimeout = 5 * time.Second

// record does what keeps the alerts' record, as far as the database lets it: a spell whose
// alerts could not be recorded is not taken up by a restart, and that is all.
func (a *Alerter) record(ctx context.Context, what string, do func(context.Context) error) {
	rctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	if err := do(rctx); err != nil && ctx.Err() == nil {
		a.opts.Log.WithError(err).Info("alerts: could not " + what + "; a restart before the spell ends posts no recovery for it")
	}
}

// Fought hears, at the end of each reconcile pass, the properties changed in HubSpot again on
// contacts the pass before had repaired, with how many: each is posted once, until a pass
// without it.
func (a *Alerter) Fought(recurring map[string]int) {
	if a == nil {
		return
	}
	a.mu.Lock()
	fresh := map[string]int{}
	for name, n := range recurring {
		if !a.fought[name] {
			fresh[name] = n
		}
	}
	a.fought = map[string]bool{}
	for name := range recurring {
		a.fought[name] = true
	}
	a.mu.Unlock()
	if len(fresh) > 0 {
		a.post(foughtOver(a.opts, fresh, time.Now()))
	}
}

func (a *Alerter) post(m Message) {
	a.opts.Log.WithFields(logrus.Fields{"alert": m.Details.Event, "condition": m.Details.Condition}).Info("alert webhook: posting an alert")
	a.poster.enqueue(m)
}

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
// write, and the problem students.
type Watched struct {
	Check    func() telemetry.Readiness
	Standby  func() bool
	MayWrite func() bool
	Problems ProblemSource
}

// ProblemSource lists the students that became problems since a time (state.Store does).
type ProblemSource interface {
	ProblemsSince(ctx context.Context, since time.Time, kinds ...state.Kind) ([]state.Problem, error)
}

// Alerter decides what to post, and posts it. A nil *Alerter posts nothing.
type Alerter struct {
	opts   Options
	w      Watched
	poster *poster

	// outage is the current spell of not being ready, as this instance holds the slot.
	outage outage

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
func (a *Alerter) LookAtReadiness(context.Context) { a.lookAtReadiness(time.Now()) }

// LookForProblems looks for students that became problems (every ProblemsEvery).
func (a *Alerter) LookForProblems(ctx context.Context) { a.lookForProblems(ctx) }

// lookAtReadiness posts when the instance holding the slot has been not ready for After (a
// lost slot at once: changes were lost from the stream), once per reason, and once when the
// spell ends. A standby posts nothing: the holder speaks for the slot.
func (a *Alerter) lookAtReadiness(now time.Time) {
	r := a.w.Check()
	standby := a.w.Standby()
	a.mu.Lock()
	a.news.holding(a.w.MayWrite(), standby, now)
	a.mu.Unlock()
	if standby {
		if len(a.outage.alerted) > 0 {
			a.post(recovered(a.opts, a.outage.since, now, "another instance holds the replication slot now and pushes"))
		}
		a.outage = outage{}
		return
	}
	if r.Ready {
		if len(a.outage.alerted) > 0 {
			a.post(recovered(a.opts, a.outage.since, now, "it is ready again"))
		}
		a.outage = outage{}
		return
	}
	if a.outage.since.IsZero() {
		a.outage = outage{since: now, alerted: map[string]bool{}}
	}
	urgent := r.Code == condition.SlotLost.Name()
	if (now.Sub(a.outage.since) >= a.opts.After || urgent) && !a.outage.alerted[r.Code] {
		a.outage.alerted[r.Code] = true
		a.post(notReady(a.opts, r, a.outage.since, now))
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

// Package reconcile checks HubSpot itself, not the sync's record of it: every interval it walks
// every linked contact in pages of 100, reads the values the contact holds, and queues each
// student whose contact differs from the database, so that the ordinary flush repairs values a
// person, a workflow or an import changed behind the sync's back (docs/contract.md §6).
//
// The walk spends a tenth of the HubSpot rate limit at most, so live changes keep their
// freshness; it keeps its position in the sync state, so a restart resumes it; and only the
// instance holding the replication slot walks.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/state"
)

// PageSize is how many linked contacts one batch/read covers: HubSpot's batch limit.
const PageSize = 100

// HubSpot reads contacts by id.
type HubSpot interface {
	ReadByID(ctx context.Context, ids []string, properties []string) (map[string]hubspot.Contact, error)
}

// Queue is the keyed buffer: the reconcile puts the students it finds different there.
type Queue interface {
	Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error
	// Waiting splits the students in the buffer into those queued for a push and those in
	// flight.
	Waiting(students []uuid.UUID) (queued, inFlight map[uuid.UUID]bool)
}

// Observer hears what the walk finds, for metrics and alerts.
type Observer interface {
	Drifted(property string, contacts int)
	PassCompleted(at time.Time)
	// Fought hears, at the end of each pass, the properties changed in HubSpot again on
	// contacts the pass before had repaired, with how many (none: an empty map).
	Fought(recurring map[string]int)
}

// Options configure a Reconciler.
type Options struct {
	// Every is how long after a complete pass the next one starts.
	Every time.Duration
	// Budget is the HubSpot rate the walk may use: a tenth of the portal's limit.
	Budget rate.Limit
	// Lease says whether this instance holds the replication slot; a standby waits.
	// Default: replication.Always.
	Lease replication.Holder
	// Properties are the properties the sync owns (model.Computes): the walk reads and
	// compares these only. Default: all ten.
	Properties []string
	// Pause is how long the walk waits after a failure before it tries the page again.
	// Default 30 s.
	Pause time.Duration
	// DailyLimitPause is how long it waits when HubSpot's daily limit is spent. Default 15 min.
	DailyLimitPause time.Duration
	// ProgressEvery is how often a running pass logs how far it has got. Default 10 s.
	ProgressEvery time.Duration
	Log           *logrus.Entry
	Observer      Observer // optional
	// Conditions hears of what keeps the walk from HubSpot or the database (a refused key,
	// HubSpot out of reach), and says so. Default: a Set of its own.
	Conditions *condition.Set
}

// Reconciler runs the passes.
type Reconciler struct {
	hs       HubSpot
	source   replication.CompleteView
	queue    Queue
	store    *state.Store
	position *state.Reconciliation
	opts     Options
	limiter  *rate.Limiter
	props    []string
	// told is the end of the last complete pass reported to the observer.
	told time.Time
	// shown is what the progress lines of the pass under way started from.
	shown shownProgress
}

// shownProgress is where this process took up a pass, for its rate and ETA.
type shownProgress struct {
	pass      int64
	since     time.Time
	readSince int // contacts the pass had read then
	left      int // links still to read, counted then and counted down by each page
	lastLine  time.Time
}

// New returns a Reconciler.
func New(hs HubSpot, source replication.CompleteView, queue Queue, store *state.Store, position *state.Reconciliation, opts Options) *Reconciler {
	if len(opts.Properties) == 0 {
		opts.Properties = metrics.Names()
	}
	if opts.Pause <= 0 {
		opts.Pause = 30 * time.Second
	}
	if opts.DailyLimitPause <= 0 {
		opts.DailyLimitPause = 15 * time.Minute
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 10 * time.Second
	}
	if opts.Lease == nil {
		opts.Lease = replication.Always{}
	}
	if opts.Conditions == nil {
		opts.Conditions = condition.NewSet(opts.Log)
	}
	return &Reconciler{hs: hs, source: source, queue: queue, store: store, position: position, opts: opts,
		limiter: rate.NewLimiter(opts.Budget, 1), props: opts.Properties}
}

// Budget is the share of a HubSpot rate limit the walk uses: a tenth.
func Budget(r hubspot.Rate) rate.Limit {
	if r.Requests <= 0 || r.Per <= 0 {
		return rate.Inf
	}
	return rate.Limit(float64(r.Requests) / r.Per.Seconds() / 10)
}

// Run walks pass after pass until ctx ends. Failures are logged and the page tried again.
func (r *Reconciler) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := r.step(ctx)
		if err == nil || ctx.Err() != nil {
			continue
		}
		log, wait := r.opts.Log.WithError(err), r.opts.Pause
		switch {
		case errors.Is(err, hubspot.ErrDailyLimit):
			wait = r.opts.DailyLimitPause
		case errors.As(err, new(*replication.HiddenRowsError)):
			// The flusher says so loudly; the walk just waits for the fix.
			log.WithField("retry_in", wait.String()).Debug("reconcile: the database hides rows; waiting")
			sleep(ctx, wait)
			continue
		}
		if k, ok := condition.Of(err); ok {
			r.opts.Conditions.Raise(k, err, logrus.Fields{"retry_in": wait.String(), "while": "reconciling"})
		} else {
			log.WithField("retry_in", wait.String()).Warn("reconcile: could not check a page of contacts; trying again")
		}
		sleep(ctx, wait)
	}
}

// step waits for the next pass to be due and this instance to hold the slot, then does one
// page (starting or finishing the pass as needed).
func (r *Reconciler) step(ctx context.Context) error {
	pass, err := r.position.Load(ctx)
	if err != nil {
		return err
	}
	// Also a standby reports the passes the holder completes.
	if complete := pass.Pass > 1 || (pass.Pass == 1 && !pass.Running); complete && r.opts.Observer != nil && !pass.CompletedAt.Equal(r.told) {
		r.opts.Observer.PassCompleted(pass.CompletedAt)
		r.told = pass.CompletedAt
	}
	if !pass.Running {
		if wait := time.Until(pass.CompletedAt.Add(r.opts.Every)); wait > 0 {
			sleep(ctx, min(wait, time.Minute)) // look again: another instance may have walked
			return nil
		}
	}
	if !r.opts.Lease.MayWrite() {
		sleep(ctx, 5*time.Second)
		return nil
	}
	if !pass.Running {
		if pass, err = r.position.Start(ctx); err != nil {
			return err
		}
		r.opts.Log.WithField("pass", pass.Pass).Info("reconcile: pass started: reading every linked contact back from HubSpot")
	}
	return r.pageOf(ctx, pass)
}

// pageOf checks the next page of the pass, or finishes the pass when no page is left.
func (r *Reconciler) pageOf(ctx context.Context, pass state.ReconcilePass) error {
	links, err := r.position.Page(ctx, pass.After, PageSize)
	if err != nil {
		return err
	}
	if len(links) == 0 {
		return r.finish(ctx, pass)
	}
	if err := r.limiter.Wait(ctx); err != nil {
		return err
	}
	found, err := r.compare(ctx, links)
	if err != nil {
		return err
	}
	if err := r.repair(ctx, found); err != nil {
		return err
	}
	pass.After = links[len(links)-1].StudentID
	pass.ContactsRead += found.read
	pass.StudentsDifferent += len(found.drifted)
	for _, props := range found.drifted {
		for _, name := range props {
			pass.Differed[name]++
			if r.opts.Observer != nil {
				r.opts.Observer.Drifted(name, 1)
			}
		}
	}
	if err := r.position.Advance(ctx, pass, found.drifted); err != nil {
		return err
	}
	r.showProgress(ctx, pass, found.read, len(links))
	return nil
}

// showProgress logs, every ProgressEvery, how far the pass has got: contacts read of the
// total, students found different, the rate and an ETA (docs/contract.md §5). The links
// left are counted once, when this process takes up the pass, then counted down.
func (r *Reconciler) showProgress(ctx context.Context, pass state.ReconcilePass, justRead, page int) {
	now := time.Now()
	if r.shown.pass != pass.Pass {
		left, err := r.position.Left(ctx, pass.After)
		if err != nil {
			r.opts.Log.WithError(err).Debug("reconcile: could not count the links left; no progress line yet")
			return
		}
		// The clock starts before this page, so its read counts in the rate.
		r.shown = shownProgress{pass: pass.Pass, since: now, readSince: pass.ContactsRead - justRead, left: left, lastLine: now}
		if left > 0 {
			return
		}
	} else {
		r.shown.left = max(r.shown.left-page, 0)
	}
	if now.Sub(r.shown.lastLine) < r.opts.ProgressEvery && r.shown.left > 0 {
		return
	}
	r.shown.lastLine = now
	took := now.Sub(r.shown.since)
	rate := float64(pass.ContactsRead-r.shown.readSince) / max(took.Seconds(), 0.001)
	r.opts.Log.WithFields(logrus.Fields{"pass": pass.Pass, "contacts_read": pass.ContactsRead, "contacts_total": pass.ContactsRead + r.shown.left,
		"students_different": pass.StudentsDifferent, "contacts_per_second": float64(int(rate*10)) / 10,
		"eta": TimeLeft(r.shown.left, r.opts.Budget, rate).Round(time.Second).String()}).Info("reconcile: progress")
}

// TimeLeft is how long reading left more contacts takes: at least a batch/read per page at
// the walk's budget, or longer when HubSpot answers slower than that (seen: contacts per
// second so far; 0 when not known).
func TimeLeft(left int, budget rate.Limit, seen float64) time.Duration {
	pages := (left + PageSize - 1) / PageSize
	floor := time.Duration(0)
	if budget > 0 && budget != rate.Inf {
		floor = time.Duration(float64(pages) / float64(budget) * float64(time.Second))
	}
	if seen > 0 {
		return max(floor, time.Duration(float64(left)/seen*float64(time.Second)))
	}
	return floor
}

// findings is what one page turned up.
type findings struct {
	read int
	// queue are the students to push again: their contact differs, or their link is stale.
	queue []uuid.UUID
	// unsettle are the differing properties per contact: the record of what was pushed no
	// longer holds for them.
	unsettle map[string][]string
	// drifted are the differing properties of contacts whose student was not waiting for a
	// push anyway: changed behind the sync's back.
	drifted map[string][]string
	// vanished are contacts HubSpot no longer has (deleted, or merged away).
	vanished []string
}

// compare reads a page of linked contacts and finds those that differ from the database.
//
// The reads go record, HubSpot, record again, database, so that a change on its way cannot
// pass for drift: a push that lands while HubSpot is read changes the record between its two
// reads, and a change made after HubSpot was read leaves the record unequal to the database.
func (r *Reconciler) compare(ctx context.Context, links []state.LinkedStudent) (findings, error) {
	f := findings{unsettle: map[string][]string{}, drifted: map[string][]string{}}
	current, ids, contacts := f.stillLinked(links)
	if len(ids) == 0 {
		return f, nil
	}
	records, readAt, err := r.store.Records(ctx, contacts)
	if err != nil {
		return f, err
	}
	held, err := r.hs.ReadByID(ctx, contacts, r.props)
	if err != nil {
		return f, fmt.Errorf("read contacts: %w", err)
	}
	f.read = len(held)
	after, _, err := r.store.Records(ctx, contacts)
	if err != nil {
		return f, err
	}
	for id, rec := range records {
		if !sameRecord(rec, after[id]) {
			delete(records, id) // a push landed meanwhile: nothing here can be called drift
		}
	}
	students, err := r.source.ForStudents(ctx, ids)
	if err != nil {
		return f, fmt.Errorf("compute metrics: %w", err)
	}
	skip, err := r.notOwned(ctx, ids)
	if err != nil {
		return f, err
	}
	queued, _ := r.queue.Waiting(ids) // one in flight is queued again: its push may have read the record already
	for _, s := range students {
		l := current[s.ID]
		c, ok := held[l.ContactID]
		switch {
		case skip[s.ID]:
		case !ok:
			f.vanished = append(f.vanished, l.ContactID)
			f.queue = append(f.queue, s.ID)
		default:
			r.diff(&f, s, c, queued[s.ID], records[c.ID], readAt)
		}
	}
	return f, nil
}

func sameRecord(a, b state.Record) bool {
	return a.At.Equal(b.At) && maps.Equal(a.Properties, b.Properties)
}

// stillLinked keeps the links whose student still has the linked email, and queues the others:
// the flush lets go of the contact a student left.
func (f *findings) stillLinked(links []state.LinkedStudent) (map[uuid.UUID]state.LinkedStudent, []uuid.UUID, []string) {
	current := map[uuid.UUID]state.LinkedStudent{}
	var ids []uuid.UUID
	var contacts []string
	for _, l := range links {
		if l.Gone || l.Current != l.Email {
			f.queue = append(f.queue, l.StudentID)
			continue
		}
		current[l.StudentID] = l
		ids = append(ids, l.StudentID)
		contacts = append(contacts, l.ContactID)
	}
	return current, ids, contacts
}

// diff notes the properties on which contact c differs from student s: all are repaired. A
// student queued for a push is not queued again (that would put its push off by another
// debounce): the push to come reads the record after the walk forgot the differing values.
//
// Only some count as drift, changed in HubSpot behind the sync's back: those the record says
// the sync wrote with the database's value, in a record last written before HubSpot was read.
// Anything else is a change on its way (in the slot, the buffer or a push under way).
func (r *Reconciler) diff(f *findings, s metrics.Student, c hubspot.Contact, queued bool, rec state.Record, readAt time.Time) {
	var differ, drifted []string
	for _, name := range r.props {
		if metrics.Canonical(name, c.Properties[name]) == s.Values[name] {
			continue
		}
		differ = append(differ, name)
		if wrote, ok := rec.Properties[name]; ok && wrote == s.Values[name] && rec.At.Before(readAt) {
			drifted = append(drifted, name)
		}
	}
	if len(differ) == 0 {
		return
	}
	f.unsettle[c.ID] = differ
	if !queued {
		f.queue = append(f.queue, s.ID)
	}
	if len(drifted) > 0 {
		f.drifted[c.ID] = drifted
	}
}

// notOwned lists the students whose contact the sync does not write as they are: in conflict
// over it with another student, or holding values HubSpot refused (they wait for a change).
func (r *Reconciler) notOwned(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	problems, err := r.store.ProblemsOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID]bool{}
	for id, p := range problems {
		if p.Kind == state.Conflict || p.Kind == state.Rejected {
			out[id] = true
		}
	}
	return out, nil
}

// repair makes the flush write what differs: it forgets the record of the differing values
// (so the diff against it sends them) before it queues the students. Forgetting only ever
// makes a push send more, never less, whatever a push running meanwhile records.
func (r *Reconciler) repair(ctx context.Context, f findings) error {
	if len(f.vanished) > 0 {
		if err := r.store.Record(ctx, state.Outcome{DropLinks: f.vanished}); err != nil {
			return err
		}
	}
	if err := r.store.Unsettle(ctx, f.unsettle); err != nil {
		return err
	}
	if len(f.queue) == 0 {
		return nil
	}
	return r.queue.Add(ctx, f.queue, 0)
}

// finish completes a pass: one log line with what it found, and a warning for each property
// that was changed again on contacts the pass before had repaired.
func (r *Reconciler) finish(ctx context.Context, pass state.ReconcilePass) error {
	recurring, err := r.position.Finish(ctx, pass)
	if err != nil {
		return err
	}
	now := time.Now()
	fields := logrus.Fields{"pass": pass.Pass, "contacts_read": pass.ContactsRead, "students_different": pass.StudentsDifferent,
		"took": now.Sub(pass.StartedAt).Round(time.Second).String()}
	for name, n := range pass.Differed {
		fields["different_"+name] = n
	}
	r.opts.Log.WithFields(fields).Info("reconcile: pass complete")
	names := make([]string, 0, len(recurring))
	for name := range recurring {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		r.opts.Log.WithFields(logrus.Fields{"property": name, "contacts": recurring[name]}).
			Warn(fmt.Sprintf("reconcile: %s was changed in HubSpot again on %d contacts the last pass had repaired: "+
				"a workflow, import or integration keeps overwriting it (docs/runbook.md, \"A workflow fights the sync\")", name, recurring[name]))
	}
	if r.opts.Observer != nil {
		r.opts.Observer.Fought(recurring)
		r.opts.Observer.PassCompleted(now)
	}
	return nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

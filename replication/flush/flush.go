// Package flush drains the keyed buffer to HubSpot: it takes due students in batches of up to
// 100, recomputes their metrics in one query, pushes the changes, and removes the students
// from the buffer only once HubSpot holds them (or they are durably recorded as problems).
package flush

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/push"
)

// Source computes students' metrics. replication.CompleteView refuses a view of the source
// tables that hides rows, with a *replication.HiddenRowsError.
type Source interface {
	ForStudents(ctx context.Context, ids []uuid.UUID) ([]metrics.Student, error)
}

// Pusher writes a batch of students to HubSpot, and lets go of students deleted since.
type Pusher interface {
	Push(ctx context.Context, students []metrics.Student) (push.Result, error)
	Forget(ctx context.Context, gone []uuid.UUID) (push.Result, error)
}

// Observer hears about every batch HubSpot took, for metrics.
type Observer interface {
	// Flushed reports a batch: its students, the contacts updated, and for each student how
	// long its oldest and its latest change waited from being recorded to being in HubSpot.
	Flushed(students, updated int, oldest, latest []time.Duration)
}

// Options configure a Flusher.
type Options struct {
	// DailyLimitPause is how long flushing pauses when HubSpot's daily limit is spent. The
	// limit resets at midnight in the portal's time zone, which the API does not tell.
	DailyLimitPause time.Duration
	// Linger is how long a partial batch may wait for more students to fall due before it
	// goes: HubSpot counts requests, not contacts, so fuller batches save the rate limit.
	// Full batches never wait. Default 1 s; negative disables.
	Linger time.Duration
	// StopGrace bounds the batch in hand once Run's context ends. Default 30 s.
	StopGrace time.Duration
	// Lease says whether this instance may write to HubSpot now: only the one holding the
	// replication slot does. While it says no, batches are put back untouched. Default:
	// replication.Always.
	Lease replication.Holder
	// HiddenRetry is how often held students are tried again while the source hides rows.
	// Default 5 s.
	HiddenRetry time.Duration
	Log         *logrus.Entry
	Observer    Observer // optional
	// Conditions hears of what keeps the pushes from going through (the database out of
	// reach or read-only, HubSpot out of reach, its key refused or its daily limit spent), and
	// says so. Default: a Set of its own.
	Conditions *condition.Set
}

// Flusher drains the keyed buffer.
type Flusher struct {
	buf    *buffer.Buffer
	source Source
	pusher Pusher
	opts   Options
	log    *logrus.Entry
	fails  *backoff.ExponentialBackOff
	// dailyLimitUntil is when flushing resumes after a spent daily limit, in Unix
	// nanoseconds (0: not paused); health checks read it from another goroutine.
	dailyLimitUntil atomic.Int64
	// rowsHidden is set while the source hides rows, so the log says so once and health
	// shows it.
	rowsHidden atomic.Bool
	// waiting is set while batches wait for this instance to hold the slot.
	waiting atomic.Bool
	// failing is set after a push failed for a reason that passes (HubSpot down, a key
	// rotated): the first push that goes through then releases the students held back.
	failing atomic.Bool
	conds   *condition.Set
}

// New returns a Flusher.
func New(buf *buffer.Buffer, source Source, p Pusher, opts Options) *Flusher {
	if opts.Lease == nil {
		opts.Lease = replication.Always{}
	}
	if opts.DailyLimitPause <= 0 {
		opts.DailyLimitPause = 15 * time.Minute
	}
	if opts.Linger == 0 {
		opts.Linger = time.Second
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 30 * time.Second
	}
	if opts.HiddenRetry <= 0 {
		opts.HiddenRetry = 5 * time.Second
	}
	fails := backoff.NewExponentialBackOff()
	fails.InitialInterval, fails.MaxInterval, fails.MaxElapsedTime = time.Second, 5*time.Minute, 0
	if opts.Conditions == nil {
		opts.Conditions = condition.NewSet(opts.Log)
	}
	return &Flusher{buf: buf, source: source, pusher: p, opts: opts, log: opts.Log, fails: fails, conds: opts.Conditions}
}

// standbyWait is how long a standby leaves students before it looks whether it took over.
const standbyWait = time.Second

// Run pushes batches as the buffer hands them out until ctx ends. The batch in hand when it
// ends goes on for at most Options.StopGrace, so a stop does not cut a write in half.
func (f *Flusher) Run(ctx context.Context) error {
	work, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	defer context.AfterFunc(ctx, func() { time.AfterFunc(f.opts.StopGrace, stop) })()
	for {
		entries, err := f.buf.Next(ctx, push.MaxBatch, f.opts.Linger)
		if err != nil {
			return nil // ctx ended
		}
		_, _ = f.flushEntries(work, entries) // errors are logged and the students rescheduled
		if work.Err() != nil {
			// The grace is over: what is left waits in the durable buffer. (Next would hand
			// the students just put back straight out again.)
			return nil
		}
	}
}

// FlushDue pushes one batch of the students due now and returns how many it took.
func (f *Flusher) FlushDue(ctx context.Context) (int, error) {
	entries := f.buf.Due(push.MaxBatch)
	if len(entries) == 0 {
		return 0, nil
	}
	return f.flushEntries(ctx, entries)
}

// flushEntries pushes one batch taken from the buffer and settles it there: done, or back
// with a wait that fits the failure.
func (f *Flusher) flushEntries(ctx context.Context, entries []buffer.Entry) (int, error) {
	if !f.opts.Lease.MayWrite() {
		if !f.waiting.Swap(true) {
			f.log.WithField("students", len(entries)).Info("not pushing yet: this instance does not hold the replication slot (it is still taking it, another instance holds it, or the database is out of reach); these students wait")
		}
		f.buf.Retry(entries, standbyWait)
		return 0, replication.ErrNotHolding
	}
	f.waiting.Store(false)
	if wait := time.Until(time.Unix(0, f.dailyLimitUntil.Load())); wait > 0 {
		f.buf.Retry(entries, wait)
		return 0, hubspot.ErrDailyLimit
	}
	err := f.flush(ctx, entries)
	var vanished *push.VanishedProgressError
	kind, isCondition := condition.Of(err)
	switch {
	case err == nil:
		f.fails.Reset()
		if f.failing.Swap(false) {
			f.buf.Release()
		}
		// The batch was recorded: the database answers and takes writes. (What HubSpot
		// answered clears its conditions where the answers are heard: a batch may need none.)
		f.conds.Clear(condition.DatabaseUnreachable, condition.DatabaseReadOnly)
		return len(entries), nil
	case isCondition && kind == condition.DailyLimit:
		until := time.Now().Add(f.opts.DailyLimitPause)
		f.dailyLimitUntil.Store(until.UnixNano())
		f.conds.Raise(kind, err, logrus.Fields{"retry_at": until.Format(time.RFC3339)})
		f.buf.Retry(entries, f.opts.DailyLimitPause)
		return 0, err
	case ctx.Err() != nil:
		f.buf.Retry(entries, 0)
		return 0, ctx.Err()
	case f.rowsHidden.Load():
		f.buf.Retry(entries, f.opts.HiddenRetry)
		return 0, err
	case errors.Is(err, replication.ErrSourceBusy):
		f.log.WithError(err).WithField("students", len(entries)).Warn("the source tables are locked by another session; the students wait a little")
		f.buf.Retry(entries, 5*time.Second)
		return 0, err
	case errors.As(err, &vanished):
		wait := f.fails.NextBackOff()
		f.log.WithError(err).WithFields(logrus.Fields{"students": len(entries), "retry_in": wait.String()}).
			Error("refusing to clear progress in HubSpot; the students stay in the buffer")
		f.buf.Retry(entries, wait)
		return 0, err
	default:
		// It passes (HubSpot or the database back, a key replaced): retried with backoff, and
		// the first push that goes through releases the students held back.
		wait := f.fails.NextBackOff()
		f.failing.Store(true)
		fields := logrus.Fields{"students": len(entries), "retry_in": wait.String()}
		if isCondition {
			f.conds.Raise(kind, err, fields)
		} else {
			f.log.WithError(err).WithFields(fields).Warn("push failed; the students stay in the buffer")
		}
		f.buf.Retry(entries, wait)
		return 0, err
	}
}

// noteVisibility follows whether the source hides rows, and raises or clears
// condition.RowsHidden: hidden rows are an operator's problem (a policy to add), not a
// transient one.
func (f *Flusher) noteVisibility(err error) {
	if !errors.As(err, new(*replication.HiddenRowsError)) {
		if err == nil && f.rowsHidden.Swap(false) {
			f.conds.Clear(condition.RowsHidden)
		}
		return
	}
	f.rowsHidden.Store(true)
	f.conds.Raise(condition.RowsHidden, err, nil)
}

// RowsHidden reports whether pushes are held because the database hides rows.
func (f *Flusher) RowsHidden() bool { return f.rowsHidden.Load() }

// Drain pushes everything due now, for a clean stop; it returns when nothing is due or ctx
// (the grace period) ends.
func (f *Flusher) Drain(ctx context.Context) error {
	for {
		n, err := f.FlushDue(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

func (f *Flusher) flush(ctx context.Context, entries []buffer.Entry) error {
	ids := make([]uuid.UUID, len(entries))
	for i, e := range entries {
		ids[i] = e.Student
	}
	students, err := f.source.ForStudents(ctx, ids)
	f.noteVisibility(err)
	if err != nil {
		return fmt.Errorf("compute metrics: %w", err)
	}
	res := push.Result{}
	if len(students) > 0 {
		res, err = f.pusher.Push(ctx, students)
		if err != nil {
			return err
		}
	}
	// Students absent from a complete view were deleted since they changed: their contacts
	// are let go (docs/contract.md §6).
	if gone := absent(ids, students); len(gone) > 0 {
		if _, err := f.pusher.Forget(ctx, gone); err != nil {
			return err
		}
	}
	if err := f.buf.Done(ctx, entries); err != nil {
		return err
	}
	f.log.WithFields(logrus.Fields{"students": len(entries), "updated": res.Updated, "unchanged": res.Unchanged,
		"problems": len(res.Problems)}).Debug("flushed batch")
	if f.opts.Observer != nil {
		now := time.Now()
		oldest, latest := make([]time.Duration, len(entries)), make([]time.Duration, len(entries))
		for i, e := range entries {
			oldest[i], latest[i] = now.Sub(e.Since), now.Sub(e.Last)
		}
		f.opts.Observer.Flushed(len(entries), res.Updated, oldest, latest)
	}
	return nil
}

// absent returns the ids no student was computed for.
func absent(ids []uuid.UUID, students []metrics.Student) []uuid.UUID {
	found := make(map[uuid.UUID]bool, len(students))
	for _, s := range students {
		found[s.ID] = true
	}
	var out []uuid.UUID
	for _, id := range ids {
		if !found[id] {
			out = append(out, id)
		}
	}
	return out
}

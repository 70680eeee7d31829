package alert

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/replication/state"
)

// lookBack is how far before the latest problem seen each look reaches again: a transaction
// that recorded a problem may commit after one that began later.
const lookBack = 2 * time.Minute

// problemNews finds the students that became rejected or in conflict since this instance took
// the slot (or started, when it took it at once): what was there before is the previous
// holder's news, or a previous run's. (The first-seen times are the database's clock, from is
// this host's: clocks apart by seconds move the line by as much.)
type problemNews struct {
	from  time.Time                 // news are first seen from then on; zero: not writing
	start time.Time                 // where from starts when this instance writes: its start, or its last look as a standby
	seen  map[seenProblem]time.Time // announced, or known, and still read again
	until time.Time                 // the latest first-seen time read
}

// seenProblem is one spell of a student's problem: a student whose problem changed kind, or
// came back, is news again.
type seenProblem struct {
	student uuid.UUID
	since   int64
}

// holding notes whether this instance writes to HubSpot, or is a standby. (A holder cut from
// the database for a while does not write, but it did not let go: what it recorded before
// the cut is still news.)
func (n *problemNews) holding(writes, standby bool, now time.Time) {
	switch {
	case standby:
		n.from, n.start = time.Time{}, now
	case writes && n.from.IsZero():
		n.from, n.seen, n.until = n.start, map[seenProblem]time.Time{}, time.Time{}
		if n.from.IsZero() {
			n.from = now
		}
	}
}

// lookForProblems posts the students that became problems since the last look. Only the
// instance that writes to HubSpot (and so records the problems) looks.
func (a *Alerter) lookForProblems(ctx context.Context) {
	a.mu.Lock()
	n := a.news
	a.mu.Unlock()
	if n.from.IsZero() {
		return
	}
	found, err := a.w.Store.ProblemsSince(ctx, later(n.from, n.until).Add(-lookBack), state.Rejected, state.Conflict)
	if err != nil {
		if ctx.Err() == nil {
			a.opts.Log.WithError(err).Debug("alerts: could not look for new problem students; looking again later")
		}
		return
	}
	a.mu.Lock()
	fresh := a.news.take(found)
	a.mu.Unlock()
	if len(fresh) > 0 {
		a.post(problemStudents(a.opts, fresh, time.Now()))
	}
}

// take notes the problems read and returns those that are news.
func (n *problemNews) take(found []state.Problem) []state.Problem {
	if n.from.IsZero() {
		return nil // let go of the slot meanwhile
	}
	var fresh []state.Problem
	for _, p := range found {
		k := seenProblem{p.StudentID, p.FirstSeen.UnixNano()}
		if _, ok := n.seen[k]; ok {
			continue
		}
		n.seen[k] = p.FirstSeen
		n.until = later(n.until, p.FirstSeen)
		if !p.FirstSeen.Before(n.from) {
			fresh = append(fresh, p)
		}
	}
	for k, at := range n.seen {
		if at.Before(later(n.from, n.until).Add(-2 * lookBack)) {
			delete(n.seen, k) // no longer read again
		}
	}
	return fresh
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

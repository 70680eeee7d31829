// Package buffer schedules the students waiting between the replication stream and HubSpot:
// one entry per changed student, due after a quiet period and never later than a maximum
// delay, handed out in batches, retried after a failure. It keeps itself durable through a
// Journal (the sync state), written together with the stream position each change covers.
//
// Persisting the buffer, rather than holding changes in the replication slot, is what lets the
// slot advance while HubSpot is slow, down or out of daily calls: the database never keeps WAL
// on HubSpot's account, and a restart reloads the students still to push.
package buffer

import (
	"container/heap"
	"context"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/replication/state"
)

// Entry is a student taken from the buffer for a push, at the version it had then.
type Entry struct {
	Student uuid.UUID
	Version int64
	// Since and Last are when the oldest and the latest change waiting for this push were
	// recorded.
	Since, Last time.Time
}

// Journal is where the buffer keeps itself durable: the sync state of one slot
// (*state.Journal).
type Journal interface {
	Load(ctx context.Context) (state.Checkpoint, []state.PendingStudent, error)
	Checkpoint(ctx context.Context) (state.Checkpoint, error)
	RecordChanges(ctx context.Context, students []uuid.UUID, at time.Time, version int64, end pglogrepl.LSN) error
	AdvanceCheckpoint(ctx context.Context, end pglogrepl.LSN) error
	RemovePushed(ctx context.Context, students []uuid.UUID, versions []int64) error
}

var _ Journal = (*state.Journal)(nil)

// Options configure a Buffer.
type Options struct {
	Debounce time.Duration // quiet period before a student is due
	MaxDelay time.Duration // a student is due at the latest this long after its first change
	Now      func() time.Time
}

type entry struct {
	id          uuid.UUID
	first, last time.Time
	version     int64
	notBefore   time.Time // a failed push waits until then
	inFlight    bool
	// at is when the entry falls due, and index its place in the due queue (-1: not
	// queued, because it is in flight). One queue item per student, moved in place when a
	// change moves its due time, keeps memory flat however often a student changes.
	at    time.Time
	index int
}

// Buffer is the keyed buffer. Its methods are safe for concurrent use.
type Buffer struct {
	journal Journal
	opts    Options

	// addMu keeps concurrent Adds in one order in the database and in memory, so the version
	// a push compares against is the one stored.
	addMu sync.Mutex

	mu      sync.Mutex
	entries map[uuid.UUID]*entry
	queue   dueQueue
	version int64
	wake    chan struct{}
}

// Open loads the journal of slot from the sync state and returns a buffer over it, with the
// stored checkpoint.
func Open(ctx context.Context, store *state.Store, slot string, opts Options) (*Buffer, state.Checkpoint, error) {
	j := store.Journal(slot)
	cp, pending, err := j.Load(ctx)
	if err != nil {
		return nil, cp, err
	}
	return New(j, opts, pending), cp, nil
}

// New returns a buffer over journal holding the students it had pending (Journal.Load).
func New(journal Journal, opts Options, pending []state.PendingStudent) *Buffer {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	b := &Buffer{journal: journal, opts: opts, entries: map[uuid.UUID]*entry{}, wake: make(chan struct{}, 1)}
	for _, p := range pending {
		e := &entry{id: p.ID, first: p.First, last: p.Last, version: p.Version, index: -1}
		b.entries[p.ID] = e
		b.version = max(b.version, p.Version)
		b.schedule(e)
	}
	return b
}

// Checkpoint reads the stored checkpoint.
func (b *Buffer) Checkpoint(ctx context.Context) (pglogrepl.LSN, error) {
	cp, err := b.journal.Checkpoint(ctx)
	return cp.LSN, err
}

// Resume makes the buffer what the sync state holds now: another instance may have recorded
// students, or pushed some, while this one waited for the slot. Students in flight are left
// as they are. Changes recorded meanwhile by Add are never lost: Add and Resume take turns.
func (b *Buffer) Resume(ctx context.Context) error {
	b.addMu.Lock()
	defer b.addMu.Unlock()
	_, pending, err := b.journal.Load(ctx)
	if err != nil {
		return err
	}
	stored := make(map[uuid.UUID]state.PendingStudent, len(pending))
	for _, p := range pending {
		stored[p.ID] = p
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for id, e := range b.entries {
		if _, ok := stored[id]; !ok && !e.inFlight {
			b.unschedule(e) // pushed by the instance that held the slot
			delete(b.entries, id)
		}
	}
	for _, p := range pending {
		b.version = max(b.version, p.Version)
		e, ok := b.entries[p.ID]
		switch {
		case !ok:
			e = &entry{id: p.ID, first: p.First, last: p.Last, version: p.Version, index: -1}
			b.entries[p.ID] = e
		case e.inFlight || e.version >= p.Version:
			continue
		default:
			e.first, e.last, e.version = minTime(e.first, p.First), p.Last, p.Version
		}
		b.schedule(e)
	}
	b.signal()
	return nil
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// unschedule takes the entry out of the due queue.
func (b *Buffer) unschedule(e *entry) {
	if e.index >= 0 {
		heap.Remove(&b.queue, e.index)
	}
}

// Add records that students changed, durably and together with the stream position end that
// covers those changes (0 leaves the checkpoint alone). Only after Add returns may end be
// confirmed to the replication slot.
func (b *Buffer) Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error {
	b.addMu.Lock()
	defer b.addMu.Unlock()
	now := b.opts.Now()
	b.mu.Lock()
	b.version++
	version := b.version
	b.mu.Unlock()
	if len(students) == 0 && end == 0 {
		return nil
	}
	if err := b.journal.RecordChanges(ctx, students, now, version, end); err != nil {
		return err
	}

	b.mu.Lock()
	for _, id := range students {
		e, ok := b.entries[id]
		if !ok {
			e = &entry{id: id, first: now, index: -1}
			b.entries[id] = e
		}
		e.last, e.version = now, version
		if !e.inFlight {
			b.schedule(e)
		}
	}
	b.mu.Unlock()
	b.signal()
	return nil
}

// Advance moves the stored checkpoint to end when no student changed up to it: WAL of other
// tables, or keepalives. The slot may be confirmed at end without waiting for this.
func (b *Buffer) Advance(ctx context.Context, end pglogrepl.LSN) error {
	return b.journal.AdvanceCheckpoint(ctx, end)
}

// Due takes up to max students that are due now and marks them in flight: they are not due
// again until Done or Retry.
func (b *Buffer) Due(max int) []Entry {
	now := b.opts.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []Entry
	for len(out) < max && b.queue.Len() > 0 && !b.queue[0].at.After(now) {
		e := heap.Pop(&b.queue).(*entry)
		e.inFlight = true
		out = append(out, Entry{Student: e.id, Version: e.version, Since: e.first, Last: e.last})
	}
	return out
}

// Next waits for work and takes it, marked in flight: up to max students, as soon as max are
// due, or once the earliest due student has waited linger past its due time for company
// (HubSpot counts requests, not contacts, so fuller batches save the rate limit; a negative
// linger never waits). It returns ctx's error when ctx ends first.
func (b *Buffer) Next(ctx context.Context, max int, linger time.Duration) ([]Entry, error) {
	for {
		wait := b.untilReady(max, linger)
		if wait <= 0 {
			if got := b.Due(max); len(got) > 0 {
				return got, nil
			}
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-b.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// untilReady says how long until Next may take a batch: 0 when it may now.
func (b *Buffer) untilReady(max int, linger time.Duration) time.Duration {
	at, ok := b.NextDue()
	if !ok {
		return time.Hour // an Add wakes Next sooner
	}
	now := b.opts.Now()
	if at.After(now) {
		return at.Sub(now)
	}
	if ready := at.Add(linger); ready.After(now) && b.DueCount(max) < max {
		return ready.Sub(now)
	}
	return 0
}

// NextDue reports when the next student falls due; ok is false when none is waiting.
func (b *Buffer) NextDue() (at time.Time, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.queue.Len() == 0 {
		return time.Time{}, false
	}
	return b.queue[0].at, true
}

// DueCount counts the students due now, up to limit.
func (b *Buffer) DueCount(limit int) int {
	now := b.opts.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	// The queue is a heap: everything due sits above anything not due, so a walk that
	// skips the subtrees of items not due visits only due items (and their children).
	n := 0
	var walk func(i int)
	walk = func(i int) {
		if n >= limit || i >= len(b.queue) || b.queue[i].at.After(now) {
			return
		}
		n++
		walk(2*i + 1)
		walk(2*i + 2)
	}
	walk(0)
	return n
}

// Done removes students HubSpot now holds, unless they changed again since they were taken.
func (b *Buffer) Done(ctx context.Context, entries []Entry) error {
	ids := make([]uuid.UUID, len(entries))
	versions := make([]int64, len(entries))
	for i, e := range entries {
		ids[i], versions[i] = e.Student, e.Version
	}
	if err := b.journal.RemovePushed(ctx, ids, versions); err != nil {
		b.Retry(entries, 0)
		return err
	}
	b.mu.Lock()
	for _, en := range entries {
		e, ok := b.entries[en.Student]
		if !ok {
			continue
		}
		if e.version == en.Version {
			delete(b.entries, en.Student)
			continue
		}
		e.inFlight = false
		e.first = e.last // the changes since the push are what is waiting now
		b.schedule(e)
	}
	b.mu.Unlock()
	b.signal()
	return nil
}

// Retry puts students whose push failed back, due no sooner than after wait.
func (b *Buffer) Retry(entries []Entry, wait time.Duration) {
	notBefore := b.opts.Now().Add(wait)
	b.mu.Lock()
	for _, en := range entries {
		if e, ok := b.entries[en.Student]; ok {
			e.inFlight = false
			e.notBefore = notBefore
			b.schedule(e)
		}
	}
	b.mu.Unlock()
	b.signal()
}

// Len is the number of students waiting or in flight.
func (b *Buffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.entries)
}

// Release lets every student waiting out a failed push's backoff fall due as its changes do:
// the failure is over (a push went through), and a backoff of minutes must not outlive it.
func (b *Buffer) Release() {
	now := b.opts.Now()
	b.mu.Lock()
	for _, e := range b.entries {
		if !e.inFlight && e.notBefore.After(now) {
			e.notBefore = time.Time{}
			b.schedule(e)
		}
	}
	b.mu.Unlock()
	b.signal()
}

// Waiting reports which of the students are in the buffer, changed and not yet pushed: queued
// (a push to come will compute them afresh) or in flight (a push is under way).
func (b *Buffer) Waiting(students []uuid.UUID) (queued, inFlight map[uuid.UUID]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	queued, inFlight = map[uuid.UUID]bool{}, map[uuid.UUID]bool{}
	for _, id := range students {
		if e, ok := b.entries[id]; ok && e.inFlight {
			inFlight[id] = true
		} else if ok {
			queued[id] = true
		}
	}
	return queued, inFlight
}

func (b *Buffer) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *Buffer) dueAt(e *entry) time.Time { return b.opts.DueAt(e.first, e.last, e.notBefore) }

// DueAt is when a student falls due: Debounce after its last change, but no later than
// MaxDelay after its first, and not before a retry's notBefore.
func (o Options) DueAt(first, last, notBefore time.Time) time.Time {
	at := last.Add(o.Debounce)
	if latest := first.Add(o.MaxDelay); latest.Before(at) {
		at = latest
	}
	if notBefore.After(at) {
		at = notBefore
	}
	return at
}

// schedule puts the entry in the due queue at its due time, or moves it there.
func (b *Buffer) schedule(e *entry) {
	e.at = b.dueAt(e)
	if e.index >= 0 {
		heap.Fix(&b.queue, e.index)
		return
	}
	heap.Push(&b.queue, e)
}

// dueQueue is a min-heap of entries by due time.
type dueQueue []*entry

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	e := x.(*entry)
	e.index = len(*q)
	*q = append(*q, e)
}
func (q *dueQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*q = old[:len(old)-1]
	e.index = -1
	return e
}

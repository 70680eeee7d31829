package replication

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
)

// ErrNotHolding says another instance holds the slot now.
var ErrNotHolding = errors.New("this instance no longer holds the replication slot")

// Lease answers the one question every writer of an instance asks: may this instance write to
// HubSpot now? Only the instance that holds the replication slot may (docs/contract.md §6), so
// two instances never push at once. The flusher, the reconcile and the unmatched recheck ask
// MayWrite before they start; the HubSpot client asks Confirm before every write attempt. The
// consumer that streams the slot is the only one that changes it.
type Lease struct {
	db   DB
	slot string

	streaming atomic.Bool
	// heldAtStop says the last session held the slot when it was stopped: pushes may go on
	// for the grace period.
	heldAtStop atomic.Bool
	walsender  atomic.Uint32 // the server process of the last streaming session
}

// newLease returns the lease on slot, held by nobody until a consumer streams it.
func newLease(db DB, slot string) *Lease { return &Lease{db: db, slot: slot} }

// Holder is what a writer asks of the lease: a *Lease, or a test's own.
type Holder interface {
	MayWrite() bool
}

// Always is the Holder of a writer that runs on its own, with no slot to hold: it may always
// write.
type Always struct{}

// MayWrite says yes.
func (Always) MayWrite() bool { return true }

// MayWrite is this process's own belief: it streams the slot, or streamed it when it was
// stopped. It costs nothing; a writer asks it before each batch or pass.
func (l *Lease) MayWrite() bool { return l.streaming.Load() || l.heldAtStop.Load() }

// Streaming reports whether this instance is connected to the slot and streaming.
func (l *Lease) Streaming() bool { return l.streaming.Load() }

// Confirm asks the server, not this process's belief, whether the slot is still this
// instance's: a process frozen past wal_sender_timeout still thinks it streams until it next
// reads, while the server has given the slot to a standby. Every write to HubSpot asks it
// first.
func (l *Lease) Confirm(ctx context.Context) error {
	if !l.MayWrite() {
		return ErrNotHolding
	}
	slot, err := ReadSlot(ctx, l.db, l.slot)
	if err != nil {
		return fmt.Errorf("ask who holds the slot: %w", err)
	}
	if slot.ActivePID != 0 && uint32(slot.ActivePID) != l.walsender.Load() {
		return fmt.Errorf("%w (process %d has it)", ErrNotHolding, slot.ActivePID)
	}
	return nil
}

// take records that this instance streams the slot through the server process walsender.
func (l *Lease) take(walsender uint32) {
	l.walsender.Store(walsender)
	l.heldAtStop.Store(false)
	l.streaming.Store(true)
}

// release records that the session ended: asked to stop (the grace period's pushes may go
// on), or lost (no more pushes, even while the processor finishes).
func (l *Lease) release(stopped bool) {
	l.heldAtStop.Store(stopped)
	l.streaming.Store(false)
}

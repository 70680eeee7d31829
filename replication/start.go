package replication

import (
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/sirupsen/logrus"
)

// position is what one session leaves the next: where to stream from, and what is still to
// do before streaming.
type position struct {
	lsn pglogrepl.LSN // 0: from the slot's confirmed position
	// explicit marks an LSN the operator asked for (replay): it must not be behind the slot.
	// Later sessions resume from wherever the stream got to.
	explicit bool
	// needsLoad says every student must be queued before streaming: the slot was created or
	// lost and the load has not succeeded yet.
	needsLoad bool
	// recreate says the slot cannot decode past a point: its publication was dropped while
	// it streamed. The next session makes the publication again and starts a new slot.
	recreate bool
}

// startAction is what a session does with the slot before it streams.
type startAction int

const (
	startStream  startAction = iota // stream from startPlan.from
	startCreate                     // create the slot with a snapshot, load every student from it, stream
	startStandby                    // another instance holds the slot: wait for it
	startRefuse                     // no retry helps: startPlan.refusal says why
)

// startPlan is the slot start-up decided by planStart.
type startPlan struct {
	action startAction
	// setup makes the publication again first; drop drops the slot first (force: even a lost
	// one's walsender).
	setup, drop, force bool
	from               pglogrepl.LSN // startStream: where
	// queueAll queues every student, read from current data, before streaming (startStream).
	queueAll bool
	refusal  error
	// lost says the slot was lost: condition.SlotLost explains it.
	lost bool
	// warning, when set, is logged at level as the reason for what the plan does.
	warning string
	level   logrus.Level
}

// planStart decides, from the slot as the server reports it (confirmed is its confirmed
// position), the checkpoint stored with the sync state (0: none), and what the previous
// session left, what this session does before it streams. It is the whole of the start-up
// rules and does nothing itself:
//
//   - a slot of this name in another database is a misconfiguration; an active one another
//     instance's, to wait for;
//   - a slot whose publication was dropped is dropped and made again with the publication;
//     a lost one (the server removed WAL it needed) is dropped; a missing one is created with
//     a snapshot from which every student is loaded; a replay refuses all three;
//   - a replay may start neither behind the slot nor past the checkpoint, and needs one;
//   - every student is queued when a load is pending, when there is no checkpoint, or when
//     the slot has confirmed past the checkpoint (it was re-created and the changes in between
//     were never seen).
func planStart(slot Slot, confirmed, checkpoint pglogrepl.LSN, pos position, name string) startPlan {
	if err := slot.inThisDatabase(name); err != nil {
		return startPlan{action: startRefuse, refusal: err}
	}
	if slot.Active {
		return startPlan{action: startStandby}
	}
	if pos.recreate {
		return startPlan{action: startCreate, setup: true, drop: slot.Exists}
	}
	if slot.Exists && slot.WALStatus == "lost" {
		if pos.explicit {
			return startPlan{action: startRefuse, refusal: fmt.Errorf("%w: slot %s is lost (the server removed WAL it still needed), so nothing can be replayed from it; "+
				"`progress-sync run` recreates it and backfills every student", ErrReplayRefused, name)}
		}
		return startPlan{action: startCreate, drop: true, force: true, lost: true}
	}
	if !slot.Exists {
		if pos.explicit {
			return startPlan{action: startRefuse, refusal: fmt.Errorf("%w: requested %s, but slot %s does not exist; run `progress-sync run` to create it, which backfills every student",
				ErrReplayTooOld, pos.lsn, name)}
		}
		return startPlan{action: startCreate}
	}
	if pos.explicit {
		if err := checkReplay(pos.lsn, confirmed, checkpoint, name); err != nil {
			return startPlan{action: startRefuse, refusal: err}
		}
	}
	plan := startPlan{action: startStream, from: max(pos.lsn, confirmed)}
	switch {
	case pos.needsLoad || checkpoint == 0:
		plan.queueAll = true
	case confirmed > checkpoint:
		plan.queueAll, plan.level = true, logrus.WarnLevel
		plan.warning = fmt.Sprintf("the slot has confirmed past the stored checkpoint (%s > %s): it was re-created (by setup, or by hand) "+
			"and the changes in between were never seen; queueing every student", confirmed, checkpoint)
	}
	return plan
}

// checkReplay refuses a replay LSN the slot cannot serve, or one that would skip changes.
func checkReplay(from, confirmed, checkpoint pglogrepl.LSN, slot string) error {
	switch {
	case from < confirmed:
		return fmt.Errorf("%w: requested %s, slot %s confirmed %s; a logical slot cannot be rewound: run `progress-sync backfill` to recompute every student from current data",
			ErrReplayTooOld, from, slot, confirmed)
	case checkpoint == 0:
		return fmt.Errorf("%w: requested %s, but no checkpoint is stored for slot %s: run `progress-sync run`", ErrReplayRefused, from, slot)
	case from > checkpoint:
		return fmt.Errorf("%w: requested %s is ahead of the stored checkpoint %s (slot %s confirmed %s): the changes in between would be skipped; "+
			"replay from %s or earlier", ErrReplayRefused, from, checkpoint, slot, confirmed, checkpoint)
	}
	return nil
}

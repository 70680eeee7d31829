package replication

import (
	"errors"
	"testing"

	"github.com/jackc/pglogrepl"
)

func TestPlanStart(t *testing.T) {
	idle := Slot{Exists: true, InThisDatabase: true, WALStatus: "reserved"}
	active := idle
	active.Active = true
	lost := idle
	lost.WALStatus = "lost"
	elsewhere := Slot{Exists: true, Database: "other"}
	const c, cp = pglogrepl.LSN(100), pglogrepl.LSN(150) // the slot's confirmed position, the checkpoint
	run := position{}
	replay := func(at pglogrepl.LSN) position { return position{lsn: at, explicit: true} }
	for _, tc := range []struct {
		name       string
		slot       Slot
		checkpoint pglogrepl.LSN
		pos        position
		want       startPlan
		refusal    error // startRefuse: the error it wraps
	}{
		{name: "a slot of another database", slot: elsewhere, pos: run, want: startPlan{action: startRefuse}, refusal: &MisconfiguredError{}},
		{name: "another instance streams", slot: active, checkpoint: cp, pos: run, want: startPlan{action: startStandby}},
		{name: "first start", slot: Slot{}, pos: run, want: startPlan{action: startCreate}},
		{name: "slot dropped since", slot: Slot{}, checkpoint: cp, pos: run, want: startPlan{action: startCreate}},
		{name: "replay without a slot", slot: Slot{}, checkpoint: cp, pos: replay(120), want: startPlan{action: startRefuse}, refusal: ErrReplayTooOld},
		{name: "lost slot", slot: lost, checkpoint: cp, pos: run, want: startPlan{action: startCreate, drop: true, force: true, lost: true}},
		{name: "replay from a lost slot", slot: lost, checkpoint: cp, pos: replay(120), want: startPlan{action: startRefuse}, refusal: ErrReplayRefused},
		{name: "publication dropped", slot: idle, checkpoint: cp, pos: position{recreate: true}, want: startPlan{action: startCreate, setup: true, drop: true}},
		{name: "publication dropped, slot gone too", slot: Slot{}, checkpoint: cp, pos: position{recreate: true}, want: startPlan{action: startCreate, setup: true}},
		{name: "restart", slot: idle, checkpoint: cp, pos: run, want: startPlan{action: startStream, from: c}},
		{name: "restart at the checkpoint", slot: idle, checkpoint: c, pos: run, want: startPlan{action: startStream, from: c}},
		{name: "no checkpoint (a slot made by setup)", slot: idle, pos: run, want: startPlan{action: startStream, from: c, queueAll: true}},
		{name: "slot ahead of the checkpoint (re-created)", slot: idle, checkpoint: c - 1, pos: run, want: startPlan{action: startStream, from: c, queueAll: true}},
		{name: "a load left to do", slot: idle, checkpoint: cp, pos: position{needsLoad: true}, want: startPlan{action: startStream, from: c, queueAll: true}},
		{name: "next session after streaming", slot: idle, checkpoint: cp, pos: position{lsn: 140}, want: startPlan{action: startStream, from: 140}},
		{name: "replay within range", slot: idle, checkpoint: cp, pos: replay(120), want: startPlan{action: startStream, from: 120}},
		{name: "replay at the checkpoint", slot: idle, checkpoint: cp, pos: replay(cp), want: startPlan{action: startStream, from: cp}},
		{name: "replay behind the slot", slot: idle, checkpoint: cp, pos: replay(c - 1), want: startPlan{action: startRefuse}, refusal: ErrReplayTooOld},
		{name: "replay without a checkpoint", slot: idle, pos: replay(120), want: startPlan{action: startRefuse}, refusal: ErrReplayRefused},
		{name: "replay past the checkpoint", slot: idle, checkpoint: cp, pos: replay(cp + 1), want: startPlan{action: startRefuse}, refusal: ErrReplayRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			confirmed := pglogrepl.LSN(0)
			if tc.slot.Exists {
				confirmed = c
			}
			got := planStart(tc.slot, confirmed, tc.checkpoint, tc.pos, "progress_sync")
			if tc.want.action == startRefuse {
				if got.action != startRefuse || got.refusal == nil {
					t.Fatalf("plan %+v, want a refusal", got)
				}
				if target := new(*MisconfiguredError); errors.As(tc.refusal, target) && !errors.As(got.refusal, target) ||
					!errors.As(tc.refusal, new(*MisconfiguredError)) && !errors.Is(got.refusal, tc.refusal) {
					t.Fatalf("refused with %v, want %v", got.refusal, tc.refusal)
				}
				return
			}
			got.warning, got.level = "", 0
			if got != tc.want {
				t.Fatalf("plan %+v, want %+v", got, tc.want)
			}
		})
	}
}

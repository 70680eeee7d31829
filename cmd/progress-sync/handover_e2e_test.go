package main_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/replication/state"
)

// These tests run the binary through handovers and operator actions: a standby taking over,
// a slot re-created by setup, replays that would skip changes, a slot name taken elsewhere,
// and HubSpot answering some inputs with a transient error.

// pending is how many students wait in the sync state.
func (w *world) pending() int {
	w.t.Helper()
	sum, err := state.Summarize(context.Background(), w.db, "progress_sync")
	if err != nil {
		w.t.Fatal(err)
	}
	return sum.Pending
}

func (w *world) waitPending(atLeast int, timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for w.pending() < atLeast {
		if time.Now().After(deadline) {
			w.t.Fatalf("%d students pending after %s, want at least %d", w.pending(), timeout, atLeast)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// touchXP changes the XP of n students from the start of the list.
func (w *world) touchXP(from, n, by int) {
	w.t.Helper()
	for _, s := range w.students[from : from+n] {
		w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + $2`, s.ID, by)
	}
}

func TestStandbyTakesOverWhatTheFirstInstanceRecorded(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	first := w.start()
	w.waitEqual(time.Minute)
	first.mustStop()
	// A holds its students for an hour: they are recorded and confirmed, not pushed.
	w.cli.env["PROGRESS_SYNC_DEBOUNCE"], w.cli.env["PROGRESS_SYNC_MAX_DELAY"] = "1h", "2h"
	a := w.start()
	a.waitLog(`"msg":"streaming"`, 30*time.Second)
	updates := w.emu.Stats().BatchUpdates
	w.touchXP(0, 10, 7)
	w.waitPending(10, 30*time.Second)

	// B, quick to push, loads those ten at its start, waits as a standby and writes nothing
	// while A holds the slot.
	w.cli.env["PROGRESS_SYNC_DEBOUNCE"], w.cli.env["PROGRESS_SYNC_MAX_DELAY"] = "300ms", "3s"
	b := w.start()
	b.waitLog("warm standby", 30*time.Second)
	b.waitLog("not pushing yet: this instance does not hold the replication slot", 30*time.Second)
	waitReadyz(t, b, 503, "standby")
	// Ten more change after B started: only A sees them.
	w.touchXP(10, 10, 7)
	w.waitPending(20, 30*time.Second)
	w.waitConfirmedPast(w.lsn(`SELECT pg_current_wal_lsn()::text`), 30*time.Second)
	if got := w.emu.Stats().BatchUpdates; got != updates {
		t.Fatalf("%d batch/update while A held the slot: two writers", got-updates)
	}
	if len(w.diff()) == 0 {
		t.Fatal("HubSpot already holds the new XP: the test proves nothing")
	}

	// A dies with its students pending; B takes the slot and pushes every one of them.
	a.kill()
	b.waitLog("took over the replication slot", time.Minute)
	w.waitEqual(time.Minute)
	waitReadyz(t, b, 200, "ready")
	b.mustStop()
}

func TestASlotRecreatedBySetupLoadsEveryStudent(t *testing.T) {
	w, svc := syncedWorld(t)
	svc.mustStop()
	// An operator drops the slot; students study; setup makes a new slot (no snapshot).
	w.exec(`SELECT pg_drop_replication_slot('progress_sync')`)
	w.touchXP(0, 20, 11)
	w.cli.mustRun("setup")
	svc = w.start()
	svc.waitLog("the slot has confirmed past the stored checkpoint", 30*time.Second)
	w.waitEqual(time.Minute)
	svc.mustStop()
}

func TestReplayRefusesWhatWouldSkipChanges(t *testing.T) {
	w, svc := syncedWorld(t)
	svc.mustStop()
	sum, err := state.Summarize(context.Background(), w.db, "progress_sync")
	if err != nil {
		t.Fatal(err)
	}
	stored := sum.Checkpoint.LSN
	// Changes past the checkpoint, then a replay from beyond them: they would be skipped.
	w.touchXP(0, 5, 3)
	ahead := w.lsn(`SELECT pg_current_wal_lsn()::text`) + 1024
	r := w.cli.run("replay", "--from-lsn", ahead.String(), "--listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, ahead.String()) || !strings.Contains(r.stderr, stored.String()) || !strings.Contains(r.stderr, "skipped") {
		t.Fatalf("replay ahead of the checkpoint: exit %d\n%s", r.code, tail(r.stderr, 2000))
	}
	if st := w.slotConfirmed(); st > stored {
		t.Fatalf("the refused replay moved the slot to %s", st)
	}

	// A lost slot is refused, and stays for run to recreate.
	w.loseSlot()
	r = w.cli.run("replay", "--from-lsn", stored.String(), "--listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "lost") {
		t.Fatalf("replay on a lost slot: exit %d\n%s", r.code, tail(r.stderr, 2000))
	}
	var exists bool
	if err := w.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'progress_sync')`).Scan(&exists); err != nil || !exists {
		t.Fatalf("replay dropped the lost slot (exists %v, %v)", exists, err)
	}
	svc = w.start()
	svc.waitLog("the replication slot was lost", 30*time.Second)
	w.waitEqual(time.Minute)
	svc.mustStop()
}

func TestASlotNameTakenInAnotherDatabaseIsAClearStop(t *testing.T) {
	w := newWorld(t, 300)
	other := pg.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('progress_sync', 'pgoutput')`); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(other)
	otherName := strings.TrimPrefix(u.Path, "/")
	r := w.cli.run("run", "--listen", "127.0.0.1:0")
	if r.code != 2 || !strings.Contains(r.stderr, otherName) || !strings.Contains(r.stderr, "PROGRESS_SYNC_SLOT") {
		t.Fatalf("run with the slot name taken by database %s: exit %d\n%s", otherName, r.code, tail(r.stderr, 2000))
	}
	r = w.cli.run("check")
	if r.code != 1 || !strings.Contains(r.stdout, "PROBLEM  slot: slot progress_sync belongs to database") || !strings.Contains(r.stdout, "PROGRESS_SYNC_SLOT") {
		t.Fatalf("check with the slot name taken elsewhere: exit %d\n%s", r.code, r.stdout)
	}
	w.cli.env["PROGRESS_SYNC_SLOT"] = "progress_sync_" + fmt.Sprint(time.Now().UnixNano()%100000)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	svc.mustStop()
}

func TestATransientPerInputErrorIsRetried(t *testing.T) {
	w, svc := syncedWorld(t)
	var ids []string
	for _, s := range w.students[:5] {
		ids = append(ids, w.contactIDs[s.ID])
	}
	w.emu.FailInputsOnce("INTERNAL_ERROR", ids...)
	w.touchXP(0, 5, 13)
	svc.waitLog("the batch is retried", 30*time.Second)
	w.waitEqual(time.Minute)
	for _, s := range w.students[:5] {
		if p := w.problems()[s.ID]; p.kind != "" {
			t.Fatalf("student %s recorded as %s after a transient error: %s", s.ID, p.kind, p.reason)
		}
	}
	svc.mustStop()
}

func TestAPublicationAlteredWhileStreamingIsCaughtUp(t *testing.T) {
	w, svc := syncedWorld(t)
	// An operator makes the publication send inserts only; students' updates go unseen.
	w.exec(`ALTER PUBLICATION progress_sync SET (publish = 'insert')`)
	svc.waitLog("the publication leaves changes out of the stream", 30*time.Second)
	waitReadyz(t, svc, 503, "publication")
	w.touchXP(0, 20, 17)
	w.exec(`ALTER PUBLICATION progress_sync SET (publish = 'insert, update, delete, truncate')`)
	svc.waitLog("the publication publishes every change again; queueing every student", 30*time.Second)
	w.waitEqual(time.Minute)
	svc.mustStop()
}

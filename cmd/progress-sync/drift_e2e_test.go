package main_test

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
)

// driftEdits are changes a person, a workflow or an import makes to synced properties behind
// the sync's back, one property each: numbers, dates, the enumeration, a cleared value.
var driftEdits = []func(i int) map[string]string{
	func(i int) map[string]string { return map[string]string{metrics.StudyStreak: "777"} },
	func(i int) map[string]string {
		return map[string]string{metrics.TotalStudyTime: fmt.Sprint(100000 + i)}
	},
	func(i int) map[string]string { return map[string]string{metrics.LastActivityDate: "2001-01-01"} },
	func(i int) map[string]string { return map[string]string{metrics.CourseCompletedDate: "2002-02-02"} },
	func(i int) map[string]string { return map[string]string{metrics.CourseStatus: "completed"} },
	func(i int) map[string]string { return map[string]string{metrics.LessonsCompleted: ""} },
}

// drift changes one synced property on each of n matched contacts, and firstname (a property
// the sync does not own) on the same contacts. It returns the contacts changed, each with
// the firstname it now holds.
func (w *world) drift(n int, seed int) map[string]string {
	w.t.Helper()
	want := w.expected()
	var ids []uuid.UUID
	for id := range w.contactIDs {
		if id != w.rejected && id != w.owner {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	edited := map[string]string{}
	for i, id := range ids {
		if len(edited) == n {
			break
		}
		edit := driftEdits[(i+seed)%len(driftEdits)](i)
		differs := false
		for name, v := range edit {
			differs = differs || want[id].Values[name] != v
		}
		if !differs {
			continue // the edit would not change this student's value
		}
		edit["firstname"] = fmt.Sprintf("Edited by hand %d-%d", seed, i)
		if !w.emu.EditContact(w.contactIDs[id], edit) {
			w.t.Fatalf("contact %s is gone", w.contactIDs[id])
		}
		edited[w.contactIDs[id]] = edit["firstname"]
	}
	if len(edited) != n {
		w.t.Fatalf("could only change %d contacts", len(edited))
	}
	if len(w.diff()) != n {
		w.t.Fatalf("after changing %d contacts %d values differ", n, len(w.diff()))
	}
	return edited
}

// checkUntouched fails unless each contact still holds the firstname the test gave it.
func (w *world) checkUntouched(firstnames map[string]string) {
	w.t.Helper()
	for id, name := range firstnames {
		if c, _ := w.emu.Contact(id); c.Properties["firstname"] != name {
			w.t.Fatalf("contact %s firstname = %q, want %q: the sync wrote a property it does not own", id, c.Properties["firstname"], name)
		}
	}
}

func TestBackfillRepairsValuesChangedInHubSpot(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	w.cli.mustRun("backfill")
	w.checkContacts()
	firstnames := w.drift(60, 0)

	dry := w.cli.mustRun("backfill", "--dry-run")
	if n := strings.Count(dry.stdout, "would update contact"); n != 60 {
		t.Fatalf("dry run shows %d contacts to update, want the 60 changed:\n%s", n, tail(dry.stdout, 3000))
	}
	if !strings.Contains(dry.stdout, `"777" -> `) {
		t.Fatalf("dry run does not show HubSpot's value:\n%s", tail(dry.stdout, 2000))
	}
	w.emu.ResetStats()
	out := w.cli.mustRun("backfill")
	if !strings.Contains(lastLine(out.stdout), "updated 60 contacts") {
		t.Fatalf("backfill summary: %s", lastLine(out.stdout))
	}
	st := w.emu.Stats()
	w.checkContacts()
	w.checkUntouched(firstnames)
	// As many batch/read requests as a first backfill: one per 100 students.
	if pages := (300 + 99) / 100; st.BatchReads != pages || st.BatchUpdates > pages {
		t.Fatalf("backfill made %d batch/read and %d batch/update requests, want %d and at most %d", st.BatchReads, st.BatchUpdates, pages, pages)
	}
}

func TestARunningServiceRepairsDriftWithinOnePass(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(map[string]string{"PROGRESS_SYNC_RECONCILE": "20s"})
	svc := w.start()
	w.waitEqual(time.Minute)
	firstnames := w.drift(60, 0)

	// Repaired by the next pass; /readyz stays ready all along.
	w.waitEqualReady(svc, 90*time.Second)
	w.checkUntouched(firstnames)
	// The pass complete line (a progress line has students_different too).
	passComplete := regexp.MustCompile(`"reconcile: pass complete"[^\n]*"students_different":60,`)
	for deadline := time.Now().Add(30 * time.Second); !passComplete.MatchString(svc.logs.String()); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pass complete line with 60 students different")
		}
	}
	// The pass said how far it had got, ending at its total: every contact it read.
	complete := regexp.MustCompile(`"contacts_read":(\d+),[^\n]*"reconcile: pass complete"`).FindStringSubmatch(svc.logs.String())
	progress := regexp.MustCompile(`"contacts_read":(\d+),"contacts_total":(\d+),"eta":"0s"[^\n]*"reconcile: progress"`).FindStringSubmatch(svc.logs.String())
	if complete == nil || progress == nil || progress[1] != complete[1] || progress[2] != complete[1] {
		t.Fatalf("no progress line of the pass ending at its total (pass complete: %q, progress: %q)", complete, progress)
	}
	_, body := svc.scrape("/metrics")
	total := 0.0
	for _, name := range metrics.Names() {
		total += metricValue(t, body, fmt.Sprintf(`progress_sync_reconcile_drift_total{property="%s"}`, name))
	}
	if total != 60 {
		t.Fatalf("progress_sync_reconcile_drift_total sums to %v, want 60", total)
	}
	if v := metricValue(t, body, "progress_sync_reconcile_last_complete_timestamp_seconds"); v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("last complete pass at %v", v)
	}

	// A workflow that overwrites the same property again is named.
	again := w.drift(10, 0)
	w.waitEqualReady(svc, 90*time.Second)
	w.checkUntouched(again)
	svc.waitLog("was changed in HubSpot again on", 30*time.Second)
	// One warning per property, each with its contact count: the 10 contacts in all.
	recurring := 0
	for _, m := range regexp.MustCompile(`"contacts":(\d+),[^\n]*was changed in HubSpot again on`).FindAllStringSubmatch(svc.logs.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		recurring += n
	}
	if recurring != 10 {
		t.Fatalf("the warnings about properties changed again count %d contacts, want 10", recurring)
	}
	svc.mustStop()
	if out := w.cli.mustRun("status").stdout; !strings.Contains(out, "reconcile: last complete pass ended") {
		t.Fatalf("status does not say when the last pass ended:\n%s", out)
	}
}

// waitEqualReady is waitEqual that also fails if /readyz stops answering 200 meanwhile.
func (w *world) waitEqualReady(svc *service, timeout time.Duration) {
	w.t.Helper()
	deadline := time.Now().Add(timeout)
	for len(w.diff()) > 0 {
		if code, body := svc.scrape("/readyz"); code != 200 {
			w.t.Fatalf("/readyz %d %q while reconciling", code, body)
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("after %s, %d values still differ, e.g. %s", timeout, len(w.diff()), w.diff()[0])
		}
		time.Sleep(200 * time.Millisecond)
	}
	w.checkContacts()
}

func TestAStudentWhoLeavesAContactLeavesItClearedByTheService(t *testing.T) {
	w, svc := syncedWorld(t)
	var movers []uuid.UUID
	for _, s := range w.students[60:] {
		if cid, ok := w.contactIDs[s.ID]; ok && s.ID != w.owner {
			if c, _ := w.emu.Contact(cid); c.Properties[metrics.CourseStatus] != "" {
				movers = append(movers, s.ID)
			}
		}
		if len(movers) == 3 {
			break
		}
	}
	toOther, toNobody, deleted := movers[0], movers[1], movers[2]
	left := map[uuid.UUID]string{toOther: w.contactIDs[toOther], toNobody: w.contactIDs[toNobody], deleted: w.contactIDs[deleted]}
	newContact := w.addContact("moved-here@example.com")
	w.exec(`UPDATE users SET email = 'moved-here@example.com' WHERE id = $1`, toOther)
	w.exec(`UPDATE users SET email = 'no-contact-here@example.com' WHERE id = $1`, toNobody)
	w.exec(`DELETE FROM users WHERE id = $1`, deleted)
	for id := range left {
		delete(w.contactIDs, id) // these contacts are no student's now
	}
	w.contactIDs[toOther] = newContact

	deadline := time.Now().Add(time.Minute)
	for {
		cleared := 0
		for _, cid := range left {
			c, _ := w.emu.Contact(cid)
			empty := true
			for _, name := range metrics.Names() {
				empty = empty && c.Properties[name] == ""
			}
			if empty && strings.HasPrefix(c.Properties["firstname"], "Student ") {
				cleared++
			}
		}
		if cleared == len(left) && len(w.diff()) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a minute %d of %d left contacts are cleared (firstname kept); %d values differ", cleared, len(left), len(w.diff()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	w.checkContacts()
	svc.waitLog("cleared the synced properties on a contact its student no longer has", 10*time.Second)
	if p := w.problems()[toNobody]; p.kind != "unmatched" {
		t.Fatalf("the student whose new email has no contact: %+v", p)
	}
	if _, ok := w.problems()[deleted]; ok {
		t.Fatalf("a deleted student keeps a problem")
	}
	svc.mustStop()
}

func TestBackfillShowsItsProgressOffATerminal(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	r := w.cli.mustRun("backfill", "--rate-limit", "10/10s", "--progress-every", "1s", "--log-format", "json")
	lines := regexp.MustCompile(`"msg":"backfill progress"`).FindAllString(r.stderr, -1)
	if len(lines) < 2 {
		t.Fatalf("%d progress lines, want one a second over a run of several seconds:\n%s", len(lines), tail(r.stderr, 3000))
	}
	if !regexp.MustCompile(`"eta":"[0-9]`).MatchString(r.stderr) || !strings.Contains(r.stderr, `"students_total":300`) {
		t.Fatalf("progress lines lack the ETA or the total:\n%s", tail(r.stderr, 3000))
	}
	done := regexp.MustCompile(`\{[^\n]*"msg":"backfill progress: done"[^\n]*\}`).FindString(r.stderr)
	if !strings.Contains(done, `"students_done":300`) || !strings.Contains(done, `"students_total":300`) {
		t.Fatalf("last progress line %q", done)
	}
}

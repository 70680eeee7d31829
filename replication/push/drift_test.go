package push

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/state"
)

func TestComparingWithHubSpotRepairsValuesChangedBehindTheSyncsBack(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.student("a@example.com", progress("'l1'", "80", "600"))
	unmatched := e.student("nobody@example.com")
	id := e.emu.AddContact("a@example.com", nil, map[string]string{"firstname": "Ada"})
	e.push(a, unmatched)
	want, _ := e.emu.Contact(id)
	e.emu.EditContact(id, map[string]string{metrics.StudyStreak: "777", metrics.LastActivityDate: "2020-01-01",
		metrics.CourseStatus: metrics.StatusCompleted, metrics.AverageScore: "", "firstname": "Edited by hand"})

	// Trusting what was pushed, nothing looks different.
	e.emu.ResetStats()
	if res := e.push(a, unmatched); res.Updated != 0 || e.emu.Stats().BatchUpdates != 0 {
		t.Fatalf("a push trusting the record wrote %d contacts", res.Updated)
	}
	e.p.compare = true
	e.emu.ResetStats()
	students, err := e.model.ForStudents(ctx, e.db, []uuid.UUID{a, unmatched})
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.p.Push(ctx, students)
	if err != nil {
		t.Fatal(err)
	}
	st := e.emu.Stats()
	if res.Updated != 1 || st.BatchReads != 1 || st.BatchUpdates != 1 {
		t.Fatalf("compare push: updated %d with %d reads and %d updates, want 1, 1, 1", res.Updated, st.BatchReads, st.BatchUpdates)
	}
	got, _ := e.emu.Contact(id)
	for _, name := range metrics.Names() {
		if got.Properties[name] != want.Properties[name] {
			t.Errorf("%s = %q after the repair, want %q", name, got.Properties[name], want.Properties[name])
		}
	}
	if got.Properties["firstname"] != "Edited by hand" {
		t.Errorf("a property the sync does not own was written: firstname = %q", got.Properties["firstname"])
	}
	// The record is fresh again: a push that trusts it sends nothing.
	e.p.compare = false
	e.emu.ResetStats()
	if e.push(a); e.emu.Stats().Requests != 0 {
		t.Fatalf("after the repair a trusting push made %d requests", e.emu.Stats().Requests)
	}
}

func TestALinkedContactWhoseEmailChangedInHubSpotIsReadByID(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	a := e.student("a@example.com", progress("'l1'", "80", "600"))
	id := e.emu.AddContact("a@example.com", nil, nil)
	e.push(a)
	// Someone corrects the contact's address in HubSpot; the student keeps theirs.
	e.emu.DeleteContact(id)
	moved := e.emu.AddContact("a.corrected@example.com", nil, map[string]string{metrics.TotalXP: "5"})
	if _, err := e.db.Exec(ctx, `UPDATE progress_sync.contact_links SET contact_id = $1 WHERE student_id = $2`, moved, a); err != nil {
		t.Fatal(err)
	}
	e.p.compare = true
	e.emu.ResetStats()
	res := e.push(a)
	if st := e.emu.Stats(); res.Updated != 1 || st.BatchReads != 2 {
		t.Fatalf("updated %d with %d batch/reads, want 1 with 2 (by email, then by id)", res.Updated, st.BatchReads)
	}
	if c, _ := e.emu.Contact(moved); c.Properties[metrics.TotalXP] != "0" {
		t.Fatalf("the linked contact holds total_xp %q", c.Properties[metrics.TotalXP])
	}
}

func TestAStudentWhoLeavesAContactLeavesItCleared(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		// act changes the student (a) after a first push; b is another student.
		act func(e *env, a, b uuid.UUID)
		// cleared reports whether a's first contact must end without synced values.
		cleared bool
		forget  bool // a was deleted: Forget, not Push
	}{
		{name: "email changed to another contact's", cleared: true, act: func(e *env, a, _ uuid.UUID) {
			e.emu.AddContact("a.new@example.com", nil, nil)
			e.exec(`UPDATE users SET email = 'a.new@example.com' WHERE id = $1`, a)
		}},
		{name: "email changed to an address no contact has", cleared: true, act: func(e *env, a, _ uuid.UUID) {
			e.exec(`UPDATE users SET email = 'a.unknown@example.com' WHERE id = $1`, a)
		}},
		{name: "email changed to one the same contact also has", cleared: false, act: func(e *env, a, _ uuid.UUID) {
			e.exec(`UPDATE users SET email = 'a.work@example.com' WHERE id = $1`, a)
		}},
		{name: "only the case of the email changed", cleared: false, act: func(e *env, a, _ uuid.UUID) {
			e.exec(`UPDATE users SET email = ' A@Example.com' WHERE id = $1`, a)
		}},
		{name: "two students swapped emails", cleared: false, act: func(e *env, a, b uuid.UUID) {
			e.exec(`UPDATE users SET email = 'tmp@example.com' WHERE id = $1`, a)
			e.exec(`UPDATE users SET email = 'a@example.com' WHERE id = $1`, b)
			e.exec(`UPDATE users SET email = 'b@example.com' WHERE id = $1`, a)
		}},
		{name: "student deleted", cleared: true, forget: true, act: func(e *env, a, _ uuid.UUID) {
			e.exec(`DELETE FROM users WHERE id = $1`, a)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			a := e.student("a@example.com", progress("'l1'", "80", "600"))
			b := e.student("b@example.com", progress("'l1'", "60", "60"), progress("'l2'", "70", "60"))
			first := e.emu.AddContact("a@example.com", []string{"a.work@example.com"}, map[string]string{"firstname": "Ada"})
			e.emu.AddContact("b@example.com", nil, nil)
			e.push(a, b)
			tc.act(e, a, b)
			if tc.forget {
				if _, err := e.p.Forget(ctx, []uuid.UUID{a}); err != nil {
					t.Fatal(err)
				}
				if links, _ := e.store.Links(ctx, []uuid.UUID{a}); len(links) != 0 {
					t.Errorf("a deleted student's link survived: %+v", links)
				}
			} else {
				e.push(a, b)
			}
			c, _ := e.emu.Contact(first)
			status := c.Properties[metrics.CourseStatus]
			if tc.cleared && status != "" {
				t.Errorf("the contact the student left still holds course_status %q", status)
			}
			if !tc.cleared && status == "" {
				t.Errorf("a contact still claimed was cleared")
			}
			if c.Properties["firstname"] != "Ada" {
				t.Errorf("firstname = %q: a property the sync does not own was written", c.Properties["firstname"])
			}
			if v := e.emu.Violations(); len(v) > 0 {
				t.Fatalf("violations: %v", v)
			}
			if p := e.problem(b); p.Kind != "" {
				t.Errorf("student b: %s %s", p.Kind, p.Reason)
			}
			// Whatever happened, a second round changes nothing more.
			e.emu.ResetStats()
			if !tc.forget {
				e.push(a, b)
			}
			if n := e.emu.Stats().BatchUpdates; n != 0 {
				t.Errorf("a second push wrote %d batches", n)
			}
		})
	}
}

func TestForgettingAStudentNeverClearsAContactAnotherClaims(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	// Two accounts of one person: a holds the contact's primary address, b its second one.
	a := e.student("a@example.com", progress("'l1'", "80", "600"))
	b := e.student("a.work@example.com", progress("'l1'", "50", "60"))
	e.emu.AddContact("a@example.com", []string{"a.work@example.com"}, nil)
	e.push(a, b)
	if p := e.problem(b); p.Kind != state.Conflict {
		t.Fatalf("b: %+v, want a conflict", p)
	}
	e.exec(`DELETE FROM users WHERE id = $1`, a)
	res, err := e.p.Forget(ctx, []uuid.UUID{a})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := e.emu.ContactByEmail("a@example.com")
	if res.Released != 0 || c.Properties[metrics.AverageScore] != "80" {
		t.Fatalf("released %d; the contact holds average_score %q", res.Released, c.Properties[metrics.AverageScore])
	}
	if p := e.problem(a); p.Kind != "" {
		t.Fatalf("a forgotten student keeps a problem: %+v", p)
	}
	// The contact is b's now.
	e.push(b)
	if c, _ := e.emu.ContactByEmail("a@example.com"); c.Properties[metrics.AverageScore] != "50" {
		t.Fatalf("after a left, b's push left average_score %q", c.Properties[metrics.AverageScore])
	}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

package main_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
)

// explained is the JSON explain prints.
type explained struct {
	StudentID string `json:"student_id"`
	Contact   *struct {
		ID     string `json:"id"`
		Linked bool   `json:"linked"`
	} `json:"contact"`
	Model string `json:"model"`
	Rows  []struct {
		Table string            `json:"table"`
		Count int               `json:"count"`
		Rows  []json.RawMessage `json:"rows"`
	} `json:"rows"`
	Pending *struct {
		Due time.Time `json:"due"`
	} `json:"pending"`
	Properties []struct {
		Name       string  `json:"name"`
		Database   string  `json:"database"`
		HubSpot    *string `json:"hubspot"`
		LastPushed *string `json:"last_pushed"`
		State      string  `json:"state"`
		Detail     string  `json:"detail"`
	} `json:"properties"`
}

func (w *world) explain(id uuid.UUID) (explained, int) {
	w.t.Helper()
	r := w.cli.run("explain", "--student", id.String(), "--json")
	var x explained
	if err := json.Unmarshal([]byte(r.stdout), &x); err != nil {
		w.t.Fatalf("explain --json printed no JSON (exit %d): %v\n%s\n%s", r.code, err, r.stdout, r.stderr)
	}
	return x, r.code
}

// states returns each property's state, and the detail of the first one in state want.
func (x explained) states() map[string]string {
	out := map[string]string{}
	for _, p := range x.Properties {
		out[p.Name] = p.State
	}
	return out
}

func TestExplainNamesEachState(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	w.cli.mustRun("backfill")
	var plain, drifted, behind, pending uuid.UUID
	for _, s := range w.students[50:60] {
		if _, ok := w.contactIDs[s.ID]; !ok {
			continue
		}
		switch uuid.Nil {
		case plain:
			plain = s.ID
		case drifted:
			drifted = s.ID
		case behind:
			behind = s.ID
		case pending:
			pending = s.ID
		}
	}
	w.emu.EditContact(w.contactIDs[drifted], map[string]string{metrics.StudyStreak: "777"})
	w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 4242) ON CONFLICT (user_id) DO UPDATE SET total_xp = 4242`, behind)

	cases := []struct {
		name     string
		student  uuid.UUID
		property string
		state    string
		detail   string
		code     int
	}{
		{"equal", plain, metrics.TotalXP, "equal", "", 0},
		{"drifted", drifted, metrics.StudyStreak, "drifted", "behind the sync's back", 1},
		{"behind", behind, metrics.TotalXP, "behind", "has not reached the sync", 1},
		{"rejected", w.rejected, metrics.AverageScore, "rejected", "HubSpot refused", 1},
		{"conflict", w.rival, metrics.TotalXP, "conflict", w.owner.String(), 1},
		{"unmatched", w.unmatched[0], metrics.TotalXP, "unmatched", "no HubSpot contact has this email", 1},
		{"unmatched without an email", w.noEmail, metrics.LessonsCompleted, "unmatched", "no email", 1},
	}
	t.Run("the model's rows", func(t *testing.T) {
		x, _ := w.explain(plain)
		var want int
		if err := w.db.QueryRow(context.Background(), `SELECT count(*) FROM course_progress WHERE user_id = $1`, plain).Scan(&want); err != nil {
			t.Fatal(err)
		}
		counts := map[string]int{}
		for _, r := range x.Rows {
			counts[r.Table] = r.Count
			if len(r.Rows) != min(r.Count, 50) {
				t.Errorf("%s: %d rows shown of %d", r.Table, len(r.Rows), r.Count)
			}
		}
		for _, r := range x.Rows {
			if r.Table == "public.users" && (len(r.Rows) != 1 || strings.Contains(string(r.Rows[0]), "password_hash")) {
				t.Errorf("the students row shows more than the id and email: %s", r.Rows)
			}
		}
		if x.Model != "course_progress" || counts["public.users"] != 1 || counts["public.course_progress"] != want {
			t.Fatalf("explain shows model %q and rows %v; want course_progress, 1 users row and %d course_progress rows", x.Model, counts, want)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x, code := w.explain(tc.student)
			if code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			for _, p := range x.Properties {
				if p.Name != tc.property {
					continue
				}
				if p.State != tc.state || !strings.Contains(p.Detail, tc.detail) {
					t.Fatalf("%s: state %s (%s), want %s mentioning %q", p.Name, p.State, p.Detail, tc.state, tc.detail)
				}
				return
			}
			t.Fatalf("no property %s in %+v", tc.property, x)
		})
	}
	t.Run("drifted in text", func(t *testing.T) {
		r := w.cli.run("explain", "--email", w.studentEmail(drifted))
		if r.code != 1 || !strings.Contains(r.stdout, `"777"`) || !strings.Contains(r.stdout, "study_streak: drifted:") ||
			!strings.Contains(r.stderr, "differs from the database on 1 of 10 properties") {
			t.Fatalf("exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		t.Logf("explain --email of a drifted student:\n%s", r.stdout)
	})
	t.Run("equal in text", func(t *testing.T) {
		out := w.cli.mustRun("explain", "--student", plain.String()).stdout
		for _, want := range []string{"public.course_progress (user_id = the student):", "linked in the sync state", "HubSpot equals the database."} {
			if !strings.Contains(out, want) {
				t.Errorf("text output lacks %q:\n%s", want, out)
			}
		}
	})

	// Pending: a running service that has recorded the change but waits out a long debounce.
	w.streamEnv(map[string]string{"PROGRESS_SYNC_DEBOUNCE": "10m", "PROGRESS_SYNC_MAX_DELAY": "10m"})
	svc := w.start()
	svc.waitLog("streaming", 30*time.Second)
	w.exec(`INSERT INTO user_xp (user_id, total_xp) VALUES ($1, 9191) ON CONFLICT (user_id) DO UPDATE SET total_xp = 9191`, pending)
	deadline := time.Now().Add(30 * time.Second)
	for !w.isPending(pending) {
		if time.Now().After(deadline) {
			t.Fatal("the change was never recorded as pending")
		}
		time.Sleep(100 * time.Millisecond)
	}
	x, code := w.explain(pending)
	if st := x.states()[metrics.TotalXP]; st != "pending" || code != 1 || x.Pending == nil || time.Until(x.Pending.Due) < 5*time.Minute {
		t.Fatalf("pending student: total_xp %s, exit %d, pending %+v", st, code, x.Pending)
	}
	svc.mustStop()

	// Nothing explain does writes anything.
	before := w.emu.Stats().BatchUpdates
	w.explain(drifted)
	if after := w.emu.Stats().BatchUpdates; after != before {
		t.Fatalf("explain sent %d batch/update requests", after-before)
	}
}

func (w *world) studentEmail(id uuid.UUID) string {
	for _, s := range w.students {
		if s.ID == id {
			return s.Email
		}
	}
	w.t.Fatalf("no student %s", id)
	return ""
}

func (w *world) isPending(id uuid.UUID) bool {
	w.t.Helper()
	var n int
	if err := w.db.QueryRow(context.Background(), `SELECT count(*) FROM progress_sync.pending WHERE student_id = $1`, id).Scan(&n); err != nil {
		w.t.Fatal(err)
	}
	return n == 1
}

func TestExplainRefusesWhatItCannotName(t *testing.T) {
	w := newWorld(t, 300)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "give one of --email or --student"},
		{[]string{"--email", "nobody-at-all@example.com"}, "no student has the email"},
		{[]string{"--student", "not-a-uuid"}, "is not a student id"},
		{[]string{"--student", uuid.NewString()}, "no student has the id"},
	} {
		r := w.cli.run(append([]string{"explain"}, tc.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("explain %v: exit %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
	}
}

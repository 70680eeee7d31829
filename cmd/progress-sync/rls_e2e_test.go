package main_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// These tests run the binary as the least-privilege role against the platform's row-level
// security (pgtest.PlatformRLS): policies that match only a signed-in user's JWT claim, so a
// role no policy covers sees no rows.

// enableRLS switches on the platform's row-level security on tables (both when none given).
func (w *world) enableRLS(tables ...string) {
	w.t.Helper()
	if err := pgtest.EnableRLS(context.Background(), w.db, tables...); err != nil {
		w.t.Fatal(err)
	}
}

// asLeastPrivilegeRole runs what `setup --print-sql` prints, as a DBA would: all of it but
// the slot (the service makes its own, with a snapshot) and, unless withPolicies, the read
// policies, which it returns. From then on the binary connects as that role.
func (w *world) asLeastPrivilegeRole(withPolicies bool) (printed string, policies []string) {
	w.t.Helper()
	w.t.Cleanup(func() {
		// Roles outlive the test database; drop this one with what it owns.
		ctx := context.Background()
		w.db.Exec(ctx, `DROP OWNED BY progress_sync`)
		w.db.Exec(ctx, `DROP ROLE IF EXISTS progress_sync`)
	})
	printed = w.cli.mustRun("setup", "--print-sql").stdout
	var stmt string // a statement may span lines (a model's CREATE TABLE)
	for _, line := range strings.Split(printed, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "--") {
			continue
		}
		if stmt += line + "\n"; !strings.HasSuffix(line, ";") {
			continue
		}
		stmt, line = "", strings.TrimSpace(stmt)
		if strings.Contains(line, "pg_create_logical_replication_slot") {
			continue
		}
		if strings.HasPrefix(line, "CREATE POLICY") {
			policies = append(policies, line)
			if !withPolicies {
				continue
			}
		}
		w.exec(line)
	}
	u, _ := url.Parse(w.dbURL)
	u.User = url.UserPassword("progress_sync", "choose-a-strong-password")
	w.cli.env["DATABASE_URL"] = u.String()
	return printed, policies
}

// readPolicy is the policy setup --print-sql gives the role on table.
func readPolicy(table string) string {
	return "CREATE POLICY progress_sync_read ON " + table + " FOR SELECT TO progress_sync USING (true);"
}

func TestRowLevelSecurityIsRefusedWithTheFix(t *testing.T) {
	cases := []struct {
		name   string
		tables []string
	}{
		{"users and course_progress, as the platform has it", []string{"public.course_progress", "public.users"}},
		{"course_progress only", []string{"public.course_progress"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, 300)
			w.cli.mustRun("provision")
			w.enableRLS(tc.tables...)
			_, policies := w.asLeastPrivilegeRole(false)
			if len(policies) != len(tc.tables) {
				t.Fatalf("setup --print-sql printed %d read policies for %d tables with RLS: %v", len(policies), len(tc.tables), policies)
			}
			for _, table := range tc.tables {
				if !slices.Contains(policies, readPolicy(table)) {
					t.Fatalf("no %q among the printed policies %v", readPolicy(table), policies)
				}
			}
			w.emu.ResetStats()

			// check: one failing item per blocked table, with the policy as its fix.
			r := w.cli.run("check")
			if r.code != 1 {
				t.Fatalf("check exit %d:\n%s", r.code, r.stdout)
			}
			for _, table := range tc.tables {
				item := "PROBLEM  row-level security on " + table + ": "
				if strings.Count(r.stdout, item) != 1 || !strings.Contains(r.stdout, "fix: "+readPolicy(table)) {
					t.Fatalf("check does not report %s with its fix:\n%s", table, r.stdout)
				}
			}

			// backfill and run refuse with exit 2, one line per table, and write nothing. (check
			// tries write access with a batch/update to a contact that does not exist.)
			w.emu.ResetStats()
			for _, command := range []string{"backfill", "run"} {
				r := w.cli.run(command)
				var lines []string // the refusal, apart from the log
				for _, line := range strings.Split(r.stderr, "\n") {
					if strings.HasPrefix(line, "progress-sync: ") {
						lines = append(lines, line)
					}
				}
				if r.code != 2 || len(lines) != len(tc.tables) {
					t.Fatalf("%s: exit %d, want 2 and %d lines:\n%s", command, r.code, len(tc.tables), r.stderr)
				}
				for i, table := range tc.tables {
					if !strings.Contains(lines[i], table+": row-level security is on") || !strings.HasSuffix(lines[i], readPolicy(table)) {
						t.Fatalf("%s: line %d does not name %s, why and the fix: %s", command, i+1, table, lines[i])
					}
				}
			}
			if st := w.emu.Stats(); st.BatchUpdates != 0 || len(st.BatchUpdateInputs) != 0 {
				t.Fatalf("HubSpot got %d batch/update while rows were hidden", st.BatchUpdates)
			}

			// The printed fix, applied by the tables' owner, is all it takes.
			for _, p := range policies {
				w.exec(p)
			}
			if r := w.cli.run("check"); r.code != 0 {
				t.Fatalf("check after the fix: exit %d\n%s", r.code, r.stdout)
			}
			w.cli.mustRun("backfill")
			w.checkContacts()
		})
	}
}

func TestLeastPrivilegeRole(t *testing.T) {
	w := newWorld(t, 300)
	w.enableRLS()
	printed, policies := w.asLeastPrivilegeRole(true)
	if len(policies) != 2 || !strings.Contains(printed, readPolicy("public.users")) || !strings.Contains(printed, readPolicy("public.course_progress")) {
		t.Fatalf("setup --print-sql on the platform's schema lacks the two read policies:\n%s", printed)
	}
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	svc.mustStop()
	var owner string
	if err := w.db.QueryRow(context.Background(), `SELECT tableowner FROM pg_tables WHERE schemaname = 'progress_sync' AND tablename = 'pending'`).Scan(&owner); err != nil {
		t.Fatal(err)
	}
	if owner != "progress_sync" {
		t.Fatalf("state owned by %q", owner)
	}
	// Without the right to change the publication, a missing table is reported with the fix.
	w.exec(`ALTER PUBLICATION progress_sync DROP TABLE user_xp`)
	r := w.cli.run("setup")
	if r.code != 1 || !strings.Contains(r.stderr, "ALTER PUBLICATION progress_sync ADD TABLE public.user_xp") {
		t.Fatalf("setup without the right to fix the publication: exit %d\n%s", r.code, r.stderr)
	}
}

func TestSetupCreatesTheReadPolicyForTheServiceRole(t *testing.T) {
	w := newWorld(t, 300)
	w.cli.mustRun("provision")
	w.enableRLS()
	owner := w.cli.env["DATABASE_URL"]
	w.asLeastPrivilegeRole(false)
	if r := w.cli.run("backfill"); r.code != 2 {
		t.Fatalf("backfill without the policies: exit %d\n%s", r.code, r.stderr)
	}
	service := w.cli.env["DATABASE_URL"]
	w.cli.env["DATABASE_URL"] = owner
	out := w.cli.mustRun("setup", "--role", "progress_sync").stdout
	for _, table := range []string{"public.users", "public.course_progress"} {
		if !strings.Contains(out, "created a read policy on "+table) {
			t.Fatalf("setup --role did not create the read policy on %s:\n%s", table, out)
		}
	}
	w.cli.env["DATABASE_URL"] = service
	w.cli.mustRun("backfill")
	w.checkContacts()
}

func TestRowLevelSecuritySwitchedOnWhileStreaming(t *testing.T) {
	w := newWorld(t, 300)
	w.asLeastPrivilegeRole(true)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	before := w.emu.Stats().BatchUpdates
	lessons := map[string]string{}
	for id, cid := range w.contactIDs {
		c, _ := w.emu.Contact(cid)
		lessons[id.String()] = c.Properties[metrics.LessonsCompleted]
	}

	// The platform turns its policies on while the service streams; students keep studying.
	w.enableRLS("public.course_progress")
	for i := 0; i < 20; i++ {
		w.exec(`UPDATE course_progress SET time_spent = time_spent + 600 WHERE user_id = $1`, w.students[300-40+i].ID)
		w.exec(`UPDATE user_xp SET total_xp = total_xp + 5 WHERE user_id = $1`, w.students[i].ID)
	}
	svc.waitLog("the database hides rows of the source tables from the service (row-level security)", time.Minute)
	waitReadyz(t, svc, 503, "row-level security")
	if got := w.emu.Stats().BatchUpdates; got != before {
		t.Fatalf("%d batch/update while course_progress was hidden", got-before)
	}
	for id, cid := range w.contactIDs {
		c, _ := w.emu.Contact(cid)
		if got := c.Properties[metrics.LessonsCompleted]; got != lessons[id.String()] {
			t.Fatalf("contact %s: lessons_completed %q became %q while rows were hidden", cid, lessons[id.String()], got)
		}
	}

	// The read policy makes every row visible again: the recorded changes go out.
	w.exec(readPolicy("public.course_progress"))
	svc.waitLog("every row of the source tables is visible again; pushes resume", time.Minute)
	w.waitEqual(time.Minute)
	waitReadyz(t, svc, 200, "ready")
	svc.mustStop()
}

func TestBatchThatLostAllProgressIsHeldUntilAllowed(t *testing.T) {
	w, svc := syncedWorld(t)
	// Twenty students with progress lose every course_progress row in one transaction: far
	// more likely a broken view than real, so the service refuses to clear them in HubSpot.
	var victims []string
	for _, s := range w.students[50:70] {
		victims = append(victims, "'"+s.ID.String()+"'")
	}
	before := w.emu.Stats().BatchUpdates
	w.exec(`DELETE FROM course_progress WHERE user_id IN (` + strings.Join(victims, ", ") + `)`)
	svc.waitLog("refusing to clear progress in HubSpot", time.Minute)
	if got := w.emu.Stats().BatchUpdates; got != before {
		t.Fatalf("%d batch/update for a batch that lost every progress row", got-before)
	}
	if len(w.diff()) == 0 {
		t.Fatal("HubSpot already equals the database: the test proves nothing")
	}
	// The operator, knowing the rows were really deleted, writes them on purpose, as the
	// service's log says.
	svc.waitLog("--allow-clearing", time.Second)
	w.cli.mustRun("backfill", "--allow-clearing")
	w.waitEqual(time.Minute)
	svc.mustStop()
}

func waitReadyz(t *testing.T, svc *service, code int, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, body := svc.scrape("/readyz")
		if got == code && strings.Contains(body, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz %d %q, want %d %q", got, body, code, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

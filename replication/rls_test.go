package replication

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// rlsWorld is a seeded database and a role (unique on the server: roles are cluster-wide)
// that may read the six tables.
type rlsWorld struct {
	t    *testing.T
	db   *pgxpool.Pool
	role string
}

func newRLSWorld(t *testing.T) *rlsWorld {
	t.Helper()
	ctx := context.Background()
	db := pg.NewPool(t)
	conn, err := pgx.Connect(ctx, db.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	_, err = pgtest.Seed(ctx, conn, pgtest.SeedOptions{Students: 6, Seed: 3})
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var dbName string
	if err := db.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	w := &rlsWorld{t: t, db: db, role: "reader_" + strings.ToLower(dbName)}
	w.exec(`CREATE ROLE ` + w.role + ` NOLOGIN`)
	w.exec(`CREATE ROLE ` + w.role + `_group NOLOGIN`)
	t.Cleanup(func() {
		for _, r := range []string{w.role, w.role + "_group"} {
			_, _ = db.Exec(context.Background(), `DROP OWNED BY `+r)
			_, _ = db.Exec(context.Background(), `DROP ROLE IF EXISTS `+r)
		}
	})
	w.exec(`GRANT USAGE ON SCHEMA public TO ` + w.role)
	w.exec(`GRANT SELECT ON ` + strings.Join(defaultModel().TableNames(), ", ") + ` TO ` + w.role)
	return w
}

func (w *rlsWorld) exec(sql string) {
	w.t.Helper()
	sql = strings.ReplaceAll(sql, "ROLE_", w.role)
	if _, err := w.db.Exec(context.Background(), sql); err != nil {
		w.t.Fatalf("%s: %v", sql, err)
	}
}

// partlyVisible is the ground truth: the tables of which the role counts fewer rows than
// the superuser does.
func (w *rlsWorld) partlyVisible() []string {
	w.t.Helper()
	ctx := context.Background()
	var out []string
	for _, table := range defaultModel().TableNames() {
		var all, seen int
		if err := w.db.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&all); err != nil {
			w.t.Fatal(err)
		}
		if all == 0 {
			w.t.Fatalf("%s is empty: the test cannot tell what the role sees", table)
		}
		err := pgx.BeginFunc(ctx, w.db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+w.role); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT count(*) FROM `+table).Scan(&seen)
		})
		if err != nil && !strings.Contains(err.Error(), "permission denied") {
			w.t.Fatal(err)
		}
		if seen < all {
			out = append(out, table)
		}
	}
	return out
}

func TestHiddenTablesAgreesWithWhatTheRoleSees(t *testing.T) {
	cases := []struct {
		name   string
		setup  []string
		hidden map[string]string // table -> a word its fix must hold
	}{
		{name: "no row-level security"},
		{name: "the platform's policies", setup: []string{"PLATFORM"},
			hidden: map[string]string{"public.users": "CREATE POLICY progress_sync_read ON public.users FOR SELECT TO ROLE_ USING (true);",
				"public.course_progress": "CREATE POLICY progress_sync_read ON public.course_progress FOR SELECT TO ROLE_ USING (true);"}},
		{name: "RLS on with no policy at all", setup: []string{`ALTER TABLE user_xp ENABLE ROW LEVEL SECURITY`},
			hidden: map[string]string{"public.user_xp": "CREATE POLICY"}},
		{name: "the read policy for the role", setup: []string{"PLATFORM",
			`CREATE POLICY progress_sync_read ON users FOR SELECT TO ROLE_ USING (true)`,
			`CREATE POLICY progress_sync_read ON course_progress FOR SELECT TO ROLE_ USING (true)`}},
		{name: "a read policy for PUBLIC", setup: []string{"PLATFORM",
			`CREATE POLICY open ON users FOR SELECT USING (true)`, `CREATE POLICY open ON course_progress FOR ALL USING (true)`}},
		{name: "a read policy for a group the role is in", setup: []string{"PLATFORM", `GRANT ROLE__group TO ROLE_`,
			`CREATE POLICY g ON users FOR SELECT TO ROLE__group USING (true)`, `CREATE POLICY g ON course_progress FOR SELECT TO ROLE__group USING (true)`}},
		{name: "a read policy for another role", setup: []string{"PLATFORM",
			`CREATE POLICY g ON users FOR SELECT TO ROLE__group USING (true)`},
			hidden: map[string]string{"public.users": "CREATE POLICY", "public.course_progress": "CREATE POLICY"}},
		{name: "a read policy that is not USING (true)", setup: []string{"PLATFORM",
			`CREATE POLICY partial ON users FOR SELECT TO ROLE_ USING (id IS NULL)`},
			hidden: map[string]string{"public.users": "CREATE POLICY", "public.course_progress": "CREATE POLICY"}},
		{name: "BYPASSRLS", setup: []string{"PLATFORM", `ALTER ROLE ROLE_ BYPASSRLS`}},
		{name: "owner of one table", setup: []string{"PLATFORM", `ALTER TABLE course_progress OWNER TO ROLE_`},
			hidden: map[string]string{"public.users": "CREATE POLICY"}},
		{name: "owner of a table that forces RLS", setup: []string{"PLATFORM", `ALTER TABLE course_progress OWNER TO ROLE_`,
			`ALTER TABLE course_progress FORCE ROW LEVEL SECURITY`, `CREATE POLICY open ON users FOR SELECT USING (true)`},
			hidden: map[string]string{"public.course_progress": "CREATE POLICY"}},
		{name: "a restrictive policy", setup: []string{"PLATFORM", `CREATE POLICY open ON users FOR SELECT USING (true)`,
			`CREATE POLICY open ON course_progress FOR SELECT USING (true)`,
			`CREATE POLICY recent ON course_progress AS RESTRICTIVE FOR SELECT USING (completed)`},
			hidden: map[string]string{"public.course_progress": "BYPASSRLS"}},
		{name: "owner of a table with a restrictive policy", setup: []string{"PLATFORM", `ALTER TABLE user_streaks OWNER TO ROLE_`,
			`ALTER TABLE user_streaks ENABLE ROW LEVEL SECURITY`, `CREATE POLICY mine ON user_streaks AS RESTRICTIVE USING (user_id IS NULL)`,
			`CREATE POLICY open ON users FOR SELECT USING (true)`, `CREATE POLICY open ON course_progress FOR SELECT USING (true)`}},
		{name: "the read policy's name taken by another role's", setup: []string{"PLATFORM",
			`CREATE POLICY progress_sync_read ON users FOR SELECT TO ROLE__group USING (true)`,
			`CREATE POLICY open ON course_progress FOR SELECT USING (true)`},
			hidden: map[string]string{"public.users": "CREATE POLICY progress_sync_read_ROLE_ ON public.users FOR SELECT TO ROLE_ USING (true);"}},
		{name: "no grant", setup: []string{`REVOKE SELECT ON user_streaks FROM ROLE_`},
			hidden: map[string]string{"public.user_streaks": "GRANT SELECT ON public.user_streaks TO ROLE_;"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newRLSWorld(t)
			for _, s := range tc.setup {
				if s == "PLATFORM" {
					if err := pgtest.EnableRLS(context.Background(), w.db); err != nil {
						t.Fatal(err)
					}
					continue
				}
				w.exec(s)
			}
			hidden, err := HiddenTables(context.Background(), w.db, defaultModel(), w.role)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, h := range hidden {
				got = append(got, h.Table)
				want := strings.ReplaceAll(tc.hidden[h.Table], "ROLE_", w.role)
				if want == "" || !strings.Contains(h.Fix, want) || h.Why == "" || h.Role != w.role {
					t.Errorf("%s: fix %q, why %q (want a fix holding %q)", h.Table, h.Fix, h.Why, want)
				}
			}
			var want []string
			for table := range tc.hidden {
				want = append(want, table)
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("hidden tables %v, want %v", got, want)
			}
			// The catalog's verdict must match what the role actually reads.
			truth := w.partlyVisible()
			slices.Sort(truth)
			if !slices.Equal(truth, got) {
				t.Fatalf("the role really sees only part of %v, the check says %v", truth, got)
			}
		})
	}
}

func TestSetupCreatesReadPoliciesWhereItMay(t *testing.T) {
	ctx := context.Background()
	w := newRLSWorld(t)
	if err := pgtest.EnableRLS(ctx, w.db); err != nil {
		t.Fatal(err)
	}
	names := Names{Slot: "progress_sync", Publication: "progress_sync"}
	rep, err := Setup(ctx, w.db, names, defaultModel(), w.role)
	if err != nil {
		t.Fatal(err)
	}
	var created []string
	for _, line := range rep.Done {
		if strings.HasPrefix(line, "created a read policy") {
			created = append(created, line)
		}
	}
	if len(created) != 2 {
		t.Fatalf("setup made %d read policies, want 2: %v", len(created), rep.Done)
	}
	if hidden, err := HiddenTables(ctx, w.db, defaultModel(), w.role); err != nil || len(hidden) > 0 {
		t.Fatalf("after setup: hidden %v, %v", hidden, err)
	}
	if truth := w.partlyVisible(); len(truth) > 0 {
		t.Fatalf("after setup the role still sees only part of %v", truth)
	}
	again, err := Setup(ctx, w.db, names, defaultModel(), w.role)
	if err != nil || len(again.Done) > 0 {
		t.Fatalf("second setup: %v, %v", again.Done, err)
	}
	// A role that owns no table has no right to add a policy: setup leaves it to the check.
	w2 := newRLSWorld(t)
	if err := pgtest.EnableRLS(ctx, w2.db); err != nil {
		t.Fatal(err)
	}
	w2.exec(`GRANT CREATE ON SCHEMA public TO ROLE_`)
	err = pgx.BeginFunc(ctx, w2.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL ROLE `+w2.role); err != nil {
			return err
		}
		done, _, err := grantReadPolicies(ctx, tx, defaultModel(), "")
		if len(done) > 0 {
			return fmt.Errorf("a role that owns nothing created policies: %v", done)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckVisibility(ctx, w2.db, defaultModel()); err != nil {
		t.Fatalf("the superuser sees everything, yet: %v", err)
	}
}

func TestReadCompleteHoldsPolicyChangesOff(t *testing.T) {
	ctx := context.Background()
	w := newRLSWorld(t)
	reading, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- ReadComplete(ctx, w.db, defaultModel(), func(pgx.Tx) error {
			close(reading)
			<-release
			return nil
		})
	}()
	<-reading
	altered := make(chan error, 1)
	go func() {
		_, err := w.db.Exec(ctx, `ALTER TABLE public.course_progress ENABLE ROW LEVEL SECURITY`)
		altered <- err
	}()
	// The ALTER must wait for the read: poll until PostgreSQL shows it waiting on the lock.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var waiting bool
		if err := w.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 'public.course_progress'::regclass)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-altered:
			t.Fatalf("RLS was switched on while a complete read held its locks (err %v)", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the ALTER neither waited nor finished within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := <-altered; err != nil {
		t.Fatal(err)
	}
}

func TestReadCompleteNeverHoldsOneTableWhileWaitingForAnother(t *testing.T) {
	ctx := context.Background()
	w := newRLSWorld(t)
	migration, err := w.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer migration.Rollback(ctx) //nolint:errcheck
	if _, err := migration.Exec(ctx, `LOCK TABLE public.course_progress IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { read <- ReadComplete(ctx, w.db, defaultModel(), func(pgx.Tx) error { return nil }) }()
	// While the reader keeps trying, a second migration step takes public.users at once: the
	// reader holds nothing while it waits, so nothing queues behind it and nothing deadlocks.
	second, err := w.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := second.Exec(ctx, `SET LOCAL lock_timeout = '10s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := second.Exec(ctx, `LOCK TABLE public.users IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatalf("a migration could not lock public.users while the reader waited for course_progress: %v", err)
	}
	if err := second.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := migration.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-read; err != nil {
		t.Fatalf("the read after the migration: %v", err)
	}
}

func TestPublicationGapsAreFoundAndClosedBySetup(t *testing.T) {
	cases := []struct {
		name, alter, problem string
	}{
		{"inserts only", `ALTER PUBLICATION progress_sync SET (publish = 'insert')`, "every kind of change"},
		{"a row filter", `ALTER PUBLICATION progress_sync SET TABLE public.users, public.course_progress, public.user_streaks, public.user_xp WHERE (total_xp > 1000), public.course_lessons, public.course_modules`, "public.user_xp with a row filter"},
		{"a column list", `ALTER PUBLICATION progress_sync SET TABLE public.users (id, email), public.course_progress, public.user_streaks, public.user_xp, public.course_lessons, public.course_modules`, "public.users with a column list"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			w := newRLSWorld(t)
			names := Names{Slot: "progress_sync", Publication: "progress_sync"}
			if _, err := Setup(ctx, w.db, names, defaultModel(), ""); err != nil {
				t.Fatal(err)
			}
			w.exec(tc.alter)
			err := CheckPublication(ctx, w.db, defaultModel(), "progress_sync")
			if err == nil || !strings.Contains(err.Error(), tc.problem) || !strings.Contains(err.Error(), "ALTER PUBLICATION") {
				t.Fatalf("CheckPublication = %v, want %q with its fix", err, tc.problem)
			}
			if _, err := Setup(ctx, w.db, names, defaultModel(), ""); err != nil {
				t.Fatal(err)
			}
			if err := CheckPublication(ctx, w.db, defaultModel(), "progress_sync"); err != nil {
				t.Fatalf("after setup: %v", err)
			}
		})
	}
}

package main_test

import (
	"testing"
	"time"
)

// A database that refuses writes (what Supabase does when a project's disk is nearly full):
// the service says so in one line that tells what happened, that nothing is lost and what to
// do; /readyz gives the same reason; and once writes are allowed again HubSpot ends equal to
// the database, the changes made meanwhile included, without a restart or anyone ending the
// service's sessions (those opened while the database was read-only stay read-only).
func TestAReadOnlyDatabaseIsExplainedAndLosesNothing(t *testing.T) {
	w, svc := syncedWorld(t)
	alter := func(setting string) {
		w.exec(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I ` + setting + `', current_database()); END $$`)
	}
	alter("SET default_transaction_read_only = on")
	// The setting takes hold in new sessions: end the service's (this test's own stays
	// read-write, as the platform's writes would go on in a real outage's aftermath).
	w.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	w.touchXP(0, 10, 7)
	svc.waitLog("the database is read-only (Supabase makes a project read-only when its disk is nearly full): nothing is lost", time.Minute)
	waitReadyz(t, svc, 503, "the database is read-only (Supabase makes a project read-only when its disk is nearly full): nothing is lost")
	if len(w.diff()) == 0 {
		t.Fatal("HubSpot already holds the changes made while the database refused writes: the test proves nothing")
	}
	alter("RESET default_transaction_read_only")
	w.waitEqual(2 * time.Minute)
	waitReadyz(t, svc, 200, "ready")
	svc.mustStop()
}

package state

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/metrics/model"
)

func TestJournalKeepsPendingAndCheckpointTogether(t *testing.T) {
	ctx := context.Background()
	db := newPool(t)
	sum, err := Summarize(ctx, db, "s")
	if err != nil || sum.Exists {
		t.Fatalf("summary before the service ran: %+v, %v", sum, err)
	}
	store, err := Open(ctx, db, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	j := store.Journal("s")
	cp, pending, err := j.Load(ctx)
	if err != nil || cp.LSN != 0 || len(pending) != 0 {
		t.Fatalf("fresh journal: %+v %v %v", cp, pending, err)
	}
	a, b := uuid.New(), uuid.New()
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	if err := j.RecordChanges(ctx, []uuid.UUID{a, b}, t0, 1, pglogrepl.LSN(0x16B3748)); err != nil {
		t.Fatal(err)
	}
	if err := j.RecordChanges(ctx, []uuid.UUID{a}, t0.Add(time.Second), 2, 0); err != nil {
		t.Fatal(err)
	}
	if err := j.AdvanceCheckpoint(ctx, pglogrepl.LSN(0x16B3700)); err != nil { // never moves back
		t.Fatal(err)
	}
	cp, pending, err = j.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cp.LSN != pglogrepl.LSN(0x16B3748) || !cp.LastFlush.IsZero() {
		t.Fatalf("checkpoint %+v, want 0/16B3748 and no flush yet", cp)
	}
	got := map[uuid.UUID]PendingStudent{}
	for _, p := range pending {
		got[p.ID] = p
	}
	if pa := got[a]; pa.Version != 2 || !pa.First.Equal(t0) || !pa.Last.Equal(t0.Add(time.Second)) {
		t.Fatalf("student a: %+v, want version 2, first t0, last t0+1s", pa)
	}
	// A push of a at version 1 does not remove it: it changed again since.
	if err := j.RemovePushed(ctx, []uuid.UUID{a, b}, []int64{1, 1}); err != nil {
		t.Fatal(err)
	}
	_, pending, _ = j.Load(ctx)
	if len(pending) != 1 || pending[0].ID != a {
		t.Fatalf("after removing version 1: %+v, want only a", pending)
	}
	sum, err = Summarize(ctx, db, "s")
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Exists || sum.Pending != 1 || sum.OldestWait <= 0 || sum.Checkpoint.LSN != pglogrepl.LSN(0x16B3748) || sum.Checkpoint.LastFlush.IsZero() {
		t.Fatalf("summary %+v", sum)
	}
	if err := ForgetCheckpoint(ctx, db, "s"); err != nil {
		t.Fatal(err)
	}
	if cp, _, _ := j.Load(ctx); cp.LSN != 0 {
		t.Fatalf("checkpoint %s after it was forgotten", cp.LSN)
	}
	if err := Drop(ctx, db); err != nil {
		t.Fatal(err)
	}
	if err := ForgetCheckpoint(ctx, db, "s"); err != nil {
		t.Fatalf("forgetting without a sync state: %v", err)
	}
}

func TestMigrateActsAsTheSchemaOwner(t *testing.T) {
	ctx := context.Background()
	db := newPool(t)
	var dbName string
	if err := db.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
		t.Fatal(err)
	}
	owner := "Service " + dbName // needs quoting
	quoted := `"` + owner + `"`
	for _, s := range []string{`CREATE ROLE ` + quoted + ` NOLOGIN`, SchemaSQL(quoted)} {
		if _, err := db.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	t.Cleanup(func() {
		_, _ = db.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+Schema+` CASCADE`)
		_, _ = db.Exec(context.Background(), `DROP ROLE IF EXISTS `+quoted)
	})
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	var others int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tableowner <> $2`, Schema, owner).Scan(&others); err != nil {
		t.Fatal(err)
	}
	if others != 0 {
		t.Fatalf("%d state tables not owned by the schema's owner %q", others, owner)
	}
	var user string
	if err := db.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil || user == owner {
		t.Fatalf("the pool's connection is left acting as %q (%v)", user, err)
	}
}

package state

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

var pg *pgtest.Server

func TestMain(m *testing.M) { pgtest.Main(m, &pg) }

func newPool(t *testing.T) *pgxpool.Pool { return pg.NewPool(t) }

// openStore opens the sync state on a fresh test database, its links pointing into the
// default model's students table.
func openStore(t *testing.T) (*Store, *pgxpool.Pool) {
	t.Helper()
	db := newPool(t)
	s, err := Open(context.Background(), db, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	return s, db
}

func TestMigrateIsIdempotentAndConcurrent(t *testing.T) {
	ctx := context.Background()
	db := newPool(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = Migrate(ctx, db)
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	steps, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM progress_sync.schema_migrations`).Scan(&applied); err != nil {
		t.Fatal(err)
	}
	if applied != len(steps) {
		t.Fatalf("%d migrations recorded, want %d", applied, len(steps))
	}
}

func addUser(t *testing.T, db *pgxpool.Pool, email string) uuid.UUID {
	t.Helper()
	var id uuid.UUID
	if err := db.QueryRow(context.Background(), `INSERT INTO users (email, name) VALUES ($1, 'S') RETURNING id`, email).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestRecordAndRead(t *testing.T) {
	ctx := context.Background()
	s, db := openStore(t)
	ada := addUser(t, db, " Ada@Example.com")
	bob := addUser(t, db, "bob@example.com")
	gone := uuid.New() // a student deleted since it was linked

	err := s.Record(ctx, Outcome{
		Links: []Link{
			{StudentID: ada, Email: "ada@example.com", ContactID: "1", Primary: true},
			{StudentID: bob, Email: "bob@example.com", ContactID: "2", Primary: false},
			{StudentID: gone, Email: "gone@example.com", ContactID: "1", Primary: false},
		},
		Pushed: []Pushed{{ContactID: "1", StudentID: ada, Properties: map[string]string{"total_xp": "10", "study_streak": "2"}}},
		Problems: []Problem{{StudentID: bob, Email: "bob@example.com", Kind: Rejected, Reason: "bad value",
			ContactID: "2", Properties: map[string]string{"average_score": "150"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	links, err := s.Links(ctx, []uuid.UUID{ada, bob, uuid.New()})
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 2 || links[ada].ContactID != "1" || !links[ada].Primary || links[bob].Primary {
		t.Fatalf("links = %+v", links)
	}
	claimants, err := s.Claimants(ctx, []string{"1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(claimants) != 1 || claimants[0].StudentID != ada {
		t.Fatalf("claimants of contact 1 = %+v, want only ada (the deleted student's link is ignored)", claimants)
	}

	// Pushed values merge: a later push of one property keeps the others.
	if err := s.Record(ctx, Outcome{Pushed: []Pushed{{ContactID: "1", StudentID: ada, Properties: map[string]string{"total_xp": "11"}}}}); err != nil {
		t.Fatal(err)
	}
	pushed, err := s.Pushed(ctx, []string{"1", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if got := pushed["1"]; len(pushed) != 1 || got["total_xp"] != "11" || got["study_streak"] != "2" {
		t.Fatalf("pushed = %+v", pushed)
	}

	// A retried problem counts attempts; a synced student's problem disappears.
	if err := s.Record(ctx, Outcome{Problems: []Problem{{StudentID: bob, Email: "bob@example.com", Kind: Rejected, Reason: "still bad"}}}); err != nil {
		t.Fatal(err)
	}
	probs, err := s.Problems(ctx, Rejected)
	if err != nil {
		t.Fatal(err)
	}
	if len(probs) != 1 || probs[0].Attempts != 2 || probs[0].Reason != "still bad" {
		t.Fatalf("problems = %+v", probs)
	}
	if other, _ := s.Problems(ctx, Unmatched); len(other) != 0 {
		t.Fatalf("unmatched = %+v, want none", other)
	}
	if err := s.Record(ctx, Outcome{Synced: []uuid.UUID{bob}}); err != nil {
		t.Fatal(err)
	}
	if probs, _ := s.Problems(ctx); len(probs) != 0 {
		t.Fatalf("problems after sync = %+v", probs)
	}

	// A deleted or merged contact is forgotten with its values.
	if err := s.Record(ctx, Outcome{DropLinks: []string{"1"}}); err != nil {
		t.Fatal(err)
	}
	if links, _ := s.Links(ctx, []uuid.UUID{ada}); len(links) != 0 {
		t.Fatalf("links after drop = %+v", links)
	}
	if pushed, _ := s.Pushed(ctx, []string{"1"}); len(pushed) != 0 {
		t.Fatalf("pushed after drop = %+v", pushed)
	}
}

func TestReadOnlyStoreWritesNothing(t *testing.T) {
	ctx := context.Background()
	db := newPool(t)
	s, err := OpenReadOnly(ctx, db, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	if links, err := s.Links(ctx, []uuid.UUID{uuid.New()}); err != nil || len(links) != 0 {
		t.Fatalf("links = %v, %v", links, err)
	}
	if err := s.Record(ctx, Outcome{Synced: []uuid.UUID{uuid.New()}}); err == nil {
		t.Fatal("a read-only store recorded an outcome")
	}
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regnamespace('progress_sync') IS NOT NULL`).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("a read-only store created the progress_sync schema")
	}
}

func TestProblemPageWalksEveryProblemOnce(t *testing.T) {
	ctx := context.Background()
	s, db := openStore(t)
	var want []uuid.UUID
	for i, kind := range []Kind{Unmatched, Rejected, Conflict, Unmatched, Rejected, Unmatched, Conflict} {
		id := addUser(t, db, fmt.Sprintf("p%d@example.com", i))
		// One record each, so first_seen_at orders them as added.
		if err := s.Record(ctx, Outcome{Problems: []Problem{{StudentID: id, Email: fmt.Sprintf("p%d@example.com", i), Kind: kind, Reason: "r"}}}); err != nil {
			t.Fatal(err)
		}
		want = append(want, id)
	}
	for _, tc := range []struct{ offset, limit, wantFrom, wantTo int }{
		{0, 3, 0, 3}, {3, 3, 3, 6}, {6, 3, 6, 7}, {7, 3, 7, 7}, {2, 100, 2, 7},
	} {
		page, err := s.ProblemPage(ctx, tc.offset, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []uuid.UUID
		for _, p := range page {
			got = append(got, p.StudentID)
		}
		if fmt.Sprint(got) != fmt.Sprint(want[tc.wantFrom:tc.wantTo]) {
			t.Errorf("ProblemPage(%d, %d) = %v, want %v", tc.offset, tc.limit, got, want[tc.wantFrom:tc.wantTo])
		}
	}
}

// Students without a contact, and students in conflict (their rival may have left the
// contact), are looked up again; a value HubSpot refused is not, until it changes.
func TestStaleUnmatchedIncludesConflicts(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	unmatched, conflict, rejected := uuid.New(), uuid.New(), uuid.New()
	if err := s.Record(ctx, Outcome{Problems: []Problem{
		{StudentID: unmatched, Email: "u@example.com", Kind: Unmatched, Reason: "no HubSpot contact has this email"},
		{StudentID: conflict, Email: "c@example.com", Kind: Conflict, Reason: "HubSpot contact 7 is also matched by student(s) x", ContactID: "7"},
		{StudentID: rejected, Email: "r@example.com", Kind: Rejected, Reason: "HubSpot refused the values", ContactID: "8"},
	}}); err != nil {
		t.Fatal(err)
	}
	var stale []uuid.UUID
	var err error
	for deadline := time.Now().Add(10 * time.Second); len(stale) < 2 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if stale, err = s.StaleUnmatched(ctx, time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	slices.SortFunc(stale, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	want := []uuid.UUID{unmatched, conflict}
	slices.SortFunc(want, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })
	if !slices.Equal(stale, want) {
		t.Fatalf("stale %v, want the unmatched and the conflicting student %v (not the rejected one)", stale, want)
	}
}

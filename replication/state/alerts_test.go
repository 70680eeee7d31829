package state

import (
	"context"
	"testing"
	"time"
)

// The alerts of a spell are kept per slot, once per reason with the first spell start, until
// the spell is closed.
func TestOpenAlertsAreKeptPerSlotUntilClosed(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t)
	since := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	for _, a := range []struct {
		slot, reason string
		since        time.Time
	}{
		{"a", "hubspot_key_refused", since},
		{"a", "hubspot_key_refused", since.Add(time.Hour)}, // posted again: the first stays
		{"a", "database_read_only", since.Add(time.Minute)},
		{"b", "stalled", since},
	} {
		if err := s.AlertPosted(ctx, a.slot, a.reason, a.since); err != nil {
			t.Fatal(err)
		}
	}
	open, err := s.OpenAlerts(ctx, "a")
	if err != nil || len(open) != 2 || open[0].Reason != "hubspot_key_refused" || !open[0].Since.Equal(since) || open[1].Reason != "database_read_only" {
		t.Fatalf("open alerts of a: %v, %v", open, err)
	}
	if err := s.AlertsClosed(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if open, err := s.OpenAlerts(ctx, "a"); err != nil || len(open) != 0 {
		t.Fatalf("after closing: %v, %v", open, err)
	}
	if open, err := s.OpenAlerts(ctx, "b"); err != nil || len(open) != 1 {
		t.Fatalf("slot b lost its alert when a's closed: %v, %v", open, err)
	}
}

package condition

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/focusenglish/progress-sync/hubspot"
)

// connectError is what pgx returns when no server answers.
func connectError() error {
	_, err := pgconn.Connect(context.Background(), "postgres://u@127.0.0.1:1/db?connect_timeout=1")
	return err
}

func TestOfSortsErrorsIntoConditions(t *testing.T) {
	wrapped := func(err error) error { return fmt.Errorf("push: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want Kind
		ok   bool
	}{
		{"nothing", nil, 0, false},
		{"read-only", wrapped(&pgconn.PgError{Code: "25006"}), DatabaseReadOnly, true},
		{"starting up", wrapped(&pgconn.PgError{Code: "57P03"}), DatabaseUnreachable, true},
		{"cannot connect", wrapped(connectError()), DatabaseUnreachable, true},
		// A session cut (a terminated backend, a dropped connection) is retried, not a condition.
		{"terminated", wrapped(&pgconn.PgError{Code: "57P01"}), 0, false},
		{"cut", wrapped(io.ErrUnexpectedEOF), 0, false},
		{"a unique violation", wrapped(&pgconn.PgError{Code: "23505"}), 0, false},
		{"key revoked", wrapped(hubspot.ErrUnauthorized), KeyRefused, true},
		{"scopes missing", wrapped(hubspot.ErrMissingScopes), KeyRefused, true},
		{"daily limit", wrapped(hubspot.ErrDailyLimit), DailyLimit, true},
		// HubSpot's transport errors are net errors too: they are HubSpot's, not the database's.
		{"hubspot out of reach", wrapped(errors.Join(hubspot.ErrUnavailable, &net.OpError{Op: "dial", Err: errors.New("refused")})), HubSpotUnreachable, true},
		{"a rejected value", wrapped(&hubspot.APIError{StatusCode: 400}), 0, false},
		{"stop", wrapped(context.Canceled), 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Of(tc.err)
			if ok != tc.ok || (ok && got != tc.want) {
				t.Fatalf("Of(%v) = %v, %v; want %v, %v", tc.err, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// A condition is said when it starts, at most once a minute while it lasts, and once when it
// ends; /readyz's order is the Kinds' order.
func TestASetSaysEachConditionOnceAMinute(t *testing.T) {
	logger, hook := test.NewNullLogger()
	s := NewSet(logrus.NewEntry(logger))
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	said := func() []string {
		var out []string
		for _, e := range hook.AllEntries() {
			out = append(out, e.Level.String()+" "+e.Data["condition"].(string))
		}
		hook.Reset()
		return out
	}
	expect := func(step string, want ...string) {
		t.Helper()
		if got := said(); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Fatalf("%s: logged %q, want %q", step, got, want)
		}
	}
	s.Raise(KeyRefused, hubspot.ErrUnauthorized, nil)
	expect("first", "error hubspot_key_refused")
	now = now.Add(59 * time.Second)
	s.Raise(KeyRefused, hubspot.ErrUnauthorized, nil)
	expect("within the minute")
	now = now.Add(time.Second)
	s.Raise(KeyRefused, hubspot.ErrUnauthorized, nil)
	expect("a minute on", "error hubspot_key_refused")
	s.Raise(DatabaseReadOnly, nil, nil)
	expect("another", "error database_read_only")
	if held := s.Holding(); len(held) != 2 || held[0].Kind != DatabaseReadOnly || held[1].Kind != KeyRefused {
		t.Fatalf("holding %v, want the read-only database first", held)
	}
	s.Clear(HubSpot...)
	expect("cleared", "info hubspot_key_refused")
	s.Clear(HubSpot...)
	expect("cleared again")
	if s.Holds(KeyRefused) || !s.Holds(DatabaseReadOnly) {
		t.Fatal("clearing HubSpot's conditions touched the database's, or left the key's")
	}
	s.Raise(KeyRefused, nil, nil)
	expect("again after it ended", "error hubspot_key_refused")
}

// Every condition says what happened, that nothing is lost, and has a name.
func TestEveryConditionIsExplained(t *testing.T) {
	names := map[string]bool{}
	for _, k := range Kinds() {
		if k.Name() == "" || names[k.Name()] || !strings.Contains(k.Notice(), "nothing is lost") || abouts[k].over == "" {
			t.Errorf("condition %d: name %q, notice %q, over %q", k, k.Name(), k.Notice(), abouts[k].over)
		}
		names[k.Name()] = true
	}
}

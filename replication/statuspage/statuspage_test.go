package statuspage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

func TestMaskHidesEveryEmailUnlessShown(t *testing.T) {
	for _, tc := range []struct {
		in, masked string
	}{
		{"ada@example.com", "a***@example.com"},
		{"", ""},
		{"no HubSpot contact has this email", "no HubSpot contact has this email"},
		{`HubSpot refused the values: "Bob.Smith@Example.org" is not valid; see ann@x.io.`, `HubSpot refused the values: "B***@Example.org" is not valid; see a***@x.io.`},
		{"<ada@example.com>, bob@example.com", "<a***@example.com>, b***@example.com"},
	} {
		if got := (Options{}).mask(tc.in); got != tc.masked {
			t.Errorf("mask(%q) = %q, want %q", tc.in, got, tc.masked)
		}
		if got := (Options{ShowEmails: true}).mask(tc.in); got != tc.in {
			t.Errorf("with --show-emails, mask(%q) = %q, want it unchanged", tc.in, got)
		}
	}
}

func TestAStudentsEmailIsMaskedWhateverItHolds(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"ada@example.com", "a***@example.com"}, {"not an email", "n***"}, {"john.smith at gmail", "j***"}, {"", ""},
	} {
		if got := (Options{}).maskEmail(tc.in); got != tc.want {
			t.Errorf("maskEmail(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestNumbersReadAsWritten(t *testing.T) {
	for _, tc := range []struct {
		in   any
		want string
	}{
		{0, "0"}, {999, "999"}, {1000, "1,000"}, {100000, "100,000"}, {int64(-1234567), "-1,234,567"}, {float64(356), "356"},
	} {
		if got := num(tc.in); got != tc.want {
			t.Errorf("num(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 bytes"}, {999, "999 bytes"}, {11400, "11.4 kB"}, {125_700_000, "125.7 MB"}, {3_000_000_000_000_000, "3000.0 TB"},
	} {
		if got := humanBytes(tc.in); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in, want float64
	}{
		{0, 1}, {0.4, 1}, {1, 1}, {1.2, 2}, {7, 10}, {10, 10}, {11, 20}, {300, 500}, {501, 1000},
	} {
		if got := niceCeil(tc.in); got != tc.want {
			t.Errorf("niceCeil(%g) = %g, want %g", tc.in, got, tc.want)
		}
	}
}

func TestChartsPlaceSamplesOnTheirSpan(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	samples := []telemetry.Sample{
		{At: now.Add(-2 * time.Minute), Pending: 0},
		{At: now.Add(-time.Minute), Pending: 40, Flushed: 3, Median: time.Second, Slowest: 4 * time.Second},
		{At: now, Pending: 20},
	}
	c := pendingChart(samples, now)
	if c.Lines[0].Points != "0.0,140.0 300.0,28.0 600.0,84.0" || c.YMax != "50" || c.From != "11:58:00Z" || c.Empty {
		t.Errorf("pending chart = %+v", c)
	}
	l := latencyChart(samples, now)
	// Only the sample with pushes has a latency point.
	if l.Lines[0].Points != "300.0,28.0" || l.Lines[1].Points != "300.0,112.0" || l.YMax != "5 s" || l.Empty {
		t.Errorf("latency chart = %+v", l)
	}
	if e := latencyChart(samples[:1], now); !e.Empty || e.Lines[0].Points != "" {
		t.Errorf("latency chart with no pushes = %+v, want empty", e)
	}
	// An hour-old sample is the left edge; a younger process spans at least a minute.
	if c := pendingChart([]telemetry.Sample{{At: now.Add(-3 * time.Hour)}}, now); c.From != "11:00:00Z" {
		t.Errorf("span of an old process from %s, want 11:00:00Z", c.From)
	}
	if c := pendingChart([]telemetry.Sample{{At: now}}, now); c.From != "11:59:00Z" {
		t.Errorf("span of a new process from %s, want 11:59:00Z", c.From)
	}
}

func TestThePageRendersEveryState(t *testing.T) {
	tmpl := newTemplate()
	now := time.Now().UTC()
	full := view{Now: now, RefreshSeconds: 10, Ready: true, Role: "streaming", SlotName: "progress_sync",
		Slot:    replication.Slot{Exists: true, Active: true, WALStatus: "reserved", LagBytes: 11400},
		Summary: state.Summary{Exists: true, Pending: 3, OldestWait: 4 * time.Second, Reconcile: &state.ReconcilePass{Pass: 2, Running: true, StartedAt: now}},
		Totals:  telemetry.Totals{ContactsUpdated: 356, RateLimited: map[string]float64{"DAILY": 1}}, RateLimit: hubspot.Rate{Requests: 100, Per: 10 * time.Second},
		Problems:      []problemRow{{Email: "a***@example.com", Student: "s1", Kind: "no contact in HubSpot", Reason: "<script>", Attempts: 2}},
		ProblemsTotal: 30, Page: 2, Pages: 2, ReconcileProgress: "100 of about 300 contacts read",
		SlotRead: true, SummaryRead: true, ProblemsRead: true, Build: "v1.4.0 (commit 5b1c79a8d2e1)"}
	for _, tc := range []struct {
		name         string
		v            view
		want, absent []string
	}{
		{"streaming", full, []string{`id="ready">Streaming.`, `id="lag-bytes" data-value="11400">11.4 kB`, `id="pending">3<`, `id="contacts-updated">356<`,
			`id="rate-limited-daily">1<`, "page 2 of 2", `href="?page=1"`, "&lt;script&gt;", "pass 2 under way", "100 of about 300 contacts read",
			`id="build">progress-sync v1.4.0 (commit 5b1c79a8d2e1)`}, []string{"unknown", "Could not read"}},
		{"standby", view{Now: now, Role: "standby", ReadyWhy: "another instance holds the replication slot", SlotRead: true, SummaryRead: true, ProblemsRead: true},
			[]string{"Standby: another instance holds the replication slot.", "does not exist", "Every student with changes is in HubSpot.", "never run"}, nil},
		// The database frozen under a streaming instance: nothing read may show as zero or fine.
		{"database away", view{Now: now, Role: "streaming", Ready: true, Errors: []string{"the sync state: the database did not answer within 5s"}},
			[]string{"Could not read the sync state: the database did not answer within 5s.", `<span id="pending"><span class="bad">unknown</span>`,
				"<title>progress-sync: cannot read the database</title>", "cannot read everything"},
			[]string{"Every student with changes is in HubSpot.", "none waiting", "never run", "none yet", "Changes reach HubSpot as they happen", "0 bytes"}},
		{"daily limit", view{Now: now, Role: "streaming", DailyPaused: true, ReadyWhy: "HubSpot's daily API limit is spent"}, []string{"spent: pushes are paused"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := tmpl.Execute(&b, tc.v); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("page lacks %q", w)
				}
			}
			for _, a := range tc.absent {
				if strings.Contains(b.String(), a) {
					t.Errorf("page shows %q", a)
				}
			}
			for _, never := range []string{"<script", "http://", "https://", "src="} {
				if strings.Contains(b.String(), never) {
					t.Errorf("page holds %q: it must load nothing from elsewhere and run no script", never)
				}
			}
		})
	}
}

func TestReconcileProgressCountsTheBudget(t *testing.T) {
	limit := hubspot.Rate{Requests: 100, Per: 10 * time.Second} // the walk: one page a second
	for _, tc := range []struct {
		pass *state.ReconcilePass
		want string
	}{
		{nil, ""},
		{&state.ReconcilePass{Pass: 3, ContactsRead: 500}, ""},
		{&state.ReconcilePass{Pass: 3, Running: true, ContactsRead: 1000, Left: 99_000}, "1000 of about 100000 contacts read, about 16m30s left"},
		{&state.ReconcilePass{Pass: 1, Running: true}, "0 of about 0 contacts read, about 0s left"},
	} {
		if got := reconcileProgress(tc.pass, limit); got != tc.want {
			t.Errorf("reconcileProgress(%+v) = %q, want %q", tc.pass, got, tc.want)
		}
	}
}

func TestUnreadableNamesNoConnectionDetails(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("read slot: %w", context.DeadlineExceeded), "the slot: the database did not answer within 5s"},
		{fmt.Errorf("count: %w", &pgconn.PgError{Code: "42501", Message: "permission denied for table pending"}), "the slot: permission denied for table pending (SQLSTATE 42501)"},
		{errors.New("failed to connect to `user=postgres database=app`: 127.0.0.1:5432: dial error"), "the slot: the database could not be read"},
	} {
		if got := unreadable("the slot", tc.err); got != tc.want {
			t.Errorf("unreadable(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// Package statuspage serves the status page at /: the state of the sync in plain words, for
// the people who ask whether HubSpot is up to date and who is not synced, on a host that may
// run no Prometheus. It is rendered on the server with html/template; its charts are inline
// SVG drawn from the samples the process keeps; it has no script and loads nothing from
// elsewhere, so it works on a host without internet (docs/contract.md §5).
package statuspage

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/reconcile"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

//go:embed page.html.tmpl
var files embed.FS

// PerPage is how many problem students one page lists.
const PerPage = 25

// Options say where the page reads from.
type Options struct {
	DB    *pgxpool.Pool
	Store *state.Store
	Slot  string
	// Model names the progress model the service computes with.
	Model   string
	Metrics *telemetry.Metrics
	Health  *telemetry.Health
	// RateLimit is PROGRESS_SYNC_RATE_LIMIT: the page counts requests over its window.
	RateLimit hubspot.Rate
	// ShowEmails shows problem students' emails in full; by default they are masked.
	ShowEmails bool
	// Refresh is how often the page reloads itself. Default 10 s.
	Refresh time.Duration
	Log     *logrus.Entry
}

// Handler serves the page. ?page=N shows the Nth page of problem students.
func Handler(opts Options) http.Handler {
	if opts.Refresh <= 0 {
		opts.Refresh = 10 * time.Second
	}
	tmpl := newTemplate()
	// Each view runs a few queries on the service's own pool: however many tabs reload it,
	// at most two views read at once, so the page cannot starve the pipeline.
	readers := make(chan struct{}, 2)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !waitTurn(r.Context(), readers) {
			http.Error(w, "the status page is busy; try again", http.StatusServiceUnavailable)
			return
		}
		defer func() { <-readers }()
		ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
		defer cancel()
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		v := collect(ctx, opts, page)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		// Nothing from elsewhere, ever: the page is self-contained by policy, not by luck.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src data:")
		w.Header().Set("Cache-Control", "no-store")
		if len(v.Errors) > 0 {
			// What it shows is partial: a monitor polling the page must not read it as fine.
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		if err := tmpl.Execute(w, v); err != nil && opts.Log != nil {
			opts.Log.WithError(err).Warn("could not render the status page")
		}
	})
}

// readTimeout bounds the queries of one view, once it has its turn.
const readTimeout = 5 * time.Second

// waitTurn takes one of the readers' places, waiting at most readTimeout.
func waitTurn(ctx context.Context, readers chan struct{}) bool {
	t := time.NewTimer(readTimeout)
	defer t.Stop()
	select {
	case readers <- struct{}{}:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// unreadable says, in the page's words and without the connection's details (user, host,
// database), why the database could not be read; the service's log has the whole error.
func unreadable(what string, err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("%s: the database did not answer within %s", what, readTimeout)
	case errors.As(err, &pgErr):
		return fmt.Sprintf("%s: %s (SQLSTATE %s)", what, pgErr.Message, pgErr.Code)
	case pgconn.Timeout(err) || errors.As(err, new(*pgconn.ConnectError)):
		return what + ": cannot connect to the database"
	}
	return what + ": the database could not be read"
}

func newTemplate() *template.Template {
	return template.Must(template.New("page.html.tmpl").Funcs(funcs()).ParseFS(files, "page.html.tmpl"))
}

// mask hides most of each email in s unless emails are shown.
func (o Options) mask(s string) string {
	if o.ShowEmails {
		return s
	}
	return push.MaskEmailsIn(s)
}

// maskEmail hides most of a student's email, or whatever the student typed instead of one,
// unless emails are shown.
func (o Options) maskEmail(email string) string {
	if o.ShowEmails {
		return email
	}
	return push.MaskEmail(email)
}

// view is everything the template shows.
type view struct {
	Now               time.Time
	RefreshSeconds    int
	Ready             bool
	ReadyWhy          string
	Role              string // streaming, standby, connecting
	Slot              replication.Slot
	SlotName          string
	Model             string // the progress model's name
	Build             string // which progress-sync serves the page
	Summary           state.Summary
	DailyPaused       bool
	Requests          int
	RateLimit         hubspot.Rate
	Totals            telemetry.Totals
	Problems          []problemRow
	ProblemsTotal     int
	Unmatched         int
	Rejected          int
	Conflict          int
	Page, Pages       int
	PendingChart      chart
	LatencyChart      chart
	ReconcileProgress string
	// SlotRead, SummaryRead and ProblemsRead say what was read; what was not shows as
	// unknown.
	SlotRead, SummaryRead, ProblemsRead bool
	Errors                              []string // what could not be read; the rest is still shown
}

type problemRow struct {
	Email, Student, Kind, Reason string
	Attempts                     int
	LastTried                    time.Time
}

// kindWords says what each kind of problem means, in the page's words.
var kindWords = map[state.Kind]string{
	state.Unmatched: "no contact in HubSpot",
	state.Rejected:  "HubSpot refused a value",
	state.Conflict:  "shares a contact with another student",
}

// collect reads what the page shows; what cannot be read is named in Errors and shown as
// unknown, never as zero.
func collect(ctx context.Context, o Options, page int) view {
	v := view{Now: time.Now().UTC(), RefreshSeconds: int(o.Refresh.Seconds()), SlotName: o.Slot, Model: o.Model, RateLimit: o.RateLimit,
		Build: telemetry.ReadBuild().String()}
	v.Ready, v.ReadyWhy = o.Health.Ready()
	v.Role = role(o.Health)
	v.ReadyWhy = strings.TrimPrefix(v.ReadyWhy, v.Role+": ")
	v.DailyPaused = o.Health.DailyPaused()
	v.Requests = o.Metrics.RequestsInWindow()
	var err error
	if v.Totals, err = o.Metrics.Totals(); err != nil {
		v.Errors = append(v.Errors, err.Error())
	}
	samples := o.Metrics.Samples()
	v.PendingChart = pendingChart(samples, v.Now)
	v.LatencyChart = latencyChart(samples, v.Now)
	fail := func(what string, err error) {
		v.Errors = append(v.Errors, unreadable(what, err))
		if o.Log != nil {
			o.Log.WithError(err).Debug("status page: " + what)
		}
	}
	if v.Slot, err = replication.ReadSlot(ctx, o.DB, o.Slot); err != nil {
		fail("the replication slot", err)
	} else {
		v.SlotRead = true
	}
	if v.Summary, err = state.Summarize(ctx, o.DB, o.Slot); err != nil {
		fail("the sync state", err)
		return v
	}
	v.SummaryRead = true
	v.ReconcileProgress = reconcileProgress(v.Summary.Reconcile, o.RateLimit)
	v.Unmatched, v.Rejected, v.Conflict = v.Summary.Problems[state.Unmatched], v.Summary.Problems[state.Rejected], v.Summary.Problems[state.Conflict]
	v.ProblemsTotal = v.Unmatched + v.Rejected + v.Conflict
	v.Pages = max(1, (v.ProblemsTotal+PerPage-1)/PerPage)
	v.Page = min(max(page, 1), v.Pages)
	rows, err := o.Store.ProblemPage(ctx, (v.Page-1)*PerPage, PerPage)
	if err != nil {
		fail("the students not synced", err)
		return v
	}
	v.ProblemsRead = true
	for _, p := range rows {
		v.Problems = append(v.Problems, problemRow{Email: o.maskEmail(p.Email), Student: p.StudentID.String(), Kind: kindWords[p.Kind],
			Reason: o.mask(p.Reason), Attempts: p.Attempts, LastTried: p.LastTried})
	}
	return v
}

func role(h *telemetry.Health) string {
	switch {
	case h.Standby != nil && h.Standby():
		return "standby"
	case h.Streaming():
		return "streaming"
	}
	return "connecting"
}

// reconcileProgress says how far a running pass has got and when it should end.
func reconcileProgress(rp *state.ReconcilePass, limit hubspot.Rate) string {
	if rp == nil || !rp.Running {
		return ""
	}
	return fmt.Sprintf("%d of about %d contacts read, about %s left", rp.ContactsRead, rp.ContactsRead+rp.Left,
		reconcile.TimeLeft(rp.Left, reconcile.Budget(limit), 0).Round(time.Second))
}

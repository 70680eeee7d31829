package alert

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// receiver is a webhook receiver: it records what it is posted, and answers with the next of
// its scripted statuses (200 when none is left).
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	got      []Message
	raw      []string
	statuses []int
	hold     chan struct{} // when set, every request waits for it to close
}

func newReceiver(t *testing.T, statuses ...int) *receiver {
	r := &receiver{statuses: statuses}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		hold := r.hold
		r.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-req.Context().Done():
				return
			}
		}
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		defer r.mu.Unlock()
		status := http.StatusOK
		if len(r.statuses) > 0 {
			status, r.statuses = r.statuses[0], r.statuses[1:]
		}
		if status == http.StatusOK {
			var m Message
			if err := json.Unmarshal(body, &m); err != nil || req.Header.Get("Content-Type") != "application/json" {
				t.Errorf("posted %q (%s): %v", body, req.Header.Get("Content-Type"), err)
			}
			r.got, r.raw = append(r.got, m), append(r.raw, string(body))
		}
		w.WriteHeader(status)
		if status != http.StatusOK {
			fmt.Fprintf(w, "Cannot POST %s", req.URL.RequestURI()) // as Express answers: the URL's secret in the reply
		}
	}))
	t.Cleanup(r.Close)
	return r
}

// waitFor waits until n messages arrived, and returns them.
func (r *receiver) waitFor(t *testing.T, n int) []Message {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := append([]Message(nil), r.got...)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver got %d alerts, want %d", len(got), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func events(ms []Message) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Details.Event+":"+m.Details.Condition)
	}
	return strings.Join(out, ",")
}

// world is what an Alerter watches, set by the test.
type world struct {
	mu       sync.Mutex
	ready    telemetry.Readiness
	standby  bool
	writes   bool
	problems []state.Problem
	open     []state.OpenAlert // the alerts' record in the sync state
	conds    *condition.Set
}

func (w *world) set(f func(*world)) { w.mu.Lock(); f(w); w.mu.Unlock() }

func (w *world) watched() Watched {
	get := func(f func() bool) func() bool {
		return func() bool { w.mu.Lock(); defer w.mu.Unlock(); return f() }
	}
	return Watched{
		Check:      func() telemetry.Readiness { w.mu.Lock(); defer w.mu.Unlock(); return w.ready },
		Standby:    get(func() bool { return w.standby }),
		MayWrite:   get(func() bool { return w.writes }),
		Conditions: w.conds,
		Store:      w,
	}
}

func (w *world) OpenAlerts(context.Context, string) ([]state.OpenAlert, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]state.OpenAlert(nil), w.open...), nil
}

func (w *world) AlertPosted(_ context.Context, _, reason string, since time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = append(w.open, state.OpenAlert{Reason: reason, Since: since})
	return nil
}

func (w *world) AlertsClosed(context.Context, string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.open = nil
	return nil
}

func (w *world) ProblemsSince(_ context.Context, since time.Time, _ ...state.Kind) ([]state.Problem, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []state.Problem
	for _, p := range w.problems {
		if !p.FirstSeen.Before(since) {
			out = append(out, p)
		}
	}
	return out, nil
}

var (
	ready      = telemetry.Readiness{Ready: true, Code: "ready", Reason: "ready"}
	keyRefused = telemetry.Readiness{Code: condition.KeyRefused.Name(), Reason: condition.KeyRefused.Notice()}
	readOnly   = telemetry.Readiness{Code: condition.DatabaseReadOnly.Name(), Reason: condition.DatabaseReadOnly.Notice()}
)

// start returns an Alerter posting to r, its poster running until the test ends.
func start(t *testing.T, r *receiver, w *world) (*Alerter, *test.Hook) {
	logger, hook := test.NewNullLogger()
	a := New(w.watched(), Options{URL: r.URL + "/hooks/T0/B0/secret-part?sig=query-secret", After: 5 * time.Minute, Instance: "host-1", Slot: "progress_sync",
		Log: logrus.NewEntry(logger)})
	a.restored = true // no spell recorded before, unless a test says so
	a.poster.retry = func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.poster.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a, hook
}

// The holder not ready past After is posted once per reason, and once when it is ready again.
func TestNotReadyIsPostedOncePerReasonAndOnceRecovered(t *testing.T) {
	r := newReceiver(t)
	w := &world{ready: ready}
	a, _ := start(t, r, w)
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	steps := []struct {
		at    time.Duration
		ready telemetry.Readiness
	}{
		{0, ready},
		{time.Second, keyRefused},
		{4 * time.Minute, keyRefused},
		{5*time.Minute + time.Second, keyRefused}, // posted
		{6 * time.Minute, keyRefused},
		{7 * time.Minute, readOnly}, // a new reason in the same spell: posted at once
		{8 * time.Minute, keyRefused},
		{9 * time.Minute, ready}, // recovered
		{10 * time.Minute, ready},
	}
	for _, s := range steps {
		w.set(func(w *world) { w.ready = s.ready })
		a.lookAtReadiness(context.Background(), t0.Add(s.at))
	}
	got := r.waitFor(t, 3)
	if e := events(got); e != "not_ready:hubspot_key_refused,not_ready:database_read_only,recovered:" {
		t.Fatalf("posted %s", e)
	}
	if since := got[0].Details.Since; since == nil || !since.Equal(t0.Add(time.Second)) {
		t.Fatalf("since %v, want the first look not ready", since)
	}
	if !strings.Contains(got[0].Text, condition.KeyRefused.Notice()) || !strings.Contains(got[2].Text, "8m59s not ready") {
		t.Fatalf("texts:\n%s\n%s", got[0].Text, got[2].Text)
	}
}

// A spell shorter than After posts nothing; a lost slot is posted at once.
func TestShortSpellsAreQuietButALostSlotIsNot(t *testing.T) {
	r := newReceiver(t)
	logger, _ := test.NewNullLogger()
	w := &world{writes: true, conds: condition.NewSet(logrus.NewEntry(logger))}
	a, _ := start(t, r, w)
	ctx, t0 := context.Background(), time.Now()
	lost := telemetry.Readiness{Code: condition.SlotLost.Name(), Reason: condition.SlotLost.Notice()}
	for i, state := range []telemetry.Readiness{keyRefused, ready, lost, ready} {
		if state == lost {
			w.conds.Raise(condition.SlotLost, nil, nil)
		}
		w.set(func(w *world) { w.ready = state })
		a.lookAtReadiness(ctx, t0.Add(time.Duration(i)*time.Minute))
	}
	if e := events(r.waitFor(t, 2)); e != "not_ready:slot_lost,recovered:" {
		t.Fatalf("posted %s", e)
	}
}

// A standby posts nothing, however long it is not ready; an instance that alerted and then
// became a standby closes its alert.
func TestAStandbyPostsNothing(t *testing.T) {
	r := newReceiver(t)
	w := &world{ready: telemetry.Readiness{Code: "standby", Reason: "standby"}, standby: true}
	a, _ := start(t, r, w)
	t0 := time.Now()
	for i := range 20 {
		a.lookAtReadiness(context.Background(), t0.Add(time.Duration(i)*time.Minute))
	}
	a.lookForProblems(context.Background())
	w.set(func(w *world) { w.standby, w.ready = false, keyRefused })
	a.lookAtReadiness(context.Background(), t0.Add(30*time.Minute))
	a.lookAtReadiness(context.Background(), t0.Add(40*time.Minute))
	w.set(func(w *world) { w.standby = true })
	a.lookAtReadiness(context.Background(), t0.Add(41*time.Minute))
	got := r.waitFor(t, 2)
	if e := events(got); e != "not_ready:hubspot_key_refused,recovered:" || !strings.Contains(got[1].Text, "another instance holds the replication slot") {
		t.Fatalf("posted %s: %q", e, got[len(got)-1].Text)
	}
}

// Students that become rejected or conflicting once this instance holds the slot are posted
// once, masked; what was there before is known already.
func TestNewProblemStudentsArePostedMasked(t *testing.T) {
	r := newReceiver(t)
	base := time.Now()
	problem := func(email string, kind state.Kind, at time.Duration) state.Problem {
		return state.Problem{StudentID: uuid.New(), Email: email, Kind: kind, FirstSeen: base.Add(at)}
	}
	w := &world{problems: []state.Problem{problem("old@example.com", state.Rejected, -time.Hour)}}
	a, _ := start(t, r, w)
	ctx := context.Background()
	a.lookAtReadiness(ctx, base)
	a.lookForProblems(ctx) // does not hold the slot: nothing read
	w.set(func(w *world) { w.writes = true })
	a.lookAtReadiness(ctx, base)
	a.lookForProblems(ctx) // the old one is known
	w.set(func(w *world) {
		w.problems = append(w.problems, problem("ana.silva@example.com", state.Conflict, time.Minute), problem("bo@example.org", state.Rejected, 2*time.Minute))
	})
	a.lookForProblems(ctx)
	a.lookForProblems(ctx) // nothing new
	// Committed late: first seen before the latest one read.
	w.set(func(w *world) {
		w.problems = append(w.problems, problem("late@example.com", state.Conflict, 30*time.Second))
	})
	a.lookForProblems(ctx)
	got := r.waitFor(t, 2)
	if e := events(got); e != "problem_students:,problem_students:" {
		t.Fatalf("posted %s", e)
	}
	first := got[0].Details
	if first.Students["conflict"] != 1 || first.Students["rejected"] != 1 || len(first.Emails) != 2 {
		t.Fatalf("first alert: %+v", first)
	}
	for _, raw := range r.raw {
		for _, full := range []string{"old@", "ana.silva@", "bo@", "late@"} {
			if strings.Contains(raw, full) {
				t.Fatalf("an alert holds a full address (%s): %s", full, raw)
			}
		}
	}
	if !strings.Contains(got[0].Text, "a***@example.com") || !strings.Contains(got[1].Text, "1 student in conflict") {
		t.Fatalf("texts:\n%s\n%s", got[0].Text, got[1].Text)
	}
}

// A property fought over is posted once, until a pass without it.
func TestAFoughtPropertyIsPostedOnceUntilItClears(t *testing.T) {
	r := newReceiver(t)
	a, _ := start(t, r, &world{})
	for _, pass := range []map[string]int{{"lessons_completed": 3}, {"lessons_completed": 5}, {}, {"lessons_completed": 1, "xp": 2}} {
		a.Fought(pass)
	}
	got := r.waitFor(t, 2)
	if e := events(got); e != "fought_over:,fought_over:" || len(got[1].Details.Properties) != 2 {
		t.Fatalf("posted %s: %+v", e, got[1].Details)
	}
	var none *Alerter
	none.Fought(map[string]int{"xp": 1}) // no webhook: nothing, and no panic
}

// A receiver that fails is retried until it takes the alert; one that hangs holds up only the
// alerts behind it, never the caller; the webhook's URL never shows in the log.
func TestAFailingOrHangingReceiverNeverHoldsTheCaller(t *testing.T) {
	r := newReceiver(t, 500, 503, 429)
	a, hook := start(t, r, &world{})
	a.Fought(map[string]int{"xp": 1})
	if got := r.waitFor(t, 1); len(got) != 1 {
		t.Fatalf("got %d", len(got))
	}
	release := make(chan struct{})
	r.mu.Lock()
	r.hold = release
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range queueSize * 3 {
			a.Fought(map[string]int{}) // clears
			a.Fought(map[string]int{"xp": i})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("posting alerts waited for a receiver that hangs")
	}
	close(release)
	r.waitFor(t, 2)
	for _, e := range hook.AllEntries() {
		line, _ := e.String()
		if strings.Contains(line, "secret-part") || strings.Contains(line, "query-secret") {
			t.Fatalf("the log shows the webhook URL: %s", line)
		}
	}
	if !strings.Contains(logText(hook), "too many alerts wait for the receiver") {
		t.Fatal("alerts were dropped without a word")
	}
}

// A receiver that refuses an alert for good (4xx) is not retried, and the log says so without
// the URL.
func TestARefusedAlertIsNotRetried(t *testing.T) {
	r := newReceiver(t, 404)
	a, hook := start(t, r, &world{})
	a.Fought(map[string]int{"xp": 1})
	a.Fought(map[string]int{})
	a.Fought(map[string]int{"xp": 1})
	if got := r.waitFor(t, 1); len(got) != 1 {
		t.Fatalf("got %d", len(got))
	}
	if text := logText(hook); !strings.Contains(text, "giving up on this alert") || !strings.Contains(text, "Cannot POST") ||
		strings.Contains(text, "secret-part") || strings.Contains(text, "query-secret") {
		t.Fatalf("log:\n%s", text)
	}
}

// Google Chat refuses fields it does not know: it gets the text alone.
func TestGoogleChatGetsTheTextAlone(t *testing.T) {
	p := newPoster("https://chat.googleapis.com/v1/spaces/AAA/messages?key=k&token=t", time.Second, logrus.NewEntry(logrus.New()))
	body, err := p.encode(Message{Text: "hello", Details: &Details{Event: "fought_over", Slot: "s"}})
	if err != nil || string(body) != `{"text":"hello"}` {
		t.Fatalf("%s, %v", body, err)
	}
	if p := newPoster("https://hooks.slack.com/services/T/B/x", time.Second, nil); p.plain {
		t.Fatal("Slack gets the text alone")
	}
}

func logText(hook *test.Hook) string {
	var b strings.Builder
	for _, e := range hook.AllEntries() {
		line, _ := e.String()
		b.WriteString(line)
	}
	return b.String()
}

// A process that restarts (or an instance that takes the slot over) in the middle of a spell
// takes it up: it posts the recovery, and not the alert again.
func TestARestartInTheMiddleOfASpellPostsItsRecovery(t *testing.T) {
	r := newReceiver(t)
	w := &world{ready: keyRefused, writes: true}
	first, _ := start(t, r, w)
	ctx, t0 := context.Background(), time.Now()
	first.lookAtReadiness(ctx, t0)
	first.lookAtReadiness(ctx, t0.Add(6*time.Minute)) // posted, and recorded
	r.waitFor(t, 1)
	// The process is killed; the next one starts while the key is still refused.
	second, _ := start(t, r, w)
	second.restored = false
	second.lookAtReadiness(ctx, t0.Add(7*time.Minute))
	second.lookAtReadiness(ctx, t0.Add(20*time.Minute))
	w.set(func(w *world) { w.ready = ready })
	second.lookAtReadiness(ctx, t0.Add(21*time.Minute))
	got := r.waitFor(t, 2)
	if e := events(got); e != "not_ready:hubspot_key_refused,recovered:" || !strings.Contains(got[1].Text, "after 21m0s not ready") {
		t.Fatalf("posted %s: %q", e, got[len(got)-1].Text)
	}
	if len(w.open) != 0 {
		t.Fatalf("the record keeps %v after the recovery", w.open)
	}
}

// A slot lost and made again between two looks (at start, say) is posted all the same.
func TestASlotLostBetweenTwoLooksIsPosted(t *testing.T) {
	r := newReceiver(t)
	logger, _ := test.NewNullLogger()
	w := &world{ready: ready, writes: true, conds: condition.NewSet(logrus.NewEntry(logger))}
	a, _ := start(t, r, w)
	w.conds.Raise(condition.SlotLost, nil, nil)
	w.conds.Clear(condition.SlotLost)
	ctx, t0 := context.Background(), time.Now()
	a.lookAtReadiness(ctx, t0)
	a.lookAtReadiness(ctx, t0.Add(time.Second))
	got := r.waitFor(t, 2)
	if e := events(got); e != "not_ready:slot_lost,recovered:" || !strings.Contains(got[0].Text, "queues every student") {
		t.Fatalf("posted %s: %q", e, got[0].Text)
	}
}

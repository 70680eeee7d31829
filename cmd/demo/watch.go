package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// printer keeps the lines of the simulator and of the HubSpot watcher whole.
type printer struct {
	mu  sync.Mutex
	out io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.out, format, args...)
}

// activity remembers, per student, the metrics each change of the demo left in the database
// and when, so that the watcher can tell which change a HubSpot update carries and how long
// after that change it came.
type activity struct {
	mu    sync.Mutex
	after map[string][]stamped // by normalized email, oldest first
	last  time.Time
}

// stamped is a student's metrics right after a change.
type stamped struct {
	at     time.Time
	values metrics.Values
}

func (a *activity) changed(email string, at time.Time, values metrics.Values) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := metrics.NormalizeEmail(email)
	a.after[key] = append(a.after[key], stamped{at, values})
	a.last = at
}

// carried finds the latest change whose metrics the contact now shows, forgets it and the
// changes before it, and says how long ago it was made.
func (a *activity) carried(email string, props map[string]string) (time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := metrics.NormalizeEmail(email)
	list := a.after[key]
	for i := len(list) - 1; i >= 0; i-- {
		equal := true
		for name, v := range list[i].values {
			if props[name] != v {
				equal = false
				break
			}
		}
		if equal {
			a.after[key] = list[i+1:]
			return time.Since(list[i].at), true
		}
	}
	return 0, false
}

func (a *activity) lastChange() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// simulation is what the simulator did.
type simulation struct {
	total  int
	counts map[string]int
	err    error
}

// simulate makes changes with pgtest.Studier at perSecond until ctx ends, printing each.
func simulate(ctx context.Context, dbURL string, students []pgtest.SeededStudent, hasContact map[string]bool,
	seed uint64, perSecond float64, p *printer, act *activity) simulation {
	res := simulation{counts: map[string]int{}}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		res.err = fmt.Errorf("simulator: connect: %w", err)
		return res
	}
	defer conn.Close(context.Background())
	m, err := verifiedModel(ctx, conn)
	if err != nil {
		res.err = fmt.Errorf("simulator: %w", err)
		return res
	}
	ids := make([]uuid.UUID, len(students))
	emails := map[uuid.UUID]string{}
	for i, s := range students {
		ids[i] = s.ID
		emails[s.ID] = s.Email
	}
	studier := pgtest.NewStudier(ids, seed)
	limiter := rate.NewLimiter(rate.Limit(perSecond), 1)
	for limiter.Wait(ctx) == nil {
		// A change under way when the demo stops is finished, not torn.
		stepCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		ch, err := studier.Step(stepCtx, conn)
		at := time.Now()
		var after []metrics.Student
		if err == nil {
			// What HubSpot should show once this change is synced.
			after, err = m.ForStudents(stepCtx, conn, []uuid.UUID{ch.Student})
		}
		cancel()
		if err != nil {
			res.err = err
			return res
		}
		email := emails[ch.Student]
		if len(after) == 1 {
			act.changed(email, at, after[0].Values)
		}
		res.total++
		res.counts[ch.Kind]++
		note := ""
		if !hasContact[metrics.NormalizeEmail(email)] {
			note = "  (no HubSpot contact)"
		}
		p.printf("  db:      %s %s%s\n", email, ch.Description, note)
	}
	return res
}

// watcher polls the emulator and reports every contact whose progress properties changed.
type watcher struct {
	emu     *hubspottest.Server
	prev    map[string]map[string]string // contact id -> properties
	updated map[string]bool              // contact ids changed while watching
}

func newWatcher(emu *hubspottest.Server) *watcher {
	w := &watcher{emu: emu, prev: map[string]map[string]string{}, updated: map[string]bool{}}
	for _, c := range emu.Contacts() {
		w.prev[c.ID] = c.Properties
	}
	return w
}

// run polls every interval until ctx ends, and once more at the end.
func (w *watcher) run(ctx context.Context, every time.Duration, p *printer, act *activity) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			w.poll(p, act)
			return
		case <-t.C:
			w.poll(p, act)
		}
	}
}

func (w *watcher) poll(p *printer, act *activity) {
	for _, c := range w.emu.Contacts() {
		old := w.prev[c.ID]
		var diffs []string
		for _, name := range metrics.Names() {
			if before, after := old[name], c.Properties[name]; before != after {
				diffs = append(diffs, fmt.Sprintf("%s %s→%s", name, shown(before), shown(after)))
			}
		}
		w.prev[c.ID] = c.Properties
		if len(diffs) == 0 {
			continue
		}
		w.updated[c.ID] = true
		lag := ""
		if d, ok := act.carried(c.Email, c.Properties); ok {
			lag = fmt.Sprintf("  (%.1fs after the change)", d.Seconds())
		}
		p.printf("  HubSpot: contact %s %s  %s%s\n", c.ID, c.Email, strings.Join(diffs, ", "), lag)
	}
}

func shown(v string) string {
	if v == "" {
		return "(none)"
	}
	return v
}

// differences lists the progress properties on contacts that differ from the students'
// metrics computed from the database now.
func differences(ctx context.Context, conn *pgx.Conn, emu *hubspottest.Server, students []pgtest.SeededStudent) ([]string, int, error) {
	ids := make([]uuid.UUID, len(students))
	for i, s := range students {
		ids[i] = s.ID
	}
	m, err := verifiedModel(ctx, conn)
	if err != nil {
		return nil, 0, err
	}
	want, err := m.ForStudents(ctx, conn, ids)
	if err != nil {
		return nil, 0, err
	}
	var diffs []string
	matched := 0
	for _, s := range want {
		c, ok := emu.ContactByEmail(metrics.NormalizeEmail(s.Email))
		if !ok {
			continue
		}
		matched++
		for _, name := range metrics.Names() {
			if got, exp := c.Properties[name], s.Values[name]; got != exp {
				diffs = append(diffs, fmt.Sprintf("contact %s %s: %s is %s, the database says %s", c.ID, c.Email, name, shown(got), shown(exp)))
			}
		}
	}
	sort.Strings(diffs)
	return diffs, matched, nil
}

// verifiedModel is the progress model the demo's service runs with (the default), verified
// against the demo's database so that it computes what the service computes.
func verifiedModel(ctx context.Context, conn *pgx.Conn) (*model.Model, error) {
	m := model.Builtin(model.Default)
	if err := m.Verify(ctx, conn); err != nil {
		return nil, err
	}
	return m, nil
}

// Package telemetry exposes progress-sync's Prometheus metrics and its /healthz and /readyz
// endpoints. The pipeline's packages report through small observer interfaces of their own;
// this package implements them, so none of them imports Prometheus.
package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/condition"
	"github.com/focusenglish/progress-sync/replication/state"
)

// walStatuses are the values of pg_replication_slots.wal_status, plus "missing".
var walStatuses = []string{"reserved", "extended", "unreserved", "lost", "missing"}

// Metrics holds every metric the service exports.
type Metrics struct {
	reg *prometheus.Registry

	changes         *prometheus.CounterVec
	hubspotRequests *prometheus.CounterVec
	rateLimited     *prometheus.CounterVec
	flushBatches    prometheus.Counter
	flushSize       prometheus.Histogram
	contactsUpdated prometheus.Counter
	latency         prometheus.Histogram
	quietLatency    prometheus.Histogram
	lastFlush       prometheus.Gauge
	slotLag         prometheus.Gauge
	walStatus       *prometheus.GaugeVec
	problems        *prometheus.GaugeVec
	drift           *prometheus.CounterVec
	reconciled      prometheus.Gauge

	recent recent
}

// New registers the metrics on a fresh registry.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.changes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "progress_sync_changes_received_total",
		Help: "Row changes received from the replication stream, by table."}, []string{"table"})
	m.hubspotRequests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "progress_sync_hubspot_requests_total",
		Help: "HubSpot HTTP attempts by endpoint and status (0: no answer)."}, []string{"endpoint", "status"})
	m.rateLimited = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "progress_sync_hubspot_rate_limited_total",
		Help: "HubSpot 429 answers by policy (TEN_SECONDLY_ROLLING, DAILY, ...)."}, []string{"policy"})
	m.flushBatches = prometheus.NewCounter(prometheus.CounterOpts{Name: "progress_sync_flush_batches_total",
		Help: "Batches of due students pushed to HubSpot."})
	m.flushSize = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "progress_sync_flush_batch_students",
		Help: "Students per flushed batch.", Buckets: []float64{1, 5, 10, 25, 50, 75, 100}})
	m.contactsUpdated = prometheus.NewCounter(prometheus.CounterOpts{Name: "progress_sync_contacts_updated_total",
		Help: "Contacts HubSpot accepted an update for."})
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "progress_sync_commit_to_hubspot_seconds",
		Help:    "From a student's first change being recorded to HubSpot holding it.",
		Buckets: []float64{0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 60, 120, 300, 900, 3600}})
	m.quietLatency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "progress_sync_last_change_to_hubspot_seconds",
		Help:    "From a student's latest change being recorded to HubSpot holding it (the debounce plus the pipeline).",
		Buckets: []float64{0.5, 1, 2, 3, 3.5, 4, 4.5, 5, 6, 7.5, 10, 15, 20, 30, 60, 120, 300, 900, 3600}})
	m.lastFlush = prometheus.NewGauge(prometheus.GaugeOpts{Name: "progress_sync_last_flush_timestamp_seconds",
		Help: "Unix time of the last batch HubSpot accepted."})
	m.slotLag = prometheus.NewGauge(prometheus.GaugeOpts{Name: "progress_sync_slot_lag_bytes",
		Help: "WAL between the server's current position and the slot's confirmed position."})
	m.walStatus = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "progress_sync_slot_wal_status",
		Help: "1 for the slot's current wal_status (reserved, extended, unreserved, lost, missing)."}, []string{"status"})
	m.problems = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "progress_sync_problem_students",
		Help: "Students that could not be written, by kind (unmatched, rejected, conflict)."}, []string{"kind"})
	m.drift = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "progress_sync_reconcile_drift_total",
		Help: "Contacts the reconcile found holding another value than the one the sync last wrote there (still the database's): changed in HubSpot behind the sync's back, by property."}, []string{"property"})
	m.reconciled = prometheus.NewGauge(prometheus.GaugeOpts{Name: "progress_sync_reconcile_last_complete_timestamp_seconds",
		Help: "Unix time the last complete reconcile pass ended (0: none yet)."})
	for _, name := range metrics.Names() {
		m.drift.WithLabelValues(name) // every property shows, at 0 until it drifts
	}
	for _, policy := range []string{"TEN_SECONDLY_ROLLING", "DAILY"} {
		m.rateLimited.WithLabelValues(policy) // shown at 0, so rates and alerts have a series
	}
	for _, c := range []prometheus.Collector{m.drift, m.reconciled, m.changes, m.hubspotRequests, m.rateLimited, m.flushBatches, m.flushSize,
		m.contactsUpdated, m.latency, m.quietLatency, m.lastFlush, m.slotLag, m.walStatus, m.problems,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	b := ReadBuild()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "progress_sync_build_info",
		Help: "Always 1; which progress-sync runs: its module version and VCS revision."}, []string{"version", "revision", "modified"})
	info.WithLabelValues(b.Version, b.Revision, fmt.Sprint(b.Modified)).Set(1)
	f(info)
	return m
}

// Gauge registers a gauge read from fn at every scrape.
func (m *Metrics) Gauge(name, help string, fn func() float64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, fn))
}

// Request implements hubspot.Observer.
func (m *Metrics) Request(endpoint string, status int, _ time.Duration) {
	m.hubspotRequests.WithLabelValues(endpoint, strconv.Itoa(status)).Inc()
	m.recent.request(time.Now())
}

// RateLimited implements hubspot.Observer.
func (m *Metrics) RateLimited(policy string) { m.rateLimited.WithLabelValues(policy).Inc() }

// Changes implements replication.Observer.
func (m *Metrics) Changes(table string, rows int) {
	m.changes.WithLabelValues(table).Add(float64(rows))
}

// Flushed implements flush.Observer.
func (m *Metrics) Flushed(students, updated int, oldest, latest []time.Duration) {
	m.flushBatches.Inc()
	m.flushSize.Observe(float64(students))
	m.contactsUpdated.Add(float64(updated))
	for _, w := range oldest {
		m.latency.Observe(w.Seconds())
	}
	m.recent.flushed(oldest)
	for _, w := range latest {
		m.quietLatency.Observe(w.Seconds())
	}
	m.lastFlush.SetToCurrentTime()
}

// Drifted implements reconcile.Observer.
func (m *Metrics) Drifted(property string, contacts int) {
	m.drift.WithLabelValues(property).Add(float64(contacts))
}

// PassCompleted implements reconcile.Observer.
func (m *Metrics) PassCompleted(at time.Time) {
	m.reconciled.Set(float64(at.UnixNano()) / 1e9)
}

// WatchDatabase refreshes the slot and problem gauges every interval until ctx ends.
func (m *Metrics) WatchDatabase(ctx context.Context, db *pgxpool.Pool, slot string, every time.Duration, log *logrus.Entry) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if err := m.readDatabase(ctx, db, slot); err != nil && ctx.Err() == nil {
			log.WithError(err).Debug("could not refresh slot metrics")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Metrics) readDatabase(ctx context.Context, db *pgxpool.Pool, slot string) error {
	s, err := replication.ReadSlot(ctx, db, slot)
	if err != nil {
		return err
	}
	status := s.WALStatus
	if status == "" {
		status = "missing"
	}
	m.slotLag.Set(float64(s.LagBytes))
	for _, s := range walStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		m.walStatus.WithLabelValues(s).Set(v)
	}
	sum, err := state.Summarize(ctx, db, slot)
	if err != nil {
		return fmt.Errorf("count problems: %w", err)
	}
	for kind, n := range sum.Problems {
		m.problems.WithLabelValues(string(kind)).Set(float64(n))
	}
	return nil
}

// Health decides /readyz: the slot held and streaming, the checkpoint moving, and no
// condition (docs/contract.md §6) holding.
type Health struct {
	Streaming func() bool
	Standby   func() bool // optional: another instance holds the slot
	Confirmed func() uint64
	// Conditions are what keeps the sync from pushing, each with the sentence /readyz gives.
	Conditions *condition.Set
	// StallAfter is how long the confirmed position may stand still before the service is
	// not ready; it moves at least once per status interval even when idle.
	StallAfter time.Duration

	mu        sync.Mutex
	last      uint64
	lastMoved time.Time
}

// Readiness is what /readyz answers, with a stable name for the reason (a condition's name,
// standby, not_streaming, stalled, or ready) for the alerts to tell one reason from another.
type Readiness struct {
	Ready  bool
	Reason string
	Code   string
}

// Check says whether the service is ready and, when not, why.
func (h *Health) Check() Readiness {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	if c := h.Confirmed(); c != h.last || h.lastMoved.IsZero() {
		h.last, h.lastMoved = c, now
	}
	if h.Standby != nil && h.Standby() {
		return Readiness{Code: "standby", Reason: "standby: another instance holds the replication slot; this one takes over when it stops"}
	}
	if held := h.Conditions.Holding(); len(held) > 0 {
		return Readiness{Code: held[0].Kind.Name(), Reason: held[0].Kind.Notice()}
	}
	switch {
	case !h.Streaming():
		return Readiness{Code: "not_streaming", Reason: "not streaming from the replication slot"}
	case now.Sub(h.lastMoved) > h.StallAfter:
		return Readiness{Code: "stalled", Reason: fmt.Sprintf("checkpoint has not advanced for %s", now.Sub(h.lastMoved).Round(time.Second))}
	}
	return Readiness{Ready: true, Code: "ready", Reason: "ready"}
}

// Ready reports readiness and, when not ready, why.
func (h *Health) Ready() (bool, string) {
	r := h.Check()
	return r.Ready, r.Reason
}

// DailyPaused reports whether pushes wait for HubSpot's daily limit to reset.
func (h *Health) DailyPaused() bool { return h.Conditions.Holds(condition.DailyLimit) }

// Handler serves /metrics, /healthz and /readyz, and page at / when it is not nil.
func Handler(m *Metrics, h *Health, page http.Handler) http.Handler {
	mux := http.NewServeMux()
	if page != nil {
		mux.Handle("GET /{$}", page)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := h.Ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, why)
	})
	return mux
}

// Conditions registers progress_sync_condition: 1 for each condition that holds now.
func (m *Metrics) Conditions(set *condition.Set) {
	for _, k := range condition.Kinds() {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "progress_sync_condition",
			Help:        "1 while the condition holds: what keeps the sync from pushing (docs/runbook.md says what each means).",
			ConstLabels: prometheus.Labels{"condition": k.Name()}}, func() float64 {
			if set.Holds(k) {
				return 1
			}
			return 0
		}))
	}
}

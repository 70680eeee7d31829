package telemetry

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// History is how long the status page's charts reach back, and SampleEvery how often a point
// is taken: 360 points for the hour.
const (
	History     = time.Hour
	SampleEvery = 10 * time.Second
)

// Sample is one point of the status page's charts.
type Sample struct {
	At      time.Time
	Pending int
	// Flushed counts the students pushed since the previous sample; Median and Slowest are
	// how long their first change took to reach HubSpot (zero when none was pushed).
	Flushed         int
	Median, Slowest time.Duration
}

// recent is what the process remembers of the last hour for the status page: Prometheus
// keeps totals, the page also wants "in the last 10 s" and a chart without a Prometheus.
type recent struct {
	mu sync.Mutex
	on bool // kept only for the status page

	requests  []time.Time     // HubSpot attempts, newest last, within the rate limit's window
	window    time.Duration   // how far back requests are kept
	latencies []time.Duration // since the last sample
	samples   []Sample        // oldest first, at most History back
}

func (r *recent) request(at time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on {
		return
	}
	r.requests = append(r.requests, at)
	r.trimRequests(at)
}

func (r *recent) trimRequests(now time.Time) {
	i := 0
	for i < len(r.requests) && now.Sub(r.requests[i]) > r.window {
		i++
	}
	r.requests = r.requests[i:]
}

func (r *recent) flushed(waits []time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.on {
		return
	}
	r.latencies = append(r.latencies, waits...)
}

// sample closes the current point: pending students now, and the pushes since the last one.
func (r *recent) sample(at time.Time, pending int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Sample{At: at, Pending: pending, Flushed: len(r.latencies)}
	if n := len(r.latencies); n > 0 {
		slices.Sort(r.latencies)
		s.Median, s.Slowest = r.latencies[(n-1)/2], r.latencies[n-1]
	}
	r.latencies = r.latencies[:0]
	r.samples = append(r.samples, s)
	i := 0
	for i < len(r.samples) && at.Sub(r.samples[i].At) > History {
		i++
	}
	r.samples = r.samples[i:]
}

// KeepRecent starts keeping the last hour for the status page (nothing is kept without it):
// the requests of the last window (the rate limit's), and the pushes between samples.
func (m *Metrics) KeepRecent(window time.Duration) {
	m.recent.mu.Lock()
	defer m.recent.mu.Unlock()
	m.recent.on, m.recent.window = true, window
}

// RequestsInWindow counts the HubSpot attempts of the last window (KeepRecent's).
func (m *Metrics) RequestsInWindow() int {
	m.recent.mu.Lock()
	defer m.recent.mu.Unlock()
	m.recent.trimRequests(time.Now())
	return len(m.recent.requests)
}

// Samples returns the chart points of the last hour, oldest first.
func (m *Metrics) Samples() []Sample {
	m.recent.mu.Lock()
	defer m.recent.mu.Unlock()
	return slices.Clone(m.recent.samples)
}

// Sample takes a chart point: pending students now, and the pushes since the last point. The
// service calls it every SampleEvery.
func (m *Metrics) Sample(pending int) { m.recent.sample(time.Now(), pending) }

// Totals are counters since the process started, read from the same registry /metrics
// serves, so the status page cannot show other numbers than a scrape.
type Totals struct {
	ContactsUpdated float64
	Requests        float64
	RateLimited     map[string]float64 // by HubSpot policy
}

// Totals gathers the counters the status page shows.
func (m *Metrics) Totals() (Totals, error) {
	t := Totals{RateLimited: map[string]float64{}}
	families, err := m.reg.Gather()
	if err != nil {
		return t, fmt.Errorf("gather metrics: %w", err)
	}
	for _, f := range families {
		for _, s := range f.GetMetric() {
			v := s.GetCounter().GetValue()
			switch f.GetName() {
			case "progress_sync_contacts_updated_total":
				t.ContactsUpdated += v
			case "progress_sync_hubspot_requests_total":
				t.Requests += v
			case "progress_sync_hubspot_rate_limited_total":
				for _, l := range s.GetLabel() {
					if l.GetName() == "policy" {
						t.RateLimited[l.GetValue()] += v
					}
				}
			}
		}
	}
	return t, nil
}

// Package hubspottest is an in-process HubSpot CRM emulator for tests and staging.
package hubspottest

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/sirupsen/logrus"
)

// Options configure a Server. The zero value is usable.
type Options struct {
	Token      string        // required Bearer token; default "test-token"
	RateLimit  int           // requests allowed per rolling 10-second window (TEN_SECONDLY_ROLLING); 0 = unlimited
	DailyLimit int           // requests per day (resets at midnight UTC); 0 = unlimited
	Seed       int64         // seed for shuffling results and random faults
	Logger     *logrus.Entry // optional; one line per API request (never the token)

	// SearchRateLimit is the per-second limit of the search endpoint,
	// which is exempt from the 10-second limit; 0 means HubSpot's 5, a
	// negative value means unlimited.
	SearchRateLimit int
	// PortalID appears in rate-limit group names and validation errors;
	// default 12345678.
	PortalID int
	// Now is the clock for rate limits and timestamps; default time.Now.
	// Tests inject a fake clock here to drive the rolling windows.
	Now func() time.Time
}

// Faults configures injected failures. Injected faults happen before any
// processing, so nothing is applied.
type Faults struct {
	Rate429        float64       // fraction answered 429 TEN_SECONDLY_ROLLING
	Rate5xx        float64       // fraction answered 500/502/503/504
	Latency        time.Duration // added to every API reply
	DailyExhausted bool          // every API request gets 429 with policyName DAILY
}

type faultsJSON struct {
	Rate429        float64 `json:"rate429"`
	Rate5xx        float64 `json:"rate5xx"`
	Latency        string  `json:"latency"`
	DailyExhausted bool    `json:"dailyExhausted"`
}

// MarshalJSON encodes Latency as a Go duration string ("200ms").
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{f.Rate429, f.Rate5xx, f.Latency.String(), f.DailyExhausted})
}

// UnmarshalJSON decodes Latency from a Go duration string ("200ms").
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	var lat time.Duration
	if j.Latency != "" {
		d, err := time.ParseDuration(j.Latency)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		lat = d
	}
	*f = Faults{Rate429: j.Rate429, Rate5xx: j.Rate5xx, Latency: lat, DailyExhausted: j.DailyExhausted}
	return nil
}

// Validate reports whether the rates are fractions summing to at most 1.
func (f Faults) Validate() error {
	if f.Rate429 < 0 || f.Rate5xx < 0 || f.Rate429+f.Rate5xx > 1 {
		return fmt.Errorf("fault rates must be >= 0 and sum to <= 1 (got 429: %v, 5xx: %v)", f.Rate429, f.Rate5xx)
	}
	if f.Latency < 0 {
		return fmt.Errorf("latency must not be negative")
	}
	return nil
}

// Stats counts API requests (admin requests are not counted).
type Stats struct {
	Requests          int            `json:"requests"`          // every API request received
	Served            int            `json:"served"`            // answered by the API (incl. 401 and other 4xx): not an injected fault, not rate-limited
	ByEndpoint        map[string]int `json:"byEndpoint"`        // "POST /crm/objects/2026-09/contacts/batch/read" -> count (all statuses)
	ByFamily          map[string]int `json:"byFamily"`          // path family ("v3", "2026-09") -> count
	ByStatus          map[int]int    `json:"byStatus"`          // 499 = client gave up during injected latency
	BatchUpdates      int            `json:"batchUpdates"`      // batch/update requests applied (200/207)
	BatchUpdateInputs []int          `json:"batchUpdateInputs"` // inputs of each decodable batch/update request that got past faults and limits
	BatchReads        int            `json:"batchReads"`        // batch/read requests answered 200/207
	Faults            int            `json:"faults"`            // injected faults (incl. DailyExhausted)
	RateLimited       int            `json:"rateLimited"`       // 429s from RateLimit, DailyLimit or the search limit
}

func (st Stats) clone() Stats {
	out := st
	out.ByEndpoint = make(map[string]int, len(st.ByEndpoint))
	for k, v := range st.ByEndpoint {
		out.ByEndpoint[k] = v
	}
	out.ByFamily = make(map[string]int, len(st.ByFamily))
	for k, v := range st.ByFamily {
		out.ByFamily[k] = v
	}
	out.ByStatus = make(map[int]int, len(st.ByStatus))
	for k, v := range st.ByStatus {
		out.ByStatus[k] = v
	}
	out.BatchUpdateInputs = append([]int{}, st.BatchUpdateInputs...)
	return out
}

func newStats() Stats {
	return Stats{ByEndpoint: map[string]int{}, ByFamily: map[string]int{}, ByStatus: map[int]int{}, BatchUpdateInputs: []int{}}
}

// Server is an emulated HubSpot portal serving the CRM contacts and
// contact-properties API, in both path families (/crm/v3/... and the date
// versions' /crm/objects/2026-09/...), over real HTTP, modelled on httptest.Server:
// NewServer listens on a loopback port and URL replaces
// https://api.hubapi.com. Request and response shapes, status codes, error
// bodies and rate limits follow HubSpot; endpoints that would create (or
// delete) contacts are refused and recorded as violations. An admin API
// under /_emulator (no auth, not counted) lists and seeds contacts and reads
// stats, violations and faults. All methods are safe for concurrent use.
type Server struct {
	opts  Options
	now   func() time.Time
	api   *http.ServeMux
	admin *http.ServeMux
	// scopes are the token's scopes once SetScopes was called (scoped); before, all.
	scopes []string
	scoped bool
	// forbiddenPatterns maps route patterns the sync must never call to
	// "creating" or "deleting"; set up by routes(), read-only afterwards.
	forbiddenPatterns map[string]string
	done              chan struct{}
	closer            sync.Once

	httpSrv *http.Server
	url     string

	// API requests in flight, so Close can wait for them.
	flightMu   sync.Mutex
	flight     int
	flightIdle *sync.Cond

	// onWaitStart and onWaitEnd, when set (tests), are called around the
	// wait for injected latency.
	onWaitStart, onWaitEnd func()

	mu         sync.Mutex
	rng        *rand.Rand
	nextID     int64
	contacts   map[int64]*contact
	emailIndex map[string]int64
	props      map[string]*Property
	groups     map[string]*Group
	rules      map[string][]compiledRule
	// inputFailures answers the next batch/update inputs for these contact ids with a
	// per-input error of the given category instead of applying them (FailInputsOnce).
	inputFailures map[int64]string

	faults     Faults
	stats      Stats
	violations []string
	window     []time.Time // accepted non-search requests, last 10 s
	searchWin  []time.Time // accepted search requests, last 1 s
	day        string      // UTC day of dayCount
	dayCount   int
}

// NewServer starts an emulator on 127.0.0.1 with a random port, like
// httptest.NewServer. Call Close when done.
func NewServer(opts Options) *Server {
	s := NewUnstartedHandler(opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("hubspottest: listening on a loopback port: " + err.Error())
	}
	s.url = "http://" + ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.httpSrv.Serve(ln) }()
	return s
}

// NewUnstartedHandler returns an emulator without a listener; serve
// Handler() yourself (cmd/hubspot-emulator does). URL returns "".
func NewUnstartedHandler(opts Options) *Server {
	if opts.Token == "" {
		opts.Token = "test-token"
	}
	if opts.PortalID == 0 {
		opts.PortalID = 12345678
	}
	if opts.SearchRateLimit == 0 {
		opts.SearchRateLimit = 5
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	s := &Server{
		opts:       opts,
		now:        now,
		done:       make(chan struct{}),
		rng:        rand.New(rand.NewPCG(uint64(opts.Seed), 0x9e3779b97f4a7c15)),
		nextID:     firstID,
		contacts:   map[int64]*contact{},
		emailIndex: map[string]int64{},
		props:      map[string]*Property{},
		groups:     map[string]*Group{},
		rules:      map[string][]compiledRule{},
		stats:      newStats(),
	}
	s.flightIdle = sync.NewCond(&s.flightMu)
	s.groups[standardGroup] = &Group{Name: standardGroup, Label: "Contact information", DisplayOrder: 0}
	for _, p := range standardProperties(now()) {
		s.props[p.Name] = &p
	}
	s.routes()
	return s
}

// URL is the base URL (http://127.0.0.1:port) to use as HUBSPOT_BASE_URL.
func (s *Server) URL() string { return s.url }

// Handler serves the HubSpot API and the /_emulator admin API.
func (s *Server) Handler() http.Handler { return s }

// Close stops the server, aborts injected latency and waits for running
// requests to finish.
func (s *Server) Close() {
	s.closer.Do(func() {
		close(s.done)
		if s.httpSrv != nil {
			_ = s.httpSrv.Close()
		}
	})
	s.flightMu.Lock()
	for s.flight > 0 {
		s.flightIdle.Wait()
	}
	s.flightMu.Unlock()
}

// SetFaults replaces the injected faults. It panics on invalid rates.
func (s *Server) SetFaults(f Faults) {
	if err := f.Validate(); err != nil {
		panic("hubspottest: SetFaults: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// CurrentFaults returns the injected faults in effect.
func (s *Server) CurrentFaults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

// Stats returns a copy of the request counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.clone()
}

// ResetStats zeroes the counters. Violations, data and rate-limit windows
// are kept.
func (s *Server) ResetStats() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = newStats()
}

// Violations lists calls the sync must never make: contact-creating (and
// contact-deleting) endpoints, batches over 100 inputs and duplicate ids in
// one batch, each with a description, oldest first.
func (s *Server) Violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string{}, s.violations...)
}

// violate records a violation; the caller holds s.mu.
func (s *Server) violate(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.violations = append(s.violations, msg)
	if s.opts.Logger != nil {
		s.opts.Logger.WithField("violation", msg).Warn("hubspot emulator: violation")
	}
}

// ---- request pipeline ----

type outcome int

const (
	outcomeServed outcome = iota
	outcomeFault
	outcomeLimited
	outcomeCanceled
)

// bufferedWriter holds the reply until the stats are updated, so that a
// client seeing the reply also sees the stats that count it.
type bufferedWriter struct {
	header http.Header
	status int
	body   []byte
}

func (b *bufferedWriter) Header() http.Header { return b.header }
func (b *bufferedWriter) WriteHeader(code int) {
	if b.status == 0 {
		b.status = code
	}
}
func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = http.StatusOK
	}
	b.body = append(b.body, p...)
	return len(p), nil
}

const (
	statusClientClosed = 499
	maxBody            = 10 << 20
)

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/_emulator" || strings.HasPrefix(r.URL.Path, "/_emulator/") {
		s.admin.ServeHTTP(w, r)
		return
	}
	s.flightMu.Lock()
	s.flight++
	s.flightMu.Unlock()
	defer func() {
		s.flightMu.Lock()
		s.flight--
		if s.flight == 0 {
			s.flightIdle.Broadcast()
		}
		s.flightMu.Unlock()
	}()
	start := time.Now()

	_, pattern := s.api.Handler(r)
	family := pathFamily(r.URL.Path)
	endpoint := strings.Replace(pattern, "{version}", family, 1)
	if endpoint == "" {
		endpoint = r.Method + " " + r.URL.Path
	}
	bw := &bufferedWriter{header: http.Header{}}
	// Read the body first: net/http notices a client hang-up (and cancels
	// the request context) only once the body has been consumed.
	body, readErr := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	r.Body = io.NopCloser(bytes.NewReader(body))

	s.mu.Lock()
	s.stats.Requests++
	s.stats.ByEndpoint[endpoint]++
	if family != "" {
		s.stats.ByFamily[family]++
	}
	s.inspect(r, pattern, body)
	faults := s.faults
	s.mu.Unlock()

	var out outcome
	if readErr != nil {
		writeError(bw, http.StatusRequestEntityTooLarge, newAPIError(categoryValidation, "Request body could not be read: "+readErr.Error()))
	} else {
		out = s.serveAPI(bw, r, pattern, faults)
	}
	status := bw.status
	if out == outcomeCanceled {
		status = statusClientClosed
	} else if status == 0 {
		status = http.StatusOK
	}

	s.mu.Lock()
	s.stats.ByStatus[status]++
	switch out {
	case outcomeServed:
		s.stats.Served++
	case outcomeFault:
		s.stats.Faults++
	case outcomeLimited:
		s.stats.RateLimited++
	}
	s.mu.Unlock()

	if out != outcomeCanceled {
		for k, v := range bw.header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = w.Write(bw.body)
	}
	if s.opts.Logger != nil {
		s.opts.Logger.WithFields(logrus.Fields{
			"method":   r.Method,
			"path":     r.URL.Path,
			"status":   status,
			"duration": time.Since(start).String(),
		}).Info("hubspot emulator request")
	}
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, pattern string, faults Faults) outcome {
	if faults.Latency > 0 {
		switch s.wait(r.Context(), faults.Latency) {
		case waitCanceled:
			return outcomeCanceled
		case waitClosed:
			writeError(w, http.StatusServiceUnavailable, newAPIError("SERVICE_UNAVAILABLE", "hubspottest: the emulator is shutting down"))
			return outcomeServed
		}
	}
	if s.injectFault(w, faults) {
		return outcomeFault
	}
	if strings.HasPrefix(r.URL.Path, "/crm/") && !s.authorized(r) {
		writeError(w, http.StatusUnauthorized, newAPIError(categoryAuthentication,
			"Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"))
		return outcomeServed
	}
	if s.limit(w, isSearch(pattern)) {
		return outcomeLimited
	}
	if pattern != "" && s.missingScope(w, r, pattern) {
		return outcomeServed
	}
	if pattern == "" {
		writeError(w, http.StatusNotFound, newAPIError(categoryNotFound,
			fmt.Sprintf("resource not found: %s %s", r.Method, r.URL.Path)))
		return outcomeServed
	}
	s.api.ServeHTTP(w, r)
	return outcomeServed
}

// inspect records what a request reveals about the client before anything
// (a fault, a 401, a 429) can reject it: calls of endpoints the sync must
// never use, batches over 100 inputs, duplicate ids in a batch update, and
// the size of each batch update. The caller holds s.mu.
func (s *Server) inspect(r *http.Request, pattern string, body []byte) {
	if kind, ok := s.forbiddenPatterns[pattern]; ok {
		s.violate("contact-%s endpoint called: %s %s", kind, r.Method, r.URL.Path)
		return
	}
	if !strings.Contains(pattern, "/batch/") {
		return
	}
	var req struct {
		Inputs []struct {
			ID         flexString `json:"id"`
			IDProperty string     `json:"idProperty"`
		} `json:"inputs"`
	}
	if json.Unmarshal(body, &req) != nil {
		return
	}
	update := strings.HasSuffix(pattern, "/contacts/batch/update") || strings.HasSuffix(pattern, "/0-1/batch/update")
	if update && req.Inputs != nil {
		s.stats.BatchUpdateInputs = append(s.stats.BatchUpdateInputs, len(req.Inputs))
	}
	if len(req.Inputs) > maxBatch {
		s.violate("batch of %d inputs (max %d): %s %s", len(req.Inputs), maxBatch, r.Method, r.URL.Path)
	}
	if update {
		var ids []string
		for _, in := range req.Inputs {
			ids = append(ids, string(in.ID))
		}
		if dups := duplicateIDs(ids); len(dups) > 0 {
			s.violate("duplicate ids in one batch: %s %s: [%s]", r.Method, r.URL.Path, strings.Join(dups, ", "))
		}
	}
}

// duplicateIDs lists ids (compared trimmed) given more than once.
func duplicateIDs(ids []string) []string {
	var dups []string
	seen := map[string]bool{}
	for _, id := range ids {
		key := strings.TrimSpace(id)
		if seen[key] && !slices.Contains(dups, id) {
			dups = append(dups, id)
		}
		seen[key] = true
	}
	return dups
}

func isSearch(pattern string) bool { return strings.HasSuffix(pattern, "/search") }

type waitResult int

const (
	waitDone waitResult = iota
	waitCanceled
	waitClosed
)

// wait sleeps d unless the request is canceled or the server closes.
func (s *Server) wait(ctx context.Context, d time.Duration) waitResult {
	t := time.NewTimer(d)
	defer t.Stop()
	if s.onWaitStart != nil {
		s.onWaitStart()
	}
	if s.onWaitEnd != nil {
		defer s.onWaitEnd()
	}
	select {
	case <-t.C:
		return waitDone
	case <-ctx.Done():
		return waitCanceled
	case <-s.done:
		return waitClosed
	}
}

func (s *Server) authorized(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) < len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return false
	}
	s.mu.Lock()
	token := s.opts.Token
	s.mu.Unlock()
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(h[len(prefix):])), []byte(token)) == 1
}

// SetToken makes the portal take another token from now on, and refuse the one before (401),
// as rotating a service key does.
func (s *Server) SetToken(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.Token = token
}

func (s *Server) dailyBody() rateLimitError {
	return rateLimitError{
		Status: "error", Message: "You have reached your daily limit.", ErrorType: "RATE_LIMIT",
		CorrelationID: uuid.NewString(), PolicyName: "DAILY",
		RequestID: strings.ReplaceAll(uuid.NewString(), "-", ""),
	}
}

func (s *Server) tenSecondlyBody() rateLimitError {
	return rateLimitError{
		Status: "error", Message: "You have reached your ten_secondly_rolling limit.", ErrorType: "RATE_LIMIT",
		CorrelationID: uuid.NewString(), PolicyName: "TEN_SECONDLY_ROLLING",
		GroupName: fmt.Sprintf("publicapi:private-app-api-calls-ten-secondly:%d", s.opts.PortalID),
	}
}

func (s *Server) secondlyBody() rateLimitError {
	return rateLimitError{
		Status: "error", Message: "You have reached your secondly limit.", ErrorType: "RATE_LIMIT",
		CorrelationID: uuid.NewString(), PolicyName: "SECONDLY",
		GroupName: fmt.Sprintf("publicapi:search-secondly:%d", s.opts.PortalID),
	}
}

// injectFault answers with a random fault, if one is drawn.
func (s *Server) injectFault(w http.ResponseWriter, f Faults) bool {
	if f.DailyExhausted {
		writeJSON(w, http.StatusTooManyRequests, s.dailyBody())
		return true
	}
	if f.Rate429 <= 0 && f.Rate5xx <= 0 {
		return false
	}
	s.mu.Lock()
	roll := s.rng.Float64()
	pick := s.rng.IntN(4)
	s.mu.Unlock()
	switch {
	case roll < f.Rate429:
		writeJSON(w, http.StatusTooManyRequests, s.tenSecondlyBody())
	case roll < f.Rate429+f.Rate5xx:
		write5xx(w, []int{500, 502, 503, 504}[pick])
	default:
		return false
	}
	return true
}

func write5xx(w http.ResponseWriter, status int) {
	switch status {
	case http.StatusBadGateway, http.StatusGatewayTimeout:
		text := fmt.Sprintf("%d %s", status, http.StatusText(status))
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = fmt.Fprintf(w, "<html>\r\n<head><title>%s</title></head>\r\n<body>\r\n<center><h1>%s</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n", text, text)
	case http.StatusServiceUnavailable:
		writeError(w, status, newAPIError("SERVICE_UNAVAILABLE", "Service Unavailable. Please try again later."))
	default:
		writeError(w, status, newAPIError("INTERNAL_ERROR", "internal error"))
	}
}

// limit applies DailyLimit and the rolling window (or the search limit).
// It records an accepted request and sets the rate-limit headers.
func (s *Server) limit(w http.ResponseWriter, search bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if day := now.UTC().Format("2006-01-02"); day != s.day {
		s.day, s.dayCount = day, 0
	}
	h := w.Header()
	setDaily := func() {
		if s.opts.DailyLimit > 0 && !search {
			h.Set("X-HubSpot-RateLimit-Daily", strconv.Itoa(s.opts.DailyLimit))
			h.Set("X-HubSpot-RateLimit-Daily-Remaining", strconv.Itoa(max(0, s.opts.DailyLimit-s.dayCount)))
		}
	}
	if s.opts.DailyLimit > 0 && s.dayCount >= s.opts.DailyLimit {
		setDaily()
		writeJSON(w, http.StatusTooManyRequests, s.dailyBody())
		return true
	}
	if search {
		s.searchWin = prune(s.searchWin, now.Add(-time.Second))
		if s.opts.SearchRateLimit > 0 && len(s.searchWin) >= s.opts.SearchRateLimit {
			writeJSON(w, http.StatusTooManyRequests, s.secondlyBody())
			return true
		}
		s.searchWin = append(s.searchWin, now)
		s.dayCount++
		return false
	}
	if s.opts.RateLimit > 0 {
		s.window = prune(s.window, now.Add(-10*time.Second))
		h.Set("X-HubSpot-RateLimit-Max", strconv.Itoa(s.opts.RateLimit))
		h.Set("X-HubSpot-RateLimit-Interval-Milliseconds", "10000")
		if len(s.window) >= s.opts.RateLimit {
			h.Set("X-HubSpot-RateLimit-Remaining", "0")
			setDaily()
			writeJSON(w, http.StatusTooManyRequests, s.tenSecondlyBody())
			return true
		}
		s.window = append(s.window, now)
		h.Set("X-HubSpot-RateLimit-Remaining", strconv.Itoa(s.opts.RateLimit-len(s.window)))
	}
	s.dayCount++
	setDaily()
	return false
}

// prune drops times at or before cutoff (times are appended in order).
func prune(ts []time.Time, cutoff time.Time) []time.Time {
	i := 0
	for i < len(ts) && !ts[i].After(cutoff) {
		i++
	}
	return append(ts[:0], ts[i:]...)
}

// decodeJSON reads the request body into v.
func decodeJSON(r *http.Request, v any) error {
	err := json.NewDecoder(r.Body).Decode(v)
	if errors.Is(err, io.EOF) {
		return errors.New("request body is empty")
	}
	return err
}

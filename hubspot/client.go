// Package hubspot writes learning metrics into existing HubSpot contacts over
// HubSpot's CRM API (the date version 2026-09 by default, or the legacy v3
// paths), and provisions the contact properties that hold them. It
// never creates contacts: it only calls batch/read, batch/update and the
// properties endpoints.
package hubspot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// DefaultBaseURL is HubSpot's public API root.
const DefaultBaseURL = "https://api.hubapi.com"

const (
	userAgent             = "progress-sync"
	defaultHTTPTimeout    = 30 * time.Second
	defaultMaxElapsed     = 10 * time.Minute
	defaultInitialBackoff = 500 * time.Millisecond
	maxBackoffInterval    = 10 * time.Second
	// Bodies we read are batch answers for at most 100 records; anything far
	// larger is not HubSpot talking to us.
	maxResponseBytes = 32 << 20
)

// Config configures a Client. Only Token is required.
type Config struct {
	BaseURL string // API root; default DefaultBaseURL (tests and the demo point it at an emulator)
	Token   string // a service key or private app access token; never logged
	// ReloadToken, when set, is asked for the token again when HubSpot answers 401 (a key
	// rotated in the file it came from); a different token is taken and the request sent
	// again, once.
	ReloadToken     func() (string, error)
	RateLimit       Rate          // HubSpot's burst allowance for the app; default 100/10s (the lowest tier)
	APIVersion      string        // DefaultAPIVersion when empty; see ParseAPIVersion
	HTTPClient      *http.Client  // optional; default has a 30s Timeout
	Log             *logrus.Entry // optional; default discards
	MaxRetryElapsed time.Duration // stop retrying a request after this long; default 10m
	InitialBackoff  time.Duration // first retry wait before jitter; default 500ms
	Observer        Observer      // optional: hears about every attempt, for metrics
	// Fence, when set, is asked before every attempt to write contacts; an error stops the
	// write unsent. It lets only the instance that holds the replication slot write, also in
	// the middle of a retry (a process frozen past the slot's timeout).
	Fence Fence
}

// Fence says whether this instance may write now (replication.Lease).
type Fence interface {
	Confirm(ctx context.Context) error
}

// Rate is an allowance of Requests per rolling window of length Per.
type Rate struct {
	Requests int
	Per      time.Duration
}

func (r Rate) String() string { return fmt.Sprintf("%d/%s", r.Requests, r.Per) }

// ParseRate parses "<requests>/<duration>", such as "100/10s" or "5/1s". A bare
// unit ("5/s") means one of that unit.
func ParseRate(s string) (Rate, error) {
	bad := func(why string) (Rate, error) {
		return Rate{}, fmt.Errorf("invalid rate %q: %s (want <requests>/<duration>, e.g. \"100/10s\")", s, why)
	}
	count, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return bad("missing \"/\"")
	}
	n, err := strconv.Atoi(strings.TrimSpace(count))
	if err != nil {
		return bad("request count is not a whole number")
	}
	if n <= 0 {
		return bad("request count must be positive")
	}
	per = strings.TrimSpace(per)
	if per != "" && (per[0] >= 'a' && per[0] <= 'z' || per[0] >= 'A' && per[0] <= 'Z') {
		per = "1" + per
	}
	d, err := time.ParseDuration(per)
	if err != nil {
		return bad("window is not a duration such as 10s")
	}
	if d <= 0 {
		return bad("window must be positive")
	}
	return Rate{Requests: n, Per: d}, nil
}

// APIVersion is the API version the client's paths are built from.
func (c *Client) APIVersion() string { return c.version }

// pacer is the part of *rate.Limiter the client uses; tests swap in a counter.
type pacer interface {
	Wait(ctx context.Context) error
}

// Client talks to one HubSpot portal. It is safe for concurrent use; all
// goroutines share one pacer, since HubSpot counts requests per app.
type Client struct {
	baseURL        string
	creds          *credentials
	http           *http.Client
	log            *logrus.Entry
	pace           pacer
	maxElapsed     time.Duration
	initialBackoff time.Duration
	observer       Observer
	fence          Fence
	paths          paths
	version        string

	// Tests replace the backoff clock and timer so retry waits are recorded
	// instead of slept.
	clock    backoff.Clock
	newTimer func() backoff.Timer
}

// New checks cfg and returns a Client. It makes no request.
func New(cfg Config) (*Client, error) {
	// Tokens mounted from files often end in a newline; anything else outside
	// printable ASCII would make an invalid header, so refuse it here rather
	// than let net/http fail on every request.
	token, err := checkToken(cfg.Token)
	if err != nil {
		return nil, err
	}
	base := cfg.BaseURL
	if base == "" {
		base = DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("hubspot: base URL %q must be an absolute http(s) URL", base)
	}
	if u.User != nil {
		return nil, errors.New("hubspot: base URL must not contain credentials")
	}
	version := cfg.APIVersion
	if version == "" {
		version = DefaultAPIVersion
	}
	if _, err := ParseAPIVersion(version); err != nil {
		return nil, fmt.Errorf("hubspot: %w", err)
	}
	r := cfg.RateLimit
	if r == (Rate{}) {
		r = Rate{Requests: 100, Per: 10 * time.Second}
	}
	if r.Requests <= 0 || r.Per <= 0 {
		return nil, fmt.Errorf("hubspot: rate limit %s must have positive requests and window", r)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: defaultHTTPTimeout}
	}
	log := cfg.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		log = logrus.NewEntry(l)
	}
	c := &Client{
		baseURL:        strings.TrimRight(u.String(), "/"),
		creds:          &credentials{current: token, reload: cfg.ReloadToken},
		http:           hc,
		log:            log,
		pace:           newLimiter(r),
		maxElapsed:     cfg.MaxRetryElapsed,
		initialBackoff: cfg.InitialBackoff,
		observer:       cfg.Observer,
		fence:          cfg.Fence,
		paths:          pathsFor(version),
		version:        version,
		clock:          backoff.SystemClock,
	}
	if c.maxElapsed <= 0 {
		c.maxElapsed = defaultMaxElapsed
	}
	if c.initialBackoff <= 0 {
		c.initialBackoff = defaultInitialBackoff
	}
	return c, nil
}

// newLimiter builds a token bucket that never lets a rolling window of length
// r.Per hold more than r.Requests requests. The obvious bucket (burst N, refill
// N/Per) does not: it can spend a full bucket at the start of a window and
// refill another N during it, so ~2N requests land in one window and HubSpot
// answers 429. Capping burst + refill-per-window at N does hold: any window
// sees at most the burst b already in the bucket plus (N-b) refilled tokens.
// A small burst (N/20) keeps bursts cheap while most of the allowance comes
// from the steady refill.
func newLimiter(r Rate) *rate.Limiter {
	refill, burst := r.bucket()
	return rate.NewLimiter(refill, burst)
}

func (r Rate) bucket() (refill rate.Limit, burst int) {
	burst = max(1, r.Requests/20)
	perWindow := r.Requests - burst
	if perWindow < 1 {
		// One request per window: a bucket of one that refills once per
		// window is the best a token bucket can express.
		perWindow = 1
	}
	return rate.Limit(float64(perWindow) / r.Per.Seconds()), burst
}

// Sustained is how many requests a second the client sends at most over a long run: the
// ETA of work that needs many requests (a backfill, a reconcile pass).
func (r Rate) Sustained() float64 {
	if r.Requests <= 0 || r.Per <= 0 {
		return 0 // no limit
	}
	refill, _ := r.bucket()
	return float64(refill)
}

// call is one logical API request; it may be sent several times.
type call struct {
	method string
	path   string // already escaped
	route  string // path with names replaced by placeholders, for metrics; empty: path
	query  url.Values
	body   any  // JSON-encoded; nil sends no body
	writes bool // writes contacts: the write fence is asked before every attempt
}

// endpoint names the call for metrics without property or group names, which would make a
// label per property.
func (cl call) endpoint() string {
	if cl.route != "" {
		return cl.method + " " + cl.route
	}
	return cl.method + " " + cl.path
}

// Observer hears about every HTTP attempt, retries included, for metrics. Its methods must be
// cheap and safe for concurrent use.
type Observer interface {
	// Request reports one attempt; status 0 means no answer (timeout, connection error).
	Request(endpoint string, status int, took time.Duration)
	// RateLimited reports a 429 with HubSpot's policyName (TEN_SECONDLY_ROLLING, DAILY, ...).
	RateLimited(policy string)
}

func (cl call) String() string { return cl.method + " " + cl.path }

// do sends cl, retrying transient failures, and returns the final 2xx
// response's status and body. Any other final answer is an *APIError wrapped
// with the call's method and path.
func (c *Client) do(ctx context.Context, cl call) (int, []byte, error) {
	var payload []byte
	if cl.body != nil {
		var err error
		if payload, err = json.Marshal(cl.body); err != nil {
			return 0, nil, fmt.Errorf("hubspot: %s: encode request: %w", cl, err)
		}
	}

	ra := c.newBackOff()
	b := backoff.WithContext(ra, ctx)

	attempts := 0
	renewed := false
	op := func() (response, error) {
		attempts++
		if cl.writes && c.fence != nil {
			if err := c.fence.Confirm(ctx); err != nil {
				return response{}, backoff.Permanent(fmt.Errorf("not sent: %w", err)) // the call is named once, below
			}
		}
		token := c.creds.token()
		resp, err := c.attempt(ctx, cl, payload, token)
		if err == nil {
			return resp, nil
		}
		if errors.Is(err, ErrUnauthorized) && !renewed && c.creds.renew(token, c.log) {
			renewed = true
			return response{}, &retryableError{err: err}
		}
		var re *retryableError
		if errors.As(err, &re) {
			ra.retryAfter = re.retryAfter
			return response{}, err
		}
		return response{}, backoff.Permanent(err)
	}
	notify := func(err error, wait time.Duration) { c.logRetry(cl, attempts, err, wait) }
	var timer backoff.Timer
	if c.newTimer != nil {
		timer = c.newTimer()
	}
	resp, err := backoff.RetryNotifyWithTimerAndData(op, b, notify, timer)
	if err != nil {
		var re *retryableError
		if errors.As(err, &re) {
			err = unavailable{re.err}
			if attempts > 1 {
				return 0, nil, fmt.Errorf("hubspot: %s: giving up after %d attempts: %w", cl, attempts, err)
			}
		}
		return 0, nil, fmt.Errorf("hubspot: %s: %w", cl, err)
	}
	return resp.status, resp.body, nil
}

type response struct {
	status int
	body   []byte
}

// newBackOff is the wait between attempts: exponential with jitter, or what HubSpot's
// Retry-After asks, up to the client's MaxRetryElapsed.
func (c *Client) newBackOff() *retryAfterBackOff {
	eb := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(c.initialBackoff),
		backoff.WithMaxInterval(maxBackoffInterval),
		backoff.WithMaxElapsedTime(c.maxElapsed),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithClockProvider(c.clock),
	)
	return &retryAfterBackOff{ExponentialBackOff: eb, maxElapsed: c.maxElapsed}
}

// logRetry says why an attempt failed and when the next one goes.
func (c *Client) logRetry(cl call, attempts int, err error, wait time.Duration) {
	f := logrus.Fields{"method": cl.method, "path": cl.path, "attempt": attempts, "wait": wait.String()}
	var ae *APIError
	if errors.As(err, &ae) {
		f["status"] = ae.StatusCode
		if ae.PolicyName != "" {
			f["policy"] = ae.PolicyName
		}
	} else {
		f["error"] = err.Error()
	}
	c.log.WithFields(f).Warn("hubspot request failed; retrying")
}

// retryableError marks a failure worth another attempt, with the wait the
// server asked for, if any.
type retryableError struct {
	err        error
	retryAfter time.Duration
}

func (r *retryableError) Error() string { return r.err.Error() }
func (r *retryableError) Unwrap() error { return r.err }

// attempt sends cl once. The body is rebuilt from payload on every attempt so
// a retry never sends a drained reader.
func (c *Client) attempt(ctx context.Context, cl call, payload []byte, token string) (response, error) {
	if err := c.pace.Wait(ctx); err != nil {
		return response{}, fmt.Errorf("waiting for the rate limiter: %w", err)
	}
	u := c.baseURL + cl.path
	if len(cl.query) > 0 {
		u += "?" + cl.query.Encode()
	}
	var body io.Reader
	if payload != nil {
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u, body)
	if err != nil {
		return response{}, &redactedError{err: err, sec: c.creds.secrets()}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", userAgent)
	if payload != nil {
		req.Header.Set("Content-Type", "application/json")
	}

	started := time.Now()
	res, err := c.http.Do(req)
	if err != nil {
		c.observe(cl, 0, started, nil)
		return response{}, c.classifyTransportError(ctx, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes+1))
	if err != nil {
		return response{}, c.classifyTransportError(ctx, fmt.Errorf("reading response: %w", err))
	}
	if len(data) > maxResponseBytes {
		return response{}, fmt.Errorf("response larger than %d bytes", maxResponseBytes)
	}
	c.log.WithFields(logrus.Fields{
		"method": cl.method, "path": cl.path, "status": res.StatusCode,
		"duration": time.Since(started).Round(time.Millisecond).String(),
	}).Debug("hubspot request")

	if res.StatusCode >= 200 && res.StatusCode < 300 {
		c.observe(cl, res.StatusCode, started, nil)
		return response{status: res.StatusCode, body: data}, nil
	}
	apiErr := newAPIError(res.StatusCode, data, c.creds.secrets())
	c.observe(cl, res.StatusCode, started, apiErr)
	if retryableStatus(apiErr) {
		return response{}, &retryableError{err: apiErr, retryAfter: parseRetryAfter(res.Header.Get("Retry-After"), time.Now())}
	}
	return response{}, apiErr
}

func (c *Client) observe(cl call, status int, started time.Time, apiErr *APIError) {
	if c.observer == nil {
		return
	}
	c.observer.Request(cl.endpoint(), status, time.Since(started))
	if status == http.StatusTooManyRequests {
		policy := "unknown"
		if apiErr != nil && apiErr.PolicyName != "" {
			policy = apiErr.PolicyName
		}
		c.observer.RateLimited(policy)
	}
}

// retryableStatus follows HubSpot's error guide: rate limits other than the
// daily one, 5xx, 423 (bulk sync lock) and 477 (portal migration) clear up by
// themselves; any other 4xx will fail the same way again.
func retryableStatus(e *APIError) bool {
	switch {
	case e.StatusCode == 429:
		return !e.isDailyLimit()
	case e.StatusCode == 423, e.StatusCode == 477:
		return true
	case e.StatusCode >= 500:
		return true
	}
	return false
}

// classifyTransportError decides whether a failure below HTTP deserves a
// retry. Timeouts, refused and reset connections and early EOFs do; a
// cancelled context and certificate problems do not.
func (c *Client) classifyTransportError(ctx context.Context, err error) error {
	safe := &redactedError{err: err, sec: c.creds.secrets()}
	if ctx.Err() != nil {
		return safe
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verify) {
		return safe
	}
	return &retryableError{err: safe}
}

// retryAfterBackOff waits at least as long as the server's Retry-After, while
// keeping the exponential backoff's jitter and its overall time budget.
type retryAfterBackOff struct {
	*backoff.ExponentialBackOff
	maxElapsed time.Duration
	retryAfter time.Duration // from the latest failure; consumed by NextBackOff
}

func (b *retryAfterBackOff) NextBackOff() time.Duration {
	next := b.ExponentialBackOff.NextBackOff()
	ra := b.retryAfter
	b.retryAfter = 0
	if next == backoff.Stop || ra <= next {
		return next
	}
	// Waiting past the budget would only end in giving up later.
	if b.GetElapsedTime()+ra > b.maxElapsed {
		return backoff.Stop
	}
	return ra
}

// parseRetryAfter reads a Retry-After value in seconds or as an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || math.IsNaN(secs) || math.IsInf(secs, 0) {
			return 0
		}
		// A day is HubSpot's documented maximum (477); cap absurd values so
		// the conversion cannot overflow.
		secs = math.Min(secs, 48*3600)
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/sirupsen/logrus"
)

// Message is one post to the webhook. Text is what chat receivers show; Details, beside it,
// are for receivers that read fields.
type Message struct {
	Text    string   `json:"text"`
	Details *Details `json:"progress_sync,omitempty"`
}

// Details are the alert's fields. Emails are masked; nothing here is a secret.
type Details struct {
	// Event is not_ready, recovered, problem_students or fought_over.
	Event     string    `json:"event"`
	Instance  string    `json:"instance"`
	Slot      string    `json:"slot"`
	At        time.Time `json:"at"`
	Condition string    `json:"condition,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	// Since is when the instance stopped being ready (not_ready, recovered).
	Since *time.Time `json:"since,omitempty"`
	// Students counts new problem students by kind (rejected, conflict).
	Students map[string]int `json:"students,omitempty"`
	Emails   []string       `json:"emails,omitempty"`
	// Properties counts, per property fought over, the contacts it was changed on again.
	Properties map[string]int `json:"properties,omitempty"`
}

// queueSize is how many alerts may wait for a receiver that does not take them; beyond it
// the newest are dropped, with a log line (they are in the log anyway).
const queueSize = 64

// poster sends the queued messages one at a time, in order, each retried with backoff until
// the receiver takes it or retrying stops making sense. It runs apart from everything else:
// a receiver that fails or hangs only delays other alerts.
type poster struct {
	url string
	// secret are the pieces of the URL that carry its secret, longest first: a receiver that
	// quotes the request in its answer must not put them in the log.
	secret []string
	plain  bool // the receiver refuses fields it does not know: send text alone
	client *http.Client
	queue  chan Message
	retry  func() backoff.BackOff
	log    *logrus.Entry
}

func newPoster(rawURL string, timeout time.Duration, log *logrus.Entry) *poster {
	u, _ := url.Parse(rawURL) // config.Load checked it
	return &poster{
		url:    rawURL,
		secret: secretPieces(rawURL),
		// Google Chat answers 400 to any field but its own.
		plain:  u != nil && u.Hostname() == "chat.googleapis.com",
		client: &http.Client{Timeout: timeout},
		queue:  make(chan Message, queueSize),
		retry: func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 2*time.Second, 2*time.Minute, time.Hour
			return b
		},
		log: log,
	}
}

// enqueue hands m to the poster without waiting.
func (p *poster) enqueue(m Message) {
	select {
	case p.queue <- m:
	default:
		p.log.WithField("alert", m.Details.Event).Warn("alert webhook: too many alerts wait for the receiver; this one is dropped (the log has it)")
	}
}

// run posts until ctx ends.
func (p *poster) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-p.queue:
			p.deliver(ctx, m)
		}
	}
}

// deliver posts m until the receiver takes it, refuses it for good, or the retries run out.
func (p *poster) deliver(ctx context.Context, m Message) {
	body, err := p.encode(m)
	if err != nil {
		p.log.WithError(err).Error("alert webhook: cannot encode the alert")
		return
	}
	attempts := 0
	err = backoff.RetryNotify(func() error {
		attempts++
		return p.post(ctx, body)
	}, backoff.WithContext(p.retry(), ctx), func(err error, wait time.Duration) {
		p.log.WithFields(logrus.Fields{"alert": m.Details.Event, "attempt": attempts, "retry_in": wait.String()}).WithError(err).
			Warn("alert webhook: the receiver did not take the alert; trying again")
	})
	switch {
	case err == nil:
		p.log.WithFields(logrus.Fields{"alert": m.Details.Event, "attempts": attempts}).Info("alert webhook: alert delivered")
	case ctx.Err() == nil:
		p.log.WithFields(logrus.Fields{"alert": m.Details.Event, "attempts": attempts}).WithError(err).
			Error("alert webhook: giving up on this alert; check PROGRESS_SYNC_ALERT_WEBHOOK (the log has what it said)")
	}
}

func (p *poster) encode(m Message) ([]byte, error) {
	if p.plain {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{m.Text})
	}
	return json.Marshal(m)
}

// post sends body once. Its errors never hold the URL: webhook URLs carry their secret in
// the path.
func (p *poster) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return backoff.Permanent(errors.New("the webhook URL cannot be posted to"))
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "progress-sync")
	res, err := p.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return errors.New("no answer: " + p.redact(err.Error()))
	}
	defer res.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(res.Body, 512))
	said := fmt.Errorf("HTTP %d: %s", res.StatusCode, p.redact(string(bytes.TrimSpace(answer))))
	switch {
	case res.StatusCode < 300:
		return nil
	case res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusRequestTimeout || res.StatusCode >= 500:
		return said
	}
	// The receiver refuses this alert as it is (a bad URL, a removed hook): no retry helps.
	return backoff.Permanent(said)
}

// redact hides the URL's secret pieces in what a receiver answered.
func (p *poster) redact(s string) string {
	for _, piece := range p.secret {
		s = strings.ReplaceAll(s, piece, "[webhook URL]")
	}
	return s
}

// secretPieces are the parts of a webhook's URL that may carry its secret, as a receiver
// might quote them: the whole, its path and query, and each path segment or query value of
// six characters or more. Longest first, so that a whole is hidden before its parts.
func secretPieces(raw string) []string {
	pieces := []string{raw}
	if u, err := url.Parse(raw); err == nil {
		pieces = append(pieces, u.RequestURI(), u.EscapedPath(), u.Path, u.RawQuery)
		for _, seg := range strings.Split(u.Path, "/") {
			pieces = append(pieces, seg)
		}
		for _, values := range u.Query() {
			pieces = append(pieces, values...)
		}
	}
	pieces = slices.DeleteFunc(pieces, func(p string) bool { return len(p) < 6 })
	slices.SortFunc(pieces, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(pieces)
}

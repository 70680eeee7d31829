package hubspot

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
)

// credentials hold the token the client sends, and how to get it again when HubSpot stops
// taking it: a key rotated in the file it came from is picked up without a restart.
type credentials struct {
	mu      sync.Mutex
	current string
	retired []string // tokens sent before: still never to be printed
	reload  func() (string, error)
}

func (cr *credentials) token() string {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.current
}

// redact removes from s every token the client has sent (an error path: it copies the list).
func (c *Client) redact(s string) string { return c.creds.secrets().redact(s) }

// secrets returns every token the client has sent, for redaction.
func (cr *credentials) secrets() secrets {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return append(secrets{cr.current}, cr.retired...)
}

// renew asks for the token again after HubSpot refused rejected, and reports whether there is
// a different one to try. Another request may have renewed it already.
func (cr *credentials) renew(rejected string, log *logrus.Entry) bool {
	if cr.reload == nil {
		return false
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cr.current != rejected {
		return true
	}
	fresh, err := cr.reload()
	if err == nil {
		fresh, err = checkToken(fresh)
	}
	if err != nil {
		log.WithError(errors.New(secrets{cr.current}.redact(err.Error()))).Error("HubSpot refused the token (401) and it could not be read again")
		return false
	}
	if fresh == cr.current {
		return false
	}
	cr.retired = append(cr.retired, cr.current)
	cr.current = fresh
	log.Info("HubSpot refused the token (401); read a new one and sending again")
	return true
}

// checkToken trims a token and refuses one that cannot go in an Authorization header.
func checkToken(raw string) (string, error) {
	token := strings.TrimSpace(raw)
	if token == "" {
		return "", errors.New("hubspot: access token is empty")
	}
	if !Sendable(token) {
		return "", fmt.Errorf("hubspot: access token contains whitespace or non-printable characters")
	}
	return token, nil
}

// Sendable reports whether a token can go in an Authorization header: printable ASCII with
// no whitespace.
func Sendable(token string) bool {
	for i := 0; i < len(token); i++ {
		if token[i] <= ' ' || token[i] >= 0x7f {
			return false
		}
	}
	return true
}

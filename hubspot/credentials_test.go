package hubspot

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

func TestARotatedTokenIsReadAgainAfterA401(t *testing.T) {
	var mu sync.Mutex
	accepted, onDisk := "key-one", "key-one"
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		seen = append(seen, got)
		if got != accepted {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"status": "error", "category": "INVALID_AUTHENTICATION",
				"message": "Authentication credentials not found for " + got})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"results": []any{}})
	}))
	t.Cleanup(srv.Close)
	reads := 0
	c, err := New(Config{BaseURL: srv.URL, Token: "key-one", InitialBackoff: 1, ReloadToken: func() (string, error) {
		mu.Lock()
		defer mu.Unlock()
		reads++
		if onDisk == "unreadable" {
			return "", errors.New("open /run/credentials/hubspot-token: permission denied")
		}
		return onDisk + "\n", nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	get := func() error {
		_, _, err := c.do(context.Background(), call{method: http.MethodGet, path: c.paths.properties})
		return err
	}
	for _, tc := range []struct {
		name              string
		accept, disk      string
		wantErr           bool
		wantReads, wantTo int // reloads, and requests, for this step
	}{
		{name: "accepted", accept: "key-one", disk: "key-one", wantReads: 0, wantTo: 1},
		{name: "rotated on disk and in HubSpot", accept: "key-two", disk: "key-two", wantReads: 1, wantTo: 2},
		{name: "revoked, not rotated", accept: "key-three", disk: "key-two", wantErr: true, wantReads: 1, wantTo: 1},
		{name: "the file cannot be read", accept: "key-four", disk: "unreadable", wantErr: true, wantReads: 1, wantTo: 1},
	} {
		mu.Lock()
		accepted, onDisk, reads, seen = tc.accept, tc.disk, 0, nil
		mu.Unlock()
		err := get()
		mu.Lock()
		if (err != nil) != tc.wantErr || reads != tc.wantReads || len(seen) != tc.wantTo {
			t.Errorf("%s: err %v, %d reloads, requests with %v", tc.name, err, reads, seen)
		}
		mu.Unlock()
		if err != nil && (strings.Contains(err.Error(), "key-") || !errors.Is(err, ErrUnauthorized)) {
			t.Errorf("%s: error %q shows a token or is not ErrUnauthorized", tc.name, err)
		}
	}
}

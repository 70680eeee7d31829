package main_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// alertReceiver is a webhook receiver. While held, it keeps every post waiting; it records a
// post only once it has answered it.
type alertReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	held     chan struct{}
	waiting  int
	received []alertPost
}

type alertPost struct {
	raw  string
	Text string `json:"text"`
	Info struct {
		Event     string         `json:"event"`
		Condition string         `json:"condition"`
		Since     *time.Time     `json:"since"`
		At        time.Time      `json:"at"`
		Emails    []string       `json:"emails"`
		Students  map[string]int `json:"students"`
	} `json:"progress_sync"`
}

func newAlertReceiver(t *testing.T) *alertReceiver {
	r := &alertReceiver{held: make(chan struct{})}
	close(r.held)
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		held := r.held
		r.waiting++
		r.mu.Unlock()
		defer func() { r.mu.Lock(); r.waiting--; r.mu.Unlock() }()
		select {
		case <-held:
		case <-req.Context().Done():
			return // the sender gave up on this attempt
		}
		p := alertPost{raw: string(body)}
		if err := json.Unmarshal(body, &p); err != nil || !strings.HasSuffix(req.URL.Path, "/hook-secret-9f2c") {
			t.Errorf("posted %s to %s: %v", body, req.URL.Path, err)
		}
		r.mu.Lock()
		r.received = append(r.received, p)
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

// hold makes posts wait until the returned func releases them.
func (r *alertReceiver) hold() (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	r.held = ch
	r.mu.Unlock()
	return func() { close(ch) }
}

func (r *alertReceiver) state() (waiting int, received []alertPost) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.waiting, append([]alertPost(nil), r.received...)
}

// waitUntil polls until ok says yes about what was received.
func (r *alertReceiver) waitUntil(t *testing.T, what string, timeout time.Duration, ok func(waiting int, got []alertPost) bool) []alertPost {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		waiting, got := r.state()
		if ok(waiting, got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %s: %d posts waiting, received %d: %+v", what, timeout, waiting, len(got), got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spellSince keeps the not_ready and recovered posts of spells that began at or after from.
func spellSince(got []alertPost, from time.Time) []alertPost {
	var out []alertPost
	for _, p := range got {
		if p.Info.Since != nil && !p.Info.Since.Before(from) {
			out = append(out, p)
		}
	}
	return out
}

// A revoked key: the webhook gets one alert once the service has been not ready for
// PROGRESS_SYNC_ALERT_AFTER, and one recovery once the key works again, neither holding a
// secret or a full email. While the receiver hangs, the changes still reach HubSpot.
func TestAnAlertTellsOfARevokedKeyOnceAndOfItsRecovery(t *testing.T) {
	const after = 2 * time.Second
	r := newAlertReceiver(t)
	w := newWorld(t, 300)
	hookFile := filepath.Join(t.TempDir(), "alert-webhook")
	if err := os.WriteFile(hookFile, []byte(r.URL+"/services/T0/B0/hook-secret-9f2c\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w.streamEnv(map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK_FILE": hookFile, "PROGRESS_SYNC_ALERT_AFTER": after.String()})
	svc := w.start()
	w.waitEqual(time.Minute)
	waitReadyz(t, svc, 200, "ready")
	// The first push made the test world's rejected and conflicting students problems: news
	// to this instance, which has held the slot since before.
	problems := r.waitUntil(t, "alert of the problem students", time.Minute, func(_ int, got []alertPost) bool {
		return len(got) > 0 && got[len(got)-1].Info.Event == "problem_students"
	})
	if p := problems[len(problems)-1]; p.Info.Students["conflict"] == 0 || len(p.Info.Emails) == 0 {
		t.Fatalf("problem students alert: %s", p.raw)
	}

	release := r.hold()
	revoked := time.Now()
	w.emu.SetToken("svc-key-na1-someone-else-0000")
	w.touchXP(0, 20, 7)
	r.waitUntil(t, "alert posted while the key is refused", time.Minute, func(waiting int, _ []alertPost) bool { return waiting > 0 })
	if _, body := svc.scrape("/readyz"); !strings.Contains(body, "HubSpot refuses the key") {
		t.Fatalf("/readyz while the key is refused: %q", body)
	}
	// The key works again while the receiver still hangs: the pipeline does not wait for it.
	w.emu.SetToken(token)
	w.touchXP(20, 20, 3)
	w.waitEqual(time.Minute)
	if _, got := r.state(); len(spellSince(got, revoked)) != 0 {
		t.Fatal("the receiver answered while it hung")
	}
	release()
	got := r.waitUntil(t, "recovery", time.Minute, func(_ int, got []alertPost) bool {
		s := spellSince(got, revoked)
		return len(s) > 0 && s[len(s)-1].Info.Event == "recovered"
	})
	svc.mustStop()
	_, got = r.state()
	spell := spellSince(got, revoked)
	if len(spell) != 2 || spell[0].Info.Event != "not_ready" || spell[0].Info.Condition != "hubspot_key_refused" || spell[1].Info.Event != "recovered" {
		t.Fatalf("posts of the spell: %+v", spell)
	}
	if waited := spell[0].Info.At.Sub(*spell[0].Info.Since); waited < after {
		t.Fatalf("alerted %s into the spell, before PROGRESS_SYNC_ALERT_AFTER (%s)", waited, after)
	}
	if !strings.Contains(spell[0].Text, "HubSpot refuses the key") {
		t.Fatalf("alert text: %q", spell[0].Text)
	}
	secrets := []string{token, "svc-key-na1-someone-else", "hook-secret-9f2c"}
	if u, err := url.Parse(w.dbURL); err == nil {
		if pw, ok := u.User.Password(); ok {
			secrets = append(secrets, pw)
		}
	}
	for _, s := range w.students {
		secrets = append(secrets, s.Email)
	}
	for _, p := range got {
		for _, s := range secrets {
			if s != "" && strings.Contains(p.raw, s) {
				t.Fatalf("an alert holds %q: %s", s, p.raw)
			}
		}
	}
	if strings.Contains(svc.logs.String(), "hook-secret-9f2c") {
		t.Fatal("the service logged the webhook's URL")
	}
}

// A service killed in the middle of a spell it alerted about: the next run, once ready,
// posts the recovery, and not the alert again.
func TestAnAlertLeftOpenByAKilledServiceIsClosedByTheNextRun(t *testing.T) {
	r := newAlertReceiver(t)
	w := newWorld(t, 300)
	w.streamEnv(map[string]string{"PROGRESS_SYNC_ALERT_WEBHOOK": r.URL + "/services/T0/B0/hook-secret-9f2c", "PROGRESS_SYNC_ALERT_AFTER": "1s"})
	svc := w.start()
	w.waitEqual(time.Minute)
	waitReadyz(t, svc, 200, "ready")
	revoked := time.Now()
	w.emu.SetToken("svc-key-na1-someone-else-0000")
	w.touchXP(0, 10, 7)
	r.waitUntil(t, "alert of the refused key", time.Minute, func(_ int, got []alertPost) bool { return len(spellSince(got, revoked)) > 0 })
	svc.kill()
	w.emu.SetToken(token)
	next := w.start()
	w.waitEqual(time.Minute)
	got := r.waitUntil(t, "recovery from the next run", time.Minute, func(_ int, got []alertPost) bool {
		s := spellSince(got, revoked)
		return len(s) > 0 && s[len(s)-1].Info.Event == "recovered"
	})
	next.mustStop()
	_, got = r.state()
	if spell := spellSince(got, revoked); len(spell) != 2 || spell[0].Info.Condition != "hubspot_key_refused" || spell[1].Info.Event != "recovered" {
		t.Fatalf("posts of the spell: %+v", spell)
	}
}

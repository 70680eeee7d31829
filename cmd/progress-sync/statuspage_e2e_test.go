package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/metrics"
)

// browser is a headless Chromium the test drives, Debian's `chromium` package unless
// PROGRESS_SYNC_TEST_CHROMIUM names another binary.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("PROGRESS_SYNC_TEST_CHROMIUM")
	if path == "" {
		var err error
		if path, err = exec.LookPath("chromium"); err != nil {
			t.Fatal("the status page test needs Chromium: apt-get install -y chromium (Debian), or set PROGRESS_SYNC_TEST_CHROMIUM to a Chrome or Chromium binary")
		}
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.WindowSize(1280, 1000),
		// This machine has no internet: Chromium must not try to reach it.
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	return ctx
}

// pageFigures are the numbers the status page shows, read from the rendered page.
type pageFigures map[string]string

var pageFigureIDs = []string{"role", "pending", "unmatched", "rejected", "conflict", "problems-total", "checkpoint",
	"contacts-updated", "requests-total", "rate-limit", "rate-limited-ten", "rate-limited-daily", "page"}

// readPage loads url in the browser and reads the figures it shows, as rendered.
func readPage(t *testing.T, ctx context.Context, url string) pageFigures {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("pending"))); err != nil {
		t.Fatalf("load %s: %v", url, err)
	}
	ids, _ := json.Marshal(pageFigureIDs)
	texts, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]string](
		`Object.fromEntries(`+string(ids)+`.map(id => [id, document.getElementById(id)?.innerText ?? ""]))`))
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	f := pageFigures{}
	for id, text := range texts {
		f[id] = strings.ReplaceAll(strings.TrimSpace(text), ",", "")
	}
	return f
}

// statusFigures reads the same numbers from `progress-sync status`.
func statusFigures(t *testing.T, out string) pageFigures {
	t.Helper()
	m := regexp.MustCompile(`pending students: (\d+)[\s\S]*unmatched: (\d+), rejected: (\d+), conflicts: (\d+)`).FindStringSubmatch(out)
	cp := regexp.MustCompile(`checkpoint: ([0-9A-F]+/[0-9A-F]+),`).FindStringSubmatch(out)
	if m == nil || cp == nil {
		t.Fatalf("cannot read status output:\n%s", out)
	}
	return pageFigures{"pending": m[1], "unmatched": m[2], "rejected": m[3], "conflict": m[4], "checkpoint": cp[1]}
}

// lsnOf reads a checkpoint as shown; 0 when it is not one (the page could not read it).
func lsnOf(s string) pglogrepl.LSN {
	lsn, _ := pglogrepl.ParseLSN(s)
	return lsn
}

// metricFigures reads the same numbers from /metrics.
func metricFigures(t *testing.T, body string) pageFigures {
	t.Helper()
	sum := func(prefix string) string {
		total := 0.0
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, prefix) {
				v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				if err != nil {
					t.Fatal(err)
				}
				total += v
			}
		}
		return strconv.Itoa(int(total))
	}
	return pageFigures{
		"pending": sum("progress_sync_pending_students "), "contacts-updated": sum("progress_sync_contacts_updated_total "),
		"requests-total": sum("progress_sync_hubspot_requests_total{"), "unmatched": sum(`progress_sync_problem_students{kind="unmatched"}`),
		"rejected": sum(`progress_sync_problem_students{kind="rejected"}`), "conflict": sum(`progress_sync_problem_students{kind="conflict"}`),
		"rate-limited-ten":   sum(`progress_sync_hubspot_rate_limited_total{policy="TEN_SECONDLY_ROLLING"}`),
		"rate-limited-daily": sum(`progress_sync_hubspot_rate_limited_total{policy="DAILY"}`),
	}
}

// differs lists the figures of got that are not those of want.
func differs(got, want pageFigures) []string {
	var out []string
	for k, v := range want {
		if got[k] != v {
			out = append(out, fmt.Sprintf("%s: page %q, want %q", k, got[k], v))
		}
	}
	slices.Sort(out)
	return out
}

func TestTheStatusPageShowsWhatStatusAndMetricsSay(t *testing.T) {
	ctx := browser(t)
	w := newWorld(t, 300)
	w.streamEnv(nil)
	svc := w.start()
	w.waitEqual(time.Minute)
	// Twenty students move to addresses no contact has: more problem students than a page.
	for i := 0; i < 20; i++ {
		w.exec(`UPDATE users SET email = $2 WHERE id = $1`, w.students[120+i].ID, fmt.Sprintf("moved-away-%d@example.net", i))
		delete(w.contactIDs, w.students[120+i].ID) // its old contact is cleared, not kept equal
	}
	w.touchXP(150, 30, 5)
	w.waitEqual(time.Minute)
	_, _ = svc.scrape("/healthz")
	url := "http://" + regexp.MustCompile(`"addr":"([^"]+)"`).FindStringSubmatch(svc.logs.String())[1] + "/"

	// The page, status and /metrics read the same state: once the service is idle they agree.
	// The checkpoint moves on every status interval even then: the page's lies between the
	// one status showed before and the one it showed after.
	var page pageFigures
	deadline := time.Now().Add(30 * time.Second)
	for {
		before := statusFigures(t, w.cli.mustRun("status").stdout)
		page = readPage(t, ctx, url)
		_, body := svc.scrape("/metrics")
		after := statusFigures(t, w.cli.mustRun("status").stdout)
		bad := append(differs(page, before), differs(page, metricFigures(t, body))...)
		if from, shown, to := lsnOf(before["checkpoint"]), lsnOf(page["checkpoint"]), lsnOf(after["checkpoint"]); shown > 0 && from <= shown && shown <= to {
			bad = slices.DeleteFunc(bad, func(d string) bool { return strings.HasPrefix(d, "checkpoint:") })
		}
		delete(before, "checkpoint")
		delete(after, "checkpoint")
		if len(bad) == 0 && len(differs(before, after)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status page disagrees with status and /metrics:\n  %s", strings.Join(bad, "\n  "))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if page["role"] != "streaming" || page["rate-limit"] != "100" || page["contacts-updated"] == "0" || page["unmatched"] != "37" {
		t.Errorf("page shows %v, want streaming, a limit of 100, contacts updated, 37 unmatched", page)
	}

	// Every problem student is listed once over the pages, under a masked email.
	probs := w.problems()
	if total, _ := strconv.Atoi(page["problems-total"]); total != len(probs) || page["page"] != "page 1 of 2" {
		t.Fatalf("page shows %s problem students on %q, the state has %d (want 2 pages)", page["problems-total"], page["page"], len(probs))
	}
	var listed []string
	var html string
	for n := 1; n <= 2; n++ {
		if err := chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s?page=%d", url, n)), chromedp.WaitVisible(chromedp.ID("problems"))); err != nil {
			t.Fatal(err)
		}
		ids, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`[...document.querySelectorAll("#problems td.id")].map(td => td.innerText)`))
		if err != nil {
			t.Fatal(err)
		}
		h, err := chromedp.Run(ctx, chromedp.OuterHTML(chromedp.CSS("html")))
		if err != nil {
			t.Fatal(err)
		}
		listed, html = append(listed, ids...), html+h
	}
	for id := range probs {
		if !slices.Contains(listed, id.String()) {
			t.Errorf("problem student %s is on neither page", id)
		}
	}
	if len(listed) != len(probs) {
		t.Errorf("%d rows listed over the pages, want %d", len(listed), len(probs))
	}
	for _, s := range w.students {
		if e := metrics.NormalizeEmail(s.Email); strings.Contains(strings.ToLower(html), e) {
			t.Errorf("the page shows the full email %s", e)
		}
	}
	for _, typed := range []string{"moved-away-", "not an email", "alias-of-101@"} {
		if strings.Contains(html, typed) {
			t.Errorf("the page shows %q: a student's email, or what was typed instead of one, in full", typed)
		}
	}
	if !strings.Contains(html, "m***@example.net") {
		t.Error("the page shows no masked email of the students who moved away")
	}

	// The charts draw the samples the process keeps: pending students at once, the time to
	// HubSpot once a 10 s sample held pushes.
	deadline = time.Now().Add(time.Minute)
	for {
		if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("pending-chart"))); err != nil {
			t.Fatal(err)
		}
		pending, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#pending-chart polyline"), "points"))
		if err != nil {
			t.Fatal(err)
		}
		latency, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.CSS("#latency-chart polyline.median"), "points"))
		if err != nil {
			t.Fatal(err)
		}
		if pending.Value != "" && latency.Value != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("charts not drawn: pending %q, latency %q", pending.Value, latency.Value)
		}
		w.touchXP(150, 5, 1)
		time.Sleep(time.Second)
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("pending-chart"))); err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	saveScreenshot(t, shot)
	svc.mustStop()
}

// saveScreenshot keeps the page's picture in the test's temp dir, and where
// PROGRESS_SYNC_TEST_SCREENSHOT says (the README's picture comes from there).
func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	paths := []string{filepath.Join(t.TempDir(), "status-page.png")}
	if p := os.Getenv("PROGRESS_SYNC_TEST_SCREENSHOT"); p != "" {
		paths = append(paths, p)
	}
	for _, p := range paths {
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot of the status page: %s", p)
	}
}

func TestTheStatusPageFlags(t *testing.T) {
	w := newWorld(t, 300)
	w.streamEnv(nil)
	unmatched := metrics.NormalizeEmail(w.students[len(w.students)-1].Email)

	svc := w.start("run", "--show-emails")
	w.waitEqual(time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := svc.scrape("/")
		if code == 200 && strings.Contains(body, unmatched) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("with --show-emails, / answered %d without the unmatched student's email %s", code, unmatched)
		}
		time.Sleep(200 * time.Millisecond)
	}
	svc.mustStop()

	svc = w.start("run", "--no-status-page")
	if code, _ := svc.scrape("/"); code != 404 {
		t.Errorf("with --no-status-page, / answered %d, want 404", code)
	}
	if code, _ := svc.scrape("/metrics"); code != 200 {
		t.Errorf("with --no-status-page, /metrics answered %d, want 200", code)
	}
	waitReadyz(t, svc, 200, "ready")
	svc.mustStop()
}

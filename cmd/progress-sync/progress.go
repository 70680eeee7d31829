package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/sirupsen/logrus"
	"golang.org/x/term"

	"github.com/focusenglish/progress-sync/replication/push"
)

// progress shows how a long run is going: a bar on a terminal, else an info line every
// interval, so journald and kubectl logs show it too. Both give students done of total,
// contacts updated, the rate and an ETA.
//
// The ETA is known up front: HubSpot's rate limit makes the requests still to send a floor
// (a batch/read and, where something differs, a batch/update per 100 students), and what
// the run has taken so far says when HubSpot is slower than that.
type progress struct {
	total, done, updated, batches int
	requests                      *requestCounter
	sustained                     float64 // requests a second the client keeps to; 0: no limit
	started, lastLine             time.Time
	every                         time.Duration
	bar                           *progressbar.ProgressBar // nil: log lines
	term                          *os.File                 // the bar's terminal
	logOut                        io.Writer                // the log's own output, while the bar owns the terminal
	log                           *logrus.Entry
}

// backfillProgress shows a backfill's progress from its start, when the total is known.
type backfillProgress struct {
	out       io.Writer
	requests  *requestCounter
	sustained float64
	every     time.Duration
	log       *logrus.Entry
	shown     *progress
}

func (b *backfillProgress) Start(total int) {
	b.shown = newProgress(b.out, total, b.requests, b.sustained, b.every, b.log)
}
func (b *backfillProgress) Batch(res push.Result) { b.shown.add(res) }
func (b *backfillProgress) Finish(err error)      { b.shown.finish(err) }

// newProgress starts showing the progress of total students on out (a bar when out is a
// terminal) or in the log. requests counts the HubSpot requests the run makes; sustained is
// the client's requests per second over a long run.
func newProgress(out io.Writer, total int, requests *requestCounter, sustained float64, every time.Duration, log *logrus.Entry) *progress {
	requests.reset()
	p := &progress{total: total, requests: requests, sustained: sustained, started: time.Now(), lastLine: time.Now(), every: every, log: log}
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.term = f
		p.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(f), progressbar.OptionSetDescription(p.describe()),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("students"),
			// Not throttled: the new ETA and the new count are drawn together, once per batch.
			progressbar.OptionSetElapsedTime(true), progressbar.OptionSetPredictTime(false), progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionClearOnFinish())
		// Log lines go above the bar: each clears the bar's row first, and the next batch
		// draws the bar again below them.
		p.logOut = log.Logger.Out
		log.Logger.SetOutput(aboveBar{bar: p.bar, out: p.logOut})
	}
	return p
}

// aboveBar writes log lines on a terminal the bar shares.
type aboveBar struct {
	bar *progressbar.ProgressBar
	out io.Writer
}

func (a aboveBar) Write(b []byte) (int, error) {
	_ = a.bar.Clear()
	return a.out.Write(b)
}

// add counts a pushed batch.
func (p *progress) add(res push.Result) {
	p.done += res.Students
	p.updated += res.Updated
	p.batches++
	// Students added since the count at the start are done too.
	grown := p.done > p.total
	p.total = max(p.total, p.done)
	if p.bar != nil {
		if grown {
			p.bar.ChangeMax(p.total)
		}
		p.bar.Describe(p.describe())
		_ = p.bar.Add(res.Students)
		return
	}
	if time.Since(p.lastLine) >= p.every {
		p.lastLine = time.Now()
		p.logLine("backfill progress")
	}
}

// finish ends the bar, or logs the last line: done, or stopped by err.
func (p *progress) finish(err error) {
	if p.bar != nil {
		p.log.Logger.SetOutput(p.logOut)
		if err == nil {
			_ = p.bar.Finish()
			return
		}
		_ = p.bar.Exit() // the bar stays as it stopped; what went wrong goes below it
		fmt.Fprintln(p.term)
		return
	}
	if err != nil {
		p.logLine("backfill progress: stopped")
		return
	}
	p.logLine("backfill progress: done")
}

func (p *progress) describe() string {
	return fmt.Sprintf("backfill: %d contacts updated, ETA %s,", p.updated, p.eta().Round(time.Second))
}

// eta is the time the students left need: no less than their requests take at the rate
// limit, and no less than the pace so far predicts.
func (p *progress) eta() time.Duration {
	left := p.total - p.done
	if left <= 0 {
		return 0
	}
	var floor, seen time.Duration
	if p.sustained > 0 {
		perBatch := 2.0 // a read and an update, until batches say otherwise
		if p.batches > 0 {
			perBatch = float64(p.requests.count()) / float64(p.batches)
		}
		batches := math.Ceil(float64(left) / push.MaxBatch)
		floor = time.Duration(batches * perBatch / p.sustained * float64(time.Second))
	}
	if p.done > 0 {
		seen = time.Duration(float64(time.Since(p.started)) * float64(left) / float64(p.done))
	}
	return max(floor, seen)
}

func (p *progress) logLine(msg string) {
	took := time.Since(p.started)
	rate := float64(p.done) / max(took.Seconds(), 0.001)
	fields := logrus.Fields{"students_done": p.done, "students_total": p.total, "contacts_updated": p.updated,
		"students_per_second": float64(int(rate*10)) / 10, "elapsed": took.Round(time.Second).String()}
	if p.done < p.total {
		fields["eta"] = p.eta().Round(time.Second).String()
	}
	p.log.WithFields(fields).Info(msg)
}

// requestCounter counts HubSpot requests (hubspot.Observer) for a run's ETA.
type requestCounter struct{ n atomic.Int64 }

func (c *requestCounter) Request(string, int, time.Duration) { c.n.Add(1) }
func (c *requestCounter) RateLimited(string)                 {}
func (c *requestCounter) count() int                         { return int(c.n.Load()) }
func (c *requestCounter) reset()                             { c.n.Store(0) }

package main

import (
	"io"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/sirupsen/logrus"
	"golang.org/x/term"

	"github.com/focusenglish/progress-sync/replication/push"
)

// progress shows how a long run is going: a bar on a terminal, else an info line every
// interval, so journald and kubectl logs show it too. Both give students done of total,
// contacts updated, the rate and an ETA.
type progress struct {
	total, done, updated int
	started, lastLine    time.Time
	every                time.Duration
	bar                  *progressbar.ProgressBar // nil: log lines
	log                  *logrus.Entry
}

// newProgress starts showing the progress of total students on out (a bar when out is a
// terminal) or in the log.
func newProgress(out io.Writer, total int, every time.Duration, log *logrus.Entry) *progress {
	p := &progress{total: total, started: time.Now(), lastLine: time.Now(), every: every, log: log}
	if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(f), progressbar.OptionSetDescription("backfill"),
			progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionSetItsString("students"),
			progressbar.OptionSetPredictTime(true), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	}
	return p
}

// add counts a pushed batch.
func (p *progress) add(res push.Result) {
	p.done += res.Students
	p.updated += res.Updated
	if p.bar != nil {
		_ = p.bar.Add(res.Students)
		return
	}
	if time.Since(p.lastLine) >= p.every {
		p.lastLine = time.Now()
		p.logLine("backfill progress")
	}
}

// finish ends the bar, or logs the last line.
func (p *progress) finish() {
	if p.bar != nil {
		_ = p.bar.Finish()
		return
	}
	p.logLine("backfill progress: done")
}

func (p *progress) logLine(msg string) {
	took := time.Since(p.started)
	rate := float64(p.done) / max(took.Seconds(), 0.001)
	fields := logrus.Fields{"students_done": p.done, "students_total": p.total, "contacts_updated": p.updated,
		"students_per_second": float64(int(rate*10)) / 10, "elapsed": took.Round(time.Second).String()}
	if rate > 0 && p.done < p.total {
		fields["eta"] = (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second).String()
	}
	p.log.WithFields(fields).Info(msg)
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/push"
)

type backfillOptions struct {
	students, maxLessons, rateLimit int
	logDir                          string
}

func runBackfill(ctx context.Context, args []string, out io.Writer) error {
	var o backfillOptions
	fs := flag.NewFlagSet("backfill", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 100_000, "synthetic students, each with a contact")
	fs.IntVar(&o.maxLessons, "max-lessons", 500, "pgtest.Seed MaxLessons (about 50 progress rows per student at 500)")
	fs.IntVar(&o.rateLimit, "rate-limit", 100, "emulator's requests per 10 s (PROGRESS_SYNC_RATE_LIMIT is left at its default 100/10s)")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir, rateLimit: o.rateLimit} })
	if err != nil {
		return err
	}
	defer h.close()
	seedBegan := time.Now()
	if _, err := h.seed(ctx, o.students, o.maxLessons, true); err != nil {
		return err
	}
	seedTook := time.Since(seedBegan)
	if _, err := h.oneShot(ctx, "provision"); err != nil {
		return err
	}
	// Let provisioning's requests leave the emulator's rolling window, then count afresh.
	time.Sleep(10 * time.Second)
	h.emu.ResetStats()

	h.logf("timing: /usr/bin/time -v progress-sync backfill")
	p, err := h.startTimed("backfill", h.env(), h.bin, "backfill")
	if err != nil {
		return err
	}
	if err := p.wait(ctx); err != nil {
		return fmt.Errorf("backfill: %w\n%s", err, p.logTail())
	}
	wall := time.Since(p.began)
	tr, _ := p.report()
	st := h.emu.Stats()
	inputs := 0
	for _, n := range st.BatchUpdateInputs {
		inputs += n
	}
	summary := lastLine(p.logPath, "backfill:")

	// The metric queries alone: the model's Page over every student, 100 at a time, as backfill does.
	pool, err := pgxpool.New(ctx, h.dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	m := model.Builtin(model.Default)
	if err := m.Verify(ctx, pool); err != nil {
		return err
	}
	var queries time.Duration
	pages := 0
	for after := uuid.Nil; ; pages++ {
		began := time.Now()
		students, err := m.Page(ctx, pool, after, push.MaxBatch)
		queries += time.Since(began)
		if err != nil {
			return err
		}
		if len(students) == 0 {
			break
		}
		after = students[len(students)-1].ID
	}

	perSecond := float64(o.rateLimit) / 10
	floor := float64(st.Requests) / perSecond
	needed := 2*int(math.Ceil(float64(o.students)/push.MaxBatch)) + 1 // a read and an update per batch, and the property check
	ratio := wall.Seconds() / floor
	fmt.Fprintf(out, "\nbackfill summary: %d students (seeded in %s), emulator limit %s, every contact empty so every student is written\n",
		o.students, seedTook.Round(time.Second), limitText(o.rateLimit))
	fmt.Fprintf(out, "  %s\n", summary)
	fmt.Fprintf(out, "  wall %.1f s (max RSS %.1f MiB, CPU %.1f s); HubSpot requests %d (%d batch/read, %d batch/update with %d inputs, %d answered 429); needed at least %d\n",
		wall.Seconds(), mib(tr.maxRSSKiB), tr.userS+tr.systemS, st.Requests, st.BatchReads, st.BatchUpdates, inputs, st.RateLimited, needed)
	fmt.Fprintf(out, "  floor = %d requests / %.0f per s = %.1f s; wall / floor = %.3f (target <= 1.10: %s)\n",
		st.Requests, perSecond, floor, ratio, verdict(ratio <= 1.10))
	fmt.Fprintf(out, "  metric queries alone (model Page x %d, measured separately): %.1f s = %.1f%% of the wall time (%.1f ms per page of 100)\n",
		pages, queries.Seconds(), 100*queries.Seconds()/wall.Seconds(), 1000*queries.Seconds()/float64(max(1, pages)))
	return nil
}

// lastLine returns the last line of a file containing marker.
func lastLine(path, marker string) string {
	b, err := readFile(path)
	if err != nil {
		return ""
	}
	var found string
	for _, line := range strings.Split(b, "\n") {
		if strings.Contains(line, marker) {
			found = line
		}
	}
	return found
}

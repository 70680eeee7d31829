package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

type reconcileOptions struct {
	students, rateLimit int
	rate                float64
	load, debounce      time.Duration
	logDir              string
}

// runReconcile measures a reconcile pass over every linked contact with nothing changed in
// HubSpot (its requests and wall time at the rate limit), then commit-to-HubSpot latency
// under steady load without a pass and during one.
func runReconcile(ctx context.Context, args []string, out io.Writer) error {
	var o reconcileOptions
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 100_000, "synthetic students, each with a contact")
	fs.IntVar(&o.rateLimit, "rate-limit", 100, "emulator's requests per 10 s (the service keeps its default 100/10s)")
	fs.Float64Var(&o.rate, "rate", 200, "changes per second during the freshness phases")
	fs.DurationVar(&o.load, "load", 3*time.Minute, "length of each freshness phase (0 skips them)")
	fs.DurationVar(&o.debounce, "debounce", 3*time.Second, "PROGRESS_SYNC_DEBOUNCE")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir, rateLimit: o.rateLimit} })
	if err != nil {
		return err
	}
	defer h.close()
	// A day between passes: the bench starts each pass itself by backdating the last one.
	ss, err := h.startStreaming(ctx, o.students, o.debounce, "PROGRESS_SYNC_RECONCILE=24h")
	if err != nil {
		return err
	}
	defer ss.conn.Close(context.Background())
	defer ss.svc.stop(time.Minute) //nolint:errcheck
	links, err := state.CountLinks(ctx, ss.conn)
	if err != nil {
		return err
	}
	h.logf("first-start backfill done: %d linked contacts; starting a reconcile pass", links)

	h.emu.ResetStats()
	pass, err := startPass(ctx, ss.conn)
	if err != nil {
		return err
	}
	took, err := waitPassDone(ctx, ss.conn, pass, 3*time.Hour, ss.svc.running)
	if err != nil {
		return err
	}
	st := h.emu.Stats()
	pages := (links + 99) / 100
	fmt.Fprintf(out, "\nreconcile summary: %d linked contacts, nothing changed in HubSpot, service rate limit 100/10s (the pass may use a tenth)\n", links)
	fmt.Fprintf(out, "  pass %d: wall %.1f s; HubSpot requests %d (%d batch/read, %d batch/update); want ceil(%d/100) = %d batch/read and 0 batch/update: %s\n",
		pass, took.Seconds(), st.Requests, st.BatchReads, st.BatchUpdates, links, pages, verdict(st.BatchReads == pages && st.BatchUpdates == 0))
	fmt.Fprintf(out, "  floor at a tenth of 100/10s (1 request/s): %d s; wall / floor = %.3f\n", pages, took.Seconds()/float64(pages))
	if o.load <= 0 {
		return nil
	}
	return reconcileFreshness(ctx, h, ss, o, out)
}

// reconcileFreshness runs the same steady load twice, without a pass and during one, and
// prints the commit-to-HubSpot latency of each.
func reconcileFreshness(ctx context.Context, h *harness, ss *streaming, o reconcileOptions, out io.Writer) error {
	fo := freshnessOptions{students: o.students, workers: 4, rateLimit: o.rateLimit, rate: o.rate, duration: o.load, debounce: o.debounce, load: "spread"}
	for _, during := range []bool{false, true} {
		if during {
			pass, err := startPass(ctx, ss.conn)
			if err != nil {
				return err
			}
			if err := waitPassStarted(ctx, ss.conn, pass, 2*time.Minute); err != nil {
				return err
			}
			h.logf("pass %d under way; load of %.0f changes/s for %s", pass, o.rate, o.load)
		} else {
			h.logf("no pass; load of %.0f changes/s for %s", o.rate, o.load)
		}
		base, err := scrape(ctx, ss.addr)
		if err != nil {
			return err
		}
		h.emu.ResetStats()
		made, _, _, err := freshnessLoad(ctx, h, fo, pgtest.IDs(ss.seeded))
		if err != nil {
			return err
		}
		if _, err := h.waitDrained(ctx, ss.conn, ss.contactOf, 5*time.Minute, ss.svc.running); err != nil {
			return err
		}
		final, err := scrape(ctx, ss.addr)
		if err != nil {
			return err
		}
		running, err := passRunning(ctx, ss.conn)
		if err != nil {
			return err
		}
		lat := parseHistogram(final, latencyMetric).minus(parseHistogram(base, latencyMetric))
		st := h.emu.Stats()
		label := "without a pass"
		if during {
			label = fmt.Sprintf("during a pass (still under way at the end: %v)", running)
		}
		fmt.Fprintf(out, "  freshness %s: %d changes, %s p50 %.2f s, p99 %.2f s; requests %d (%d batch/read, %d batch/update), %d answered 429\n",
			label, made, latencyMetric, lat.quantile(0.5), lat.quantile(0.99), st.Requests, st.BatchReads, st.BatchUpdates, st.RateLimited)
	}
	return nil
}

// startPass makes the service start its next pass within a minute (it looks for a due pass
// once a minute) by backdating the last one past the bench's day between passes, and returns
// that pass's number.
func startPass(ctx context.Context, conn *pgx.Conn) (int64, error) {
	return state.BackdateReconcile(ctx, conn, serviceSlot, 25*time.Hour)
}

// reconcileOf reads where the bench slot's reconcile stands (a zero pass before the first).
func reconcileOf(ctx context.Context, conn *pgx.Conn) (state.ReconcilePass, error) {
	sum, err := state.Summarize(ctx, conn, serviceSlot)
	if err != nil || sum.Reconcile == nil {
		return state.ReconcilePass{}, err
	}
	return *sum.Reconcile, nil
}

// waitPassStarted waits for the service to begin pass.
func waitPassStarted(ctx context.Context, conn *pgx.Conn, pass int64, limit time.Duration) error {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); {
		rp, err := reconcileOf(ctx, conn)
		if err != nil {
			return err
		}
		if rp.Pass >= pass {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("pass %d did not start within %s", pass, limit)
}

func passRunning(ctx context.Context, conn *pgx.Conn) (bool, error) {
	rp, err := reconcileOf(ctx, conn)
	return rp.Running, err
}

// waitPassDone waits for pass to complete and returns its wall time as the state records it.
func waitPassDone(ctx context.Context, conn *pgx.Conn, pass int64, limit time.Duration, alive func() bool) (time.Duration, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if !alive() {
			return 0, errors.New("the service exited")
		}
		rp, err := reconcileOf(ctx, conn)
		if err != nil {
			return 0, err
		}
		if rp.Pass == pass && !rp.Running && rp.CompletedAt.After(rp.StartedAt) {
			return rp.CompletedAt.Sub(rp.StartedAt), nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return 0, fmt.Errorf("pass %d did not complete within %s", pass, limit)
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/replication/pgtest"
)

type freshnessOptions struct {
	students, workers, rateLimit int
	rate                         float64
	duration, debounce           time.Duration
	load, logDir                 string
	// hungWebhook runs the load while an alert waits on a webhook receiver that never answers.
	hungWebhook bool
}

const (
	latencyMetric = "progress_sync_commit_to_hubspot_seconds"
	// quietMetric measures from a student's latest change: the debounce plus the pipeline.
	quietMetric = "progress_sync_last_change_to_hubspot_seconds"
)

func runFreshness(ctx context.Context, args []string, out io.Writer) error {
	var o freshnessOptions
	fs := flag.NewFlagSet("freshness", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 5000, "synthetic students, each with a contact")
	fs.Float64Var(&o.rate, "rate", 200, "changes (transactions) per second")
	fs.DurationVar(&o.duration, "duration", 5*time.Minute, "how long the load runs")
	fs.DurationVar(&o.debounce, "debounce", 3*time.Second, "PROGRESS_SYNC_DEBOUNCE")
	fs.IntVar(&o.rateLimit, "rate-limit", 100, "emulator's requests per 10 s")
	fs.IntVar(&o.workers, "workers", 4, "connections making the changes")
	fs.StringVar(&o.load, "load", "spread", "spread: each change adds XP to the next student of a shuffled round (a student changes every students/rate s); "+
		"studier: pgtest.Studier, the repo's load generator (study sessions: a few students change several times in a row)")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	fs.BoolVar(&o.hungWebhook, "hung-webhook", false, "post alerts to a receiver that never answers, and make one alert before the load (the key refused for a moment)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.load != "spread" && o.load != "studier" {
		return fmt.Errorf("--load %q: want spread or studier", o.load)
	}
	h, err := newHarness(ctx, out, "freshness", harnessOptions{logDir: o.logDir, rateLimit: o.rateLimit})
	if err != nil {
		return err
	}
	defer h.close()
	var hung *hungReceiver
	var env []string
	if o.hungWebhook {
		if hung, err = startHungReceiver(); err != nil {
			return err
		}
		defer hung.close()
		env = hung.env()
	}
	ss, err := h.startStreaming(ctx, o.students, o.debounce, env...)
	if err != nil {
		return err
	}
	defer ss.conn.Close(context.Background())
	defer ss.svc.stop(time.Minute) //nolint:errcheck
	seeded, contactOf, conn, svc, addr := ss.seeded, ss.contactOf, ss.conn, ss.svc, ss.addr
	h.logf("first-start backfill done; /metrics at %s; %s load at %.0f changes/s for %s", addr, o.load, o.rate, o.duration)
	if hung != nil {
		drained := func() error { _, err := h.waitDrained(ctx, conn, contactOf, 5*time.Minute, svc.running); return err }
		if err := hangAnAlert(ctx, h, conn, hung, drained); err != nil {
			return err
		}
	}
	base, err := scrape(ctx, addr)
	if err != nil {
		return err
	}
	h.emu.ResetStats()

	began := time.Now()
	made, students, spans, err := freshnessLoad(ctx, h, o, pgtest.IDs(seeded))
	if err != nil {
		return err
	}
	loadTook := time.Since(began)
	during := h.emu.Stats()
	end, err := currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	if _, _, err := waitSlot(ctx, conn, serviceSlot, end, 2*time.Minute, svc.running); err != nil {
		return err
	}
	drain, err := h.waitDrained(ctx, conn, contactOf, 5*time.Minute, svc.running)
	if err != nil {
		return err
	}
	final, err := scrape(ctx, addr)
	if err != nil {
		return err
	}
	lat := parseHistogram(final, latencyMetric).minus(parseHistogram(base, latencyMetric))
	p50, p99 := lat.quantile(0.50), lat.quantile(0.99)
	target := (o.debounce + 2*time.Second).Seconds()
	within := 0.0
	for i, b := range lat.bounds {
		if b <= target {
			within = lat.counts[i]
		}
	}
	st := h.emu.Stats()
	perTen := float64(during.Requests) / loadTook.Seconds() * 10
	fmt.Fprintf(out, "\nfreshness summary: %s load, %d changes to %d students in %.1f s (%.1f/s), debounce %s, emulator limit %s\n",
		o.load, made, students, loadTook.Seconds(), float64(made)/loadTook.Seconds(), o.debounce, limitText(o.rateLimit))
	fmt.Fprintf(out, "  %s: %.0f observations, mean %.2f s, p50 %.2f s, p99 %.2f s (from the buckets); %.1f%% within %.0f s\n",
		latencyMetric, lat.count, lat.sum/lat.count, p50, p99, 100*within/lat.count, target)
	fmt.Fprintf(out, "  p99 target <= debounce + 2 s = %.0f s: %s\n", target, verdict(p99 <= target))
	quiet := parseHistogram(final, quietMetric).minus(parseHistogram(base, quietMetric))
	if quiet.count > 0 {
		qp99 := quiet.quantile(0.99)
		fmt.Fprintf(out, "  %s: %.0f observations, p50 %.2f s, p99 %.2f s: %s\n",
			quietMetric, quiet.count, quiet.quantile(0.50), qp99, verdict(qp99 <= target))
	}
	fmt.Fprintf(out, "  the load's own bursts (a student's changes less than the debounce apart, as the buffer groups them): %d bursts, %.2f changes each;\n"+
		"    span from a burst's first to last change: p50 %.2f s, p99 %.2f s; so first change to due (span + debounce): p50 %.2f s, p99 %.2f s\n",
		len(spans), float64(made)/float64(max(1, len(spans))), quantile(spans, 0.5), quantile(spans, 0.99),
		quantile(spans, 0.5)+o.debounce.Seconds(), quantile(spans, 0.99)+o.debounce.Seconds())
	fmt.Fprintf(out, "  HubSpot requests during the load: %d in %.1f s = %.1f per 10 s (limit %d per 10 s), %d answered 429; batch/update %d with %d inputs\n",
		during.Requests, loadTook.Seconds(), perTen, o.rateLimit, during.RateLimited, during.BatchUpdates, sumInts(during.BatchUpdateInputs))
	fmt.Fprintf(out, "  drained %.1f s after the load stopped; requests in all %d\n", drain.Seconds(), st.Requests)
	if hung != nil {
		fmt.Fprintf(out, "  alert webhook: a receiver that never answers took %d posts, answered none, all along the load\n", hung.posts.Load())
	}
	return svc.stop(time.Minute)
}

func sumInts(s []int) int {
	n := 0
	for _, v := range s {
		n += v
	}
	return n
}

// quantile of unsorted seconds (nearest rank).
func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// freshnessLoad makes changes at o.rate for o.duration from o.workers connections and
// returns how many it made, to how many students, and the span in seconds of every burst
// (a student's changes less than the debounce apart).
func freshnessLoad(ctx context.Context, h *harness, o freshnessOptions, ids []uuid.UUID) (int, int, []float64, error) {
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	limit := rate.NewLimiter(rate.Limit(o.rate), 1)
	order := append([]uuid.UUID(nil), ids...)
	rand.New(rand.NewPCG(7, 7)).Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	var next, made atomic.Int64
	var mu sync.Mutex
	touched := map[uuid.UUID][]time.Time{}
	errs := make(chan error, o.workers)
	var wg sync.WaitGroup
	for w := 0; w < o.workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			conn, err := h.connect(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close(context.Background())
			studier := pgtest.NewStudier(ids, uint64(w)+11)
			for limit.Wait(ctx) == nil {
				var student uuid.UUID
				if o.load == "studier" {
					ch, err := studier.Step(ctx, conn)
					if err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
					student = ch.Student
				} else {
					student = order[int(next.Add(1)-1)%len(order)]
					_, err := conn.Exec(ctx, `INSERT INTO public.user_xp (user_id, total_xp) VALUES ($1, 1)
						ON CONFLICT (user_id) DO UPDATE SET total_xp = user_xp.total_xp + 1, updated_at = now()`, student)
					if err != nil {
						if ctx.Err() == nil {
							errs <- err
						}
						return
					}
				}
				made.Add(1)
				at := time.Now()
				mu.Lock()
				touched[student] = append(touched[student], at)
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, 0, nil, err
	}
	var spans []float64
	for _, times := range touched {
		sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
		first := times[0]
		for i := 1; i <= len(times); i++ {
			if i == len(times) || times[i].Sub(times[i-1]) >= o.debounce {
				spans = append(spans, times[i-1].Sub(first).Seconds())
				if i < len(times) {
					first = times[i]
				}
			}
		}
	}
	return int(made.Load()), len(touched), spans, nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"
)

type economyOptions struct {
	students, changes, txnRows, conns, noop, rateLimit int
	debounce, over                                     time.Duration
	logDir                                             string
}

func runEconomy(ctx context.Context, args []string, out io.Writer) error {
	var o economyOptions
	fs := flag.NewFlagSet("economy", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 5000, "synthetic students, each with a contact")
	fs.IntVar(&o.changes, "changes", 100_000, "row changes in the burst")
	fs.IntVar(&o.txnRows, "txn-rows", 10, "random rows per transaction")
	fs.IntVar(&o.conns, "conns", 4, "concurrent connections making the changes")
	fs.IntVar(&o.noop, "noop", 500, "students touched with no-op updates afterwards")
	fs.IntVar(&o.rateLimit, "rate-limit", 100, "emulator's requests per 10 s")
	fs.DurationVar(&o.debounce, "debounce", 3*time.Second, "PROGRESS_SYNC_DEBOUNCE")
	fs.DurationVar(&o.over, "over", 0, "pace the changes evenly over this long (0: as fast as the connections go)")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir, rateLimit: o.rateLimit} })
	if err != nil {
		return err
	}
	defer h.close()
	ss, err := h.startStreaming(ctx, o.students, o.debounce)
	if err != nil {
		return err
	}
	defer ss.conn.Close(context.Background())
	defer ss.svc.stop(time.Minute) //nolint:errcheck
	contactOf, conn, svc, addr := ss.contactOf, ss.conn, ss.svc, ss.addr
	first := h.emu.Stats()
	h.logf("first-start backfill done in %s: %d requests (%d batch/read, %d batch/update)",
		(time.Since(svc.began)).Round(100*time.Millisecond), first.Requests, first.BatchReads, first.BatchUpdates)
	h.emu.ResetStats()

	// The burst.
	began := time.Now()
	made, touched, err := economyBurst(ctx, h, o)
	if err != nil {
		return err
	}
	burst := time.Since(began)
	end, err := currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	h.logf("burst: %d row changes over %d students in %s (%d connections, %d rows per transaction, paced over %s)",
		made, touched, burst.Round(time.Millisecond), o.conns, o.txnRows, o.over)
	if _, _, err := waitSlot(ctx, conn, serviceSlot, end, 5*time.Minute, svc.running); err != nil {
		return err
	}
	if _, err := h.waitDrained(ctx, conn, contactOf, 10*time.Minute, svc.running); err != nil {
		return err
	}
	drained := time.Since(began)
	st := h.emu.Stats()
	inputs := 0
	for _, n := range st.BatchUpdateInputs {
		inputs += n
	}

	// No-op updates: rows rewritten with the same values.
	before, err := scrape(ctx, addr)
	if err != nil {
		return err
	}
	h.emu.ResetStats()
	rows, err := conn.Query(ctx, `SELECT user_id FROM public.user_xp ORDER BY user_id LIMIT $1`, o.noop)
	if err != nil {
		return err
	}
	noopIDs, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	tag, err := conn.Exec(ctx, `UPDATE public.user_xp SET total_xp = total_xp WHERE user_id = ANY($1)`, noopIDs)
	if err != nil {
		return err
	}
	end, err = currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	if _, _, err := waitSlot(ctx, conn, serviceSlot, end, time.Minute, svc.running); err != nil {
		return err
	}
	queued, _ := pendingCount(ctx, conn)
	if _, err := h.waitDrained(ctx, conn, contactOf, 2*time.Minute, svc.running); err != nil {
		return err
	}
	after, err := scrape(ctx, addr)
	if err != nil {
		return err
	}
	noop := h.emu.Stats()
	noopInputs := 0
	for _, n := range noop.BatchUpdateInputs {
		noopInputs += n
	}
	noopFlushed := promValue(after, "progress_sync_flush_batch_students_sum") - promValue(before, "progress_sync_flush_batch_students_sum")
	noopUpdated := promValue(after, "progress_sync_contacts_updated_total") - promValue(before, "progress_sync_contacts_updated_total")

	ideal := int(math.Ceil(float64(touched) / 100))
	idealInputs := int(math.Ceil(float64(inputs) / 100))
	ratio := float64(st.BatchUpdates) / float64(ideal)
	sizes := append([]int(nil), st.BatchUpdateInputs...)
	sort.Ints(sizes)
	fmt.Fprintf(out, "\neconomy summary: %d students with contacts, debounce %s, emulator limit %s\n", o.students, o.debounce, limitText(o.rateLimit))
	fmt.Fprintf(out, "  burst: %d row changes over %d students in %.1f s; drained (pending 0, contacts = reference) %.1f s after it began\n",
		made, touched, burst.Seconds(), drained.Seconds())
	fmt.Fprintf(out, "  batch/update requests: %d for %d inputs (%.2f inputs per student written); ceil(students written/100) = %d, ceil(inputs/100) = %d\n",
		st.BatchUpdates, inputs, float64(inputs)/float64(touched), ideal, idealInputs)
	fmt.Fprintf(out, "    batch sizes: min %d, median %d, mean %.1f, max %d\n", sizes[0], sizes[len(sizes)/2], float64(inputs)/float64(len(sizes)), sizes[len(sizes)-1])
	fmt.Fprintf(out, "    ratio requests / ceil(students written/100) = %.2f (target <= 1.05: %s); vs ceil(inputs/100): %.2f\n",
		ratio, verdict(ratio <= 1.05), float64(st.BatchUpdates)/float64(idealInputs))
	fmt.Fprintf(out, "  batch/read requests after the first-start backfill (all contacts cached): %d (target 0: %s)\n", st.BatchReads, verdict(st.BatchReads == 0))
	fmt.Fprintf(out, "  all HubSpot requests: %d, answered 429 by the emulator's limit: %d\n", st.Requests, st.RateLimited)
	fmt.Fprintf(out, "  no-op updates: %d rows rewritten unchanged, %d students queued, %.0f flushed; batch/update %d (%d inputs), batch/read %d, contacts updated %.0f (target 0 inputs: %s)\n",
		tag.RowsAffected(), queued, noopFlushed, noop.BatchUpdates, noopInputs, noop.BatchReads, noopUpdated, verdict(noopInputs == 0))
	return svc.stop(time.Minute)
}

// economyBurst makes o.changes row changes from o.conns connections, each transaction
// updating o.txnRows random rows of course_progress (time_spent + 60 s) or user_xp (+1 XP),
// so every touched student's values change. It returns the changes made and the students
// touched.
func economyBurst(ctx context.Context, h *harness, o economyOptions) (int, int, error) {
	conn, err := h.connect(ctx)
	if err != nil {
		return 0, 0, err
	}
	type row struct{ id, student uuid.UUID }
	rows, err := conn.Query(ctx, `SELECT id, user_id FROM public.course_progress`)
	if err != nil {
		conn.Close(ctx)
		return 0, 0, err
	}
	progress, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.id, &x.student)
		return x, err
	})
	if err != nil {
		conn.Close(ctx)
		return 0, 0, err
	}
	rows, err = conn.Query(ctx, `SELECT user_id FROM public.user_xp`)
	if err != nil {
		conn.Close(ctx)
		return 0, 0, err
	}
	xp, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	conn.Close(ctx)
	if err != nil {
		return 0, 0, err
	}

	limit := rate.NewLimiter(rate.Inf, 1)
	if o.over > 0 {
		limit = rate.NewLimiter(rate.Limit(float64(o.changes)/float64(o.txnRows)/o.over.Seconds()), 1)
	}
	var reserved, made atomic.Int64
	var mu sync.Mutex
	touched := map[uuid.UUID]bool{}
	errs := make(chan error, o.conns)
	var wg sync.WaitGroup
	for w := 0; w < o.conns; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := h.connect(ctx)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w)+1, 99))
			mine := map[uuid.UUID]bool{}
			defer func() {
				mu.Lock()
				for id := range mine {
					touched[id] = true
				}
				mu.Unlock()
			}()
			for limit.Wait(ctx) == nil {
				k := o.txnRows
				if over := reserved.Add(int64(k)) - int64(o.changes); over > 0 {
					k -= int(over)
				}
				if k <= 0 {
					return
				}
				var tag interface{ RowsAffected() int64 }
				if rng.IntN(2) == 0 {
					ids := make([]uuid.UUID, 0, k)
					seen := map[uuid.UUID]bool{}
					for len(ids) < k {
						r := progress[rng.IntN(len(progress))]
						if !seen[r.id] {
							seen[r.id] = true
							ids = append(ids, r.id)
							mine[r.student] = true
						}
					}
					tag, err = c.Exec(ctx, `UPDATE public.course_progress SET time_spent = time_spent + 60 WHERE id = ANY($1)`, ids)
				} else {
					ids := make([]uuid.UUID, 0, k)
					seen := map[uuid.UUID]bool{}
					for len(ids) < k {
						s := xp[rng.IntN(len(xp))]
						if !seen[s] {
							seen[s] = true
							ids = append(ids, s)
							mine[s] = true
						}
					}
					tag, err = c.Exec(ctx, `UPDATE public.user_xp SET total_xp = total_xp + 1 WHERE user_id = ANY($1)`, ids)
				}
				if err != nil {
					errs <- err
					return
				}
				made.Add(tag.RowsAffected())
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return 0, 0, err
	}
	if ctx.Err() != nil {
		return 0, 0, ctx.Err()
	}
	return int(made.Load()), len(touched), nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/state"
)

const (
	serviceSlot = "progress_sync"
	recvSlot    = "bench_recvlogical"
	profileSlot = "bench_profile"
	publication = "progress_sync"
	recvlogical = "/usr/lib/postgresql/15/bin/pg_recvlogical"
)

type streamOptions struct {
	students, maxLessons, changes, txnRows int
	xpEvery                                int
	statusInterval                         time.Duration
	profile, logDir                        string
}

func runStream(ctx context.Context, args []string, out io.Writer) error {
	var o streamOptions
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 20000, "synthetic students")
	fs.IntVar(&o.maxLessons, "max-lessons", 30, "pgtest.Seed MaxLessons (about 10 progress rows per student at 30)")
	fs.IntVar(&o.changes, "changes", 1_000_000, "row changes to generate")
	fs.IntVar(&o.txnRows, "txn-rows", 500, "rows per transaction")
	fs.IntVar(&o.xpEvery, "xp-every", 5, "every n-th transaction updates user_xp instead of course_progress (0: never)")
	fs.DurationVar(&o.statusInterval, "status-interval", 250*time.Millisecond, "the service's --status-interval (resolution of the confirmed position)")
	fs.StringVar(&o.profile, "profile", "", "also drain the same WAL with the consumer in-process under a CPU profile written here")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir} })
	if err != nil {
		return err
	}
	defer h.close()
	if _, err := h.seed(ctx, o.students, o.maxLessons, true); err != nil {
		return err
	}
	conn, err := h.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// The order in which the workload walks the rows, in an unpublished schema, made before
	// any slot exists so it is outside the measured WAL range.
	for _, q := range []string{
		`CREATE SCHEMA bench`,
		`CREATE TABLE bench.cp AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM public.course_progress`,
		`CREATE UNIQUE INDEX ON bench.cp (n)`,
		`CREATE TABLE bench.xp AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM public.user_xp`,
		`CREATE UNIQUE INDEX ON bench.xp (n)`,
		`ANALYZE bench.cp, bench.xp`,
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}

	// Properties in place while HubSpot answers; then it refuses everything, so the service
	// only streams into its buffer.
	if _, err := h.oneShot(ctx, "provision"); err != nil {
		return err
	}
	if _, err := h.oneShot(ctx, "setup"); err != nil {
		return err
	}
	slots := []string{recvSlot}
	if o.profile != "" {
		slots = append(slots, profileSlot)
	}
	for _, s := range slots {
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, s); err != nil {
			return fmt.Errorf("create slot %s: %w", s, err)
		}
	}
	h.emu.SetFaults(hubspottest.Faults{DailyExhausted: true})
	h.logf("publication and slot %s made by `progress-sync setup`; slot %s for pg_recvlogical; HubSpot answers every call with the daily limit", serviceSlot, recvSlot)

	// First start: the initial load queues every student. Then stop.
	svc, err := h.startService("run-first", nil, "--status-interval", o.statusInterval.String())
	if err != nil {
		return err
	}
	if err := waitQueued(ctx, conn, svc, o.students, 50*time.Millisecond); err != nil {
		return err
	}
	firstLoad := time.Since(svc.began)
	lsn, err := currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	if _, _, err := waitSlot(ctx, conn, serviceSlot, lsn, time.Minute, svc.running); err != nil {
		return err
	}
	if err := svc.stop(time.Minute); err != nil {
		return err
	}
	h.logf("first start queued %d students in %s; stopped", o.students, firstLoad.Round(time.Millisecond))

	start, _, err := slotPosition(ctx, conn, serviceSlot)
	if err != nil {
		return err
	}
	for _, s := range slots {
		if _, err := conn.Exec(ctx, `SELECT pg_replication_slot_advance($1, $2::pg_lsn)`, s, start.String()); err != nil {
			return fmt.Errorf("advance slot %s to %s: %w", s, start, err)
		}
	}

	// The workload.
	began := time.Now()
	made, txns, err := streamWorkload(ctx, conn, o)
	if err != nil {
		return err
	}
	genTook := time.Since(began)
	end, err := currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	walBytes := uint64(end - start)
	h.logf("generated %d row changes in %d transactions in %s (%.0f rows/s); WAL %s..%s (%.0f MiB)",
		made, txns, genTook.Round(time.Millisecond), float64(made)/genTook.Seconds(), start, end, float64(walBytes)/(1<<20))

	// pg_recvlogical drains it.
	cfg, err := pgx.ParseConfig(h.dbURL)
	if err != nil {
		return err
	}
	conninfo := fmt.Sprintf("host=%s port=%d user=%s dbname=%s", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	recvArgs := []string{recvlogical, "-d", conninfo, "--start", "-S", recvSlot, "-P", "pgoutput",
		"-o", "proto_version=1", "-o", "publication_names=" + publication, "-f", "/dev/null", "--no-loop", "--endpos", end.String()}
	h.logf("timing: /usr/bin/time -v %s", shellJoin(recvArgs))
	cpu0 := serverCPU(h.srv.DataDir())
	rp, err := h.startTimed("pg_recvlogical", os.Environ(), recvArgs...)
	if err != nil {
		return err
	}
	if err := rp.wait(ctx); err != nil {
		return fmt.Errorf("pg_recvlogical: %w\n%s", err, rp.logTail())
	}
	recvTook := time.Since(rp.began)
	recvServerCPU := serverCPU(h.srv.DataDir()) - cpu0
	recvTime, _ := rp.report()

	// progress-sync drains the same range into its durable buffer.
	h.logf("timing: progress-sync run --status-interval %s (restart; the WAL above is its backlog)", o.statusInterval)
	cpu0 = serverCPU(h.srv.DataDir())
	svc, err = h.startService("run-drain", nil, "--status-interval", o.statusInterval.String())
	if err != nil {
		return err
	}
	hwm := sampleHWM(svc.child)
	reached, active, err := waitSlot(ctx, conn, serviceSlot, end, 14*time.Minute, svc.running)
	peak := hwm.finish()
	if err != nil {
		_ = svc.stop(time.Minute)
		return fmt.Errorf("%w\n%s", err, svc.logTail())
	}
	svcServerCPU := serverCPU(h.srv.DataDir()) - cpu0
	svcTook := reached.Sub(svc.began)
	var streamed time.Duration
	if !active.IsZero() {
		streamed = reached.Sub(active)
	}
	if err := svc.stop(time.Minute); err != nil {
		return err
	}
	svcTime, _ := svc.report()
	pending, _ := pendingCount(ctx, conn)

	var prof profileResult
	if o.profile != "" {
		if prof, err = profileConsumer(ctx, h, conn, o, end); err != nil {
			return err
		}
	}

	recvRate := float64(made) / recvTook.Seconds()
	svcRate := float64(made) / svcTook.Seconds()
	ratio := svcRate / recvRate
	fmt.Fprintf(out, "\nstream summary: %d row changes (%d transactions of %d rows, every %d-th on user_xp) over %d students, %.0f MiB of WAL\n",
		made, txns, o.txnRows, o.xpEvery, o.students, float64(walBytes)/(1<<20))
	fmt.Fprintf(out, "  pg_recvlogical:        %8.2f s  %9.0f rows/s  max RSS %6.1f MiB  client CPU %.2f s  server CPU %.2f s\n",
		recvTook.Seconds(), recvRate, mib(recvTime.maxRSSKiB), recvTime.userS+recvTime.systemS, recvServerCPU)
	fmt.Fprintf(out, "  progress-sync run:     %8.2f s  %9.0f rows/s  max RSS %6.1f MiB (VmHWM %.1f)  client CPU %.2f s  server CPU %.2f s\n",
		svcTook.Seconds(), svcRate, mib(svcTime.maxRSSKiB), mib(peak), svcTime.userS+svcTime.systemS, svcServerCPU)
	if streamed > 0 {
		fmt.Fprintf(out, "    of which streaming (slot active to confirmed >= end): %.2f s (%.0f rows/s)\n", streamed.Seconds(), float64(made)/streamed.Seconds())
	}
	fmt.Fprintf(out, "    first start (initial load of %d students): %s; pending after drain: %d\n", o.students, firstLoad.Round(time.Millisecond), pending)
	if o.profile != "" {
		fmt.Fprintf(out, "  in-process consumer:   %8.2f s  %9.0f rows/s  (CPU profile %s)\n", prof.took.Seconds(), float64(made)/prof.took.Seconds(), o.profile)
		fmt.Fprintf(out, "    sink.Add: %d calls, %.2f s in total (%.0f%% of the drain), %d students (%.0f per call); Advance: %d calls\n",
			prof.adds, prof.addTime.Seconds(), 100*prof.addTime.Seconds()/prof.took.Seconds(), prof.students, float64(prof.students)/float64(max(1, prof.adds)), prof.advances)
	}
	fmt.Fprintf(out, "  ratio progress-sync / pg_recvlogical: %.2f (target >= 0.70: %s)\n", ratio, verdict(ratio >= 0.7))
	return nil
}

// streamWorkload updates rows in transactions of txnRows, walking course_progress (and every
// xpEvery-th transaction user_xp) in the order of bench.cp / bench.xp, wrapping around.
func streamWorkload(ctx context.Context, conn *pgx.Conn, o streamOptions) (made, txns int, err error) {
	var cpRows, xpRows int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM bench.cp), (SELECT count(*) FROM bench.xp)`).Scan(&cpRows, &xpRows); err != nil {
		return 0, 0, err
	}
	if cpRows == 0 || xpRows == 0 {
		return 0, 0, fmt.Errorf("nothing to update: %d course_progress and %d user_xp rows", cpRows, xpRows)
	}
	cpAt, xpAt := 0, 0
	for made < o.changes {
		n := min(o.txnRows, o.changes-made)
		var q string
		var lo int
		if o.xpEvery > 0 && txns%o.xpEvery == o.xpEvery-1 {
			n = min(n, xpRows)
			if xpAt+n > xpRows {
				xpAt = 0
			}
			q, lo = `UPDATE public.user_xp x SET total_xp = x.total_xp + 1 FROM bench.xp o WHERE o.id = x.id AND o.n > $1 AND o.n <= $2`, xpAt
			xpAt += n
		} else {
			n = min(n, cpRows)
			if cpAt+n > cpRows {
				cpAt = 0
			}
			q, lo = `UPDATE public.course_progress c SET time_spent = c.time_spent + 1 FROM bench.cp o WHERE o.id = c.id AND o.n > $1 AND o.n <= $2`, cpAt
			cpAt += n
		}
		tag, err := conn.Exec(ctx, q, lo, lo+n)
		if err != nil {
			return made, txns, err
		}
		made += int(tag.RowsAffected())
		txns++
	}
	return made, txns, nil
}

// timingSink wraps the buffer to time the consumer's durable writes.
type timingSink struct {
	*buffer.Buffer // Checkpoint and Resume as they are
	mu             sync.Mutex
	adds           int
	advances       int
	students       int
	addTime        time.Duration
}

func (t *timingSink) Add(ctx context.Context, students []uuid.UUID, end pglogrepl.LSN) error {
	began := time.Now()
	err := t.Buffer.Add(ctx, students, end)
	t.mu.Lock()
	t.adds++
	t.students += len(students)
	t.addTime += time.Since(began)
	t.mu.Unlock()
	return err
}

func (t *timingSink) Advance(ctx context.Context, end pglogrepl.LSN) error {
	t.mu.Lock()
	t.advances++
	t.mu.Unlock()
	return t.Buffer.Advance(ctx, end)
}

type profileResult struct {
	took                     time.Duration
	adds, advances, students int
	addTime                  time.Duration
}

// profileConsumer drains the same WAL range from a third slot with the service's consumer
// and buffer in this process, under a CPU profile, timing the buffer writes.
func profileConsumer(ctx context.Context, h *harness, conn *pgx.Conn, o streamOptions, end pglogrepl.LSN) (profileResult, error) {
	pool, err := pgxpool.New(ctx, h.dbURL)
	if err != nil {
		return profileResult{}, err
	}
	defer pool.Close()
	store, err := state.Open(ctx, pool, model.Builtin(model.Default).Students)
	if err != nil {
		return profileResult{}, err
	}
	buf, _, err := buffer.Open(ctx, store, profileSlot, buffer.Options{Debounce: 3 * time.Second, MaxDelay: 30 * time.Second})
	if err != nil {
		return profileResult{}, err
	}
	// The slot was made ahead of the load; a checkpoint at its position streams it without
	// queueing every student first.
	slot, err := replication.ReadSlot(ctx, pool, profileSlot)
	if err != nil {
		return profileResult{}, err
	}
	from, err := pglogrepl.ParseLSN(slot.ConfirmedFlushLSN)
	if err != nil {
		return profileResult{}, err
	}
	if err := buf.Advance(ctx, from); err != nil {
		return profileResult{}, err
	}
	sink := &timingSink{Buffer: buf}
	log := logrus.New()
	log.SetOutput(io.Discard)
	cons := replication.NewConsumer(pool, sink, replication.Options{DatabaseURL: h.dbURL,
		Names: replication.Names{Slot: profileSlot, Publication: publication}, Model: model.Builtin(model.Default), StatusInterval: o.statusInterval, Log: logrus.NewEntry(log)})
	f, err := os.Create(o.profile)
	if err != nil {
		return profileResult{}, err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return profileResult{}, err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	began := time.Now()
	go func() { done <- cons.Run(runCtx, 0) }()
	reached, _, err := waitSlot(ctx, conn, profileSlot, end, 14*time.Minute, nil)
	stop()
	<-done
	pprof.StopCPUProfile()
	if err != nil {
		return profileResult{}, err
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	return profileResult{took: reached.Sub(began), adds: sink.adds, advances: sink.advances, students: sink.students, addTime: sink.addTime}, nil
}

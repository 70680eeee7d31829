package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
)

type memoryOptions struct {
	students, churn int
	logDir          string
}

func runMemory(ctx context.Context, args []string, out io.Writer) error {
	var o memoryOptions
	fs := flag.NewFlagSet("memory", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&o.students, "students", 100_000, "synthetic students; the first start queues them all")
	fs.IntVar(&o.churn, "churn", 300_000, "user_xp row changes streamed afterwards (students already pending change again)")
	fs.StringVar(&o.logDir, "log-dir", "", "keep logs here")
	h, err := startScenario(ctx, out, fs, args, func() harnessOptions { return harnessOptions{logDir: o.logDir} })
	if err != nil {
		return err
	}
	defer h.close()
	if _, err := h.seed(ctx, o.students, 0, false); err != nil {
		return err
	}
	if _, err := h.oneShot(ctx, "provision"); err != nil {
		return err
	}
	h.emu.SetFaults(hubspottest.Faults{DailyExhausted: true})
	conn, err := h.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE SCHEMA bench; CREATE TABLE bench.xp AS SELECT row_number() OVER (ORDER BY id) AS n, id FROM public.user_xp;
		CREATE UNIQUE INDEX ON bench.xp (n); ANALYZE bench.xp`); err != nil {
		return err
	}

	svc, err := h.startService("run", nil, "--status-interval", "1s")
	if err != nil {
		return err
	}
	defer svc.stop(time.Minute) //nolint:errcheck
	addr, err := svc.metricsAddr(ctx)
	if err != nil {
		return err
	}
	hwm := sampleHWM(svc.child)
	if err := waitQueued(ctx, conn, svc, o.students, 100*time.Millisecond); err != nil {
		return err
	}
	lsn, err := currentLSN(ctx, conn)
	if err != nil {
		return err
	}
	if _, _, err := waitSlot(ctx, conn, serviceSlot, lsn, time.Minute, svc.running); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // let the heap settle
	loaded, _ := scrape(ctx, addr)
	rssLoaded := procStatus(svc.child, "VmRSS")
	hwmLoaded := procStatus(svc.child, "VmHWM")
	h.logf("%d students pending; VmRSS %.1f MiB, VmHWM %.1f MiB", o.students, mib(rssLoaded), mib(hwmLoaded))

	// Churn: students already pending change again, so every Add re-schedules them.
	var xpRows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM bench.xp`).Scan(&xpRows); err != nil {
		return err
	}
	made, at := 0, 0
	for made < o.churn {
		n := min(1000, o.churn-made, xpRows)
		if at+n > xpRows {
			at = 0
		}
		tag, err := conn.Exec(ctx, `UPDATE public.user_xp x SET total_xp = x.total_xp + 1 FROM bench.xp o WHERE o.id = x.id AND o.n > $1 AND o.n <= $2`, at, at+n)
		if err != nil {
			return err
		}
		made += int(tag.RowsAffected())
		at += n
	}
	if lsn, err = currentLSN(ctx, conn); err != nil {
		return err
	}
	if _, _, err := waitSlot(ctx, conn, serviceSlot, lsn, 5*time.Minute, svc.running); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	churned, _ := scrape(ctx, addr)
	rssChurned := procStatus(svc.child, "VmRSS")
	pending, _ := pendingCount(ctx, conn)
	peak := hwm.finish()
	if err := svc.stop(time.Minute); err != nil {
		return err
	}
	tr, _ := svc.report()
	peak = max(peak, tr.maxRSSKiB)

	fmt.Fprintf(out, "\nmemory summary: %d students pending (HubSpot answers every call with the daily limit, nothing drains)\n", o.students)
	fmt.Fprintf(out, "  after the first-start load: VmRSS %.1f MiB, VmHWM %.1f MiB, Go heap in use %.1f MiB, heap objects %.0f\n",
		mib(rssLoaded), mib(hwmLoaded), promValue(loaded, "go_memstats_heap_inuse_bytes")/(1<<20), promValue(loaded, "go_memstats_heap_objects"))
	fmt.Fprintf(out, "  after %d more changes to pending students: VmRSS %.1f MiB, Go heap in use %.1f MiB, heap objects %.0f; pending %d\n",
		made, mib(rssChurned), promValue(churned, "go_memstats_heap_inuse_bytes")/(1<<20), promValue(churned, "go_memstats_heap_objects"), pending)
	fmt.Fprintf(out, "  peak RSS %.1f MiB (/usr/bin/time -v: %.1f MiB) = %.0f bytes per pending student (target <= 150 MiB: %s)\n",
		mib(peak), mib(tr.maxRSSKiB), float64(peak)*1024/float64(o.students), verdict(mib(peak) <= 150))
	return nil
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

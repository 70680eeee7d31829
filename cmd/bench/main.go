// Command bench measures progress-sync against its performance limits. Each scenario is a
// subcommand that builds the real binary, starts a throwaway PostgreSQL (replication/pgtest)
// and the HubSpot emulator on loopback, generates load and prints its figures:
//
//	go run ./cmd/bench stream     # WAL drain rate vs pg_recvlogical on the same WAL range
//	go run ./cmd/bench economy    # HubSpot requests per burst of changes
//	go run ./cmd/bench backfill   # backfill wall time vs the rate-limit floor
//	go run ./cmd/bench freshness  # commit-to-HubSpot latency under steady load
//	go run ./cmd/bench memory     # peak RSS with many students pending
//	go run ./cmd/bench reconcile  # a reconcile pass: requests, wall time, effect on freshness
//	go run ./cmd/bench eta        # a backfill's ETA on a terminal vs the real time
//
// Every scenario has flags for its sizes (-h lists them) so that a small version runs in
// seconds. The Go micro-benchmarks are in bench_test.go:
//
//	go test -run '^$' -bench . -benchmem ./cmd/bench
//
// BENCHMARKS.md holds the latest figures and the exact command behind each.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
)

// scenario is one subcommand: it registers its flags and runs.
type scenario struct {
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

func scenarios() map[string]scenario {
	return map[string]scenario{
		"stream":    {"WAL drain: pg_recvlogical vs progress-sync run on the same 1,000,000 row changes", runStream},
		"economy":   {"batch/update and batch/read requests for 100,000 changes over 5,000 students; no-op updates", runEconomy},
		"backfill":  {"progress-sync backfill of 100,000 students under 100 requests/10 s: wall time vs floor", runBackfill},
		"freshness": {"commit-to-HubSpot latency (p50/p99) at 200 changes/s under the rate limit", runFreshness},
		"memory":    {"peak RSS of the service with 100,000 students pending", runMemory},
		"eta":       {"the ETA a backfill's bar shows on a terminal vs the real time: 5,000 students at 20 requests/10 s", runETA},
		"reconcile": {"a reconcile pass over 100,000 linked contacts: requests and wall time; freshness p99 at 200 changes/s with and without a pass", runReconcile},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := dispatch(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func dispatch(ctx context.Context, args []string, out io.Writer) error {
	all := scenarios()
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(out, all)
		if len(args) == 0 {
			return errors.New("name a scenario")
		}
		return nil
	}
	sc, ok := all[args[0]]
	if !ok {
		usage(out, all)
		return fmt.Errorf("unknown scenario %q", args[0])
	}
	return sc.run(ctx, args[1:], out)
}

func usage(out io.Writer, all map[string]scenario) {
	names := make([]string, 0, len(all))
	for n := range all {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(out, "usage: go run ./cmd/bench <scenario> [flags]   (flags: <scenario> -h)")
	for _, n := range names {
		fmt.Fprintf(out, "  %-10s %s\n", n, all[n].summary)
	}
	fmt.Fprintln(out, strings.TrimSpace(`
micro-benchmarks: go test -run '^$' -bench . -benchmem ./cmd/bench`))
}

// Command study-sim simulates Focus English students studying: it makes a steady stream of
// realistic changes to the platform's tables (lessons opened and completed, XP, streaks, reset
// lessons, course changes), for demos and as the load generator for benchmarks of progress-sync.
//
//	DATABASE_URL=postgres://... study-sim --rate 20 --duration 5m
//
// It works on the students already in public.users and never creates or deletes one.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/time/rate"

	"github.com/focusenglish/progress-sync/replication/pgtest"
)

// exitUsage is the status for a wrong setting or flag, as progress-sync uses.
const exitUsage = 2

// stepTimeout bounds one change; a change under way when the run stops is allowed to finish,
// so an interrupt never leaves a half-described change.
const stepTimeout = 30 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the command's settings.
type options struct {
	databaseURL string
	rate        float64
	duration    time.Duration
	seed        uint64
	quiet       bool
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("study-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: study-sim [flags]\n\nSimulates students studying by changing the platform's tables at a steady rate.\n\nflags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.databaseURL, "database-url", getenv("DATABASE_URL"), "PostgreSQL connection URL (default $DATABASE_URL)")
	fs.Float64Var(&o.rate, "rate", 5, "changes per second")
	fs.DurationVar(&o.duration, "duration", 0, "how long to run; 0 runs until SIGINT or SIGTERM")
	fs.Uint64Var(&o.seed, "seed", 0, "seed for the choice of changes; 0 picks one (printed in the summary)")
	fs.BoolVar(&o.quiet, "quiet", false, "print only the summary, not one line per change")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return exitUsage
	}
	var problems []string
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	if o.databaseURL == "" {
		problems = append(problems, "DATABASE_URL (or --database-url) is required")
	}
	if !(o.rate > 0) {
		problems = append(problems, fmt.Sprintf("--rate %v must be a positive number of changes per second", o.rate))
	}
	if o.duration < 0 {
		problems = append(problems, fmt.Sprintf("--duration %s must not be negative", o.duration))
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, "study-sim: "+p)
		}
		return exitUsage
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	if err := simulate(ctx, o, stdout); err != nil {
		fmt.Fprintln(stderr, "study-sim: "+err.Error())
		return 1
	}
	return 0
}

// simulate makes changes at the requested rate until the duration is over or ctx ends, then
// prints the summary (also after an error, so a failed benchmark still says what it did).
func simulate(ctx context.Context, o options, out io.Writer) error {
	conn, err := pgx.Connect(ctx, o.databaseURL)
	if err != nil {
		return fmt.Errorf("connect to the database: %w", err)
	}
	defer conn.Close(context.Background())
	ids, emails, err := readStudents(ctx, conn)
	if err != nil {
		return err
	}
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	studier := pgtest.NewStudier(ids, o.seed)
	// A burst of one keeps the changes evenly spaced rather than in clumps.
	limiter := rate.NewLimiter(rate.Limit(o.rate), 1)
	counts := map[string]int{}
	total := 0
	start := time.Now()
	defer func() { printSummary(out, o, counts, total, time.Since(start)) }()
	for {
		// Wait fails at once when the next change would fall after the deadline: the run is over.
		if err := limiter.Wait(ctx); err != nil {
			return nil
		}
		stepCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stepTimeout)
		ch, err := studier.Step(stepCtx, conn)
		cancel()
		if err != nil {
			return err
		}
		counts[ch.Kind]++
		total++
		if !o.quiet {
			fmt.Fprintf(out, "%s %s\n", emails[ch.Student], ch.Description)
		}
	}
}

// readStudents reads the students to simulate, in a fixed order so a seed repeats a run.
func readStudents(ctx context.Context, conn *pgx.Conn) ([]uuid.UUID, map[uuid.UUID]string, error) {
	rows, err := conn.Query(ctx, `SELECT id, email FROM public.users ORDER BY id`)
	if err != nil {
		return nil, nil, fmt.Errorf("read students from public.users: %w", err)
	}
	var ids []uuid.UUID
	emails := map[uuid.UUID]string{}
	for rows.Next() {
		var id uuid.UUID
		var email string
		if err := rows.Scan(&id, &email); err != nil {
			return nil, nil, fmt.Errorf("read students from public.users: %w", err)
		}
		ids = append(ids, id)
		emails[id] = email
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("read students from public.users: %w", err)
	}
	if len(ids) == 0 {
		return nil, nil, errors.New("public.users has no students to simulate")
	}
	return ids, emails, nil
}

func printSummary(out io.Writer, o options, counts map[string]int, total int, elapsed time.Duration) {
	achieved := 0.0
	if elapsed > 0 {
		achieved = float64(total) / elapsed.Seconds()
	}
	fmt.Fprintf(out, "study-sim: %d changes in %s (%.2f/s, asked for %g/s), seed %d\n",
		total, elapsed.Round(100*time.Millisecond), achieved, o.rate, o.seed)
	var kinds []string
	for _, k := range pgtest.Kinds() {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, counts[k]))
	}
	fmt.Fprintf(out, "study-sim: %s\n", strings.Join(kinds, ", "))
}

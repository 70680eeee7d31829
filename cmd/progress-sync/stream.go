package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/config"
	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/telemetry"
	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/flush"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
)

// streamFlags are the tuning knobs of run and replay beyond docs/contract.md §4.
type streamFlags struct {
	grace           time.Duration
	recheck         time.Duration
	statusInterval  time.Duration
	dailyLimitPause time.Duration
}

func (f *streamFlags) register(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&f.grace, "grace", 20*time.Second, "on SIGTERM, how long to keep pushing students that are due")
	cmd.Flags().DurationVar(&f.recheck, "recheck-unmatched", time.Hour, "how often students without a HubSpot contact are looked up again")
	cmd.Flags().DurationVar(&f.statusInterval, "status-interval", 10*time.Second, "how often the position is reported to PostgreSQL (keep well under wal_sender_timeout)")
	cmd.Flags().DurationVar(&f.dailyLimitPause, "daily-limit-pause", 15*time.Minute, "how long pushes pause when HubSpot's daily limit is spent (changes keep being recorded)")
}

func (a *app) runCmd() *cobra.Command {
	var f streamFlags
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Stream changes from the replication slot and keep HubSpot in step",
		Long: `Run the service: set up the publication and replica identities if needed, provision the
HubSpot properties, and on a first start queue every student for a backfill read from the new
slot's snapshot. Then stream changes, debounce them per student, and push what changed.

SIGTERM (or Ctrl-C) stops reading, pushes what is due within --grace, records the checkpoint
and exits 0.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.stream(cmd.Context(), f, 0)
		},
	}
	f.register(cmd)
	return cmd
}

func (a *app) replayCmd() *cobra.Command {
	var f streamFlags
	var from string
	cmd := &cobra.Command{
		Use:   "replay --from-lsn LSN",
		Short: "Stream again from a stored LSN",
		Long: `Run the service starting from the given LSN instead of the slot's position. A logical slot
cannot be rewound: when the slot has already confirmed past the LSN, replay refuses and names
both positions; progress-sync backfill recomputes every student from current data instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lsn, err := pglogrepl.ParseLSN(from)
			if err != nil || lsn == 0 {
				return usageError{fmt.Errorf("--from-lsn %q is not an LSN such as 0/16B3748", from)}
			}
			return a.stream(cmd.Context(), f, lsn)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&from, "from-lsn", "", "LSN to stream from (as stored in progress_sync.checkpoint or printed by status)")
	_ = cmd.MarkFlagRequired("from-lsn")
	return cmd
}

// stream is the service: stream → buffer → flusher, with a clean stop. A stop requested
// while it is still starting is a clean stop too: nothing was in flight.
func (a *app) stream(ctx context.Context, f streamFlags, from pglogrepl.LSN) error {
	err := a.serve(ctx, f, from)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *app) serve(ctx context.Context, f streamFlags, from pglogrepl.LSN) error {
	cfg, log, db, err := a.openDatabase(ctx, config.Needs{Replication: true, HubSpot: true})
	if err != nil {
		return err
	}
	defer db.Close()
	names := replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}
	store, err := state.Open(ctx, db)
	if err != nil {
		return err
	}
	rep, err := replication.Setup(ctx, db, names, "")
	if err != nil {
		return err
	}
	for _, line := range rep.Done {
		log.Info(line)
	}
	if err := replication.CheckVisibility(ctx, db); err != nil {
		return err
	}
	tm := telemetry.New()
	hs, err := a.newHubSpot(cfg, log, tm)
	if err != nil {
		return err
	}
	buf, checkpoint, err := buffer.Open(ctx, db, buffer.Options{Slot: cfg.Slot, Debounce: cfg.Debounce, MaxDelay: cfg.MaxDelay})
	if err != nil {
		return err
	}
	log.WithFields(logrus.Fields{"checkpoint": checkpoint.String(), "pending": buf.Len()}).Info("loaded sync state")

	consumer := replication.NewConsumer(db, buf, replication.Options{
		DatabaseURL: cfg.DatabaseURL, Names: names, StatusInterval: f.statusInterval,
		Log: log.WithField("component", "replication"), Observer: tm,
	})
	flusher := flush.New(buf, db, push.New(hs, store, log.WithField("component", "push"), push.Options{ShowEmails: a.showEmails}),
		flush.Options{Log: log.WithField("component", "flush"), DailyLimitPause: f.dailyLimitPause, Observer: tm,
			Visibility: func(ctx context.Context) error { return replication.CheckVisibility(ctx, db) }})

	tm.Gauge("progress_sync_pending_students", "Students waiting in the durable buffer.", func() float64 { return float64(buf.Len()) })
	tm.Gauge("progress_sync_confirmed_lsn", "The position confirmed to the slot, as a number.", func() float64 { return float64(consumer.Confirmed()) })
	tm.Gauge("progress_sync_streaming", "1 while connected to the slot and streaming.", func() float64 {
		if consumer.Streaming() {
			return 1
		}
		return 0
	})
	tm.Gauge("progress_sync_rows_hidden", "1 while pushes are held because the database hides rows of the source tables from the service.", func() float64 {
		if flusher.RowsHidden() {
			return 1
		}
		return 0
	})
	health := &telemetry.Health{Streaming: consumer.Streaming, Confirmed: func() uint64 { return uint64(consumer.Confirmed()) },
		DailyPaused: flusher.DailyLimitPaused, RowsHidden: flusher.RowsHidden, StallAfter: 3*f.statusInterval + 30*time.Second}
	stopServing, err := serveTelemetry(cfg.Listen, telemetry.Handler(tm, health), log)
	if err != nil {
		return err
	}
	defer stopServing()
	go tm.WatchDatabase(ctx, db, cfg.Slot, f.statusInterval, log)

	// The flusher outlives the stream by the grace period; workCtx bounds even that.
	workCtx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	stopFlushing := make(chan struct{})
	flushed := make(chan struct{})
	provisioned := make(chan struct{})
	go func() {
		defer close(flushed)
		// HubSpot being down, out of daily calls or misconfigured must not stop the stream:
		// the slot would keep WAL. Changes are buffered until the properties are in place.
		if !provisionUntilDone(ctx, hs, log) {
			return
		}
		close(provisioned)
		_ = flusher.Run(workCtx, stopFlushing)
	}()
	go recheckUnmatched(ctx, store, buf, f.recheck, log)

	streamErr := consumer.Run(ctx, from, checkpoint == 0)
	close(stopFlushing)
	<-flushed
	if streamErr != nil {
		return streamErr
	}
	select {
	case <-provisioned:
		graceCtx, cancel := context.WithTimeout(workCtx, f.grace)
		defer cancel()
		if err := flusher.Drain(graceCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.WithError(err).Warn("could not push everything due before stopping; it stays in the buffer")
		}
	default:
	}
	log.WithFields(logrus.Fields{"checkpoint": consumer.Confirmed().String(), "pending": buf.Len()}).Info("stopped")
	return nil
}

// serveTelemetry serves /metrics, /healthz and /readyz on addr until the returned stop is
// called. Port 0 picks a free port; the log says which.
func serveTelemetry(addr string, h http.Handler, log *logrus.Entry) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("PROGRESS_SYNC_LISTEN %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.WithField("addr", ln.Addr().String()).Info("serving /metrics, /healthz and /readyz")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, nil
}

// provisionUntilDone provisions the HubSpot properties, retrying until it works or ctx ends;
// it reports whether it worked.
func provisionUntilDone(ctx context.Context, hs *hubspot.Client, log *logrus.Entry) bool {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 5*time.Second, 5*time.Minute, 0
	for {
		err := provision(ctx, hs, io.Discard)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		wait := bo.NextBackOff()
		log.WithError(err).WithField("retry_in", wait.String()).
			Error("cannot provision the HubSpot properties; changes are recorded but not pushed until this works")
		select {
		case <-ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// recheckUnmatched queues students without a contact again now and then: the contact may
// have been created since.
func recheckUnmatched(ctx context.Context, store *state.Store, buf *buffer.Buffer, every time.Duration, log *logrus.Entry) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ids, err := store.StaleUnmatched(ctx, every)
		if err == nil && len(ids) > 0 {
			err = buf.Add(ctx, ids, 0)
		}
		if err != nil && ctx.Err() == nil {
			log.WithError(err).Warn("could not queue unmatched students for another look")
		}
	}
}

func (a *app) setupCmd() *cobra.Command {
	var printSQL bool
	var role string
	cmd := &cobra.Command{
		Use:   "setup",
		Short: "Create the publication, replica identities and replication slot (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out, ctx := cmd.OutOrStdout(), cmd.Context()
			if printSQL {
				return a.printSetupSQL(ctx, out)
			}
			cfg, _, db, err := a.openDatabase(ctx, config.Needs{Database: true, Replication: true})
			if err != nil {
				return err
			}
			defer db.Close()
			if _, err := state.Open(ctx, db); err != nil {
				return err
			}
			rep, err := replication.Setup(ctx, db, replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, role)
			if err != nil {
				return err
			}
			created, err := replication.CreateSlot(ctx, db, cfg.Slot)
			if err != nil {
				return err
			}
			if created {
				rep.Done = append(rep.Done, "created replication slot "+cfg.Slot)
			}
			for _, line := range rep.Done {
				fmt.Fprintln(out, line)
			}
			fmt.Fprintf(out, "setup: publication %s, replica identities and slot %s are in place\n", cfg.Publication, cfg.Slot)
			return nil
		},
	}
	cmd.Flags().BoolVar(&printSQL, "print-sql", false, "print the SQL for a DBA instead of running it")
	cmd.Flags().StringVar(&role, "role", "", "the role the service connects as, for the read policies on tables with row-level security (default: the connecting role)")
	return cmd
}

// leastPrivilegeRole is the role `setup --print-sql` creates for the service.
const leastPrivilegeRole = "progress_sync"

// printSetupSQL prints what setup does, and a least-privilege role, for a DBA. With a
// database to ask, the role's read policies go on exactly the tables with row-level security
// enabled; without one, on all six (a policy on a table without RLS does nothing until RLS is
// switched on, when it keeps the sync working).
func (a *app) printSetupSQL(ctx context.Context, out io.Writer) error {
	cfg, _, err := a.load(config.Needs{})
	if err != nil {
		return err
	}
	// The SQL is useful without a database too; with one, it fits the database.
	var databaseURL string
	if withDB, _, err := a.load(config.Needs{Database: true}); err == nil {
		databaseURL = withDB.DatabaseURL
	}
	rlsTables, why := rlsTablesOrAll(ctx, databaseURL)
	fmt.Fprintln(out, "-- progress-sync setup: run as a role that owns these tables (Supabase: postgres).")
	fmt.Fprintln(out, strings.Join(replication.SetupSQL(replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}), "\n"))
	fmt.Fprintln(out, "\n-- Optional: a least-privilege role for the service (use it in DATABASE_URL). It may log in,")
	fmt.Fprintln(out, "-- replicate, read the six tables and own its state schema; nothing else. With it, leave the")
	fmt.Fprintln(out, "-- slot to the service: it creates the slot itself, with a snapshot for the first backfill.")
	fmt.Fprintln(out, "-- Row-level security hides every row from a role no policy lets read, so each table that")
	fmt.Fprintf(out, "-- has it gets a read policy for this role alone (%s).\n", why)
	fmt.Fprintln(out, strings.Join(replication.RoleSQL(leastPrivilegeRole, state.Schema, rlsTables), "\n"))
	return nil
}

// rlsTablesOrAll asks the database which source tables have row-level security; when it
// cannot, it answers all of them, and says which it did.
func rlsTablesOrAll(ctx context.Context, databaseURL string) ([]string, string) {
	var all []string
	for _, t := range replication.Tables() {
		all = append(all, t.Name)
	}
	if databaseURL == "" {
		return all, "DATABASE_URL is not set or not valid, so on all six tables; harmless where RLS is off"
	}
	db, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return all, "the database could not be read, so on all six tables; harmless where RLS is off"
	}
	defer db.Close()
	tables, err := replication.RLSTables(ctx, db)
	if err != nil {
		return all, "the database could not be read, so on all six tables; harmless where RLS is off"
	}
	if len(tables) == 0 {
		return nil, "none of the six tables has it now"
	}
	return tables, "RLS is on for " + strings.Join(tables, ", ")
}

func (a *app) teardownCmd() *cobra.Command {
	var all, force bool
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Drop the replication slot (and with --all the publication and sync state) so no WAL is retained",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			cfg, _, db, err := a.openDatabase(ctx, config.Needs{Database: true})
			if err != nil {
				return err
			}
			defer db.Close()
			dropped, err := replication.DropSlot(ctx, db, cfg.Slot, force)
			if err != nil {
				return err
			}
			if dropped {
				fmt.Fprintf(out, "dropped replication slot %s\n", cfg.Slot)
			} else {
				fmt.Fprintf(out, "no replication slot %s\n", cfg.Slot)
			}
			if !all {
				// The checkpoint belongs to the dropped slot: a new slot starts with a full load.
				if _, err := db.Exec(ctx, `DELETE FROM `+state.Schema+`.checkpoint WHERE slot = $1`, cfg.Slot); err != nil && !isUndefinedTable(err) {
					return fmt.Errorf("forget the checkpoint of slot %s: %w", cfg.Slot, err)
				}
				return nil
			}
			if err := replication.DropPublication(ctx, db, cfg.Publication); err != nil {
				return err
			}
			fmt.Fprintf(out, "dropped publication %s\n", cfg.Publication)
			if _, err := db.Exec(ctx, `DROP SCHEMA IF EXISTS `+state.Schema+` CASCADE`); err != nil {
				return fmt.Errorf("drop the sync state: %w", err)
			}
			fmt.Fprintf(out, "dropped schema %s (sync state)\n", state.Schema)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "also drop the publication and the progress_sync schema")
	cmd.Flags().BoolVar(&force, "force", false, "drop the slot even while a progress-sync is streaming from it")
	return cmd
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show slot lag, checkpoint, pending and unmatched students, last flush",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, out := cmd.Context(), cmd.OutOrStdout()
			cfg, _, db, err := a.openDatabase(ctx, config.Needs{Database: true})
			if err != nil {
				return err
			}
			defer db.Close()
			return printStatus(ctx, db, cfg, out)
		},
	}
}

func printStatus(ctx context.Context, db *pgxpool.Pool, cfg config.Config, out io.Writer) error {
	slot, err := replication.ReadSlot(ctx, db, cfg.Slot)
	if err != nil {
		return err
	}
	if !slot.Exists {
		fmt.Fprintf(out, "slot %s: does not exist (run `progress-sync run` or `setup`)\n", cfg.Slot)
	} else {
		active := "not streaming"
		if slot.Active {
			active = fmt.Sprintf("streaming (pid %d)", slot.ActivePID)
		}
		fmt.Fprintf(out, "slot %s: %s, wal_status %s, confirmed %s, lag %d bytes, retains %d bytes of WAL\n",
			cfg.Slot, active, slot.WALStatus, slot.ConfirmedFlushLSN, slot.LagBytes, slot.RetainedBytes)
	}
	var exists bool
	if err := db.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, state.Schema+".checkpoint").Scan(&exists); err != nil {
		return fmt.Errorf("read sync state: %w", err)
	}
	if !exists {
		fmt.Fprintln(out, "sync state: none yet (the service has not run)")
		return nil
	}
	var lsn, updated, lastFlush string
	var lagSeconds float64
	err = db.QueryRow(ctx, `SELECT lsn::text, to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"'),
			coalesce(to_char(last_flush_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"'), 'never'),
			extract(epoch FROM now() - updated_at)
		FROM `+state.Schema+`.checkpoint WHERE slot = $1`, cfg.Slot).Scan(&lsn, &updated, &lastFlush, &lagSeconds)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read checkpoint: %w", err)
	}
	if lsn == "" {
		fmt.Fprintf(out, "checkpoint: none for slot %s\n", cfg.Slot)
	} else {
		fmt.Fprintf(out, "checkpoint: %s, stored %s (%.0f s ago)\nlast flush: %s\n", lsn, updated, lagSeconds, lastFlush)
	}
	var pending, unmatched, rejected, conflicts int
	var oldest *float64
	err = db.QueryRow(ctx, `SELECT (SELECT count(*) FROM `+state.Schema+`.pending),
			(SELECT extract(epoch FROM now() - min(first_change_at))::float8 FROM `+state.Schema+`.pending),
			count(*) FILTER (WHERE kind = 'unmatched'), count(*) FILTER (WHERE kind = 'rejected'),
			count(*) FILTER (WHERE kind = 'conflict')
		FROM `+state.Schema+`.problems`).Scan(&pending, &oldest, &unmatched, &rejected, &conflicts)
	if err != nil {
		return fmt.Errorf("count students: %w", err)
	}
	// The time lag: how long the oldest change still to push has waited.
	lag := "none waiting"
	if oldest != nil {
		lag = fmt.Sprintf("oldest waiting %.0f s", *oldest)
	}
	fmt.Fprintf(out, "pending students: %d (%s)\nunmatched: %d, rejected: %d, conflicts: %d (see progress_sync.problems)\n",
		pending, lag, unmatched, rejected, conflicts)
	return nil
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

// Command progress-sync keeps HubSpot contacts equal to each Focus English student's learning
// progress. See docs/contract.md for its commands, settings and guarantees.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// exitUsage is the status for a wrong setting or flag (docs/contract.md §4).
const exitUsage = 2

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}

// usageError marks errors that deserve exit status 2.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) (string, bool)) int {
	root := newRoot(stdout, stderr, getenv)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var cfgErr *config.Error
	var uErr usageError
	var hidden *replication.HiddenRowsError
	var misconfigured *replication.MisconfiguredError
	var badModel *model.Error
	switch {
	case errors.As(err, &badModel):
		// Refused before anything was written: the file, the part and the line.
		fmt.Fprintln(stderr, "progress-sync: "+badModel.Error())
		return exitUsage
	case errors.Is(err, hubspot.ErrUnknownAPIVersion):
		// No retry fixes a version HubSpot does not serve.
		fmt.Fprintln(stderr, "progress-sync: "+err.Error())
		return exitUsage
	case errors.As(err, &misconfigured):
		fmt.Fprintln(stderr, "progress-sync: "+misconfigured.Problem)
		return exitUsage
	case errors.As(err, &hidden):
		// Refused before anything was computed: one line per table, each with its fix.
		for _, line := range hidden.Lines() {
			fmt.Fprintln(stderr, "progress-sync: refusing to compute metrics from a partial view: "+line)
		}
		return exitUsage
	case errors.As(err, &cfgErr):
		for _, p := range cfgErr.Problems {
			fmt.Fprintln(stderr, "progress-sync: "+p)
		}
		return exitUsage
	case errors.As(err, &uErr):
		fmt.Fprintln(stderr, "progress-sync: "+uErr.Error())
		return exitUsage
	default:
		fmt.Fprintln(stderr, "progress-sync: "+err.Error())
		return 1
	}
}

// app carries what every command needs: where to write and how to read settings.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) (string, bool)
	root           *cobra.Command
	showEmails     bool
	hubspotTimeout time.Duration
}

func newRoot(stdout, stderr io.Writer, getenv func(string) (string, bool)) *cobra.Command {
	a := &app{stdout: stdout, stderr: stderr, getenv: getenv}
	root := &cobra.Command{
		Use:           "progress-sync",
		Short:         "Keep HubSpot contacts equal to Focus English students' learning progress",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       telemetry.ReadBuild().String(),
	}
	root.SetVersionTemplate("progress-sync {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	config.Register(root.PersistentFlags())
	root.PersistentFlags().DurationVar(&a.hubspotTimeout, "hubspot-timeout", 30*time.Second, "give up on a HubSpot request after this long (it is retried)")
	root.PersistentFlags().BoolVar(&a.showEmails, "show-emails", false, "show email addresses in full in logs and on the status page (by default they are masked: a***@example.com)")
	a.root = root
	root.AddCommand(a.runCmd(), a.setupCmd(), a.provisionCmd(), a.backfillCmd(), a.explainCmd(), a.replayCmd(), a.statusCmd(), a.teardownCmd(), a.checkCmd(), versionCmd())
	return root
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version: the module version and the commit it was built from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "progress-sync "+telemetry.ReadBuild().String())
			return nil
		},
	}
}

// load reads the configuration a command needs and builds its logger.
func (a *app) load(needs config.Needs) (config.Config, *logrus.Entry, error) {
	cfg, err := config.Load(a.root.PersistentFlags(), a.getenv, needs)
	if err != nil {
		return cfg, nil, err
	}
	logger := logrus.New()
	logger.SetOutput(a.stderr)
	logger.SetLevel(cfg.LogLevel)
	if cfg.LogFormat == "json" {
		logger.SetFormatter(&logrus.JSONFormatter{})
	} else {
		logger.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	}
	return cfg, logrus.NewEntry(logger), nil
}

// withDatabase runs do with the configuration, a logger and a pool on DATABASE_URL (see
// openDatabase), and closes the pool after it.
func (a *app) withDatabase(ctx context.Context, needs config.Needs, do func(cfg config.Config, log *logrus.Entry, db *pgxpool.Pool) error) error {
	cfg, log, db, err := a.openDatabase(ctx, needs)
	if err != nil {
		return err
	}
	defer db.Close()
	return do(cfg, log, db)
}

// openDatabase loads the configuration and opens a pool on DATABASE_URL; the caller closes it.
func (a *app) openDatabase(ctx context.Context, needs config.Needs) (config.Config, *logrus.Entry, *pgxpool.Pool, error) {
	needs.Database = true
	cfg, log, err := a.load(needs)
	if err != nil {
		return cfg, nil, nil, err
	}
	db, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return cfg, nil, nil, fmt.Errorf("connect to the database: %w", err)
	}
	if needs.SkipModel {
		return cfg, log, db, nil
	}
	// Before anything reads or writes through it: a wrong model is refused with its line.
	if err := cfg.Model.Verify(ctx, db); err != nil {
		db.Close()
		return cfg, nil, nil, err
	}
	return cfg, log, db, nil
}

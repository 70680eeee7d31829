package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/service"
)

// streamFlags are the tuning knobs of run and replay beyond docs/contract.md §4.
type streamFlags struct {
	grace           time.Duration
	recheck         time.Duration
	statusInterval  time.Duration
	dailyLimitPause time.Duration
	noStatusPage    bool
}

func (f *streamFlags) register(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&f.grace, "grace", 20*time.Second, "on SIGTERM, how long to keep recording what was received and pushing students that are due")
	cmd.Flags().DurationVar(&f.recheck, "recheck-unmatched", time.Hour, "how often students without a HubSpot contact, or in conflict over one, are looked up again")
	cmd.Flags().DurationVar(&f.statusInterval, "status-interval", 10*time.Second, "how often the position is reported to PostgreSQL (keep well under wal_sender_timeout)")
	cmd.Flags().DurationVar(&f.dailyLimitPause, "daily-limit-pause", 15*time.Minute, "how long pushes pause when HubSpot's daily limit is spent (changes keep being recorded)")
	cmd.Flags().BoolVar(&f.noStatusPage, "no-status-page", false, "do not serve the status page at / (/metrics, /healthz and /readyz stay)")
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
			return a.stream(cmd, f, 0)
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
			return a.stream(cmd, f, lsn)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&from, "from-lsn", "", "LSN to stream from (as stored in progress_sync.checkpoint or printed by status)")
	_ = cmd.MarkFlagRequired("from-lsn")
	return cmd
}

// stream runs the service (replication/service) until the command's context ends.
func (a *app) stream(cmd *cobra.Command, f streamFlags, from pglogrepl.LSN) error {
	ctx := cmd.Context()
	cfg, log, db, err := a.openDatabase(ctx, config.Needs{Replication: true, HubSpot: true, Alerts: true})
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil // stopped while starting: nothing was in flight
	}
	if err != nil {
		return err
	}
	defer db.Close()
	return service.Run(ctx, db, service.Options{Config: cfg, From: from, Grace: f.grace, Recheck: f.recheck, StatusInterval: f.statusInterval,
		DailyLimitPause: f.dailyLimitPause, NoStatusPage: f.noStatusPage, ShowEmails: a.showEmails, HubSpotTimeout: a.hubspotTimeout, Log: log})
}

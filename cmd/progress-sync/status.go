package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show slot lag, checkpoint, pending and unmatched students, last flush",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withDatabase(ctx, config.Needs{SkipModel: true}, func(cfg config.Config, _ *logrus.Entry, db *pgxpool.Pool) error {
				return printStatus(ctx, db, cfg, cmd.OutOrStdout())
			})
		},
	}
}

func printStatus(ctx context.Context, db *pgxpool.Pool, cfg config.Config, out io.Writer) error {
	fmt.Fprintln(out, "progress-sync "+telemetry.ReadBuild().String())
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
	sum, err := state.Summarize(ctx, db, cfg.Slot)
	if err != nil {
		return err
	}
	if !sum.Exists {
		fmt.Fprintf(out, "progress model: %s (configured)\n", cfg.Model.Name)
		fmt.Fprintln(out, "sync state: none yet (the service has not run)")
		return nil
	}
	if err := printModel(ctx, db, cfg, out); err != nil {
		return err
	}
	if cp := sum.Checkpoint; cp.LSN == 0 {
		fmt.Fprintf(out, "checkpoint: none for slot %s\n", cfg.Slot)
	} else {
		lastFlush := "never"
		if !cp.LastFlush.IsZero() {
			lastFlush = utc(cp.LastFlush)
		}
		fmt.Fprintf(out, "checkpoint: %s, stored %s (%.0f s ago)\nlast flush: %s\n", cp.LSN, utc(cp.UpdatedAt), time.Since(cp.UpdatedAt).Seconds(), lastFlush)
	}
	// The time lag: how long the oldest change still to push has waited.
	lag := "none waiting"
	if sum.Pending > 0 {
		lag = fmt.Sprintf("oldest waiting %.0f s", sum.OldestWait.Seconds())
	}
	fmt.Fprintf(out, "pending students: %d (%s)\nunmatched: %d, rejected: %d, conflicts: %d (see %s.problems)\n",
		sum.Pending, lag, sum.Problems[state.Unmatched], sum.Problems[state.Rejected], sum.Problems[state.Conflict], state.Schema)
	printReconcile(out, sum.Reconcile)
	return nil
}

// printModel names the progress model the service last ran with, and this command's own when
// it differs (a restart with it recomputes every student).
func printModel(ctx context.Context, db *pgxpool.Pool, cfg config.Config, out io.Writer) error {
	store, err := state.OpenReadOnly(ctx, db, cfg.Model.Students)
	if err != nil {
		return err
	}
	running, ok, err := store.ModelOf(ctx, cfg.Slot)
	switch {
	case err != nil:
		return err
	case !ok:
		fmt.Fprintf(out, "progress model: %s (configured; none recorded for slot %s yet)\n", cfg.Model.Name, cfg.Slot)
	case running.Digest == cfg.Model.Digest:
		fmt.Fprintf(out, "progress model: %s\n", running.Name)
	default:
		fmt.Fprintf(out, "progress model: %s; configured here: %s (a restart with it recomputes every student)\n", running.Name, cfg.Model.Name)
	}
	return nil
}

// printReconcile says when HubSpot was last read back in full, and how far a pass has got.
func printReconcile(out io.Writer, rp *state.ReconcilePass) {
	switch {
	case rp == nil:
		fmt.Fprintln(out, "reconcile: never run")
		return
	case rp.Pass == 0 || (rp.Pass == 1 && rp.Running):
		fmt.Fprintf(out, "reconcile: no complete pass yet (reconciling since %s)", utc(rp.CompletedAt))
	default:
		fmt.Fprintf(out, "reconcile: last complete pass ended %s", utc(rp.CompletedAt))
	}
	if rp.Running {
		fmt.Fprintf(out, "; pass %d under way since %s: %d contacts read, %d students found different", rp.Pass, utc(rp.StartedAt), rp.ContactsRead, rp.StudentsDifferent)
	}
	fmt.Fprintln(out)
}

func utc(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") }

package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/state"
)

// The operator's commands around the service: setup before it, teardown after it.

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
				return a.printSetupSQL(ctx, out, role)
			}
			cfg, _, db, err := a.openDatabase(ctx, config.Needs{Database: true, Replication: true})
			if err != nil {
				return err
			}
			defer db.Close()
			if _, err := state.Open(ctx, db, cfg.Model.Students); err != nil {
				return err
			}
			rep, err := replication.Setup(ctx, db, replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, cfg.Model, role)
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
			if len(rep.Hidden) > 0 {
				for _, h := range rep.Hidden {
					fmt.Fprintln(out, "still needed: "+h.String())
				}
				return fmt.Errorf("setup: the service's role would see only part of %d source table(s), and this role may not fix it: run the SQL above as the tables' owner, or `setup --role` as the owner", len(rep.Hidden))
			}
			fmt.Fprintf(out, "setup: publication %s, replica identities and slot %s are in place\n", cfg.Publication, cfg.Slot)
			return nil
		},
	}
	cmd.Flags().BoolVar(&printSQL, "print-sql", false, "print the SQL for a DBA instead of running it")
	cmd.Flags().StringVar(&role, "role", "", "the role the service connects as, for the read policies on tables with row-level security (default: the connecting role; with --print-sql: progress_sync)")
	return cmd
}

// leastPrivilegeRole is the role `setup --print-sql` creates for the service, unless --role
// names another.
const leastPrivilegeRole = "progress_sync"

// printSetupSQL prints what setup does, and a least-privilege role, for a DBA, for the
// progress model's tables (and first the tables the model needs the DBA to create). With a
// database to ask, the role's read policies go on exactly the tables with row-level security
// enabled; without one, on all of them (a policy on a table without RLS does nothing until RLS is
// switched on, when it keeps the sync working).
func (a *app) printSetupSQL(ctx context.Context, out io.Writer, role string) error {
	if role == "" {
		role = leastPrivilegeRole
	}
	cfg, _, err := a.load(config.Needs{})
	if err != nil {
		return err
	}
	// The SQL is useful without a database too; with one, it fits the database.
	var databaseURL string
	if withDB, _, err := a.load(config.Needs{Database: true}); err == nil {
		databaseURL = withDB.DatabaseURL
	}
	m := cfg.Model
	policies, why := readPoliciesOrAll(ctx, databaseURL, m, role)
	if m.Create != "" {
		fmt.Fprintf(out, "-- The progress model %s needs these tables, which the platform does not have: create and fill them.\n", m.Name)
		fmt.Fprintln(out, m.Create)
		fmt.Fprintln(out)
	}
	fmt.Fprintf(out, "-- progress-sync setup for the progress model %s: run as a role that owns these tables (Supabase: postgres).\n", m.Name)
	fmt.Fprintln(out, strings.Join(replication.SetupSQL(replication.Names{Slot: cfg.Slot, Publication: cfg.Publication}, m), "\n"))
	fmt.Fprintln(out, "\n-- Optional: a least-privilege role for the service (use it in DATABASE_URL). It may log in,")
	fmt.Fprintln(out, "-- replicate, read the model's tables and own its state schema; nothing else. With it, leave the")
	fmt.Fprintln(out, "-- slot to the service: it creates the slot itself, with a snapshot for the first backfill.")
	fmt.Fprintln(out, "-- Row-level security hides every row from a role no policy lets read, so each table that")
	fmt.Fprintf(out, "-- has it gets a read policy for this role alone (%s).\n", why)
	fmt.Fprintln(out, strings.Join(append(replication.RoleSQL(role, m, policies), state.SchemaSQL(replication.QuoteIdent(role))), "\n"))
	return nil
}

// readPoliciesOrAll asks the database which of the model's tables have row-level security
// and gives role's read policy for each; when it cannot ask, for all of them. It says which
// it did.
func readPoliciesOrAll(ctx context.Context, databaseURL string, m *model.Model, role string) ([]string, string) {
	all := replication.AllReadPolicies(m, role)
	n := len(m.Tables)
	if databaseURL == "" {
		return all, fmt.Sprintf("DATABASE_URL is not set or not valid, so on all %d tables; harmless where RLS is off", n)
	}
	db, err := pgxpool.New(ctx, databaseURL)
	if err != nil {
		return all, fmt.Sprintf("the database could not be read, so on all %d tables; harmless where RLS is off", n)
	}
	defer db.Close()
	policies, err := replication.ReadPolicies(ctx, db, m, role)
	if err != nil {
		return all, fmt.Sprintf("the database could not be read, so on all %d tables; harmless where RLS is off", n)
	}
	if len(policies) == 0 {
		return nil, fmt.Sprintf("none of the %d tables has it now", n)
	}
	return policies, fmt.Sprintf("RLS is on for %d of the %d", len(policies), n)
}

func (a *app) teardownCmd() *cobra.Command {
	var all, force bool
	cmd := &cobra.Command{
		Use:   "teardown",
		Short: "Drop the replication slot (and with --all the publication and sync state) so no WAL is retained",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			return a.withDatabase(ctx, config.Needs{SkipModel: true}, func(cfg config.Config, _ *logrus.Entry, db *pgxpool.Pool) error {
				return teardown(ctx, cmd.OutOrStdout(), db, cfg, all, force)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "also drop the publication and the progress_sync schema")
	cmd.Flags().BoolVar(&force, "force", false, "drop the slot even while a progress-sync is streaming from it")
	return cmd
}

// teardown drops the slot, and with all the publication and the sync state, saying what it
// dropped.
func teardown(ctx context.Context, out io.Writer, db *pgxpool.Pool, cfg config.Config, all, force bool) error {
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
		return state.ForgetCheckpoint(ctx, db, cfg.Slot)
	}
	if err := replication.DropPublication(ctx, db, cfg.Publication); err != nil {
		return err
	}
	fmt.Fprintf(out, "dropped publication %s\n", cfg.Publication)
	if err := state.Drop(ctx, db); err != nil {
		return err
	}
	fmt.Fprintf(out, "dropped schema %s (sync state)\n", state.Schema)
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/backfill"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/service"
	"github.com/focusenglish/progress-sync/replication/state"
)

func (a *app) provisionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "provision",
		Short: "Create or verify the HubSpot property group and properties",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := a.load(config.Needs{HubSpot: true})
			if err != nil {
				return err
			}
			hs, err := a.newHubSpot(cfg, log)
			if err != nil {
				return err
			}
			return provision(cmd.Context(), hs, cmd.OutOrStdout())
		},
	}
}

// provision makes sure the group and every property exist with the types the sync writes,
// and says what it did.
func provision(ctx context.Context, hs *hubspot.Client, out io.Writer) error {
	rep, err := push.Provision(ctx, hs)
	if err != nil {
		return err
	}
	if rep.GroupCreated {
		fmt.Fprintf(out, "created property group %s\n", metrics.GroupName)
	}
	for _, n := range rep.Created {
		fmt.Fprintf(out, "created property %s\n", n)
	}
	for _, n := range rep.OptionsAdded {
		fmt.Fprintf(out, "added missing options to %s\n", n)
	}
	fmt.Fprintf(out, "provision: %d properties created, %d already present with the right type\n", len(rep.Created), len(rep.Existing))
	return nil
}

func (a *app) backfillCmd() *cobra.Command {
	var emails []string
	var dryRun, allowClearing bool
	var progressEvery time.Duration
	cmd := &cobra.Command{
		Use:   "backfill",
		Short: "Recompute and push every student (or the --email ones) once",
		Long: `Recompute the metrics of every student, or of the students given with --email, and write
the values that differ to their HubSpot contacts. --dry-run prints what would change and
which students have no contact, and writes nothing.

A first backfill can change properties on thousands of contacts at once and so enrol them
in HubSpot workflows that watch those properties: run it with --dry-run first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg, log, db, err := a.openDatabase(ctx, config.Needs{Database: true, HubSpot: true})
			if err != nil {
				return err
			}
			defer db.Close()
			requests := &requestCounter{}
			hs, err := a.newHubSpot(cfg, log, func(c *hubspot.Config) { c.Observer = requests })
			if err != nil {
				return err
			}
			shown := &backfillProgress{out: a.stderr, requests: requests, sustained: cfg.RateLimit.Sustained(), every: progressEvery, log: log}
			b, err := backfill.Prepare(ctx, db, cfg.Model, hs, backfill.Options{Emails: emails, DryRun: dryRun, AllowClearing: allowClearing,
				ShowEmails: a.showEmails, Log: log, Progress: shown})
			if err != nil {
				return err
			}
			res, err := b.Run(ctx)
			report(cmd.OutOrStdout(), res, dryRun, a.showEmails)
			if errors.As(err, new(*backfill.UnknownEmailsError)) {
				return usageError{err}
			}
			return err
		},
	}
	cmd.Flags().StringSliceVar(&emails, "email", nil, "backfill only the students with these emails (repeat or comma-separate)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would change and write nothing")
	cmd.Flags().DurationVar(&progressEvery, "progress-every", 10*time.Second, "off a terminal, how often a progress line is logged")
	cmd.Flags().BoolVar(&allowClearing, "allow-clearing", false,
		fmt.Sprintf("write batches in which %d or more students lost every progress row at once (refused by default: it usually means the database hides rows)", push.VanishedProgressMin))
	return cmd
}

// report prints what a backfill did, or would do in a dry run.
func report(out io.Writer, res push.Result, dryRun, showEmails bool) {
	// The report lands in job logs like any log line: emails masked unless --show-emails.
	email, inText := push.MaskEmail, push.MaskEmailsIn
	if showEmails {
		email, inText = strconv.Quote, func(s string) string { return s }
	}
	if dryRun {
		sort.Slice(res.Changes, func(i, j int) bool { return res.Changes[i].ContactID < res.Changes[j].ContactID })
		for _, c := range res.Changes {
			names := make([]string, 0, len(c.Properties))
			for n := range c.Properties {
				names = append(names, n)
			}
			sort.Strings(names)
			verb := "would update"
			if c.Release {
				verb = "would clear the synced properties of" // the student left it
			}
			fmt.Fprintf(out, "%s contact %s (%s, student %s):\n", verb, c.ContactID, email(c.Email), c.StudentID)
			for _, n := range names {
				v := c.Properties[n]
				fmt.Fprintf(out, "  %-22s %q -> %q\n", n, v[0], v[1])
			}
		}
	}
	for _, p := range res.Problems {
		fmt.Fprintf(out, "%-9s student %s (%s): %s\n", p.Kind, p.StudentID, email(p.Email), inText(p.Reason))
	}
	verb, n, released := "updated", res.Updated, res.Released
	if dryRun {
		verb, n = "would update", 0
		for _, c := range res.Changes {
			if c.Release {
				released++
			} else {
				n++
			}
		}
	}
	fmt.Fprintf(out, "backfill: %d students, %s %d contacts, %d already up to date, %d unmatched, %d rejected, %d conflicts",
		res.Students, verb, n, res.Unchanged,
		res.Count(state.Unmatched), res.Count(state.Rejected), res.Count(state.Conflict))
	cleared := "cleared"
	if dryRun {
		cleared = "would clear"
	}
	if released > 0 {
		fmt.Fprintf(out, ", %s %d contacts their students left (email changed or deleted)", cleared, released)
	}
	fmt.Fprintln(out)
}

func (a *app) newHubSpot(cfg config.Config, log *logrus.Entry, opts ...func(*hubspot.Config)) (*hubspot.Client, error) {
	return service.NewHubSpot(cfg, log, a.hubspotTimeout, opts...)
}

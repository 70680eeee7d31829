package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/config"
	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/push"
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

// properties are the HubSpot properties the sync writes.
func properties() []hubspot.Property {
	var props []hubspot.Property
	for _, d := range metrics.Definitions() {
		p := hubspot.Property{Name: d.Name, Label: d.Label, Description: d.Description,
			GroupName: metrics.GroupName, Type: d.Type, FieldType: d.FieldType}
		for i, o := range d.Options {
			p.Options = append(p.Options, hubspot.Option{Label: o.Label, Value: o.Value, DisplayOrder: i})
		}
		props = append(props, p)
	}
	return props
}

// checkProperties fails when a property the sync writes is missing or of another type:
// writing then would only get every contact refused.
func checkProperties(ctx context.Context, hs *hubspot.Client) error {
	mismatches, err := hs.CheckProperties(ctx, properties())
	if err != nil {
		return fmt.Errorf("verify the HubSpot properties: %w", err)
	}
	if len(mismatches) == 0 {
		return nil
	}
	lines := make([]string, len(mismatches))
	for i, m := range mismatches {
		lines[i] = m.String()
	}
	return fmt.Errorf("HubSpot is not ready for the sync: %s; run `progress-sync provision` (it creates missing properties and names those of another type)",
		strings.Join(lines, "; "))
}

// provision makes sure the group and every property exist with the types the sync writes.
func provision(ctx context.Context, hs *hubspot.Client, out io.Writer) error {
	rep, err := hs.Provision(ctx, hubspot.PropertyGroup{Name: metrics.GroupName, Label: metrics.GroupLabel}, properties())
	if err != nil {
		return fmt.Errorf("provision: %w", err)
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
			if err := replication.CheckVisibility(ctx, db, cfg.Model); err != nil {
				return err
			}
			requests := &requestCounter{}
			hs, err := a.newHubSpot(cfg, log, func(c *hubspot.Config) { c.Observer = requests })
			if err != nil {
				return err
			}
			if err := checkProperties(ctx, hs); err != nil {
				return err
			}
			var store *state.Store
			if dryRun {
				store, err = state.OpenReadOnly(ctx, db)
			} else {
				store, err = state.Open(ctx, db)
			}
			if err != nil {
				return err
			}
			p := push.New(hs, store, log, push.Options{DryRun: dryRun, ShowEmails: a.showEmails, AllowClearing: allowClearing,
				CompareWithHubSpot: true, Properties: cfg.Model.Computes()})
			res, err := backfill(ctx, replication.CompleteView{DB: db, Model: cfg.Model}, p, store, emails, func(total int) *progress {
				return newProgress(a.stderr, total, requests, cfg.RateLimit.Sustained(), progressEvery, log)
			})
			report(cmd.OutOrStdout(), res, dryRun, a.showEmails)
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

// backfill pushes every student, or those with the given emails, in batches of push.MaxBatch,
// comparing with what HubSpot holds. A full backfill also lets go of the contacts of students
// deleted since they were synced.
//
// Every batch is computed from a complete view: a policy switched on halfway through stops
// the backfill instead of clearing the rest.
func backfill(ctx context.Context, view replication.CompleteView, p *push.Pusher, store *state.Store, emails []string, show func(total int) *progress) (total push.Result, err error) {
	db, m := view.DB, view.Model
	if len(emails) > 0 {
		found, err := m.IDsByEmail(ctx, db, emails)
		if err != nil {
			return total, err
		}
		var ids []uuid.UUID
		var missing []string
		for _, e := range emails {
			n := metrics.NormalizeEmail(e)
			if len(found[n]) == 0 {
				missing = append(missing, e)
			}
			ids = append(ids, found[n]...)
		}
		if len(missing) > 0 {
			return total, usageError{fmt.Errorf("no student has the email(s) %s", strings.Join(missing, ", "))}
		}
		shown := show(len(ids))
		defer func() { shown.finish(err) }()
		for start := 0; start < len(ids); start += push.MaxBatch {
			students, err := view.ForStudents(ctx, ids[start:min(start+push.MaxBatch, len(ids))])
			if err != nil {
				return total, err
			}
			res, err := p.Push(ctx, students)
			total.Add(res)
			shown.add(res)
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}
	all, err := m.CountStudents(ctx, db)
	if err != nil {
		return total, err
	}
	shown := show(all)
	defer func() { shown.finish(err) }()
	after := uuid.Nil
	for {
		students, err := view.Page(ctx, after, push.MaxBatch)
		if err != nil {
			return total, err
		}
		if len(students) == 0 {
			return total, forgetDeparted(ctx, p, store, &total)
		}
		after = students[len(students)-1].ID
		res, err := p.Push(ctx, students)
		total.Add(res)
		shown.add(res)
		if err != nil {
			if errors.Is(err, hubspot.ErrDailyLimit) {
				shown.log.WithField("students_done", total.Students).Error("HubSpot's daily API limit is spent; run the backfill again after it resets")
			}
			return total, err
		}
	}
}

// forgetDeparted lets go of the students deleted since their contact was found.
func forgetDeparted(ctx context.Context, p *push.Pusher, store *state.Store, total *push.Result) error {
	gone, err := store.Departed(ctx)
	if err != nil {
		return err
	}
	for start := 0; start < len(gone); start += push.MaxBatch {
		res, err := p.Forget(ctx, gone[start:min(start+push.MaxBatch, len(gone))])
		total.Add(res)
		if err != nil {
			return err
		}
	}
	return nil
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
	hc := hubspot.Config{
		BaseURL:    cfg.HubSpotBaseURL,
		APIVersion: cfg.HubSpotAPIVersion,
		Token:      cfg.HubSpotToken,
		RateLimit:  cfg.RateLimit,
		HTTPClient: &http.Client{Timeout: a.hubspotTimeout},
		Log:        log.WithField("component", "hubspot"),
	}
	if file := cfg.HubSpotTokenFile; file != "" {
		// A key rotated in the file is taken at HubSpot's next 401, without a restart.
		hc.ReloadToken = func() (string, error) { return config.ReadTokenFile(file) }
	}
	for _, o := range opts {
		o(&hc)
	}
	return hubspot.New(hc)
}

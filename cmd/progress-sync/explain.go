package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/explain"
)

func (a *app) explainCmd() *cobra.Command {
	var email, student string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "explain --email ADDRESS | --student ID",
		Short: "Show, for one student, the values computed from the database, HubSpot's, and why they differ",
		Long: `For one student: the ten values computed from the database with the rows behind them, the
linked HubSpot contact and the values it holds now, the values last pushed, and for each
property whether it is equal, pending (waiting in the buffer), rejected (with HubSpot's
message), in conflict with another student, unmatched, drifted (changed in HubSpot behind
the sync's back) or behind (a change that has not reached the sync yet). It writes nothing.
Exit status 0 when HubSpot equals the database, 1 otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (email == "") == (student == "") {
				return usageError{errors.New("give one of --email or --student")}
			}
			ctx := cmd.Context()
			cfg, log, db, err := a.openDatabase(ctx, config.Needs{Database: true, HubSpot: true})
			if err != nil {
				return err
			}
			defer db.Close()
			id, err := studentID(ctx, db, cfg.Model, email, student)
			if err != nil {
				return err
			}
			// A question asked by a person: give up on HubSpot within seconds, not minutes.
			hs, err := a.newHubSpot(cfg, log, func(c *hubspot.Config) { c.MaxRetryElapsed = 15 * time.Second })
			if err != nil {
				return err
			}
			x, err := explain.Explain(ctx, explain.Sources{DB: db, Model: cfg.Model, HubSpot: hs,
				Buffer: buffer.Options{Debounce: cfg.Debounce, MaxDelay: cfg.MaxDelay}}, id)
			if err != nil {
				return studentUsage(err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(x); err != nil {
					return err
				}
			} else {
				printExplanation(cmd.OutOrStdout(), x)
			}
			if n := x.Differing(); n > 0 {
				return fmt.Errorf("explain: HubSpot differs from the database on %d of %d properties", n, len(x.Properties))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&email, "email", "", "the student's email (as in public.users; case and spaces do not matter)")
	cmd.Flags().StringVar(&student, "student", "", "the student's id (public.users.id)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts instead of text")
	return cmd
}

// studentID resolves --email or --student to one student id.
func studentID(ctx context.Context, db *pgxpool.Pool, m *model.Model, email, student string) (uuid.UUID, error) {
	if student == "" {
		id, err := explain.FindStudent(ctx, db, m, email)
		return id, studentUsage(err)
	}
	id, err := uuid.Parse(student)
	if err != nil {
		return uuid.Nil, usageError{fmt.Errorf("--student %q is not a student id (a UUID)", student)}
	}
	return id, nil
}

// studentUsage makes a student that is not one a usage error (exit status 2).
func studentUsage(err error) error {
	var notOne *explain.StudentError
	if errors.As(err, &notOne) {
		return usageError{err}
	}
	return err
}

// print writes the explanation for people.
func printExplanation(out io.Writer, x *explain.Explanation) {
	fmt.Fprintf(out, "student %s <%s>\n", x.StudentID, printable(x.Email))
	fmt.Fprintf(out, "progress model %s; the student's rows:\n", x.Model)
	for _, t := range x.Rows {
		fmt.Fprintf(out, "  %s (%s = the student): %s\n", t.Table, t.Column, plural(t.Count, "row"))
		for _, r := range t.Rows {
			fmt.Fprintf(out, "    %s\n", r)
		}
		if t.Count > len(t.Rows) {
			fmt.Fprintf(out, "    ... %d more\n", t.Count-len(t.Rows))
		}
	}
	switch {
	case x.Contact == nil:
		fmt.Fprintf(out, "contact: none (%s)\n", x.Unmatched)
	case x.Contact.Linked:
		fmt.Fprintf(out, "contact %s <%s>, linked in the sync state\n", x.Contact.ID, x.Contact.Email)
	default:
		fmt.Fprintf(out, "contact %s <%s>, found by email now (not linked yet)\n", x.Contact.ID, x.Contact.Email)
	}
	if x.Pending != nil {
		fmt.Fprintf(out, "pending: changed since %s, %s\n", x.Pending.Since.UTC().Format(time.RFC3339), x.Pending.DueText())
	}
	if x.Problem != nil {
		fmt.Fprintf(out, "problem: %s: %s\n", x.Problem.Kind, x.Problem.Reason)
	}
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nproperty\tdatabase\thubspot\tlast pushed\tstate")
	for _, p := range x.Properties {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, quoted(p.Database), quoted(p.HubSpot), quoted(p.LastPushed), p.State)
	}
	_ = tw.Flush()
	for _, p := range x.Properties {
		if p.Detail != "" && p.State != explain.StateUnmatched {
			fmt.Fprintf(out, "%s: %s: %s\n", p.Name, p.State, p.Detail)
		}
	}
	if n := x.Differing(); n == 0 {
		fmt.Fprintln(out, "HubSpot equals the database.")
	}
}

// quoted shows a value so that an empty one is visible: "" is a cleared property, - is none.
func quoted(s *string) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprintf("%q", *s)
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// printable shows an email with a control character in it (a tab, a newline) quoted, so that
// it cannot break the line it is on.
func printable(s string) string {
	if strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return s
}

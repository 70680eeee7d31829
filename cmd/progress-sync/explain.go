package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/focusenglish/progress-sync/cmd/progress-sync/internal/config"
	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/state"
)

// The states of a property in an explanation (docs/contract.md §5).
const (
	stateEqual     = "equal"        // HubSpot holds the database's value
	statePending   = "pending"      // the student waits in the buffer for a push
	stateRejected  = "rejected"     // HubSpot refused the value
	stateConflict  = "conflict"     // another student claims the contact
	stateUnmatched = "unmatched"    // no contact to write
	stateDrifted   = "drifted"      // HubSpot holds another value than the sync wrote
	stateBehind    = "behind"       // the database changed, and the change has not reached the sync
	stateNotOwned  = "not_computed" // the progress model does not compute it: never written
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
			id, err := findStudent(ctx, db, cfg.Model, email, student)
			if err != nil {
				return err
			}
			// A question asked by a person: give up on HubSpot within seconds, not minutes.
			hs, err := a.newHubSpot(cfg, log, func(c *hubspot.Config) { c.MaxRetryElapsed = 15 * time.Second })
			if err != nil {
				return err
			}
			x, err := explain(ctx, db, hs, cfg, id)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(x); err != nil {
					return err
				}
			} else {
				x.print(cmd.OutOrStdout())
			}
			if n := x.differing(); n > 0 {
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

// findStudent resolves --email or --student to one student id.
func findStudent(ctx context.Context, db *pgxpool.Pool, m *model.Model, email, student string) (uuid.UUID, error) {
	if student != "" {
		id, err := uuid.Parse(student)
		if err != nil {
			return uuid.Nil, usageError{fmt.Errorf("--student %q is not a student id (a UUID)", student)}
		}
		return id, nil
	}
	found, err := m.IDsByEmail(ctx, db, []string{email})
	if err != nil {
		return uuid.Nil, err
	}
	ids := found[metrics.NormalizeEmail(email)]
	switch len(ids) {
	case 0:
		return uuid.Nil, usageError{fmt.Errorf("no student has the email %s", email)}
	case 1:
		return ids[0], nil
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.String()
	}
	return uuid.Nil, usageError{fmt.Errorf("%d students have the email %s (%s): pick one with --student", len(ids), email, strings.Join(names, ", "))}
}

// explanation is what explain prints, as text or JSON.
type explanation struct {
	StudentID uuid.UUID `json:"student_id"`
	Email     string    `json:"email"`
	// Model names the progress model; Rows are the student's rows of its tables behind the
	// values.
	Model      string            `json:"model"`
	Rows       []model.TableRows `json:"rows"`
	Contact    *explainedLink    `json:"contact"`
	Unmatched  string            `json:"unmatched,omitempty"`
	Pending    *explainedWait    `json:"pending,omitempty"`
	Problem    *explainedIssue   `json:"problem,omitempty"`
	Properties []explainedValue  `json:"properties"`
}

type explainedLink struct {
	ID string `json:"id"`
	// Linked says the sync state links the student to it; otherwise it was found by email now.
	Linked  bool   `json:"linked"`
	Primary bool   `json:"email_is_primary"`
	Email   string `json:"email"`
}

type explainedWait struct {
	Since time.Time `json:"since"`
	Last  time.Time `json:"last_change"`
	// Due is when the student falls due under the debounce and max delay this command was
	// given; the service goes by its own.
	Due      time.Time `json:"due"`
	Debounce string    `json:"due_assumes_debounce"`
	MaxDelay string    `json:"due_assumes_max_delay"`
}

type explainedIssue struct {
	Kind      string    `json:"kind"`
	Reason    string    `json:"reason"`
	ContactID string    `json:"contact_id,omitempty"`
	Rivals    []string  `json:"other_students,omitempty"`
	LastTried time.Time `json:"last_tried"`
}

type explainedValue struct {
	Name       string  `json:"name"`
	Database   *string `json:"database"`    // null: the model does not compute it
	HubSpot    *string `json:"hubspot"`     // null: no contact
	LastPushed *string `json:"last_pushed"` // null: no record
	State      string  `json:"state"`
	Detail     string  `json:"detail,omitempty"`
}

func (x *explanation) differing() int {
	n := 0
	for _, p := range x.Properties {
		if p.State != stateEqual && p.State != stateNotOwned {
			n++
		}
	}
	return n
}

// explain gathers everything known about one student; it writes nothing anywhere.
func explain(ctx context.Context, db *pgxpool.Pool, hs *hubspot.Client, cfg config.Config, id uuid.UUID) (*explanation, error) {
	s, rows, err := replication.CompleteView{DB: db, Model: cfg.Model}.Explain(ctx, id)
	if errors.Is(err, model.ErrNoStudent) {
		return nil, usageError{fmt.Errorf("no student has the id %s", id)}
	}
	if err != nil {
		return nil, err
	}
	store, err := state.OpenReadOnly(ctx, db)
	if err != nil {
		return nil, err
	}
	x := &explanation{StudentID: id, Email: s.Email, Model: cfg.Model.Name, Rows: rows}
	if err := x.readSyncState(ctx, store, cfg); err != nil {
		return nil, err
	}
	held, pushed, err := x.readContact(ctx, store, hs)
	if err != nil {
		return nil, err
	}
	x.judge(s, held, pushed)
	return x, nil
}

// readSyncState fills in the student's wait in the buffer and recorded problem.
func (x *explanation) readSyncState(ctx context.Context, store *state.Store, cfg config.Config) error {
	p, waiting, err := store.PendingOf(ctx, x.StudentID)
	if err != nil {
		return err
	}
	if waiting {
		due := p.Last.Add(cfg.Debounce)
		if latest := p.First.Add(cfg.MaxDelay); latest.Before(due) {
			due = latest
		}
		x.Pending = &explainedWait{Since: p.First, Last: p.Last, Due: due, Debounce: cfg.Debounce.String(), MaxDelay: cfg.MaxDelay.String()}
	}
	problems, err := store.ProblemsOf(ctx, []uuid.UUID{x.StudentID})
	if err != nil {
		return err
	}
	if pr, ok := problems[x.StudentID]; ok {
		x.Problem = &explainedIssue{Kind: string(pr.Kind), Reason: pr.Reason, ContactID: pr.ContactID, LastTried: pr.LastTried}
		if pr.Kind == state.Conflict && pr.ContactID != "" {
			claimants, err := store.Claimants(ctx, []string{pr.ContactID})
			if err != nil {
				return err
			}
			for _, l := range claimants {
				if l.StudentID != x.StudentID {
					x.Problem.Rivals = append(x.Problem.Rivals, l.StudentID.String())
				}
			}
			sort.Strings(x.Problem.Rivals)
		}
	}
	return nil
}

// readContact finds the student's contact (the linked one while the email is unchanged, else
// by email) and reads what it holds now and what was last pushed to it.
func (x *explanation) readContact(ctx context.Context, store *state.Store, hs *hubspot.Client) (held, pushed map[string]string, err error) {
	email, problem := metrics.MatchableEmail(x.Email)
	if problem != "" {
		x.Unmatched = problem
		return nil, nil, nil
	}
	links, err := store.Links(ctx, []uuid.UUID{x.StudentID})
	if err != nil {
		return nil, nil, err
	}
	var c hubspot.Contact
	found := false
	if l, ok := links[x.StudentID]; ok && l.Email == email {
		got, err := hs.ReadByID(ctx, []string{l.ContactID}, metrics.Names())
		if err != nil {
			return nil, nil, err
		}
		c, found = got[l.ContactID]
		x.Contact = &explainedLink{ID: l.ContactID, Linked: found, Primary: l.Primary}
	}
	if !found {
		gone := ""
		if x.Contact != nil {
			gone = fmt.Sprintf(" (contact %s, linked before, is gone from HubSpot: deleted or merged)", x.Contact.ID)
		}
		got, err := hs.ReadByEmail(ctx, []string{email}, metrics.Names())
		if err != nil {
			return nil, nil, err
		}
		if c, found = got[email]; !found {
			x.Contact, x.Unmatched = nil, "no HubSpot contact has this email"+gone
			return nil, nil, nil
		}
		x.Contact = &explainedLink{ID: c.ID, Primary: c.Email == email}
	}
	x.Contact.Email = c.Email
	recorded, err := store.Pushed(ctx, []string{c.ID})
	if err != nil {
		return nil, nil, err
	}
	return c.Properties, recorded[c.ID], nil
}

// judge decides each property's state.
func (x *explanation) judge(s metrics.Student, held, pushed map[string]string) {
	for _, name := range metrics.Names() {
		db := s.Values[name]
		v := explainedValue{Name: name, Database: &db}
		if _, computed := s.Values[name]; !computed {
			// Not the sync's: what HubSpot holds stays, whatever it is.
			v.Database = nil
			if x.Contact != nil {
				h := held[name]
				v.HubSpot = &h
			}
			v.State, v.Detail = stateNotOwned, "the progress model does not compute it: the sync never writes it"
			x.Properties = append(x.Properties, v)
			continue
		}
		if x.Contact != nil {
			h := metrics.Canonical(name, held[name])
			v.HubSpot = &h
		}
		if p, ok := pushed[name]; ok {
			v.LastPushed = &p
		}
		v.State, v.Detail = x.stateOf(v)
		x.Properties = append(x.Properties, v)
	}
}

// stateOf says why a property's HubSpot value is what it is.
func (x *explanation) stateOf(v explainedValue) (string, string) {
	pr := x.Problem
	switch {
	case x.Contact == nil:
		return stateUnmatched, x.Unmatched
	case *v.HubSpot == *v.Database:
		return stateEqual, ""
	case pr != nil && pr.Kind == string(state.Conflict):
		who := "another student"
		if len(pr.Rivals) > 0 {
			who = "student " + strings.Join(pr.Rivals, ", ")
		}
		return stateConflict, fmt.Sprintf("contact %s is also matched by %s; nothing is written to it: %s", pr.ContactID, who, pr.Reason)
	case pr != nil && pr.Kind == string(state.Rejected):
		return stateRejected, pr.Reason + " (tried " + pr.LastTried.UTC().Format(time.RFC3339) + "; tried again when the value changes)"
	case x.Pending != nil:
		return statePending, "changed since " + x.Pending.Since.UTC().Format(time.RFC3339) + ", " + x.Pending.dueText()
	case pr != nil && pr.Kind == string(state.Unmatched):
		return stateUnmatched, "had no contact when last tried (" + pr.Reason + "); a contact has the email now: the hourly recheck or `backfill --email` writes it"
	case v.LastPushed != nil && *v.LastPushed == *v.HubSpot:
		return stateBehind, "HubSpot holds what the sync last wrote; the database changed since and the change has not reached the sync (still in the replication slot, or the service is not running)"
	default:
		last := "no record of the last value written"
		if v.LastPushed != nil {
			last = fmt.Sprintf("the sync last wrote %q", *v.LastPushed)
		}
		return stateDrifted, last + "; changed in HubSpot behind the sync's back: the next reconcile pass, or `backfill --email`, writes it again"
	}
}

// print writes the explanation for people.
func (x *explanation) print(out io.Writer) {
	fmt.Fprintf(out, "student %s <%s>\n", x.StudentID, x.Email)
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
		fmt.Fprintf(out, "pending: changed since %s, %s\n", x.Pending.Since.UTC().Format(time.RFC3339), x.Pending.dueText())
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
		if p.Detail != "" && p.State != stateUnmatched {
			fmt.Fprintf(out, "%s: %s: %s\n", p.Name, p.State, p.Detail)
		}
	}
	if n := x.differing(); n == 0 {
		fmt.Fprintln(out, "HubSpot equals the database.")
	}
}

func (w *explainedWait) dueText() string {
	return fmt.Sprintf("due by %s if the service runs with debounce %s and max delay %s, as given here",
		w.Due.UTC().Format(time.RFC3339), w.Debounce, w.MaxDelay)
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

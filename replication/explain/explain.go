// Package explain answers, for one student, why HubSpot holds what it holds: the values the
// progress model computes and the rows behind them, the contact and what it holds now, the
// values last pushed, and each property's state (docs/contract.md §5). It writes nothing.
package explain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
)

// The states of a property in an explanation (docs/contract.md §5).
const (
	StateEqual       = "equal"        // HubSpot holds the database's value
	StatePending     = "pending"      // the student waits in the buffer for a push
	StateRejected    = "rejected"     // HubSpot refused the value
	StateConflict    = "conflict"     // another student claims the contact
	StateUnmatched   = "unmatched"    // no contact to write
	StateDrifted     = "drifted"      // HubSpot holds another value than the sync wrote
	StateBehind      = "behind"       // the database changed, and the change has not reached the sync
	StateNotComputed = "not_computed" // the progress model does not compute it: never written
)

// StudentError says the student asked about is not one: no student has the email or id, or
// several have the email.
type StudentError struct{ Problem string }

func (e *StudentError) Error() string { return e.Problem }

// FindStudent resolves an email to the one student who has it.
func FindStudent(ctx context.Context, db *pgxpool.Pool, m *model.Model, email string) (uuid.UUID, error) {
	found, err := m.IDsByEmail(ctx, db, []string{email})
	if err != nil {
		return uuid.Nil, err
	}
	ids := found[metrics.NormalizeEmail(email)]
	switch len(ids) {
	case 0:
		return uuid.Nil, &StudentError{fmt.Sprintf("no student has the email %s", email)}
	case 1:
		return ids[0], nil
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = id.String()
	}
	return uuid.Nil, &StudentError{fmt.Sprintf("%d students have the email %s (%s): pick one with --student", len(ids), email, strings.Join(names, ", "))}
}

// Explanation is everything known about one student's sync, as the command prints it (text or
// JSON).
type Explanation struct {
	StudentID uuid.UUID `json:"student_id"`
	Email     string    `json:"email"`
	// Model names the progress model; Rows are the student's rows of its tables behind the
	// values.
	Model      string            `json:"model"`
	Rows       []model.TableRows `json:"rows"`
	Contact    *Link             `json:"contact"`
	Unmatched  string            `json:"unmatched,omitempty"`
	Pending    *Wait             `json:"pending,omitempty"`
	Problem    *Issue            `json:"problem,omitempty"`
	Properties []Value           `json:"properties"`
}

type Link struct {
	ID string `json:"id"`
	// Linked says the sync state links the student to it; otherwise it was found by email now.
	Linked  bool   `json:"linked"`
	Primary bool   `json:"email_is_primary"`
	Email   string `json:"email"`
}

type Wait struct {
	Since time.Time `json:"since"`
	Last  time.Time `json:"last_change"`
	// Due is when the student falls due under the debounce and max delay this command was
	// given; the service goes by its own.
	Due      time.Time `json:"due"`
	Debounce string    `json:"due_assumes_debounce"`
	MaxDelay string    `json:"due_assumes_max_delay"`
}

type Issue struct {
	Kind      string    `json:"kind"`
	Reason    string    `json:"reason"`
	ContactID string    `json:"contact_id,omitempty"`
	Rivals    []string  `json:"other_students,omitempty"`
	LastTried time.Time `json:"last_tried"`
}

type Value struct {
	Name       string  `json:"name"`
	Database   *string `json:"database"`    // null: the model does not compute it
	HubSpot    *string `json:"hubspot"`     // null: no contact
	LastPushed *string `json:"last_pushed"` // null: no record
	State      string  `json:"state"`
	Detail     string  `json:"detail,omitempty"`
}

// Differing counts the properties on which HubSpot differs from the database.
func (x *Explanation) Differing() int {
	n := 0
	for _, p := range x.Properties {
		if p.State != StateEqual && p.State != StateNotComputed {
			n++
		}
	}
	return n
}

// Sources are what an explanation reads: the database through the progress model, HubSpot,
// and the debounce and max delay the due time assumes.
type Sources struct {
	DB      *pgxpool.Pool
	Model   *model.Model
	HubSpot *hubspot.Client
	Buffer  buffer.Options
}

// Explain gathers everything known about one student; it writes nothing anywhere.
func Explain(ctx context.Context, src Sources, id uuid.UUID) (*Explanation, error) {
	db := src.DB
	s, rows, err := replication.CompleteView{DB: db, Model: src.Model}.Explain(ctx, id)
	if errors.Is(err, model.ErrNoStudent) {
		return nil, &StudentError{fmt.Sprintf("no student has the id %s", id)}
	}
	if err != nil {
		return nil, err
	}
	store, err := state.OpenReadOnly(ctx, db, src.Model.Students)
	if err != nil {
		return nil, err
	}
	x := &Explanation{StudentID: id, Email: s.Email, Model: src.Model.Name, Rows: rows}
	if err := x.readSyncState(ctx, store, src.Buffer); err != nil {
		return nil, err
	}
	held, pushed, err := x.readContact(ctx, store, src.HubSpot)
	if err != nil {
		return nil, err
	}
	x.judge(s, held, pushed)
	return x, nil
}

// readSyncState fills in the student's wait in the buffer and recorded problem.
func (x *Explanation) readSyncState(ctx context.Context, store *state.Store, due buffer.Options) error {
	p, waiting, err := store.PendingOf(ctx, x.StudentID)
	if err != nil {
		return err
	}
	if waiting {
		// The retry wait the service may add is its own: not in the sync state.
		x.Pending = &Wait{Since: p.First, Last: p.Last, Due: due.DueAt(p.First, p.Last, time.Time{}),
			Debounce: due.Debounce.String(), MaxDelay: due.MaxDelay.String()}
	}
	problems, err := store.ProblemsOf(ctx, []uuid.UUID{x.StudentID})
	if err != nil {
		return err
	}
	if pr, ok := problems[x.StudentID]; ok {
		x.Problem = &Issue{Kind: string(pr.Kind), Reason: pr.Reason, ContactID: pr.ContactID, LastTried: pr.LastTried}
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

// readContact finds the student's contact as a push would (push.Find: the linked one while
// the email is unchanged and HubSpot still has it, else the one the email finds) and reads
// what it holds now and what was last pushed to it.
func (x *Explanation) readContact(ctx context.Context, store *state.Store, hs *hubspot.Client) (held, pushed map[string]string, err error) {
	// What the resolution finds wrong is this explanation's to tell, not a warning in the log.
	quiet := logrus.New()
	quiet.SetOutput(io.Discard)
	p := push.New(hs, store, logrus.NewEntry(quiet), push.Options{DryRun: true, CompareWithHubSpot: true})
	found, unmatched, err := p.Find(ctx, metrics.Student{ID: x.StudentID, Email: x.Email})
	if err != nil || unmatched != "" {
		x.Unmatched = unmatched
		return nil, nil, err
	}
	x.Contact = &Link{ID: found.ContactID, Linked: found.Linked, Primary: found.Primary, Email: found.Email}
	recorded, err := store.Pushed(ctx, []string{found.ContactID})
	if err != nil {
		return nil, nil, err
	}
	return found.Holds, recorded[found.ContactID], nil
}

// judge decides each property's state.
func (x *Explanation) judge(s metrics.Student, held, pushed map[string]string) {
	for _, name := range metrics.Names() {
		db := s.Values[name]
		v := Value{Name: name, Database: &db}
		if _, computed := s.Values[name]; !computed {
			// Not the sync's: what HubSpot holds stays, whatever it is.
			v.Database = nil
			if x.Contact != nil {
				h := held[name]
				v.HubSpot = &h
			}
			v.State, v.Detail = StateNotComputed, "the progress model does not compute it: the sync never writes it"
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
func (x *Explanation) stateOf(v Value) (string, string) {
	pr := x.Problem
	switch {
	case x.Contact == nil:
		return StateUnmatched, x.Unmatched
	case *v.HubSpot == *v.Database:
		return StateEqual, ""
	case pr != nil && pr.Kind == string(state.Conflict):
		who := "another student"
		if len(pr.Rivals) > 0 {
			who = "student " + strings.Join(pr.Rivals, ", ")
		}
		return StateConflict, fmt.Sprintf("contact %s is also matched by %s; nothing is written to it: %s", pr.ContactID, who, pr.Reason)
	case pr != nil && pr.Kind == string(state.Rejected):
		return StateRejected, pr.Reason + " (tried " + pr.LastTried.UTC().Format(time.RFC3339) + "; tried again when the value changes)"
	case x.Pending != nil:
		return StatePending, "changed since " + x.Pending.Since.UTC().Format(time.RFC3339) + ", " + x.Pending.DueText()
	case pr != nil && pr.Kind == string(state.Unmatched):
		return StateUnmatched, "had no contact when last tried (" + pr.Reason + "); a contact has the email now: the hourly recheck or `backfill --email` writes it"
	case v.LastPushed != nil && *v.LastPushed == *v.HubSpot:
		return StateBehind, "HubSpot holds what the sync last wrote; the database changed since and the change has not reached the sync (still in the replication slot, or the service is not running)"
	default:
		last := "no record of the last value written"
		if v.LastPushed != nil {
			last = fmt.Sprintf("the sync last wrote %q", *v.LastPushed)
		}
		return StateDrifted, last + "; changed in HubSpot behind the sync's back: the next reconcile pass, or `backfill --email`, writes it again"
	}
}

// DueText says when the student falls due, and under which settings.
func (w *Wait) DueText() string {
	return fmt.Sprintf("due by %s if the service runs with debounce %s and max delay %s, as given here",
		w.Due.UTC().Format(time.RFC3339), w.Debounce, w.MaxDelay)
}

// Package backfill recomputes students and pushes what differs, once: every student, or those
// with the given emails (docs/contract.md §5, backfill). It compares with what HubSpot holds,
// not with what was last pushed, so it also repairs values changed behind the sync's back; a
// full backfill lets go of the contacts of students deleted since they were synced.
package backfill

import (
	"context"
	"errors"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
)

// Options say what to backfill and how.
type Options struct {
	// Emails, when given, limit the backfill to the students with these emails.
	Emails []string
	// DryRun computes and reports what would change and writes nothing.
	DryRun bool
	// AllowClearing lets batches clear many students' progress at once (push.Options).
	AllowClearing bool
	// ShowEmails logs email addresses in full.
	ShowEmails bool
	Log        *logrus.Entry
	// Progress hears how the run goes (optional).
	Progress Progress
}

// Progress hears how a backfill goes: the students to do, then each batch, then the end.
type Progress interface {
	Start(total int)
	Batch(res push.Result)
	Finish(err error)
}

// UnknownEmailsError names the emails no student has: nothing was pushed.
type UnknownEmailsError struct{ Emails []string }

func (e *UnknownEmailsError) Error() string {
	return "no student has the email(s) " + strings.Join(e.Emails, ", ")
}

// Prepare checks that the database shows every row and that HubSpot has the properties,
// and opens the sync state (read-only for a dry run): a backfill ready to run.
func Prepare(ctx context.Context, db *pgxpool.Pool, m *model.Model, hs *hubspot.Client, opts Options) (*Backfill, error) {
	if opts.Progress == nil {
		opts.Progress = silent{}
	}
	if err := replication.CheckVisibility(ctx, db, m); err != nil {
		return nil, err
	}
	if err := push.CheckProperties(ctx, hs); err != nil {
		return nil, err
	}
	open := state.Open
	if opts.DryRun {
		open = state.OpenReadOnly
	}
	store, err := open(ctx, db, m.Students)
	if err != nil {
		return nil, err
	}
	return &Backfill{view: replication.CompleteView{DB: db, Model: m}, store: store, opts: opts,
		pusher: push.New(hs, store, opts.Log, push.Options{DryRun: opts.DryRun, ShowEmails: opts.ShowEmails, AllowClearing: opts.AllowClearing,
			CompareWithHubSpot: true, Properties: m.Computes()})}, nil
}

// Run pushes the students in batches of push.MaxBatch. It returns what was done, also when
// it stops early.
func (b *Backfill) Run(ctx context.Context) (push.Result, error) {
	if len(b.opts.Emails) > 0 {
		return b.some(ctx)
	}
	return b.all(ctx)
}

// Backfill is one prepared run.
type Backfill struct {
	view   replication.CompleteView
	store  *state.Store
	pusher *push.Pusher
	opts   Options
	total  push.Result
}

// some pushes the students with the given emails.
func (b *Backfill) some(ctx context.Context) (_ push.Result, err error) {
	found, err := b.view.Model.IDsByEmail(ctx, b.view.DB, b.opts.Emails)
	if err != nil {
		return b.total, err
	}
	var ids []uuid.UUID
	var missing []string
	for _, e := range b.opts.Emails {
		n := metrics.NormalizeEmail(e)
		if len(found[n]) == 0 {
			missing = append(missing, e)
		}
		ids = append(ids, found[n]...)
	}
	if len(missing) > 0 {
		return b.total, &UnknownEmailsError{Emails: missing}
	}
	b.opts.Progress.Start(len(ids))
	defer func() { b.opts.Progress.Finish(err) }()
	for start := 0; start < len(ids); start += push.MaxBatch {
		students, err := b.view.ForStudents(ctx, ids[start:min(start+push.MaxBatch, len(ids))])
		if err != nil {
			return b.total, err
		}
		if err := b.push(ctx, students); err != nil {
			return b.total, err
		}
	}
	return b.total, nil
}

// all pushes every student, a page at a time in id order; each page is computed from a
// complete view, so a policy switched on halfway through stops the backfill instead of
// clearing the rest. It ends by letting go of the students deleted since they were synced.
func (b *Backfill) all(ctx context.Context) (_ push.Result, err error) {
	n, err := b.view.Model.CountStudents(ctx, b.view.DB)
	if err != nil {
		return b.total, err
	}
	b.opts.Progress.Start(n)
	defer func() { b.opts.Progress.Finish(err) }()
	after := uuid.Nil
	for {
		students, err := b.view.Page(ctx, after, push.MaxBatch)
		if err != nil {
			return b.total, err
		}
		if len(students) == 0 {
			return b.total, b.forgetDeparted(ctx)
		}
		after = students[len(students)-1].ID
		if err := b.push(ctx, students); err != nil {
			if errors.Is(err, hubspot.ErrDailyLimit) {
				b.opts.Log.WithField("students_done", b.total.Students).Error("HubSpot's daily API limit is spent; run the backfill again after it resets")
			}
			return b.total, err
		}
	}
}

// push pushes one batch and counts it.
func (b *Backfill) push(ctx context.Context, students []metrics.Student) error {
	res, err := b.pusher.Push(ctx, students)
	b.total.Add(res)
	b.opts.Progress.Batch(res)
	return err
}

// forgetDeparted lets go of the students deleted since their contact was found.
func (b *Backfill) forgetDeparted(ctx context.Context) error {
	gone, err := b.store.Departed(ctx)
	if err != nil {
		return err
	}
	for start := 0; start < len(gone); start += push.MaxBatch {
		res, err := b.pusher.Forget(ctx, gone[start:min(start+push.MaxBatch, len(gone))])
		b.total.Add(res)
		if err != nil {
			return err
		}
	}
	return nil
}

// silent is the Progress of a run nobody watches.
type silent struct{}

func (silent) Start(int)         {}
func (silent) Batch(push.Result) {}
func (silent) Finish(error)      {}

// Package push writes students' metrics to their HubSpot contacts: it resolves each student's
// email to a contact (cached), sends only the values that differ from what the contact holds,
// and records the outcome in the sync state. Backfills and the streaming flusher both use it.
package push

import (
	"context"
	"fmt"
	"maps"
	"net/mail"
	"sort"
	"strings"

	"github.com/google/uuid"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/state"
)

// MaxBatch is the most students one Push handles: HubSpot's batch limit, so that a batch of
// students costs at most one batch/read and one batch/update.
const MaxBatch = 100

// HubSpot is the part of the HubSpot API a push needs.
type HubSpot interface {
	ReadByEmail(ctx context.Context, emails []string, properties []string) (map[string]hubspot.Contact, error)
	UpdateContacts(ctx context.Context, updates []hubspot.Update) (hubspot.UpdateResult, error)
}

// Store is the part of the sync state a push needs.
type Store interface {
	Links(ctx context.Context, students []uuid.UUID) (map[uuid.UUID]state.Link, error)
	Claimants(ctx context.Context, contactIDs []string) ([]state.Link, error)
	Pushed(ctx context.Context, contactIDs []string) (map[string]map[string]string, error)
	ProblemsOf(ctx context.Context, students []uuid.UUID) (map[uuid.UUID]state.Problem, error)
	Record(ctx context.Context, o state.Outcome) error
	Unsettle(ctx context.Context, properties map[string][]string) error
}

// Pusher pushes batches of students.
type Pusher struct {
	hs            HubSpot
	store         Store
	log           *logrus.Entry
	dryRun        bool
	showEmails    bool
	allowClearing bool
	props         []string
}

// Options configure a Pusher.
type Options struct {
	// DryRun computes and reports the changes but writes nothing, to HubSpot or to the state.
	DryRun bool
	// ShowEmails logs email addresses in full instead of masked.
	ShowEmails bool
	// AllowClearing lets a batch clear the progress of many students at once (see
	// VanishedProgressError), for an operator who knows the rows were really deleted.
	AllowClearing bool
}

// New returns a Pusher.
func New(hs HubSpot, store Store, log *logrus.Entry, opts Options) *Pusher {
	return &Pusher{hs: hs, store: store, log: log, dryRun: opts.DryRun, showEmails: opts.ShowEmails,
		allowClearing: opts.AllowClearing, props: metrics.Names()}
}

// Change is what a push sends (or, in a dry run, would send) to one contact.
type Change struct {
	StudentID uuid.UUID
	Email     string
	ContactID string
	// Properties maps each changed property to its old and new value.
	Properties map[string][2]string
}

// Result summarizes a push.
type Result struct {
	Students  int
	Updated   int             // contacts written
	Unchanged int             // matched students whose contact already held every value
	Changes   []Change        // what a dry run would send (empty otherwise: a backfill of 100,000 students need not hold them)
	Problems  []state.Problem // unmatched, rejected and conflicting students
}

// Add accumulates another Result into r.
func (r *Result) Add(o Result) {
	r.Students += o.Students
	r.Updated += o.Updated
	r.Unchanged += o.Unchanged
	r.Changes = append(r.Changes, o.Changes...)
	r.Problems = append(r.Problems, o.Problems...)
}

// Count returns how many problems of kind k the result holds.
func (r *Result) Count(k state.Kind) int {
	n := 0
	for _, p := range r.Problems {
		if p.Kind == k {
			n++
		}
	}
	return n
}

// batch is what one Push builds up: the result for the caller, the outcome to record, and
// the problems already on record for its students.
type batch struct {
	res   *Result
	out   *state.Outcome
	known map[uuid.UUID]state.Problem
}

// target is one student on its way to a contact.
type target struct {
	student metrics.Student
	email   string // normalized
	link    state.Link
	linked  bool
}

// Push writes up to MaxBatch students. An error means nothing after the failing call was
// recorded; pushes are idempotent, so the caller retries the whole batch later.
func (p *Pusher) Push(ctx context.Context, students []metrics.Student) (Result, error) {
	if len(students) > MaxBatch {
		return Result{}, fmt.Errorf("push: %d students in one batch, at most %d", len(students), MaxBatch)
	}
	res := Result{Students: len(students)}
	var out state.Outcome
	err := p.push(ctx, students, &batch{res: &res, out: &out}, nil)
	if err != nil {
		return Result{}, err
	}
	if !p.dryRun {
		if err := p.store.Record(ctx, out); err != nil {
			return Result{}, err
		}
	}
	p.log.WithFields(logrus.Fields{
		"students": res.Students, "updated": res.Updated, "unchanged": res.Unchanged,
		"unmatched": res.Count(state.Unmatched), "rejected": res.Count(state.Rejected),
		"conflicts": res.Count(state.Conflict), "dry_run": p.dryRun,
	}).Info("pushed batch")
	return res, nil
}

// push does one batch. lost holds the contacts HubSpot no longer has when push calls itself to
// resolve their students afresh; nil on the first pass.
func (p *Pusher) push(ctx context.Context, students []metrics.Student, b *batch, lost map[string]bool) error {
	res, out := b.res, b.out
	ids := make([]uuid.UUID, len(students))
	for i, s := range students {
		ids[i] = s.ID
	}
	links, err := p.store.Links(ctx, ids)
	if err != nil {
		return err
	}
	known, err := p.store.ProblemsOf(ctx, ids)
	if err != nil {
		return err
	}
	b.known = known

	// Resolve: cached links hold while the email is unchanged; the rest take one batch/read.
	var targets []*target
	var unresolved []string
	for _, s := range students {
		email, problem := NormalizeEmail(s.Email)
		if problem != "" {
			p.problem(b, state.Problem{StudentID: s.ID, Email: s.Email, Kind: state.Unmatched, Reason: problem})
			continue
		}
		t := &target{student: s, email: email}
		if l, ok := links[s.ID]; ok && l.Email == email && !lost[l.ContactID] {
			t.link, t.linked = l, true
		} else {
			unresolved = append(unresolved, email)
		}
		targets = append(targets, t)
	}
	baseline := map[string]map[string]string{}
	if len(unresolved) > 0 {
		contacts, err := p.hs.ReadByEmail(ctx, unresolved, p.props)
		if err != nil {
			return fmt.Errorf("look up contacts by email: %w", err)
		}
		kept := targets[:0]
		for _, t := range targets {
			if t.linked {
				kept = append(kept, t)
				continue
			}
			c, ok := contacts[t.email]
			if !ok {
				p.problem(b, state.Problem{StudentID: t.student.ID, Email: t.email, Kind: state.Unmatched,
					Reason: "no HubSpot contact has this email"})
				continue
			}
			t.link = state.Link{StudentID: t.student.ID, Email: t.email, ContactID: c.ID, Primary: c.Email == t.email}
			t.linked = true
			out.Links = append(out.Links, t.link)
			baseline[c.ID] = p.canonical(c.Properties)
			if !p.dryRun {
				// Remember what the contact holds, so the next push needs no batch/read.
				out.Pushed = append(out.Pushed, state.Pushed{ContactID: c.ID, StudentID: t.student.ID, Properties: baseline[c.ID]})
			}
			kept = append(kept, t)
		}
		targets = kept
	}

	targets, err = p.settleConflicts(ctx, targets, b)
	if err != nil {
		return err
	}

	// Diff against what each contact holds: freshly read values, else what we last pushed.
	var cachedIDs []string
	for _, t := range targets {
		if _, ok := baseline[t.link.ContactID]; !ok {
			cachedIDs = append(cachedIDs, t.link.ContactID)
		}
	}
	if len(cachedIDs) > 0 {
		pushed, err := p.store.Pushed(ctx, cachedIDs)
		if err != nil {
			return err
		}
		for id, v := range pushed {
			baseline[id] = v
		}
	}
	var updates []hubspot.Update
	byContact := map[string]*target{}
	changes := map[string]Change{}
	for _, t := range targets {
		id := t.link.ContactID
		// Without a baseline (a cached link whose values were never recorded) every value is
		// sent: a stale value on the contact must not survive.
		old := baseline[id]
		changed := map[string]string{}
		diff := map[string][2]string{}
		for _, name := range p.props {
			newV := t.student.Values[name]
			if oldV, had := old[name]; had && metrics.Canonical(name, oldV) == newV {
				continue
			}
			changed[name] = newV
			diff[name] = [2]string{old[name], newV}
		}
		if len(changed) == 0 {
			res.Unchanged++
			out.Synced = append(out.Synced, t.student.ID)
			continue
		}
		if r, ok := known[t.student.ID]; ok && r.Kind == state.Rejected && r.ContactID == id && maps.Equal(r.Properties, changed) {
			// HubSpot refused exactly these values before; they go again when they change.
			res.Problems = append(res.Problems, r)
			continue
		}
		updates = append(updates, hubspot.Update{ContactID: id, Properties: changed})
		byContact[id] = t
		changes[id] = Change{StudentID: t.student.ID, Email: t.email, ContactID: id, Properties: diff}
	}
	if err := p.guardVanishedProgress(students, targets, baseline); err != nil {
		return err
	}
	if p.dryRun {
		for _, u := range updates {
			res.Changes = append(res.Changes, changes[u.ContactID])
		}
		return nil
	}
	if len(updates) == 0 {
		return nil
	}

	if err := p.unsettle(ctx, updates); err != nil {
		return err
	}
	ur, err := p.hs.UpdateContacts(ctx, updates)
	if err != nil {
		return fmt.Errorf("update contacts: %w", err)
	}
	sent := map[string]hubspot.Update{}
	for _, u := range updates {
		sent[u.ContactID] = u
	}
	for _, id := range ur.Updated {
		t := byContact[id]
		res.Updated++
		out.Pushed = append(out.Pushed, state.Pushed{ContactID: id, StudentID: t.student.ID, Properties: sent[id].Properties})
		out.Synced = append(out.Synced, t.student.ID)
	}
	for _, r := range ur.Rejected {
		t := byContact[r.ContactID]
		p.problem(b, state.Problem{StudentID: t.student.ID, Email: t.email, Kind: state.Rejected,
			Reason: "HubSpot refused the values: " + r.Message, ContactID: r.ContactID, Properties: sent[r.ContactID].Properties})
	}
	if len(ur.NotFound) > 0 {
		// The contact was deleted or merged away since we cached it: forget it and resolve
		// the email afresh, once.
		out.DropLinks = append(out.DropLinks, ur.NotFound...)
		var again []metrics.Student
		gone := map[string]bool{}
		for _, id := range ur.NotFound {
			again = append(again, byContact[id].student)
			gone[id] = true
		}
		if lost != nil {
			for _, s := range again {
				p.problem(b, state.Problem{StudentID: s.ID, Email: s.Email, Kind: state.Unmatched,
					Reason: "HubSpot contact disappeared (deleted or merged) while writing"})
			}
			return nil
		}
		return p.push(ctx, again, b, gone)
	}
	return nil
}

// VanishedProgressMin is how many students of one batch must have lost every progress row
// at once, while HubSpot holds progress for them, before a push refuses the batch. One
// student whose rows were deleted is ordinary; a whole batch of them is far more likely a
// view of the database that hides rows (row-level security, a revoked grant, the wrong
// database) than a mass deletion.
const VanishedProgressMin = 5

// VanishedProgressError refuses a batch whose every student has no course_progress rows while
// at least VanishedProgressMin of them have progress on their contact.
type VanishedProgressError struct {
	Students int // whose contact shows progress
	Batch    int
}

func (e *VanishedProgressError) Error() string {
	return fmt.Sprintf("%d of the %d students of a batch have progress in HubSpot but no course_progress rows in the database; "+
		"nothing was written: the database most likely hides rows from the service (row-level security, a revoked grant, a wrong DATABASE_URL). "+
		"Run `progress-sync check`; if that progress was really deleted, `progress-sync backfill --allow-clearing` writes it",
		e.Students, e.Batch)
}

// guardVanishedProgress is the last line against pushing from a partial view: a batch whose
// students all come back without progress rows may not clear the progress HubSpot holds for
// many of them.
func (p *Pusher) guardVanishedProgress(students []metrics.Student, targets []*target, baseline map[string]map[string]string) error {
	if p.allowClearing {
		return nil
	}
	for _, s := range students {
		if s.Values[metrics.CourseStatus] != metrics.StatusNotStarted {
			return nil // someone has progress rows: the view is not empty
		}
	}
	had := 0
	for _, t := range targets {
		switch baseline[t.link.ContactID][metrics.CourseStatus] {
		case metrics.StatusInProgress, metrics.StatusCompleted:
			had++
		}
	}
	if had < VanishedProgressMin {
		return nil
	}
	return &VanishedProgressError{Students: had, Batch: len(students)}
}

// unsettle marks the values about to be written as unknown in the sync state before the
// write, so that no crash between HubSpot taking them and Record can leave a stale record.
func (p *Pusher) unsettle(ctx context.Context, updates []hubspot.Update) error {
	props := make(map[string][]string, len(updates))
	for _, u := range updates {
		for name := range u.Properties {
			props[u.ContactID] = append(props[u.ContactID], name)
		}
	}
	return p.store.Unsettle(ctx, props)
}

// settleConflicts keeps one student per contact. HubSpot refuses a batch naming a contact twice,
// and two students writing one contact would make it flip between them. A contact belongs to
// the one student whose email is its primary address; the others are reported as conflicts.
// When no single student holds the primary address (two students whose emails differ only in
// case), nobody writes the contact until a person decides.
func (p *Pusher) settleConflicts(ctx context.Context, targets []*target, b *batch) ([]*target, error) {
	claims := map[string][]state.Link{}
	inBatch := map[uuid.UUID]bool{}
	var ids []string
	for _, t := range targets {
		if len(claims[t.link.ContactID]) == 0 {
			ids = append(ids, t.link.ContactID)
		}
		claims[t.link.ContactID] = append(claims[t.link.ContactID], t.link)
		inBatch[t.student.ID] = true
	}
	if len(ids) == 0 {
		return targets, nil
	}
	others, err := p.store.Claimants(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, l := range others {
		if !inBatch[l.StudentID] {
			claims[l.ContactID] = append(claims[l.ContactID], l)
		}
	}
	owner := map[string]uuid.UUID{}
	for id, ls := range claims {
		if len(ls) == 1 {
			owner[id] = ls[0].StudentID
			continue
		}
		var primaries []uuid.UUID
		for _, l := range ls {
			if l.Primary {
				primaries = append(primaries, l.StudentID)
			}
		}
		if len(primaries) == 1 {
			owner[id] = primaries[0]
		}
	}
	kept := targets[:0]
	for _, t := range targets {
		if o, ok := owner[t.link.ContactID]; ok && o == t.student.ID {
			kept = append(kept, t)
		}
	}
	// Every losing claimant is reported, also those of earlier batches: one of them may have
	// written the contact before its owner turned up.
	for id, ls := range claims {
		o, owned := owner[id]
		for _, l := range ls {
			if owned && l.StudentID == o {
				continue
			}
			var rivals []string
			for _, r := range ls {
				if r.StudentID != l.StudentID {
					rivals = append(rivals, r.StudentID.String())
				}
			}
			sort.Strings(rivals)
			reason := fmt.Sprintf("HubSpot contact %s is also matched by student(s) %s", id, strings.Join(rivals, ", "))
			if owned {
				reason += ", whose email is the contact's primary address"
			} else {
				reason += "; no single one of them holds the contact's primary address, so none is written"
			}
			p.problem(b, state.Problem{StudentID: l.StudentID, Email: l.Email, Kind: state.Conflict, Reason: reason, ContactID: id})
		}
	}
	return kept, nil
}

func (p *Pusher) problem(b *batch, pr state.Problem) {
	b.res.Problems = append(b.res.Problems, pr)
	b.out.Problems = append(b.out.Problems, pr)
	fields := logrus.Fields{"student_id": pr.StudentID, "email": p.mask(pr.Email), "kind": pr.Kind}
	if pr.ContactID != "" {
		fields["contact_id"] = pr.ContactID
	}
	// A problem already on record (a student without a contact, looked up again) is news
	// only at debug level; a new one is a warning.
	if old, ok := b.known[pr.StudentID]; ok && old.Kind == pr.Kind && old.Reason == pr.Reason {
		p.log.WithFields(fields).Debug(pr.Reason)
		return
	}
	p.log.WithFields(fields).Warn(pr.Reason)
}

func (p *Pusher) mask(email string) string {
	if p.showEmails {
		return email
	}
	return MaskEmail(email)
}

// canonical keeps our properties of a freshly read contact, in the form we compute them.
func (p *Pusher) canonical(props map[string]string) map[string]string {
	out := make(map[string]string, len(p.props))
	for _, name := range p.props {
		out[name] = metrics.Canonical(name, props[name])
	}
	return out
}

// NormalizeEmail trims and lower-cases an email as HubSpot stores it, or says why it cannot be
// an address worth looking up.
func NormalizeEmail(raw string) (string, string) {
	e := metrics.NormalizeEmail(raw)
	if e == "" {
		return "", "student has no email"
	}
	a, err := mail.ParseAddress(e)
	if err != nil || a.Address != e || a.Name != "" {
		return "", "email is not an address"
	}
	local, domain, _ := strings.Cut(e, "@")
	if local == "" || !strings.Contains(domain, ".") || strings.HasSuffix(domain, ".") || len(e) > 254 {
		return "", "email is not an address"
	}
	return e, ""
}

// MaskEmail hides most of an email address for logs: a***@example.com.
func MaskEmail(email string) string {
	local, domain, ok := strings.Cut(email, "@")
	if !ok {
		if email == "" {
			return ""
		}
		return email[:1] + "***"
	}
	if local == "" {
		return "***@" + domain
	}
	return local[:1] + "***@" + domain
}

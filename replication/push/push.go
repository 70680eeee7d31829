// Package push writes students' metrics to their HubSpot contacts: it resolves each student's
// email to a contact (cached), sends only the values that differ from what the contact holds,
// and records the outcome in the sync state. Backfills and the streaming flusher both use it.
package push

import (
	"context"
	"fmt"
	"maps"
	"regexp"
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
	hs            *hubspot.Client
	store         Store
	log           *logrus.Entry
	dryRun        bool
	showEmails    bool
	allowClearing bool
	compare       bool
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
	// CompareWithHubSpot reads what every contact holds now instead of trusting the values
	// last pushed, so a value changed in HubSpot behind the sync's back is written again
	// (backfill). It costs one batch/read per batch, by email, as a first lookup does; a
	// linked contact that no longer answers to the student's email is read by id.
	CompareWithHubSpot bool
	// Properties are the properties the sync owns: those the progress model computes
	// (model.Computes). No other is read, compared, written or cleared. Default: all ten.
	Properties []string
}

// New returns a Pusher.
func New(hs *hubspot.Client, store Store, log *logrus.Entry, opts Options) *Pusher {
	if len(opts.Properties) == 0 {
		opts.Properties = metrics.Names()
	}
	return &Pusher{hs: hs, store: store, log: log, dryRun: opts.DryRun, showEmails: opts.ShowEmails,
		allowClearing: opts.AllowClearing, compare: opts.CompareWithHubSpot, props: opts.Properties}
}

// Change is what a push sends (or, in a dry run, would send) to one contact.
type Change struct {
	StudentID uuid.UUID
	Email     string
	ContactID string
	// Properties maps each changed property to its old and new value.
	Properties map[string][2]string
	// Release clears the values on a contact the student no longer has.
	Release bool
}

// Result summarizes a push.
type Result struct {
	Students  int
	Updated   int             // contacts written
	Released  int             // contacts no longer any student's, whose synced values were cleared
	Unchanged int             // matched students whose contact already held every value
	Changes   []Change        // what a dry run would send (empty otherwise: a backfill of 100,000 students need not hold them)
	Problems  []state.Problem // unmatched, rejected and conflicting students, each once
	// problemAt indexes Problems by student, so that adding up batches keeps one problem per
	// student (a rival is reported by each batch that meets its contact).
	problemAt map[uuid.UUID]int
}

// Add accumulates another Result into r.
func (r *Result) Add(o Result) {
	r.Students += o.Students
	r.Updated += o.Updated
	r.Released += o.Released
	r.Unchanged += o.Unchanged
	r.Changes = append(r.Changes, o.Changes...)
	if r.problemAt == nil {
		r.problemAt = map[uuid.UUID]int{}
		for i, p := range r.Problems {
			r.problemAt[p.StudentID] = i
		}
	}
	for _, p := range o.Problems {
		if i, ok := r.problemAt[p.StudentID]; ok {
			r.Problems[i] = p // the later verdict
			continue
		}
		r.problemAt[p.StudentID] = len(r.Problems)
		r.Problems = append(r.Problems, p)
	}
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

// batch is one Push on its way through the phases: what the caller gets, what the state
// records, and what the phases learn on the way.
type batch struct {
	res Result
	out state.Outcome
	// known holds the problems already on record for the batch's students.
	known map[uuid.UUID]state.Problem
	// baseline is what each contact holds: freshly read values, else what was last pushed.
	baseline map[string]map[string]string
	// read are the contacts read from HubSpot in this batch, as HubSpot gave them.
	read map[string]hubspot.Contact
	// released are the links students left behind: their email changed to another contact's
	// (or to none), or they were deleted. Their contacts get the synced values cleared.
	released []state.Link
}

// target is one student on its way to a contact.
type target struct {
	student metrics.Student
	email   string // normalized
	link    state.Link
	linked  bool
	// previous is the student's link made under an email it no longer has.
	previous *state.Link
}

// change is what one contact is to be sent.
type change struct {
	target *target
	values map[string]string    // the properties to write
	diff   map[string][2]string // each one's old and new value
	// release clears the values on a contact the student left (target.link is that link).
	release bool
}

// Push writes up to MaxBatch students, in phases: resolve contacts → settle conflicts → diff
// → release left contacts → write → record. Contacts HubSpot no longer has (deleted or merged
// away since they were cached) get one more pass with their students resolved afresh. An
// error means nothing after the failing call was recorded; pushes are idempotent, so the
// caller retries the whole batch.
func (p *Pusher) Push(ctx context.Context, students []metrics.Student) (Result, error) {
	if len(students) > MaxBatch {
		return Result{}, fmt.Errorf("push: %d students in one batch, at most %d", len(students), MaxBatch)
	}
	b, err := p.newBatch(ctx, metrics.IDs(students))
	if err != nil {
		return Result{}, err
	}
	b.res.Students = len(students)
	lost, err := p.pass(ctx, students, b, nil)
	if err == nil && len(lost) > 0 {
		lost, err = p.pass(ctx, studentsOf(lost), b, contactsOf(lost))
		for _, t := range lost {
			p.problem(b, state.Problem{StudentID: t.student.ID, Email: t.email, Kind: state.Unmatched,
				Reason: "HubSpot contact disappeared (deleted or merged) while writing"})
		}
	}
	if err != nil {
		return Result{}, err
	}
	if err := p.record(ctx, b); err != nil {
		return Result{}, err
	}
	return b.res, nil
}

func (p *Pusher) newBatch(ctx context.Context, ids []uuid.UUID) (*batch, error) {
	known, err := p.store.ProblemsOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	return &batch{known: known, baseline: map[string]map[string]string{}, read: map[string]hubspot.Contact{}}, nil
}

// pass runs the phases up to the write for students, skipping the cached links of the lost
// contacts, and returns the targets whose contact HubSpot no longer has.
func (p *Pusher) pass(ctx context.Context, students []metrics.Student, b *batch, lost map[string]bool) ([]*target, error) {
	targets, err := p.resolveContacts(ctx, students, b, lost)
	if err != nil {
		return nil, err
	}
	if targets, err = p.settleConflicts(ctx, targets, b); err != nil {
		return nil, err
	}
	changes, err := p.diff(ctx, targets, b)
	if err != nil {
		return nil, err
	}
	if err := p.guardVanishedProgress(students, targets, b.baseline); err != nil {
		return nil, err
	}
	releases, err := p.releaseContacts(ctx, b, targets)
	if err != nil {
		return nil, err
	}
	return p.write(ctx, append(changes, releases...), b)
}

// resolveContacts finds each student's contact: a cached link holds while the email is
// unchanged; the rest take one batch/read by email (all of them when comparing with HubSpot).
// Students without a usable email or a contact become problems.
func (p *Pusher) resolveContacts(ctx context.Context, students []metrics.Student, b *batch, lost map[string]bool) ([]*target, error) {
	links, err := p.store.Links(ctx, metrics.IDs(students))
	if err != nil {
		return nil, err
	}
	var targets []*target
	var emails []string
	for _, s := range students {
		email, problem := metrics.MatchableEmail(s.Email)
		l, cached := links[s.ID]
		cached = cached && !lost[l.ContactID]
		if cached && l.Email != email {
			b.released = append(b.released, l) // kept if the new email finds the same contact
		}
		if problem != "" {
			p.problem(b, state.Problem{StudentID: s.ID, Email: s.Email, Kind: state.Unmatched, Reason: problem})
			continue
		}
		t := &target{student: s, email: email}
		if cached && l.Email == email {
			t.link, t.linked = l, true
		}
		if !t.linked || p.compare {
			emails = append(emails, email)
		}
		targets = append(targets, t)
	}
	if len(emails) == 0 {
		return targets, nil
	}
	return p.lookUpByEmail(ctx, targets, emails, b)
}

// lookUpByEmail reads the contacts of emails in one batch/read and links the unlinked targets,
// keeping what each contact holds as its baseline (recorded, so the next push needs no
// batch/read). Linked targets take their baseline from it too when comparing with HubSpot.
func (p *Pusher) lookUpByEmail(ctx context.Context, targets []*target, emails []string, b *batch) ([]*target, error) {
	contacts, err := p.hs.ReadByEmail(ctx, emails, p.props)
	if err != nil {
		return nil, fmt.Errorf("look up contacts by email: %w", err)
	}
	kept := targets[:0]
	var elsewhere []*target // linked, but the email now finds no contact or another one
	for _, t := range targets {
		c, found := contacts[t.email]
		switch {
		case t.linked && !p.compare:
		case t.linked && found && c.ID == t.link.ContactID:
			p.keepBaseline(b, t, c)
		case t.linked:
			elsewhere = append(elsewhere, t)
			continue
		case found:
			p.link(b, t, c)
		default:
			p.problem(b, state.Problem{StudentID: t.student.ID, Email: t.email, Kind: state.Unmatched,
				Reason: "no HubSpot contact has this email"})
			continue
		}
		kept = append(kept, t)
	}
	if len(elsewhere) == 0 {
		return kept, nil
	}
	return p.readLinkedByID(ctx, kept, elsewhere, contacts, b)
}

// readLinkedByID reads the linked contacts that no longer answer to their student's email (an
// address changed in HubSpot): a link holds while the student's email is unchanged. A contact
// HubSpot no longer has is forgotten, and the student goes to the contact its email finds.
func (p *Pusher) readLinkedByID(ctx context.Context, kept, elsewhere []*target, byEmail map[string]hubspot.Contact, b *batch) ([]*target, error) {
	ids := make([]string, len(elsewhere))
	for i, t := range elsewhere {
		ids[i] = t.link.ContactID
	}
	contacts, err := p.hs.ReadByID(ctx, ids, p.props)
	if err != nil {
		return nil, fmt.Errorf("read linked contacts: %w", err)
	}
	for _, t := range elsewhere {
		if c, ok := contacts[t.link.ContactID]; ok {
			p.keepBaseline(b, t, c)
			kept = append(kept, t)
			continue
		}
		b.out.DropLinks = append(b.out.DropLinks, t.link.ContactID)
		c, ok := byEmail[t.email]
		if !ok {
			p.problem(b, state.Problem{StudentID: t.student.ID, Email: t.email, Kind: state.Unmatched,
				Reason: "no HubSpot contact has this email (the contact linked before was deleted or merged)"})
			continue
		}
		p.link(b, t, c)
		kept = append(kept, t)
	}
	return kept, nil
}

// link ties a target to the contact its email found, with what the contact holds as baseline.
func (p *Pusher) link(b *batch, t *target, c hubspot.Contact) {
	t.link = state.Link{StudentID: t.student.ID, Email: t.email, ContactID: c.ID, Primary: c.Email == t.email}
	t.linked = true
	b.out.Links = append(b.out.Links, t.link)
	p.keepBaseline(b, t, c)
}

// keepBaseline takes what a contact holds, just read, as the baseline, and records it.
func (p *Pusher) keepBaseline(b *batch, t *target, c hubspot.Contact) {
	b.baseline[c.ID] = p.canonical(c.Properties)
	b.read[c.ID] = c
	b.out.Pushed = append(b.out.Pushed, state.Pushed{ContactID: c.ID, StudentID: t.student.ID, Properties: b.baseline[c.ID]})
}

// diff compares each target's values with its contact's baseline and returns what to send.
// Without a baseline (a cached link whose values were never recorded) every value is sent: a
// stale value on the contact must not survive. Values HubSpot refused before wait until they
// change.
func (p *Pusher) diff(ctx context.Context, targets []*target, b *batch) ([]change, error) {
	if err := p.loadCachedBaseline(ctx, targets, b); err != nil {
		return nil, err
	}
	var changes []change
	for _, t := range targets {
		id := t.link.ContactID
		old := b.baseline[id]
		c := change{target: t, values: map[string]string{}, diff: map[string][2]string{}}
		for _, name := range p.props {
			newV := t.student.Values[name]
			if oldV, had := old[name]; had && metrics.Canonical(name, oldV) == newV {
				continue
			}
			c.values[name] = newV
			c.diff[name] = [2]string{old[name], newV}
		}
		if len(c.values) == 0 {
			b.res.Unchanged++
			b.out.Synced = append(b.out.Synced, t.student.ID)
			continue
		}
		if r, ok := b.known[t.student.ID]; ok && r.Kind == state.Rejected && r.ContactID == id && maps.Equal(r.Properties, c.values) {
			b.res.Problems = append(b.res.Problems, r)
			continue
		}
		changes = append(changes, c)
	}
	return changes, nil
}

// loadCachedBaseline reads what was last pushed to the contacts that were not read just now.
func (p *Pusher) loadCachedBaseline(ctx context.Context, targets []*target, b *batch) error {
	var cached []string
	for _, t := range targets {
		if _, ok := b.baseline[t.link.ContactID]; !ok {
			cached = append(cached, t.link.ContactID)
		}
	}
	if len(cached) == 0 {
		return nil
	}
	pushed, err := p.store.Pushed(ctx, cached)
	if err != nil {
		return err
	}
	for id, v := range pushed {
		b.baseline[id] = v
	}
	return nil
}

// Forget lets go of students deleted from the database: the synced values on their contacts
// are cleared (unless another student claims the contact) and the sync state forgets them.
func (p *Pusher) Forget(ctx context.Context, gone []uuid.UUID) (Result, error) {
	if len(gone) > MaxBatch {
		return Result{}, fmt.Errorf("push: %d students in one batch, at most %d", len(gone), MaxBatch)
	}
	b, err := p.newBatch(ctx, gone)
	if err != nil {
		return Result{}, err
	}
	links, err := p.store.Links(ctx, gone)
	if err != nil {
		return Result{}, err
	}
	for _, id := range gone {
		if l, ok := links[id]; ok {
			b.released = append(b.released, l)
		}
	}
	b.out.Forget = gone
	releases, err := p.releaseContacts(ctx, b, nil)
	if err != nil {
		return Result{}, err
	}
	if _, err := p.write(ctx, releases, b); err != nil {
		return Result{}, err
	}
	if err := p.record(ctx, b); err != nil {
		return Result{}, err
	}
	return b.res, nil
}

// releaseContacts clears the synced values on the contacts students left (their email now
// finds another contact or none, or they were deleted), so that no contact keeps progress
// nobody updates: a workflow would go on acting on it. A contact a student still claims (in
// this batch, or under its current email in the sync state) is left alone.
func (p *Pusher) releaseContacts(ctx context.Context, b *batch, targets []*target) ([]change, error) {
	released := b.released
	b.released = nil
	if len(released) == 0 {
		return nil, nil
	}
	claimed := map[string]bool{}
	for _, t := range targets {
		claimed[t.link.ContactID] = true
	}
	ids := make([]string, len(released))
	for i, l := range released {
		ids[i] = l.ContactID
	}
	claimants, err := p.store.Claimants(ctx, ids)
	if err != nil {
		return nil, err
	}
	for _, l := range claimants {
		claimed[l.ContactID] = true
	}
	cached, err := p.store.Pushed(ctx, ids)
	if err != nil {
		return nil, err
	}
	var changes []change
	for _, l := range released {
		b.out.Unlink = append(b.out.Unlink, l)
		if claimed[l.ContactID] {
			continue
		}
		claimed[l.ContactID] = true // one change per contact
		c := change{target: &target{student: metrics.Student{ID: l.StudentID}, email: l.Email, link: l, linked: true},
			values: map[string]string{}, diff: map[string][2]string{}, release: true}
		for _, name := range p.props {
			if old, had := cached[l.ContactID][name]; !had || old != "" {
				c.values[name], c.diff[name] = "", [2]string{old, ""}
			}
		}
		if len(c.values) > 0 {
			changes = append(changes, c)
		}
	}
	return changes, nil
}

// write sends the changes in one batch/update (a dry run only reports them) and returns the
// targets whose contact HubSpot no longer has.
func (p *Pusher) write(ctx context.Context, changes []change, b *batch) ([]*target, error) {
	if p.dryRun {
		for _, c := range changes {
			b.res.Changes = append(b.res.Changes, Change{StudentID: c.target.student.ID, Email: c.target.email,
				ContactID: c.target.link.ContactID, Properties: c.diff, Release: c.release})
		}
		return nil, nil
	}
	if len(changes) == 0 {
		return nil, nil
	}
	updates := make([]hubspot.Update, len(changes))
	byContact := make(map[string]change, len(changes))
	for i, c := range changes {
		updates[i] = hubspot.Update{ContactID: c.target.link.ContactID, Properties: c.values}
		byContact[updates[i].ContactID] = c
	}
	if err := p.unsettle(ctx, updates); err != nil {
		return nil, err
	}
	ur, err := p.hs.UpdateContacts(ctx, updates)
	if err != nil {
		return nil, err // hubspot: update contacts: ...
	}
	p.recordWrites(b, ur, byContact)
	if len(ur.Retry) > 0 {
		// HubSpot could not take these now, for a reason it does not call permanent: the
		// batch goes again later (updates are idempotent), and no one is marked rejected.
		return nil, fmt.Errorf("HubSpot could not take the updates of %d contacts this time (%s): the batch is retried",
			len(ur.Retry), strings.Join(ur.Retry, ", "))
	}
	lost := make([]*target, 0, len(ur.NotFound))
	for _, id := range ur.NotFound {
		if c := byContact[id]; !c.release {
			lost = append(lost, c.target)
		}
	}
	b.out.DropLinks = append(b.out.DropLinks, ur.NotFound...)
	return lost, nil
}

// recordWrites notes in the batch what HubSpot took and what it refused.
func (p *Pusher) recordWrites(b *batch, ur hubspot.UpdateResult, byContact map[string]change) {
	for _, id := range ur.Updated {
		c := byContact[id]
		b.out.Pushed = append(b.out.Pushed, state.Pushed{ContactID: id, StudentID: c.target.student.ID, Properties: c.values})
		if c.release {
			b.res.Released++
			p.log.WithFields(logrus.Fields{"student_id": c.target.student.ID, "contact_id": id}).
				Info("cleared the synced properties on a contact its student no longer has (email changed, or student deleted)")
			continue
		}
		b.res.Updated++
		b.out.Synced = append(b.out.Synced, c.target.student.ID)
	}
	for _, r := range ur.Rejected {
		c := byContact[r.ContactID]
		if c.release {
			p.log.WithFields(logrus.Fields{"student_id": c.target.student.ID, "contact_id": r.ContactID}).
				Warn("HubSpot refused to clear the synced properties on a contact its student left: " + r.Message)
			continue
		}
		p.problem(b, state.Problem{StudentID: c.target.student.ID, Email: c.target.email, Kind: state.Rejected,
			Reason: "HubSpot refused the values: " + r.Message, ContactID: r.ContactID, Properties: c.values})
	}
}

// record stores the batch's outcome in one transaction (not in a dry run) and logs it.
func (p *Pusher) record(ctx context.Context, b *batch) error {
	if !p.dryRun {
		if err := p.store.Record(ctx, b.out); err != nil {
			return err
		}
	}
	for _, id := range b.out.Synced {
		// Said once, as the problem was when it began.
		if old, ok := b.known[id]; ok {
			p.log.WithFields(logrus.Fields{"student_id": id, "email": p.mask(old.Email), "was": old.Kind}).
				Info("the student's problem is over: HubSpot holds the student's values")
		}
	}
	msg := "pushed batch"
	if p.dryRun {
		msg = "computed batch (dry run: nothing written)"
	}
	p.log.WithFields(logrus.Fields{
		"students": b.res.Students, "updated": b.res.Updated, "unchanged": b.res.Unchanged, "released": b.res.Released,
		"unmatched": b.res.Count(state.Unmatched), "rejected": b.res.Count(state.Rejected),
		"conflicts": b.res.Count(state.Conflict), "dry_run": p.dryRun,
	}).Info(msg)
	return nil
}

func studentsOf(targets []*target) []metrics.Student {
	out := make([]metrics.Student, len(targets))
	for i, t := range targets {
		out[i] = t.student
	}
	return out
}

func contactsOf(targets []*target) map[string]bool {
	out := make(map[string]bool, len(targets))
	for _, t := range targets {
		out[t.link.ContactID] = true
	}
	return out
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
	var rivals []uuid.UUID
	for _, l := range others {
		if !inBatch[l.StudentID] {
			claims[l.ContactID] = append(claims[l.ContactID], l)
			rivals = append(rivals, l.StudentID)
		}
	}
	// A rival of another batch reported again is no news: its problem on record says so.
	if len(rivals) > 0 {
		known, err := p.store.ProblemsOf(ctx, rivals)
		if err != nil {
			return nil, err
		}
		maps.Copy(b.known, known)
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
	p.reportRivals(b, claims, owner)
	return kept, nil
}

// reportRivals records every losing claimant of a contact as a conflict, also those of earlier
// batches: one of them may have written the contact before its owner turned up.
func (p *Pusher) reportRivals(b *batch, claims map[string][]state.Link, owner map[string]uuid.UUID) {
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
			switch {
			case owned:
				reason += ", whose email is the contact's primary address"
			case primaries(ls) > 1:
				reason += "; more than one of them holds the contact's primary address (their emails differ only in case or spaces), so none is written"
			default:
				reason += "; none of them holds the contact's primary address (each matched one of its additional emails), so none is written"
			}
			p.problem(b, state.Problem{StudentID: l.StudentID, Email: l.Email, Kind: state.Conflict, Reason: reason, ContactID: id})
		}
	}
}

// primaries counts the links made through the contact's primary address.
func primaries(ls []state.Link) int {
	n := 0
	for _, l := range ls {
		if l.Primary {
			n++
		}
	}
	return n
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

// MaskEmail hides most of an email address for logs, reports and the status page:
// a***@example.com. What is not one address (two addresses, text around one, no @, nothing
// before the @, a domain without a dot) keeps only its first letter: j***. It cuts at a
// letter, never inside one.
func MaskEmail(email string) string {
	if email == "" {
		return ""
	}
	local, domain, ok := strings.Cut(email, "@")
	if !ok || local == "" || !strings.Contains(domain, ".") || strings.Contains(domain, "@") ||
		strings.ContainsAny(email, " \t\r\n,;<>()[]\"'") {
		return firstLetter(email) + "***"
	}
	return firstLetter(local) + "***@" + domain
}

// emailLike finds addresses inside free text, such as a reason HubSpot gave.
var emailLike = regexp.MustCompile(`[^\s"'<>,;:()\[\]{}]+@[^\s"'<>,;:()\[\]{}]+`)

// MaskEmailsIn masks every address inside text (a reason, a message) with MaskEmail.
func MaskEmailsIn(text string) string { return emailLike.ReplaceAllStringFunc(text, MaskEmail) }

// firstLetter is the first character of s, whole ("É", not half of it).
func firstLetter(s string) string {
	for _, r := range s {
		return string(r)
	}
	return ""
}

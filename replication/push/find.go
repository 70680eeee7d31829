package push

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/replication/state"
)

// Found is the contact a push of one student writes to, and what it holds now.
type Found struct {
	ContactID string
	Email     string // the contact's primary email
	// Linked says the sync state links the student to it; otherwise its email found it now.
	Linked bool
	// Primary says the student's email is the contact's primary one, not an additional one.
	Primary bool
	// Holds are the contact's values of the pusher's properties, as HubSpot gave them.
	Holds map[string]string
}

// Find resolves one student's contact the way Push does (the contact resolution has this one
// home), reading what it holds, and records and writes nothing: for explain. The Pusher must
// compare with HubSpot (Options.CompareWithHubSpot). Without a contact, unmatched says why.
func (p *Pusher) Find(ctx context.Context, s metrics.Student) (found Found, unmatched string, err error) {
	if !p.compare {
		return Found{}, "", errors.New("push: Find needs a Pusher that compares with HubSpot")
	}
	b, err := p.newBatch(ctx, []uuid.UUID{s.ID})
	if err != nil {
		return Found{}, "", err
	}
	targets, err := p.resolveContacts(ctx, []metrics.Student{s}, b, nil)
	if err != nil {
		return Found{}, "", err
	}
	if len(targets) == 0 {
		switch {
		case len(b.out.Problems) == 0:
			return Found{}, "", errors.New("push: the student resolved to neither a contact nor a problem")
		case len(b.out.DropLinks) > 0:
			return Found{}, fmt.Sprintf("no HubSpot contact has this email (contact %s, linked before, is gone from HubSpot: deleted or merged)", b.out.DropLinks[0]), nil
		}
		return Found{}, b.out.Problems[0].Reason, nil
	}
	t := targets[0]
	c := b.read[t.link.ContactID]
	newLink := slices.ContainsFunc(b.out.Links, func(l state.Link) bool { return l.StudentID == s.ID })
	return Found{ContactID: t.link.ContactID, Email: c.Email, Linked: !newLink, Primary: t.link.Primary, Holds: c.Properties}, "", nil
}

package hubspot

import (
	"context"
	"errors"
	"net/http"
)

// Access is whether the key may do one kind of thing the sync needs.
type Access struct {
	Scope string // the scope it takes
	What  string // what the sync does with it
	// OK: tried and allowed. Otherwise Err says what went wrong (ErrMissingScopes: HubSpot
	// answered 403), or Untested why it could not be tried without changing anything.
	OK       bool
	Err      error
	Untested string
}

// CheckAccess tries each kind of access the sync needs without changing anything: it reads a
// contact that does not exist, writes one of the sync's properties to a contact id HubSpot
// never gives out, and asks to create the property group that exists. Reading the property
// definitions is the caller's own first step (CheckProperties); schemasRead is how it went.
func (c *Client) CheckAccess(ctx context.Context, group, property string, schemasRead error) []Access {
	read := Access{Scope: ScopeContactsRead, What: "find contacts by email"}
	_, err := c.ReadByEmail(ctx, []string{"progress-sync-check@example.invalid"}, []string{property})
	read.judge(err)

	write := Access{Scope: ScopeContactsWrite, What: "write the sync's properties"}
	_, err = c.UpdateContacts(ctx, []Update{{ContactID: "0", Properties: map[string]string{property: ""}}})
	if errors.Is(err, ErrPropertyMissing) {
		write.Untested = "the properties are not provisioned yet"
	} else {
		write.judge(err)
	}

	schemas := Access{Scope: ScopeSchemasRead, What: "verify the properties"}
	schemas.judge(schemasRead)

	return []Access{read, write, schemas, c.checkSchemaWrite(ctx, group)}
}

// checkSchemaWrite asks to create the property group again: 409 means the key may.
func (c *Client) checkSchemaWrite(ctx context.Context, group string) Access {
	a := Access{Scope: ScopeSchemasWrite, What: "create the property group and properties (provision)"}
	err := c.readGroup(ctx, group)
	switch {
	case isStatus(err, http.StatusNotFound):
		a.Untested = "the property group does not exist yet (provision creates it, and needs this scope)"
		return a
	case errors.Is(err, ErrMissingScopes):
		a.Untested = "telling whether the property group exists takes " + ScopeSchemasRead
		return a
	case err != nil:
		a.judge(err)
		return a
	}
	_, _, err = c.do(ctx, call{method: http.MethodPost, path: c.paths.propertyGroups, body: groupJSON{Name: group, Label: group}})
	if isStatus(err, http.StatusConflict) {
		err = nil
	}
	a.judge(err)
	return a
}

func (a *Access) judge(err error) { a.OK, a.Err = err == nil, err }

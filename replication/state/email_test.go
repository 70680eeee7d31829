package state

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
)

// The email rule has one home in Go (metrics.NormalizeEmail) and one in SQL
// (metrics.EmailCandidatesSQL), which narrows rows down for it. Over the same database, every
// tricky address must come out the same: the SQL keeps every row Go matches, and the sync
// state sees each student as the claimant of their own contact.
func TestTheEmailRuleAgreesInGoAndSQL(t *testing.T) {
	ctx := context.Background()
	s, db := openStore(t)
	m := model.Builtin(model.Default)
	tricky := []string{
		" Ada@Example.com ",           // spaces
		"\tbea@example.com\n",         // a tab and a newline
		"\u00a0cy@example.com\u00a0",  // no-break spaces, which btrim does not know
		"\u2003dee@example.com\u0085", // an em space and a next-line
		"Émile@Example.com",           // a non-ASCII capital: lower() under a C collation leaves it
		"STRAẞE@example.com",          // the capital sharp s
		"ß@example.com",               // the small one, which has no one-letter capital
		"İpek@example.com",            // the Turkish dotted capital I
		"IRMAK@example.com",           // ASCII I, which a Turkish collation lowers to a dotless ı
		"plain@example.com",           // nothing to do
	}
	ids := make([]uuid.UUID, len(tricky))
	var links []Link
	for i, raw := range tricky {
		ids[i] = addUser(t, db, raw)
		links = append(links, Link{StudentID: ids[i], Email: metrics.NormalizeEmail(raw), ContactID: fmt.Sprint(100 + i)})
	}
	if err := s.Record(ctx, Outcome{Links: links}); err != nil {
		t.Fatal(err)
	}
	for i, raw := range tricky {
		want := metrics.NormalizeEmail(raw)
		t.Run(strings.TrimSpace(raw), func(t *testing.T) {
			// The SQL keeps the row Go matches.
			var kept []uuid.UUID
			rows, err := db.Query(ctx, `SELECT id FROM public.users WHERE `+metrics.EmailCandidatesSQL("email", "$1::text[]"), []string{want})
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id uuid.UUID
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				kept = append(kept, id)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(kept, ids[i]) {
				t.Fatalf("the SQL form drops %q, which Go normalizes to %q", raw, want)
			}
			// The student claims the contact its email found.
			claimants, err := s.Claimants(ctx, []string{links[i].ContactID})
			if err != nil {
				t.Fatal(err)
			}
			if len(claimants) != 1 || claimants[0].StudentID != ids[i] {
				t.Fatalf("claimants of the contact of %q = %+v, want the student", raw, claimants)
			}
			// The reconcile sees the link as still held.
			page, err := s.Reconciliation("s").Page(ctx, uuid.Nil, len(tricky))
			if err != nil {
				t.Fatal(err)
			}
			at := slices.IndexFunc(page, func(l LinkedStudent) bool { return l.StudentID == ids[i] })
			if at < 0 || page[at].Current != want || page[at].Gone {
				t.Fatalf("reconcile page for %q: %+v, want current email %q", raw, page, want)
			}
			// The student is found by the address typed otherwise.
			found, err := m.IDsByEmail(ctx, db, []string{strings.ToUpper(want)})
			if err != nil {
				t.Fatal(err)
			}
			if n := metrics.NormalizeEmail(strings.ToUpper(want)); n == want && !slices.Contains(found[want], ids[i]) {
				t.Fatalf("looking up %q found %v, want the student", strings.ToUpper(want), found)
			}
		})
	}
	// An ASCII address that differs is decided in SQL: not a candidate.
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM public.users WHERE `+metrics.EmailCandidatesSQL("email", "$1::text[]")+` AND email = 'plain@example.com'`,
		[]string{"other@example.com"}).Scan(&n); err != nil || n != 0 {
		t.Fatalf("plain@example.com is a candidate for other@example.com (%d, %v)", n, err)
	}
}

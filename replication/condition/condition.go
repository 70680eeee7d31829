// Package condition names what keeps the sync from pushing: the database out of reach or
// read-only, HubSpot out of reach, its key refused or its daily limit spent, the slot lost,
// rows hidden, a publication that leaves changes out. A Set keeps which of them hold now.
//
// Each condition has one sentence that says what happened, that nothing is lost and what to
// do. The log gets it when the condition starts and at most once a minute while it lasts, and
// one line when it ends; /readyz, the status page and the alert webhook give the same sentence.
package condition

import (
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sirupsen/logrus"

	"github.com/focusenglish/progress-sync/hubspot"
)

// Kind is one condition. The order is precedence: when several hold, /readyz names the first.
type Kind int

const (
	SlotLost Kind = iota
	DatabaseUnreachable
	DatabaseReadOnly
	KeyRefused
	DailyLimit
	HubSpotUnreachable
	PublicationGap
	RowsHidden
	count
)

// Kinds lists every condition in order of precedence.
func Kinds() []Kind {
	out := make([]Kind, count)
	for i := range out {
		out[i] = Kind(i)
	}
	return out
}

// about is what the service says of a condition.
type about struct {
	name   string // for the alert's fields and the log: stable, snake case
	notice string // what happened, that nothing is lost, what to do
	over   string // the line when it ends
}

var abouts = [count]about{
	SlotLost: {"slot_lost",
		"the replication slot was lost (the server removed WAL it still needed): the service makes it again and queues every student, so nothing is lost; " +
			"raise max_slot_wal_keep_size, or alert on progress_sync_slot_wal_status, so that it does not happen again (docs/runbook.md, \"The slot was lost\")",
		"the replication slot streams again; every student was queued"},
	DatabaseUnreachable: {"database_unreachable",
		"the database is out of reach: nothing is lost, changes wait in the replication slot and are streamed once it answers again; " +
			"check that the database is up and that this host can reach it (DATABASE_URL, firewall, DNS)",
		"the database answers again; streaming resumes"},
	DatabaseReadOnly: {"database_read_only",
		"the database is read-only (Supabase makes a project read-only when its disk is nearly full): nothing is lost, " +
			"the changes wait in the replication slot and are recorded and pushed once it takes writes again; " +
			"free disk space (Supabase: raise the disk size), then make the database writable",
		"the database takes writes again; pushes resume"},
	KeyRefused: {"hubspot_key_refused",
		"HubSpot refuses the key (revoked, rotated, or missing a scope): nothing is lost, changes keep being recorded and are pushed once a working key is in place; " +
			"put a valid service key with the contact scopes in HUBSPOT_ACCESS_TOKEN_FILE (it is read again on the next try) or HUBSPOT_ACCESS_TOKEN and restart",
		"HubSpot accepts the key again; pushes resume"},
	DailyLimit: {"hubspot_daily_limit",
		"HubSpot's daily API limit is spent: nothing is lost, changes keep being recorded and are pushed when it resets (midnight in the HubSpot account's time zone); " +
			"find what else spends the portal's calls, or buy a higher limit",
		"HubSpot takes calls again after its daily limit; pushes resume"},
	HubSpotUnreachable: {"hubspot_unreachable",
		"HubSpot is out of reach (no answer, or server errors after every retry): nothing is lost, the students wait in the buffer and are pushed once it answers; " +
			"check this host's network and https://status.hubspot.com",
		"HubSpot answers again; pushes resume"},
	PublicationGap: {"publication_gap",
		"the publication leaves changes out of the stream: run progress-sync setup (or progress-sync check for the SQL); " +
			"once it publishes every change again every student is queued, so nothing is lost",
		"the publication publishes every change again"},
	RowsHidden: {"rows_hidden",
		"the database hides rows of the source tables from the service (row-level security): pushes are held, since metrics computed now would be wrong; " +
			"nothing is lost, changes keep being recorded; run progress-sync check for the policy to add",
		"every row of the source tables is visible again; pushes resume"},
}

// Name is the condition's stable name, as alerts and logs give it.
func (k Kind) Name() string { return abouts[k].name }

// Notice is the sentence that explains the condition: what happened, that nothing is lost,
// and what to do.
func (k Kind) Notice() string { return abouts[k].notice }

func (k Kind) String() string { return k.Name() }

// RepeatEvery is how often, at most, a condition that lasts is logged again.
const RepeatEvery = time.Minute

// Held is a condition that holds, and since when.
type Held struct {
	Kind  Kind
	Since time.Time
}

// Set keeps the conditions that hold now. Every part of the pipeline that meets one raises it
// and clears it when it sees it gone; the Set logs, so each sentence is said from one place.
// Its methods may be called from any goroutine.
type Set struct {
	log *logrus.Entry
	now func() time.Time

	mu   sync.Mutex
	held [count]struct {
		on          bool
		since, said time.Time
		began       uint64 // how many times it began
	}
}

// NewSet returns an empty Set that logs to log.
func NewSet(log *logrus.Entry) *Set { return &Set{log: log, now: time.Now} }

// Raise notes that k holds because of err; the notice is logged now if k did not hold or was
// last said over RepeatEvery ago. fields add context to the line (retry_in, students).
func (s *Set) Raise(k Kind, err error, fields logrus.Fields) {
	now := s.now()
	s.mu.Lock()
	h := &s.held[k]
	say := !h.on || now.Sub(h.said) >= RepeatEvery
	if !h.on {
		h.on, h.since = true, now
		h.began++
	}
	if say {
		h.said = now
	}
	s.mu.Unlock()
	if say {
		entry := s.log.WithFields(fields).WithField("condition", k.Name())
		if err != nil {
			entry = entry.WithError(err)
		}
		entry.Error(k.Notice())
	}
}

// Clear notes that the conditions ks no longer hold, with one line for each that did.
func (s *Set) Clear(ks ...Kind) {
	for _, k := range ks {
		s.mu.Lock()
		h := &s.held[k]
		was, since := h.on, h.since
		h.on = false
		s.mu.Unlock()
		if was {
			s.log.WithFields(logrus.Fields{"condition": k.Name(), "lasted": s.now().Sub(since).Round(time.Second).String()}).Info(abouts[k].over)
		}
	}
}

// Began counts the times k began to hold: a condition that began and ended between two looks
// (a slot lost and made again at start) still shows. A nil Set counts none.
func (s *Set) Began(k Kind) uint64 {
	if s == nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[k].began
}

// Holds reports whether k holds now.
func (s *Set) Holds(k Kind) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.held[k].on
}

// Holding lists the conditions that hold now, in order of precedence.
func (s *Set) Holding() []Held {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Held
	for k := range count {
		if h := s.held[k]; h.on {
			out = append(out, Held{Kind: k, Since: h.since})
		}
	}
	return out
}

// Of says which condition err is a sign of, if any. It is the one place that sorts errors into
// conditions.
func Of(err error) (Kind, bool) {
	switch {
	case err == nil:
		return 0, false
	case IsReadOnly(err):
		return DatabaseReadOnly, true
	case errors.Is(err, hubspot.ErrUnauthorized), errors.Is(err, hubspot.ErrMissingScopes):
		return KeyRefused, true
	case errors.Is(err, hubspot.ErrDailyLimit):
		return DailyLimit, true
	case errors.Is(err, hubspot.ErrUnavailable):
		return HubSpotUnreachable, true
	case databaseUnreachable(err):
		return DatabaseUnreachable, true
	}
	return 0, false
}

// HubSpot are the conditions a call HubSpot answered proves over.
var HubSpot = []Kind{KeyRefused, DailyLimit, HubSpotUnreachable}

// IsReadOnly recognises a write the database refused because it, or the session, is
// read-only (SQLSTATE 25006).
func IsReadOnly(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25006"
}

// databaseUnreachable recognises a database that cannot be connected to: refused, timed out,
// not resolved, or starting up or shutting down (57P03). A connection cut in the middle of a
// session is not one: the next connection is likely to work, and if it does not, that says so.
func databaseUnreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "57P03" || pgErr.Code == "08001" || pgErr.Code == "08004"
	}
	var connect *pgconn.ConnectError
	return errors.As(err, &connect)
}

package replication

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics"
)

// The processor: it decodes the stream, resolves course-wide changes to students, persists
// them with the position they cover, and only then confirms that position.

// groupLimit bounds how many transactions one durable write covers.
const groupLimit = 1000

// process decodes events and persists them. Transactions are grouped while more are queued,
// so a burst costs few database round trips; a lone one is persisted at once.
func (c *Consumer) process(ctx context.Context, events <-chan event) error {
	dec := NewDecoder()
	pending := newChanges()
	var pendingEnd pglogrepl.LSN
	txns := 0
	flush := func() error {
		if txns == 0 {
			return nil
		}
		ids, err := c.resolve(ctx, pending)
		if err != nil {
			return err
		}
		if err := c.sink.Add(ctx, ids, pendingEnd); err != nil {
			return err
		}
		c.confirm(pendingEnd)
		pending, txns = newChanges(), 0
		return nil
	}
	var lastAdvance time.Time
	for ev := range events {
		if ev.keepalive {
			if dec.InTransaction() {
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			// The stored checkpoint never trails the slot, so replaying from it is always
			// possible: the position is written before it is confirmed. At most once per
			// status interval: that write is WAL too, and the server answers it with another
			// keepalive, which would otherwise be answered with another write, and so on.
			if ev.walEnd > c.Confirmed() && time.Since(lastAdvance) >= c.opts.StatusInterval {
				if err := c.sink.Advance(ctx, ev.walEnd); err != nil {
					return err
				}
				c.confirm(ev.walEnd)
				lastAdvance = time.Now()
			}
			continue
		}
		commit, err := dec.Decode(ev.data)
		if err != nil {
			return err
		}
		if commit == nil {
			continue
		}
		pending.Merge(commit.Changes)
		pendingEnd, txns = commit.End, txns+1
		if c.opts.Observer != nil {
			for table, n := range commit.Changes.Rows {
				c.opts.Observer.Changes(table, n)
			}
		}
		if len(events) == 0 || txns >= groupLimit {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

func (c *Consumer) confirm(lsn pglogrepl.LSN) {
	for {
		cur := c.confirmed.Load()
		if uint64(lsn) <= cur || c.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// resolve turns changes into student ids, each once, querying for course-wide changes. The
// query reads a complete view (ReadComplete): a student hidden from it would lose the change,
// so a partial view fails the session, which retries.
func (c *Consumer) resolve(ctx context.Context, ch Changes) ([]uuid.UUID, error) {
	seen := maps.Clone(ch.Students)
	if ch.AllStudents || len(ch.Modules) > 0 || len(ch.Courses) > 0 {
		var more []uuid.UUID
		err := ReadComplete(ctx, c.db, func(tx pgx.Tx) (err error) {
			if ch.AllStudents {
				more, err = metrics.AllStudents(ctx, tx)
			} else {
				more, err = metrics.StudentsOfCourses(ctx, tx, slices.Collect(maps.Keys(ch.Modules)), slices.Collect(maps.Keys(ch.Courses)))
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, id := range more {
			seen[id] = struct{}{}
		}
	}
	return slices.Collect(maps.Keys(seen)), nil
}

package replication

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/condition"
)

// The processor: it decodes the stream, resolves changes of reference tables to students, persists
// them with the position they cover, and only then confirms that position.

// groupLimit bounds how many transactions one durable write covers.
const groupLimit = 1000

// process decodes events and persists them. Transactions are grouped while more are queued,
// so a burst costs few database round trips; a lone one is persisted at once.
func (c *Consumer) process(ctx context.Context, events <-chan event) error {
	dec := NewDecoder(c.opts.Model)
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
	c.conds.Clear(condition.DatabaseReadOnly) // the position was just written
	for {
		cur := c.confirmed.Load()
		if uint64(lsn) <= cur || c.confirmed.CompareAndSwap(cur, uint64(lsn)) {
			return
		}
	}
}

// resolve turns changes into student ids, each once, asking the model's queries for the
// students of changed reference rows. The queries read a complete view (ReadComplete): a
// student hidden from them would lose the change, so a partial view fails the session, which
// retries.
func (c *Consumer) resolve(ctx context.Context, ch Changes) ([]uuid.UUID, error) {
	seen := maps.Clone(ch.Students)
	if ch.AllStudents || len(ch.Keys) > 0 {
		var more []uuid.UUID
		err := ReadComplete(ctx, c.db, c.opts.Model, func(tx pgx.Tx) error {
			var err error
			more, err = studentsOfChanges(ctx, tx, c.opts.Model, ch)
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

// studentsOfChanges lists the students that truncations and changed reference rows concern.
func studentsOfChanges(ctx context.Context, tx pgx.Tx, m *model.Model, ch Changes) ([]uuid.UUID, error) {
	if ch.AllStudents {
		return m.AllStudents(ctx, tx)
	}
	var out []uuid.UUID
	for _, table := range slices.Sorted(maps.Keys(ch.Keys)) {
		var keys [][]string
		for k := range ch.Keys[table] {
			keys = append(keys, strings.Split(k, keySep))
		}
		ids, err := m.StudentsOfKeys(ctx, tx, table, keys)
		if err != nil {
			return nil, err
		}
		out = append(out, ids...)
	}
	return out, nil
}

package replication

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"

	"github.com/focusenglish/progress-sync/metrics/model"
)

// Changes are what a run of transactions touched, as far as students are concerned: the
// students named by a row, and the changed keys of the model's reference tables, which
// concern the students the model's query for that table finds.
type Changes struct {
	Students map[uuid.UUID]struct{}
	// Keys holds, per reference table, the changed rows' key values (model.Table.Keys order,
	// joined by keySep).
	Keys map[string]map[string]struct{}
	// AllStudents is set by a TRUNCATE of a table whose rows name students or courses.
	AllStudents bool
	// Rows counts the row changes per table, for metrics.
	Rows map[string]int
}

// keySep joins a key's values: a text value from the stream cannot hold a NUL byte.
const keySep = "\x00"

func newChanges() Changes {
	return Changes{Students: map[uuid.UUID]struct{}{}, Keys: map[string]map[string]struct{}{}, Rows: map[string]int{}}
}

// Merge adds o to c.
func (c *Changes) Merge(o Changes) {
	for k := range o.Students {
		c.Students[k] = struct{}{}
	}
	for table, keys := range o.Keys {
		for k := range keys {
			c.addKey(table, k)
		}
	}
	c.AllStudents = c.AllStudents || o.AllStudents
	for t, n := range o.Rows {
		c.Rows[t] += n
	}
}

func (c *Changes) addKey(table, key string) {
	if c.Keys[table] == nil {
		c.Keys[table] = map[string]struct{}{}
	}
	c.Keys[table][key] = struct{}{}
}

// Commit is a decoded transaction.
type Commit struct {
	Changes Changes
	// End is the transaction's end LSN: the position to confirm once its changes are durable.
	// (Its commit LSN would make the server send the transaction again.)
	End pglogrepl.LSN
}

// relation is what the decoder needs of a table: which column positions name a student or
// hold a reference table's keys, as of the latest Relation message (ALTER TABLE can move
// them).
type relation struct {
	table    string
	student  int   // column holding a student id, or -1
	keys     []int // a reference table's key columns (-1 where the table lacks one)
	truncate bool
}

// Decoder turns pgoutput messages into Commits, naming students as the progress model says.
// It is not safe for concurrent use; a new connection needs a new Decoder, since the server
// sends Relation messages afresh.
type Decoder struct {
	model     *model.Model
	relations map[uint32]relation
	open      *Changes
}

// NewDecoder returns a Decoder with no known relations.
func NewDecoder(m *model.Model) *Decoder {
	return &Decoder{model: m, relations: map[uint32]relation{}}
}

// InTransaction reports whether a transaction has begun and not yet committed.
func (d *Decoder) InTransaction() bool { return d.open != nil }

// Decode consumes one pgoutput message. It returns a Commit when the message ends a
// transaction, else nil.
func (d *Decoder) Decode(data []byte) (*Commit, error) {
	msg, err := parse(data)
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		d.relations[m.RelationID] = d.newRelation(m)
	case *pglogrepl.BeginMessage:
		c := newChanges()
		d.open = &c
	case *pglogrepl.InsertMessage:
		d.count(m.RelationID)
		return nil, d.row(m.RelationID, m.Tuple)
	case *pglogrepl.UpdateMessage:
		d.count(m.RelationID)
		// The old row (replica identity FULL, or a changed key) names the student the row
		// belonged to; the new row the one it belongs to now.
		if err := d.row(m.RelationID, m.OldTuple); err != nil {
			return nil, err
		}
		return nil, d.row(m.RelationID, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		d.count(m.RelationID)
		return nil, d.row(m.RelationID, m.OldTuple)
	case *pglogrepl.TruncateMessage:
		open, err := d.current()
		if err != nil {
			return nil, err
		}
		for _, id := range m.RelationIDs {
			rel, ok := d.relations[id]
			if !ok {
				return nil, fmt.Errorf("truncate of relation %d before its Relation message", id)
			}
			open.AllStudents = open.AllStudents || rel.truncate
		}
	case *pglogrepl.CommitMessage:
		open, err := d.current()
		if err != nil {
			return nil, err
		}
		d.open = nil
		return &Commit{Changes: *open, End: m.TransactionEndLSN}, nil
	}
	return nil, nil
}

// count notes a row change of relation relID; unknown relations and changes outside a
// transaction are left to row, which reports them.
func (d *Decoder) count(relID uint32) {
	if rel, ok := d.relations[relID]; ok && d.open != nil {
		d.open.Rows[rel.table]++
	}
}

func (d *Decoder) current() (*Changes, error) {
	if d.open == nil {
		return nil, fmt.Errorf("pgoutput change outside a transaction")
	}
	return d.open, nil
}

func (d *Decoder) row(relID uint32, tuple *pglogrepl.TupleData) error {
	open, err := d.current()
	if err != nil {
		return err
	}
	if tuple == nil {
		return nil
	}
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("row of relation %d before its Relation message", relID)
	}
	if v, ok := column(tuple, rel.student); ok {
		id, err := uuid.Parse(v)
		if err != nil {
			return fmt.Errorf("%s: student id %q is not a uuid: %w", rel.table, v, err)
		}
		open.Students[id] = struct{}{}
	}
	if len(rel.keys) > 0 {
		vals := make([]string, len(rel.keys))
		for i, pos := range rel.keys {
			v, ok := column(tuple, pos)
			if !ok {
				return nil // a NULL key names no student; an unchanged TOASTed one is in the other tuple
			}
			vals[i] = v
		}
		open.addKey(rel.table, strings.Join(vals, keySep))
	}
	return nil
}

// column returns a text value at position i. NULL and an unchanged TOASTed value ('u', which
// says nothing of the value) are absent: the caller learns the key from the other tuple.
func column(t *pglogrepl.TupleData, i int) (string, bool) {
	if i < 0 || i >= len(t.Columns) {
		return "", false
	}
	c := t.Columns[i]
	if c.DataType != pglogrepl.TupleDataTypeText {
		return "", false
	}
	return string(c.Data), true
}

func (d *Decoder) newRelation(m *pglogrepl.RelationMessage) relation {
	r := relation{table: m.Namespace + "." + m.RelationName, student: -1}
	pos := func(name string) int {
		for i, c := range m.Columns {
			if name != "" && c.Name == name {
				return i
			}
		}
		return -1
	}
	t, ok := d.model.Table(r.table)
	if !ok {
		return r // a table added to the publication by hand, or by another model: its rows concern no student
	}
	// Truncating the students table leaves no student to push; any other table's truncation
	// concerns every student.
	r.truncate = r.table != d.model.Students.Table
	r.student = pos(t.Student)
	for _, k := range t.Keys {
		r.keys = append(r.keys, pos(k))
	}
	return r
}

// parse is pglogrepl.Parse made safe for any input: it indexes into the message without
// checking its length, and a corrupt message must end the session, not the process.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("decode pgoutput message: empty message")
	}
	if err := checkSizes(data); err != nil {
		return nil, fmt.Errorf("decode pgoutput message %q: malformed (%v)", data[0], err)
	}
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("decode pgoutput message %q: malformed (%v)", data[0], r)
		}
	}()
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("decode pgoutput message: %w", err)
	}
	return msg, nil
}

// checkSizes refuses a message that declares more data than it holds. pglogrepl allocates
// what a Truncate's relation count or a tuple column's length declares before reading it, so
// a corrupt 64-byte message could allocate gigabytes (a count of 2^32-1 relations is 16 GiB),
// and running out of memory is fatal: recover cannot catch it. The walk mirrors pglogrepl's
// decoding; where the message ends early, pglogrepl panics before allocating, and parse
// recovers.
func checkSizes(data []byte) error {
	src := data[1:]
	switch data[0] {
	case 'T': // relation count, options, relation ids
		if len(src) >= 5 {
			if n := binary.BigEndian.Uint32(src); uint64(n) > uint64(len(src)-5)/4 {
				return fmt.Errorf("%d relations declared in %d bytes", n, len(src))
			}
		}
	case 'I': // relation id, 'N', new tuple
		if len(src) >= 8 && src[4] == 'N' {
			_, err := checkTuple(src[5:])
			return err
		}
	case 'U': // relation id, optional 'K' or 'O' and old tuple, 'N', new tuple
		if len(src) < 6 {
			return nil
		}
		low := 5
		switch src[4] {
		case 'K', 'O':
			used, err := checkTuple(src[low:])
			if err != nil || used < 0 {
				return err
			}
			low += used + 1
			if low > len(src) {
				return nil
			}
			fallthrough
		case 'N':
			_, err := checkTuple(src[low:])
			return err
		}
	case 'D': // relation id, 'K' or 'O', old tuple
		if len(src) >= 5 && (src[4] == 'K' || src[4] == 'O') {
			_, err := checkTuple(src[5:])
			return err
		}
	}
	return nil
}

// checkTuple walks TupleData (column count, then per column a type and, for text and binary
// values, a length and the bytes) and returns how many bytes it spans, or -1 if it ends early.
func checkTuple(src []byte) (int, error) {
	if len(src) < 2 {
		return -1, nil
	}
	n, low := int(binary.BigEndian.Uint16(src)), 2
	for i := 0; i < n; i++ {
		if low >= len(src) {
			return -1, nil
		}
		kind := src[low]
		low++
		if kind != pglogrepl.TupleDataTypeText && kind != pglogrepl.TupleDataTypeBinary {
			continue
		}
		if len(src)-low < 4 {
			return -1, nil
		}
		size := binary.BigEndian.Uint32(src[low:])
		low += 4
		if uint64(size) > uint64(len(src)-low) {
			return 0, fmt.Errorf("column %d declares %d bytes where %d remain", i+1, size, len(src)-low)
		}
		low += int(size)
	}
	return low, nil
}

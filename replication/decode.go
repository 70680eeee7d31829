package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

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
	if len(data) > 0 && (data[0] == 'I' || data[0] == 'U' || data[0] == 'D') {
		return nil, d.rowChange(data)
	}
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

func (d *Decoder) current() (*Changes, error) {
	if d.open == nil {
		return nil, fmt.Errorf("pgoutput change outside a transaction")
	}
	return d.open, nil
}

// rowChange reads an Insert, Update or Delete message where it lies: only the columns the
// model names are looked at, and nothing of the row is copied. (pglogrepl's parse allocates
// every column of both tuples of an update: most of what decoding a change cost.) It accepts
// exactly what pglogrepl accepts, reports as malformed what would make it fail or panic, and
// changes nothing before the whole message has been read.
func (d *Decoder) rowChange(data []byte) error {
	kind, src := data[0], data[1:]
	if len(src) < minRowMessage(kind) {
		return fmt.Errorf("decode pgoutput message %q: malformed (%d bytes)", kind, len(data))
	}
	relID, tag, src := binary.BigEndian.Uint32(src), src[4], src[5:]
	open, err := d.current()
	if err != nil {
		return err
	}
	rel, ok := d.relations[relID]
	if !ok {
		return fmt.Errorf("row of relation %d before its Relation message", relID)
	}
	// The old row (replica identity FULL, or a changed key) names the student the row
	// belonged to; the new row the one it belongs to now.
	var keys [8][]byte // both tuples' key values, without an allocation for up to four keys each
	old, row := rowNames{keys: keys[0:0:4]}, rowNames{keys: keys[4:4:8]}
	switch {
	case kind == 'I' && tag == 'N', kind == 'U' && tag == 'N', kind == 'D' && (tag == 'K' || tag == 'O'):
		_, err = row.read(src, &rel)
	case kind == 'U' && (tag == 'K' || tag == 'O'):
		var n int
		if n, err = old.read(src, &rel); err == nil && n+1 > len(src) {
			err = errors.New("no new tuple")
		}
		if err == nil {
			_, err = row.read(src[n+1:], &rel) // pglogrepl skips the 'N' unread
		}
	default:
		err = fmt.Errorf("tuple type %q", tag)
	}
	if err != nil {
		return fmt.Errorf("decode pgoutput message %q of %s: malformed (%w)", kind, rel.table, err)
	}
	open.Rows[rel.table]++
	if err := old.add(open, &rel); err != nil {
		return err
	}
	return row.add(open, &rel)
}

// minRowMessage is the shortest body of a row message pglogrepl decodes without failing.
func minRowMessage(kind byte) int {
	switch kind {
	case 'I':
		return 8
	case 'U':
		return 6
	}
	return 5
}

// rowNames is what one tuple of a row change names: the text of its student column and of a
// reference table's key columns, slices of the message (nil where absent).
type rowNames struct {
	student []byte
	keys    [][]byte
}

// read reads the tuple at src and returns the bytes it spans.
func (r *rowNames) read(src []byte, rel *relation) (int, error) {
	if cap(r.keys) < len(rel.keys) {
		r.keys = make([][]byte, len(rel.keys))
	}
	r.keys = r.keys[:len(rel.keys)]
	var n int
	var err error
	r.student, n, err = readTuple(src, rel, r.keys)
	return n, err
}

// add records what the tuple names (nothing for a tuple never read).
func (r *rowNames) add(open *Changes, rel *relation) error {
	if r.student != nil {
		// A copy: uuid.ParseBytes keeps its argument in its error, which would make the
		// message's slices (and the caller's array of them) escape to the heap.
		text := string(r.student)
		id, err := uuid.Parse(text)
		if err != nil {
			return fmt.Errorf("%s: student id %q is not a uuid: %w", rel.table, text, err)
		}
		open.Students[id] = struct{}{}
	}
	if len(r.keys) == 0 {
		return nil
	}
	for _, v := range r.keys {
		if v == nil {
			return nil // a NULL key names no student; an unchanged TOASTed one is in the other tuple
		}
	}
	open.addKey(rel.table, joinKey(r.keys))
	return nil
}

// joinKey is a key's values joined by keySep, copied out of the message.
func joinKey(values [][]byte) string {
	n := (len(values) - 1) * len(keySep)
	for _, v := range values {
		n += len(v)
	}
	b := make([]byte, 0, n)
	for i, v := range values {
		if i > 0 {
			b = append(b, keySep...)
		}
		b = append(b, v...)
	}
	return string(b)
}

// readTuple walks a TupleData (a column count, then per column a kind and, for text and
// binary values, a length and the bytes) and returns the text of the student column and of
// the key columns (into keys, in rel.keys order). NULL, an unchanged TOASTed value (which
// says nothing of the value) and a binary value are nil: the caller learns a key from the
// other tuple. It returns the bytes the tuple spans, and an error where src ends early.
func readTuple(src []byte, rel *relation, keys [][]byte) (student []byte, n int, err error) {
	if len(src) < 2 {
		return nil, 0, errors.New("no column count")
	}
	count, low := int(binary.BigEndian.Uint16(src)), 2
	for i := 0; i < count; i++ {
		if low >= len(src) {
			return nil, 0, fmt.Errorf("column %d missing", i+1)
		}
		kind := src[low]
		low++
		if kind != pglogrepl.TupleDataTypeText && kind != pglogrepl.TupleDataTypeBinary {
			continue
		}
		if len(src)-low < 4 {
			return nil, 0, fmt.Errorf("column %d has no length", i+1)
		}
		size := binary.BigEndian.Uint32(src[low:])
		low += 4
		if uint64(size) > uint64(len(src)-low) {
			return nil, 0, fmt.Errorf("column %d declares %d bytes where %d remain", i+1, size, len(src)-low)
		}
		value := src[low : low+int(size) : low+int(size)]
		low += int(size)
		if kind != pglogrepl.TupleDataTypeText {
			continue
		}
		if i == rel.student {
			student = value
		}
		for k, pos := range rel.keys {
			if i == pos {
				keys[k] = value
			}
		}
	}
	return student, low, nil
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

// checkSizes refuses a Truncate that declares more relations than it holds: pglogrepl
// allocates what the count declares before reading it, so a corrupt 64-byte message could
// allocate gigabytes (2^32-1 relations is 16 GiB), and running out of memory is fatal: recover
// cannot catch it. Where the message ends early pglogrepl panics before allocating, and parse
// recovers. Row messages never reach pglogrepl: rowChange reads them, checking every length.
func checkSizes(data []byte) error {
	src := data[1:]
	if data[0] == 'T' && len(src) >= 5 {
		if n := binary.BigEndian.Uint32(src); uint64(n) > uint64(len(src)-5)/4 {
			return fmt.Errorf("%d relations declared in %d bytes", n, len(src))
		}
	}
	return nil
}

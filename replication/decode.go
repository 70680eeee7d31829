package replication

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
)

// Changes are what a run of transactions touched, as far as students are concerned: the
// students named by a row, and the courses whose size changed, which concern every student
// of the course and are resolved by query.
type Changes struct {
	Students map[uuid.UUID]struct{}
	Modules  map[string]struct{}    // course_lessons.module_id values: every student of that module's course
	Courses  map[[2]string]struct{} // (course_level, course_goal) of changed modules
	// AllStudents is set by a TRUNCATE of a table whose rows name students or courses.
	AllStudents bool
}

func newChanges() Changes {
	return Changes{Students: map[uuid.UUID]struct{}{}, Modules: map[string]struct{}{}, Courses: map[[2]string]struct{}{}}
}

// Empty reports whether the changes concern no student.
func (c Changes) Empty() bool {
	return len(c.Students) == 0 && len(c.Modules) == 0 && len(c.Courses) == 0 && !c.AllStudents
}

// Merge adds o to c.
func (c *Changes) Merge(o Changes) {
	for k := range o.Students {
		c.Students[k] = struct{}{}
	}
	for k := range o.Modules {
		c.Modules[k] = struct{}{}
	}
	for k := range o.Courses {
		c.Courses[k] = struct{}{}
	}
	c.AllStudents = c.AllStudents || o.AllStudents
}

// Commit is a decoded transaction.
type Commit struct {
	Changes Changes
	// End is the transaction's end LSN: the position to confirm once its changes are durable.
	// (Its commit LSN would make the server send the transaction again.)
	End pglogrepl.LSN
}

// relation is what the decoder needs of a table: which column positions name a student or
// a course, as of the latest Relation message (ALTER TABLE can move them).
type relation struct {
	table    string
	student  int // column holding a student id, or -1
	module   int // course_lessons.module_id, or -1
	level    int // course_modules.course_level, or -1
	goal     int // course_modules.course_goal, or -1
	truncate bool
}

// Decoder turns pgoutput messages into Commits. It is not safe for concurrent use; a new
// connection needs a new Decoder, since the server sends Relation messages afresh.
type Decoder struct {
	relations map[uint32]relation
	open      *Changes
}

// NewDecoder returns a Decoder with no known relations.
func NewDecoder() *Decoder { return &Decoder{relations: map[uint32]relation{}} }

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
		d.relations[m.RelationID] = newRelation(m)
	case *pglogrepl.BeginMessage:
		c := newChanges()
		d.open = &c
	case *pglogrepl.InsertMessage:
		return nil, d.row(m.RelationID, m.Tuple)
	case *pglogrepl.UpdateMessage:
		// The old row (replica identity FULL, or a changed key) names the student the row
		// belonged to; the new row the one it belongs to now.
		if err := d.row(m.RelationID, m.OldTuple); err != nil {
			return nil, err
		}
		return nil, d.row(m.RelationID, m.NewTuple)
	case *pglogrepl.DeleteMessage:
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
	if v, ok := column(tuple, rel.module); ok {
		open.Modules[v] = struct{}{}
	}
	level, okL := column(tuple, rel.level)
	goal, okG := column(tuple, rel.goal)
	if okL && okG {
		open.Courses[[2]string{level, goal}] = struct{}{}
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

func newRelation(m *pglogrepl.RelationMessage) relation {
	r := relation{table: m.Namespace + "." + m.RelationName, student: -1, module: -1, level: -1, goal: -1}
	pos := func(name string) int {
		for i, c := range m.Columns {
			if c.Name == name {
				return i
			}
		}
		return -1
	}
	switch r.table {
	case "public.users":
		r.student = pos("id")
	case "public.course_progress", "public.user_streaks", "public.user_xp":
		r.student = pos("user_id")
		r.truncate = true
	case "public.course_lessons":
		r.module = pos("module_id")
		r.truncate = true
	case "public.course_modules":
		r.level, r.goal = pos("course_level"), pos("course_goal")
		r.truncate = true
	}
	return r
}

// parse is pglogrepl.Parse made safe for any input: it indexes into the message without
// checking its length, and a corrupt message must end the session, not the process.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("decode pgoutput message: empty message")
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

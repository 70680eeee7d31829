package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"runtime/metrics"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A FuzzDecode input is a stream of pgoutput messages fed to one Decoder, so that relation
// state carries from message to message: each message is preceded by its length as two
// big-endian bytes; a length past the end takes what is left.
func splitMessages(data []byte) [][]byte {
	var msgs [][]byte
	for len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data))
		msgs = append(msgs, data[:n])
		data = data[n:]
	}
	return msgs
}

func joinMessages(t testing.TB, msgs [][]byte) []byte {
	var out []byte
	for _, m := range msgs {
		if len(m) > 0xffff {
			t.Fatalf("message of %d bytes does not fit the corpus format's length prefix", len(m))
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(m)))
		out = append(out, m...)
	}
	return out
}

// FuzzDecode feeds a stream of pgoutput messages to one Decoder. Errors are fine (a corrupt
// message ends the session); a panic or a runaway allocation is not, and every student a
// Commit names must be the text of a column the stream carried, every module and course too.
// The seed corpus in testdata/fuzz/FuzzDecode is real pgoutput captured from PostgreSQL by
// TestFuzzDecodeCorpus.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		before := heapAllocated()
		defer func() {
			// pglogrepl allocates what a message declares; a runaway allocation is fatal in
			// production (out of memory cannot be recovered), so it fails here.
			if n := heapAllocated() - before; n > allocBudget(len(data)) {
				t.Fatalf("decoding %d bytes allocated %d bytes", len(data), n)
			}
		}()
		dec := NewDecoder(defaultModel())
		ref := referenceDecoder{NewDecoder(defaultModel())}
		texts := map[string]bool{} // every text column value of every row message so far
		truncated := false         // a Truncate was decoded since the last Begin
		for i, m := range splitMessages(data) {
			c, err := dec.Decode(m)
			// Rows read in place must say what pglogrepl's parse of them says.
			if rc, rerr := ref.Decode(m); (err == nil) != (rerr == nil) || !sameCommit(c, rc) {
				t.Fatalf("message %d (%q): decoded %+v, %v; pglogrepl's parse gives %+v, %v", i, m[:1], c, err, rc, rerr)
			}
			// What the message says, independently of the decoder's reading of it.
			if len(m) > 0 {
				if msg, perr := parseGuarded(m); perr == nil {
					switch msg := msg.(type) {
					case *pglogrepl.BeginMessage:
						truncated = false
					case *pglogrepl.TruncateMessage:
						// Even one that fails on an unknown relation may have set AllStudents.
						truncated = true
					case *pglogrepl.InsertMessage:
						addTexts(texts, msg.Tuple)
					case *pglogrepl.UpdateMessage:
						addTexts(texts, msg.OldTuple)
						addTexts(texts, msg.NewTuple)
					case *pglogrepl.DeleteMessage:
						addTexts(texts, msg.OldTuple)
					}
				}
			}
			if err != nil {
				if c != nil {
					t.Fatalf("message %d: Decode returned both a Commit and an error (%v)", i, err)
				}
				continue
			}
			if c == nil {
				continue
			}
			if m[0] != 'C' {
				t.Fatalf("message %d: a %q message ended a transaction", i, m[0])
			}
			if dec.InTransaction() {
				t.Fatalf("message %d: still in a transaction after its Commit", i)
			}
			cm, err := parse(m)
			if err != nil {
				t.Fatalf("message %d: Commit from a message that does not parse: %v", i, err)
			}
			if want := cm.(*pglogrepl.CommitMessage).TransactionEndLSN; c.End != want {
				t.Fatalf("message %d: End %s, want the commit's end LSN %s", i, c.End, want)
			}
			for id := range c.Changes.Students {
				if !studentAppeared(texts, id) {
					t.Fatalf("message %d: student %s is not the text of any column in the input", i, id)
				}
			}
			for _, mod := range modulesOf(c.Changes) {
				if !texts[mod] {
					t.Fatalf("message %d: module %q is not the text of any column in the input", i, mod)
				}
			}
			for _, course := range coursesOf(c.Changes) {
				if !texts[course[0]] || !texts[course[1]] {
					t.Fatalf("message %d: course %q is not the text of columns in the input", i, course)
				}
			}
			if c.Changes.AllStudents && !truncated {
				t.Fatalf("message %d: AllStudents set without a Truncate in the transaction", i)
			}
		}
	})
}

var heapSample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// heapAllocated is how many bytes the process has allocated so far.
func heapAllocated() uint64 {
	metrics.Read(heapSample)
	return heapSample[0].Value.Uint64()
}

// allocBudget bounds what decoding (and this test's bookkeeping) may allocate for an input
// of n bytes: generous, since small allocations are counted a span at a time, but far below
// the gigabytes a corrupt length could ask for.
func allocBudget(n int) uint64 { return 4<<20 + 256*uint64(n) }

func addTexts(texts map[string]bool, tuple *pglogrepl.TupleData) {
	if tuple == nil {
		return
	}
	for _, col := range tuple.Columns {
		if col.DataType == pglogrepl.TupleDataTypeText {
			texts[string(col.Data)] = true
		}
	}
}

// studentAppeared reports whether id is the value of one of the texts. PostgreSQL writes a
// uuid as 36 lower-case characters; the decoder may accept other spellings uuid.Parse knows,
// as long as they spell this id.
func studentAppeared(texts map[string]bool, id uuid.UUID) bool {
	if texts[id.String()] {
		return true
	}
	for s := range texts {
		if v, err := uuid.Parse(s); err == nil && v == id {
			return true
		}
	}
	return false
}

// corpusScenario is one seed of FuzzDecode: statements run in order, each in its own
// transaction unless it holds several, on the database setupSlot prepares (students ada and
// bob, module b1-viajes-m1 with one lesson, ada's progress on it).
type corpusScenario struct {
	name string
	sql  []string
}

// bigExercises is a jsonb value that PostgreSQL stores out of line (TOAST): md5 hex strings
// do not compress, and 200 of them are well past the ~2 kB threshold.
const bigExercises = `(SELECT jsonb_agg(md5(i::text)) FROM generate_series(1, 200) i)`

func corpusScenarios() []corpusScenario {
	progress := func(user, lesson string) string {
		return `INSERT INTO course_progress (user_id, course_level, course_goal, module_id, lesson_id) VALUES ('` +
			user + `', 'B1', 'viajes', 'b1-viajes-m1', '` + lesson + `')`
	}
	return []corpusScenario{
		{"insert_progress", []string{progress(bob, "b1-viajes-m1-l2")}},
		{"insert_xp_and_streak", []string{
			`INSERT INTO user_xp (user_id, total_xp) VALUES ('` + ada + `', 5)`,
			`INSERT INTO user_streaks (user_id, current_streak) VALUES ('` + bob + `', 2)`}},
		{"insert_student", []string{
			`INSERT INTO auth.users (id) VALUES ('33333333-3333-4333-8333-333333333333')`,
			`INSERT INTO users (id, email, name, language_level, course_goal) VALUES ('33333333-3333-4333-8333-333333333333', 'cy@example.com', 'Cy', 'A2', 'examenes')`}},
		{"update_user_email", []string{`UPDATE users SET email = 'bob@example.org' WHERE id = '` + bob + `'`}},
		{"update_progress_same_student", []string{`UPDATE course_progress SET completed = true, score = 87.5, time_spent = 600 WHERE user_id = '` + ada + `'`}},
		{"update_progress_moved_to_another_student", []string{`UPDATE course_progress SET user_id = '` + ada + `' WHERE user_id = '` + bob + `'`}},
		{"delete_progress", []string{`DELETE FROM course_progress WHERE user_id = '` + ada + `' AND lesson_id = 'b1-viajes-m1-l1'`}},
		{"update_xp_and_delete_streak", []string{
			`UPDATE user_xp SET total_xp = total_xp + 10 WHERE user_id = '` + ada + `'`,
			`DELETE FROM user_streaks WHERE user_id = '` + bob + `'`}},
		{"one_transaction_several_tables", []string{
			progress(ada, "b1-viajes-m1-l1") + `; UPDATE user_xp SET total_xp = 40 WHERE user_id = '` + ada + `'; ` +
				`INSERT INTO user_streaks (user_id, current_streak) VALUES ('` + bob + `', 1); DELETE FROM users WHERE id = '33333333-3333-4333-8333-333333333333'`}},
		{"toast_unchanged_column", []string{
			`UPDATE course_progress SET exercises_completed = ` + bigExercises + ` WHERE user_id = '` + ada + `'`,
			`UPDATE course_progress SET score = 91, last_accessed_at = '2026-10-10 10:00:00' WHERE user_id = '` + ada + `'`}},
		{"course_lessons", []string{
			`INSERT INTO course_modules (id, course_level, course_goal, order_index, title) VALUES ('a1-trabajo-m1', 'A1', 'trabajo', 1, 'M')`,
			`INSERT INTO course_lessons (id, module_id, order_index, title) VALUES ('b1-viajes-m1-l2', 'b1-viajes-m1', 2, 'L2')`,
			`UPDATE course_lessons SET module_id = 'a1-trabajo-m1' WHERE id = 'b1-viajes-m1-l2'`,
			`UPDATE course_lessons SET title = 'Lesson two' WHERE id = 'b1-viajes-m1-l2'`,
			`DELETE FROM course_lessons WHERE id = 'b1-viajes-m1-l2'`}},
		{"course_modules", []string{
			`UPDATE course_modules SET course_level = 'C1' WHERE id = 'a1-trabajo-m1'`,
			`UPDATE course_modules SET title = 'Module one' WHERE id = 'b1-viajes-m1'`,
			`DELETE FROM course_modules WHERE id = 'a1-trabajo-m1'`}},
		{"truncate", []string{`TRUNCATE user_xp`, `TRUNCATE user_streaks, course_lessons CASCADE`}},
		{"alter_table", []string{
			`ALTER TABLE user_xp ADD COLUMN note text`,
			`INSERT INTO user_xp (user_id, total_xp, note) VALUES ('` + ada + `', 1, 'x')`,
			`ALTER TABLE user_xp DROP COLUMN id`,
			`UPDATE user_xp SET total_xp = 2, user_id = '` + bob + `'`}},
	}
}

// captureMessages runs each statement in its own transaction and returns the pgoutput
// messages the slot then holds. Each call is a new decoding session, so the server sends
// the Relation messages again: every capture stands on its own.
func captureMessages(t *testing.T, db *pgxpool.Pool, sql []string) [][]byte {
	t.Helper()
	ctx := context.Background()
	for _, s := range sql {
		// The test server commits asynchronously, and decoding stops at the flushed WAL.
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, s)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	rows, err := db.Query(ctx, `SELECT data FROM pg_logical_slot_get_binary_changes('progress_sync', NULL, NULL,
		'proto_version', '1', 'publication_names', 'progress_sync')`)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

// describe is what a message stream means, without what differs from one capture to the next
// (LSNs, xids, timestamps, relation OIDs, generated ids): message types, the tables and
// columns of Relation messages, the shape of tuples, and what the Decoder made of it.
func describe(t *testing.T, msgs [][]byte) string {
	t.Helper()
	var b strings.Builder
	dec := NewDecoder(defaultModel())
	tuple := func(tag string, td *pglogrepl.TupleData) {
		if td == nil {
			return
		}
		fmt.Fprintf(&b, " %s:", tag)
		for _, c := range td.Columns {
			b.WriteByte(c.DataType)
		}
	}
	for i, m := range msgs {
		c, err := dec.Decode(m)
		if err != nil {
			t.Fatalf("message %d (%q): %v", i, m[0], err)
		}
		msg, err := parse(m)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteByte(m[0])
		switch msg := msg.(type) {
		case *pglogrepl.RelationMessage:
			fmt.Fprintf(&b, " %s.%s replica-identity=%c", msg.Namespace, msg.RelationName, msg.ReplicaIdentity)
			for _, col := range msg.Columns {
				b.WriteString(" " + col.Name)
			}
		case *pglogrepl.InsertMessage:
			tuple("new", msg.Tuple)
		case *pglogrepl.UpdateMessage:
			if msg.OldTuple != nil {
				tuple(string(msg.OldTupleType), msg.OldTuple)
			}
			tuple("new", msg.NewTuple)
		case *pglogrepl.DeleteMessage:
			tuple(string(msg.OldTupleType), msg.OldTuple)
		case *pglogrepl.TruncateMessage:
			fmt.Fprintf(&b, " relations=%d option=%d", msg.RelationNum, msg.Option)
		}
		if c != nil {
			if c.End == 0 {
				t.Fatalf("message %d: commit without an end LSN", i)
			}
			var students []string
			for id := range c.Changes.Students {
				students = append(students, id.String())
			}
			sort.Strings(students)
			modules := modulesOf(c.Changes)
			courses := coursesOf(c.Changes)
			fmt.Fprintf(&b, " students=%v modules=%v courses=%v all=%v", students, modules, courses, c.Changes.AllStudents)
		}
		b.WriteByte('\n')
	}
	if dec.InTransaction() {
		t.Fatal("the stream ends inside a transaction")
	}
	return b.String()
}

// envWriteCorpus makes TestFuzzDecodeCorpus rewrite the seed corpus from PostgreSQL instead
// of checking it.
const envWriteCorpus = "PROGRESS_SYNC_WRITE_FUZZ_CORPUS"

// TestFuzzDecodeCorpus captures the scenarios from a real server and checks that the committed
// seeds are what PostgreSQL sends for them: the same messages, tables, columns and tuple
// shapes, decoded without error to the same students, modules and courses. With
// PROGRESS_SYNC_WRITE_FUZZ_CORPUS=1 it writes the fresh capture to testdata instead.
func TestFuzzDecodeCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	write := os.Getenv(envWriteCorpus) == "1"
	db := setupSlot(t)
	// The TOAST scenario is only worth having if the value is stored out of line and the
	// update leaves it unchanged ('u' in the new tuple).
	sawUnchangedToast := false
	for _, sc := range corpusScenarios() {
		msgs := captureMessages(t, db, sc.sql)
		if len(msgs) == 0 {
			t.Fatalf("%s: the slot sent nothing", sc.name)
		}
		got := describe(t, msgs)
		t.Logf("%s:\n%s", sc.name, got)
		if sc.name == "toast_unchanged_column" {
			sawUnchangedToast = unchangedToast.MatchString(got)
		}
		file := filepath.Join(dir, sc.name)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, marshalCorpusFile(joinMessages(t, msgs)), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("%s: %v (regenerate the corpus with %s=1)", sc.name, err, envWriteCorpus)
		}
		data, err := unmarshalCorpusFile(raw)
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if want := describe(t, splitMessages(data)); got != want {
			t.Errorf("%s: PostgreSQL now sends\n%s\nthe committed seed holds\n%s\n(regenerate the corpus with %s=1)", sc.name, got, want, envWriteCorpus)
		}
	}
	if !sawUnchangedToast {
		t.Error("toast_unchanged_column: no unchanged TOASTed value ('u') in the update; make the value bigger")
	}
}

// unchangedToast matches a new tuple (as describe writes it) with an unchanged TOASTed value.
var unchangedToast = regexp.MustCompile(`new:[tnbu]*u`)

// marshalCorpusFile writes one []byte argument in the format of go test's fuzz corpus files.
func marshalCorpusFile(data []byte) []byte {
	return []byte("go test fuzz v1\n[]byte(" + strconv.Quote(string(data)) + ")\n")
}

// unmarshalCorpusFile reads a corpus file holding one []byte argument.
func unmarshalCorpusFile(raw []byte) ([]byte, error) {
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		return nil, fmt.Errorf("not a corpus file with one argument")
	}
	arg, ok := strings.CutPrefix(lines[1], "[]byte(")
	if !ok || !strings.HasSuffix(arg, ")") {
		return nil, fmt.Errorf("the argument is not a []byte")
	}
	s, err := strconv.Unquote(strings.TrimSuffix(arg, ")"))
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// The committed corpus must round-trip through the format go test reads.
func TestCorpusFileFormat(t *testing.T) {
	in := []byte("B\x00\x01\xff\"\\\n")
	out, err := unmarshalCorpusFile(marshalCorpusFile(in))
	if err != nil || !bytes.Equal(in, out) {
		t.Fatalf("round trip gave %q, %v", out, err)
	}
}

// A message that declares more than it holds is refused before pglogrepl allocates what it
// declares (found by FuzzDecode: a 64-byte Truncate allocated 15 GB).
func TestDecodeRefusesOversizedDeclarations(t *testing.T) {
	begin := []byte{'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1}
	relation := []byte("R\x00\x00\x00\x09public\x00user_xp\x00f\x00\x01\x01user_id\x00\x00\x00\x0b\x86\xff\xff\xff\xff")
	huge := []byte{0xff, 0xff, 0xff, 0xf0}
	tuple := append(append([]byte{0, 1, 't'}, huge...), "abc"...)
	okTuple := []byte{0, 1, 'n'}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for name, msg := range map[string][]byte{
		"truncate":      cat([]byte{'T'}, huge, []byte{0, 0, 0, 0, 9}),
		"insert":        cat([]byte{'I', 0, 0, 0, 9, 'N'}, tuple),
		"update new":    cat([]byte{'U', 0, 0, 0, 9, 'N'}, tuple),
		"update old":    cat([]byte{'U', 0, 0, 0, 9, 'O'}, tuple, []byte{'N'}, okTuple),
		"update key":    cat([]byte{'U', 0, 0, 0, 9, 'K'}, okTuple, []byte{'N'}, tuple),
		"delete":        cat([]byte{'D', 0, 0, 0, 9, 'O'}, tuple),
		"binary column": cat([]byte{'I', 0, 0, 0, 9, 'N', 0, 2, 'n', 'b'}, huge),
	} {
		dec := NewDecoder(defaultModel())
		for _, m := range [][]byte{begin, relation} {
			if _, err := dec.Decode(m); err != nil {
				t.Fatal(err)
			}
		}
		before := heapAllocated()
		if _, err := dec.Decode(msg); err == nil {
			t.Errorf("%s: accepted a message declaring ~4 GiB in %d bytes", name, len(msg))
		}
		if n := heapAllocated() - before; n > 1<<20 {
			t.Errorf("%s: decoding %d bytes allocated %d bytes", name, len(msg), n)
		}
	}
}

// referenceDecoder is the Decoder with every row message parsed by pglogrepl, as the decoder
// read rows before it read them in place: FuzzDecode holds the two to the same result.
type referenceDecoder struct{ *Decoder }

func (r referenceDecoder) Decode(data []byte) (*Commit, error) {
	if len(data) == 0 || (data[0] != 'I' && data[0] != 'U' && data[0] != 'D') {
		return r.Decoder.Decode(data)
	}
	msg, err := parseGuarded(data)
	if err != nil {
		return nil, err
	}
	switch m := msg.(type) {
	case *pglogrepl.InsertMessage:
		r.count(m.RelationID)
		return nil, r.row(m.RelationID, m.Tuple)
	case *pglogrepl.UpdateMessage:
		r.count(m.RelationID)
		if err := r.row(m.RelationID, m.OldTuple); err != nil {
			return nil, err
		}
		return nil, r.row(m.RelationID, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		r.count(m.RelationID)
		return nil, r.row(m.RelationID, m.OldTuple)
	}
	return nil, nil
}

func (r referenceDecoder) count(relID uint32) {
	if rel, ok := r.relations[relID]; ok && r.open != nil {
		r.open.Rows[rel.table]++
	}
}

func (r referenceDecoder) row(relID uint32, tuple *pglogrepl.TupleData) error {
	open, err := r.current()
	if err != nil || tuple == nil {
		return err
	}
	rel, ok := r.relations[relID]
	if !ok {
		return fmt.Errorf("row of relation %d before its Relation message", relID)
	}
	if v, ok := textColumn(tuple, rel.student); ok {
		id, err := uuid.Parse(v)
		if err != nil {
			return err
		}
		open.Students[id] = struct{}{}
	}
	if len(rel.keys) > 0 {
		vals := make([]string, len(rel.keys))
		for i, pos := range rel.keys {
			v, ok := textColumn(tuple, pos)
			if !ok {
				return nil
			}
			vals[i] = v
		}
		open.addKey(rel.table, strings.Join(vals, keySep))
	}
	return nil
}

func textColumn(t *pglogrepl.TupleData, i int) (string, bool) {
	if i < 0 || i >= len(t.Columns) || t.Columns[i].DataType != pglogrepl.TupleDataTypeText {
		return "", false
	}
	return string(t.Columns[i].Data), true
}

// sameCommit reports whether two decoders' results for one message agree.
func sameCommit(a, b *Commit) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.End == b.End && a.Changes.AllStudents == b.Changes.AllStudents && maps.Equal(a.Changes.Students, b.Changes.Students) &&
		maps.Equal(a.Changes.Rows, b.Changes.Rows) && maps.EqualFunc(a.Changes.Keys, b.Changes.Keys, maps.Equal)
}

// parseGuarded is parse for the tests' own reading of a message: row messages are checked
// first, as the decoder no longer hands them to pglogrepl.
func parseGuarded(m []byte) (pglogrepl.Message, error) {
	if err := checkRowSizes(m); err != nil {
		return nil, err
	}
	return parse(m)
}

// checkRowSizes refuses, for the tests' pglogrepl readings, a row message whose tuples declare more
// column data than they hold: pglogrepl allocates what is declared before reading it. It walks
// the tuples as pglogrepl does (after an old tuple it skips one byte, the 'N', unread).
func checkRowSizes(data []byte) error {
	src := data[1:]
	walk := func(b []byte) (int, error) {
		_, n, err := readTuple(b, &relation{student: -1}, nil)
		return n, err
	}
	var err error
	switch {
	case data[0] == 'I' && len(src) >= 8 && src[4] == 'N', data[0] == 'U' && len(src) >= 6 && src[4] == 'N',
		data[0] == 'D' && len(src) >= 5 && (src[4] == 'K' || src[4] == 'O'):
		_, err = walk(src[5:])
	case data[0] == 'U' && len(src) >= 6 && (src[4] == 'K' || src[4] == 'O'):
		var n int
		if n, err = walk(src[5:]); err == nil && 5+n+1 <= len(src) {
			_, err = walk(src[5+n+1:])
		}
	}
	if err != nil {
		return fmt.Errorf("decode pgoutput message %q: malformed (%w)", data[0], err)
	}
	return nil
}

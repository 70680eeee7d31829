// Package model is the progress model (docs/contract.md §2b): which table holds the students,
// which tables feed their metrics and how a changed row names its students, and the one SQL
// query that computes the HubSpot properties for a batch of students. Every part of the
// service that touches the platform's tables reads through a *Model: setup (publication,
// replica identities), the stream's decoder, the complete-view check, backfill, the flush,
// reconcile, explain and check.
//
// A model is a YAML file (docs/models.md). The two built-in ones, course_progress (the PRD's
// tables, the default) and lesson_progress (the unified lesson progress), are such files,
// embedded: they are the worked examples of the format.
package model

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
)

// Default is the model used when none is chosen.
const Default = "course_progress"

//go:embed course_progress.yaml lesson_progress.yaml
var builtins embed.FS

// Builtins are the names of the built-in models.
func Builtins() []string { return []string{"course_progress", "lesson_progress"} }

// Model is a loaded, statically valid progress model. Verify checks it against a database.
type Model struct {
	// Name is what status and the status page show: the model's own name, and for a file
	// its path too.
	Name string
	// File is the path it was read from; "" for a built-in model.
	File string
	// Digest identifies the model's content: a deployment whose digest changes recomputes
	// every student.
	Digest   string
	Students Students
	// Tables are the tables whose changes concern students, the students table first.
	Tables []Table
	// Properties is the query computing the properties of the students whose ids are $1
	// (uuid[]): a column id, and one column per property it computes.
	Properties Part
	// Create is SQL that creates tables the model needs and the platform lacks, for a DBA
	// (setup --print-sql); never run by the service.
	Create string
	// Checks are queries whose rows are problems `check` reports.
	Checks []Check

	// Learnt by Verify: the properties the query computes, and the query that computes them
	// in the form HubSpot takes.
	computes     []string
	computeQuery string
}

// Students says where the students are.
type Students struct {
	Table, ID, Email string
	Line             int
}

// Table is one table whose changes concern students. A row names its students by a column
// holding a student id (Student), or, for a reference table such as a lesson catalogue, by
// key columns whose changed values a query turns into the students they affect.
type Table struct {
	Name    string // schema-qualified
	Student string // column holding a student id; "" for a reference table
	Keys    []string
	// StudentsOf selects the ids of the students affected by changed keys: $1..$n are text[]
	// of the key columns' values, in Keys order, one element per changed row.
	StudentsOf Part
	Line       int
}

// Columns are the columns that name the students or the keys a row concerns.
func (t Table) Columns() []string {
	if t.Student != "" {
		return []string{t.Student}
	}
	return t.Keys
}

// Part is a piece of SQL and where it sits in the model's file, so errors can name the line.
type Part struct {
	Name string // "properties", "tables[3].students", ...
	SQL  string
	// Line is the file's line of the SQL's first line (0 when unknown); a literal block (|)
	// keeps lines as they are, so a position in the SQL maps to a line of the file.
	Line int
}

// Check is a query whose rows (one text column each) are problems, with the fix for one.
type Check struct {
	Name, Fix string
	Problems  Part
}

// Table returns the description of a table by its schema-qualified name.
func (m *Model) Table(name string) (Table, bool) {
	i := slices.IndexFunc(m.Tables, func(t Table) bool { return t.Name == name })
	if i < 0 {
		return Table{}, false
	}
	return m.Tables[i], true
}

// TableNames are the model's tables, the students table first.
func (m *Model) TableNames() []string {
	names := make([]string, len(m.Tables))
	for i, t := range m.Tables {
		names[i] = t.Name
	}
	return names
}

// Error is a model that cannot be used, with the file (or built-in name), the part and the
// line where the problem is.
type Error struct {
	Source string // the file's path, or "built-in model <name>"
	Part   string
	Line   int
	Msg    string
}

func (e *Error) Error() string {
	where := e.Source
	if e.Part != "" {
		where += ": " + e.Part
	}
	if e.Line > 0 {
		where += fmt.Sprintf(" (line %d)", e.Line)
	}
	return "progress model " + where + ": " + e.Msg
}

// Load returns a built-in model by name, or reads the model file at path. A name that is not
// built in and has no / nor a .yaml/.yml ending is refused with the list of names, so a typo
// is not read as a missing file.
func Load(nameOrPath string) (*Model, error) {
	if nameOrPath == "" {
		nameOrPath = Default
	}
	if slices.Contains(Builtins(), nameOrPath) {
		data, err := builtins.ReadFile(nameOrPath + ".yaml")
		if err != nil {
			return nil, fmt.Errorf("read built-in model %s: %w", nameOrPath, err)
		}
		return parse(data, "built-in model "+nameOrPath, "")
	}
	if !strings.ContainsRune(nameOrPath, '/') && !strings.HasSuffix(nameOrPath, ".yaml") && !strings.HasSuffix(nameOrPath, ".yml") {
		return nil, &Error{Source: nameOrPath, Msg: fmt.Sprintf("not a built-in model (%s) nor the path of a model file (a path with a / or ending in .yaml)",
			strings.Join(Builtins(), ", "))}
	}
	data, err := os.ReadFile(nameOrPath)
	if err != nil {
		return nil, &Error{Source: nameOrPath, Msg: fmt.Sprintf("cannot read the file: %v", unwrapPath(err))}
	}
	return parse(data, nameOrPath, nameOrPath)
}

// Builtin returns a built-in model; it panics on a name that is not one (for tests and tools
// that name a model in their code).
func Builtin(name string) *Model {
	m, err := Load(name)
	if err != nil || m.File != "" {
		panic(fmt.Sprintf("model.Builtin(%q): %v", name, err))
	}
	return m
}

// Source names where the model came from, for messages: the file, or the built-in name.
func (m *Model) Source() string {
	if m.File != "" {
		return m.File
	}
	return "built-in model " + m.Name
}

func (m *Model) errorf(p Part, line int, format string, args ...any) *Error {
	if line == 0 {
		line = p.Line
	}
	return &Error{Source: m.Source(), Part: p.Name, Line: line, Msg: fmt.Sprintf(format, args...)}
}

func digest(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

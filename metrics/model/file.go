package model

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The file's shape (docs/models.md). Unknown keys are refused: a misspelt "student:" must not
// leave a table without its mapping.
type fileModel struct {
	Model      string       `yaml:"model"`
	Students   fileStudents `yaml:"students"`
	Tables     []fileTable  `yaml:"tables"`
	Create     string       `yaml:"create"`
	Checks     []fileCheck  `yaml:"checks"`
	Properties string       `yaml:"properties"`
}

type fileStudents struct {
	Table string `yaml:"table"`
	ID    string `yaml:"id"`
	Email string `yaml:"email"`
}

type fileTable struct {
	Table    string   `yaml:"table"`
	Student  string   `yaml:"student"`
	Keys     []string `yaml:"keys"`
	Students string   `yaml:"students"`
}

type fileCheck struct {
	Name     string `yaml:"name"`
	Problems string `yaml:"problems"`
	Fix      string `yaml:"fix"`
}

var (
	modelName  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,63}$`)
	qualified  = regexp.MustCompile(`^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$`)
	columnName = regexp.MustCompile(`^[a-z_][a-z0-9_$]*$`)
	yamlLine   = regexp.MustCompile(`line (\d+)`)
	// unknownField is yaml's message for a key the shape lacks.
	unknownField = regexp.MustCompile(`field (\S+) not found in type model\.(\w+)`)
)

// allowedKeys says, per part of the file, which keys it takes.
var allowedKeys = map[string]string{
	"fileModel":    "the file's keys are model, students, tables, create, checks and properties",
	"fileStudents": "students takes table, id and email",
	"fileTable":    "a table takes table and student, or table, keys and students",
	"fileCheck":    "a check takes name, problems and fix",
}

// parse reads a model file's text and checks what can be checked without a database.
func parse(data []byte, source, file string) (*Model, error) {
	fail := func(part string, line int, format string, args ...any) error {
		return &Error{Source: source, Part: part, Line: line, Msg: fmt.Sprintf(format, args...)}
	}
	var f fileModel
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		line := 0
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			fmt.Sscan(m[1], &line)
		}
		msg := strings.TrimPrefix(strings.ReplaceAll(err.Error(), "\n", " "), "yaml: ")
		if m := unknownField.FindStringSubmatch(msg); m != nil {
			// A misspelt key: say which keys that part takes, not the decoder's type names.
			msg = fmt.Sprintf("unknown key %q (%s)", m[1], allowedKeys[m[2]])
		}
		if errors.Is(err, io.EOF) {
			msg = "the file is empty"
		}
		return nil, fail("", line, "not a valid model file: %s", strings.Join(strings.Fields(msg), " "))
	}
	var doc yaml.Node
	_ = yaml.Unmarshal(data, &doc) // decoded above: it parses
	lines := nodeLines(&doc)

	// The digest covers what the file says, not how: a YAML comment or a re-indented block
	// is not a new model (a change of model recomputes every student).
	canonical, _ := json.Marshal(f)
	m := &Model{Name: f.Model, File: file, Digest: digest(canonical), Create: strings.TrimSpace(f.Create)}
	if file != "" {
		m.Name = f.Model + " (" + file + ")"
	}
	switch {
	case f.Model == "":
		return nil, fail("model", 0, "missing: give the model a name (letters, digits, _ . -), e.g. model: lesson_progress_v2")
	case !modelName.MatchString(f.Model):
		return nil, fail("model", lines["model"], "%q is not a name: use 1-63 letters, digits, _ . or -", f.Model)
	}

	st := f.Students
	m.Students = Students{Table: st.Table, ID: st.ID, Email: st.Email, Line: lines["students"]}
	if st.Table == "" || st.ID == "" || st.Email == "" {
		return nil, fail("students", lines["students"], "give table, id and email: the table holding the students, its uuid key column and its email column")
	}
	if !qualified.MatchString(st.Table) {
		return nil, fail("students.table", lines["students"], "%q is not a schema-qualified table name such as public.users", st.Table)
	}
	for _, c := range []string{st.ID, st.Email} {
		if !columnName.MatchString(c) {
			return nil, fail("students", lines["students"], "%q is not a column name (lower-case letters, digits, _)", c)
		}
	}
	m.Tables = append(m.Tables, Table{Name: st.Table, Student: st.ID, Line: lines["students"]})

	for i, t := range f.Tables {
		part := fmt.Sprintf("tables[%d]", i+1)
		line := lines[part]
		if t.Table != "" {
			part = fmt.Sprintf("tables[%d] %s", i+1, t.Table)
		}
		tab := Table{Name: t.Table, Student: t.Student, Keys: t.Keys, Line: line}
		switch {
		case !qualified.MatchString(t.Table):
			return nil, fail(part, line, "table %q is not a schema-qualified table name such as public.user_xp", t.Table)
		case t.Table == st.Table:
			return nil, fail(part, line, "the students table is listed under students: its rows name their student by %s", st.ID)
		case slices.ContainsFunc(m.Tables, func(have Table) bool { return have.Name == t.Table }):
			return nil, fail(part, line, "listed twice")
		case t.Student != "" && (len(t.Keys) > 0 || t.Students != ""):
			return nil, fail(part, line, "give either student (a column holding the student id) or keys and students (a query from changed keys to students), not both")
		case t.Student != "":
			if !columnName.MatchString(t.Student) {
				return nil, fail(part, line, "student %q is not a column name", t.Student)
			}
		case len(t.Keys) == 0 && t.Students == "":
			return nil, fail(part, line, "no student mapping: give student (the column holding the student id), or keys and students (the query from changed keys to the students they affect)")
		case len(t.Keys) == 0:
			return nil, fail(part, line, "students is given without keys: name the key columns whose values the query receives as $1, $2, ...")
		case strings.TrimSpace(t.Students) == "":
			return nil, fail(part, line, "keys are given without students: the query that turns changed keys ($1, $2, ... as text[]) into student ids")
		default:
			for _, k := range t.Keys {
				if !columnName.MatchString(k) {
					return nil, fail(part, line, "key %q is not a column name", k)
				}
			}
			tab.StudentsOf = Part{Name: part + " students", SQL: t.Students, Line: lines[fmt.Sprintf("tables[%d].students", i+1)]}
		}
		m.Tables = append(m.Tables, tab)
	}

	if strings.TrimSpace(f.Properties) == "" {
		return nil, fail("properties", lines["properties"], "missing: the query computing the properties of the students whose ids are $1 (uuid[])")
	}
	m.Properties = Part{Name: "properties", SQL: f.Properties, Line: lines["properties"]}

	for i, c := range f.Checks {
		part := fmt.Sprintf("checks[%d]", i+1)
		if c.Name == "" || strings.TrimSpace(c.Problems) == "" {
			return nil, fail(part, lines[part], "give name and problems (a query returning one text column, a row per problem)")
		}
		m.Checks = append(m.Checks, Check{Name: c.Name, Fix: c.Fix,
			Problems: Part{Name: part + " " + c.Name, SQL: c.Problems, Line: lines[part+".problems"]}})
	}
	return m, nil
}

// nodeLines maps the parts of a model file to the line they start on: "model", "students",
// "properties", "tables[i]", "tables[i].students", "checks[i]", "checks[i].problems". For a
// SQL block (| or >) the line is that of its first line of SQL.
func nodeLines(doc *yaml.Node) map[string]int {
	lines := map[string]int{}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return lines
	}
	valueLine := func(n *yaml.Node) int {
		if n.Kind == yaml.ScalarNode && (n.Style&(yaml.LiteralStyle|yaml.FoldedStyle)) != 0 {
			return n.Line + 1
		}
		return n.Line
	}
	root := doc.Content[0]
	for i := 0; i+1 < len(root.Content); i += 2 {
		key, val := root.Content[i].Value, root.Content[i+1]
		switch key {
		case "tables", "checks":
			lines[key] = val.Line
			for j, item := range val.Content {
				name := fmt.Sprintf("%s[%d]", key, j+1)
				lines[name] = item.Line
				for k := 0; k+1 < len(item.Content); k += 2 {
					lines[name+"."+item.Content[k].Value] = valueLine(item.Content[k+1])
				}
			}
		case "students":
			lines[key] = root.Content[i].Line
		default:
			lines[key] = valueLine(val)
		}
	}
	return lines
}

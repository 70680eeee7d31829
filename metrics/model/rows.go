package model

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ErrNoStudent is returned for an id the students table does not have.
var ErrNoStudent = errors.New("no such student")

// TableRows are one student's rows of one of the model's tables, for a person asking why a
// value is what it is (progress-sync explain).
type TableRows struct {
	Table  string `json:"table"`
	Column string `json:"student_column"`
	// Count is how many rows name the student; Rows holds the first RowsShown of them, each
	// as the row's columns.
	Count int               `json:"count"`
	Rows  []json.RawMessage `json:"rows"`
}

// RowsShown bounds the rows of one table that RowsOf returns.
const RowsShown = 50

// RowsOf reads the rows behind one student's values: the students row (its id and email), then
// its rows of each table that names students by a column, in the model's order (reference tables, which name
// no student, are left out). It returns ErrNoStudent for an id the students table lacks.
func (m *Model) RowsOf(ctx context.Context, q Querier, id uuid.UUID) ([]TableRows, error) {
	var out []TableRows
	for i, t := range m.Tables {
		if t.Student == "" {
			continue
		}
		tr := TableRows{Table: t.Name, Column: t.Student, Rows: []json.RawMessage{}}
		row := "to_jsonb(t)"
		if i == 0 {
			// The students table holds more than progress (a phone, a password hash): only
			// what the sync uses of it.
			row = fmt.Sprintf("jsonb_build_object('%[1]s', t.%[1]s, '%[2]s', t.%[2]s)", m.Students.ID, m.Students.Email)
		}
		rows, err := q.Query(ctx, fmt.Sprintf("SELECT count(*) OVER (), %[1]s::text FROM %[2]s t WHERE t.%[3]s = $1 ORDER BY %[1]s::text LIMIT %[4]d",
			row, t.Name, t.Student, RowsShown), id)
		if err != nil {
			return nil, fmt.Errorf("read the %s rows of student %s: %w", t.Name, id, err)
		}
		var text string
		if _, err := pgx.ForEachRow(rows, []any{&tr.Count, &text}, func() error {
			tr.Rows = append(tr.Rows, json.RawMessage(text))
			return nil
		}); err != nil {
			return nil, fmt.Errorf("read the %s rows of student %s: %w", t.Name, id, err)
		}
		if i == 0 && tr.Count == 0 {
			return nil, fmt.Errorf("student %s: %w", id, ErrNoStudent)
		}
		out = append(out, tr)
	}
	return out, nil
}

// Package modeltest gives tests a progress model verified against their database, as the
// service verifies its own before reading through it.
package modeltest

import (
	"context"
	"testing"

	"github.com/focusenglish/progress-sync/metrics/model"
)

// Verified returns the built-in model name, verified against db.
func Verified(t testing.TB, db model.TxBeginner, name string) *model.Model {
	t.Helper()
	m, err := model.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	return m
}

// CourseProgress is the default model, verified against db.
func CourseProgress(t testing.TB, db model.TxBeginner) *model.Model {
	t.Helper()
	return Verified(t, db, model.Default)
}

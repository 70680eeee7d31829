package reference

import (
	"context"
	"fmt"
	"sort"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/focusenglish/progress-sync/hubspot/hubspottest"
	"github.com/focusenglish/progress-sync/metrics"
)

// Of returns the reference computation of the built-in progress model named model.
func Of(model string) func(context.Context, *pgx.Conn) (map[uuid.UUID]metrics.Student, error) {
	if model == "lesson_progress" {
		return LessonProgress
	}
	return Compute
}

// Differences lists, sorted, every value of the emulator's contacts (contactOf: student →
// contact) that is not the one want gives: the soaks' and benchmarks' test that HubSpot
// equals the database.
func Differences(emu *hubspottest.Server, want map[uuid.UUID]metrics.Student, contactOf map[uuid.UUID]string) []string {
	var out []string
	for id, cid := range contactOf {
		got, ok := emu.Contact(cid)
		if !ok {
			out = append(out, fmt.Sprintf("contact %s disappeared", cid))
			continue
		}
		for _, name := range metrics.Names() {
			if got.Properties[name] != want[id].Values[name] {
				out = append(out, fmt.Sprintf("contact %s %s = %q, want %q", cid, name, got.Properties[name], want[id].Values[name]))
			}
		}
	}
	sort.Strings(out)
	return out
}

package alert

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/focusenglish/progress-sync/replication/push"
	"github.com/focusenglish/progress-sync/replication/state"
	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// The texts read as one paragraph of plain text, which Slack, Google Chat and Mattermost all
// show as it is.

// listed is how many masked addresses one alert names; the status page lists them all.
const listed = 10

func details(o Options, event string, at time.Time) *Details {
	return &Details{Event: event, Instance: o.Instance, Slot: o.Slot, At: at.UTC()}
}

// who names the instance and the slot at the end of a text.
func who(o Options) string { return fmt.Sprintf("(instance %s, slot %s)", o.Instance, o.Slot) }

func notReady(o Options, r telemetry.Readiness, since, now time.Time) Message {
	d := details(o, "not_ready", now)
	d.Condition, d.Reason = r.Code, r.Reason
	s := since.UTC()
	d.Since = &s
	return Message{Details: d, Text: fmt.Sprintf("⚠️ progress-sync is not ready, since %s (%s): %s %s",
		s.Format("15:04 MST"), now.Sub(since).Round(time.Second), r.Reason, who(o))}
}

func recovered(o Options, since, now time.Time, how string) Message {
	d := details(o, "recovered", now)
	s := since.UTC()
	d.Since = &s
	return Message{Details: d, Text: fmt.Sprintf("✅ progress-sync recovered: %s, after %s not ready %s",
		how, now.Sub(since).Round(time.Second), who(o))}
}

// kindNews says what each kind of problem means for the student, in an alert.
var kindNews = map[state.Kind]string{
	state.Rejected: "refused by HubSpot (a value it does not accept)",
	state.Conflict: "in conflict over a HubSpot contact with another student",
}

func problemStudents(o Options, fresh []state.Problem, now time.Time) Message {
	d := details(o, "problem_students", now)
	d.Students = map[string]int{}
	var emails []string
	for _, p := range fresh {
		d.Students[string(p.Kind)]++
		emails = append(emails, push.MaskEmail(p.Email))
	}
	d.Emails = emails
	var counts []string
	for _, k := range []state.Kind{state.Rejected, state.Conflict} {
		if n := d.Students[string(k)]; n > 0 {
			counts = append(counts, fmt.Sprintf("%d %s %s", n, plural(n, "student", "students"), kindNews[k]))
		}
	}
	named := strings.Join(emails[:min(len(emails), listed)], ", ")
	if len(emails) > listed {
		named += fmt.Sprintf(" and %d more", len(emails)-listed)
	}
	return Message{Details: d, Text: fmt.Sprintf("⚠️ progress-sync: %s: %s. Their contacts are not updated until it is fixed; "+
		"the status page lists them with the reason (docs/runbook.md, \"Problem students\") %s", strings.Join(counts, " and "), named, who(o))}
}

func foughtOver(o Options, props map[string]int, now time.Time) Message {
	d := details(o, "fought_over", now)
	d.Properties = props
	names := make([]string, 0, len(props))
	for name := range props {
		names = append(names, name)
	}
	sort.Strings(names)
	var parts []string
	for _, name := range names {
		parts = append(parts, fmt.Sprintf("%s (on %d %s)", name, props[name], plural(props[name], "contact", "contacts")))
	}
	return Message{Details: d, Text: fmt.Sprintf("⚠️ progress-sync: something in HubSpot keeps overwriting %s: the values were changed again on contacts "+
		"the last reconcile pass had repaired. A workflow, import or integration fights the sync (docs/runbook.md, \"A workflow fights the sync\") %s",
		strings.Join(parts, ", "), who(o))}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

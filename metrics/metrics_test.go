package metrics

import (
	"slices"
	"testing"
)

func TestCanonical(t *testing.T) {
	tests := []struct {
		property, in, want string
	}{
		{AverageScore, "85.50", "85.5"},
		{AverageScore, "85.5", "85.5"},
		{AverageScore, "85.335", "85.335"},
		{LessonsCompleted, "12.0", "12"},
		{LessonsCompleted, "12", "12"},
		{LessonsCompleted, "012", "12"},
		{TotalXP, "-0", "0"},
		{TotalXP, "-0.000", "0"},
		{TotalXP, "+7", "7"},
		{TotalXP, "-3.10", "-3.1"},
		{ProgressPercentage, "100.0", "100"},
		{ProgressPercentage, "0.50", "0.5"},
		{ProgressPercentage, ".5", "0.5"},
		{ProgressPercentage, "5.", "5"},
		{ProgressPercentage, "0", "0"},
		{ProgressPercentage, "1e3", "1000"},
		{ProgressPercentage, "1.5E+2", "150"},
		{ProgressPercentage, "12.5e-3", "0.0125"},
		{StudyStreak, " 4 ", "4"},
		{StudyStreak, "", ""},
		{StudyStreak, "abc", "abc"},
		{StudyStreak, "1.2.3", "1.2.3"},
		{StudyStreak, "1e", "1e"},
		{StudyStreak, "1e+-2", "1e+-2"},
		{StudyStreak, "-", "-"},
		{StudyStreak, ".", "."},
		{StudyStreak, "1e999999", "1e999999"},
		{StudyStreak, "NaN", "NaN"},
		{TotalStudyTime, "166666667", "166666667"},
		{LastActivityDate, "1572480000000", "2019-10-31"},
		{LastActivityDate, "2026-09-01T00:00:00Z", "2026-09-01"},
		{LastActivityDate, "2026-09-01T00:00:00.000Z", "2026-09-01"},
		{LastActivityDate, "2026-09-01T02:00:00+02:00", "2026-09-01"},
		{LastActivityDate, "2026-09-01", "2026-09-01"},
		{LastActivityDate, "", ""},
		{CourseCompletedDate, "1572480000001", "1572480000001"},
		{CourseCompletedDate, "2026-09-01T13:00:00Z", "2026-09-01T13:00:00Z"},
		{CourseCompletedDate, "0", "1970-01-01"},
		{CourseCompletedDate, "-86400000", "1969-12-31"},
		{CourseCompletedDate, "soon", "soon"},
		{CurrentLesson, "12.0", "12.0"},
		{CurrentLesson, " B2-trabajo-m1-l1 ", " B2-trabajo-m1-l1 "},
		{CourseStatus, "completed", "completed"},
		{"some_other_property", "1.50", "1.50"},
	}
	for _, tc := range tests {
		if got := Canonical(tc.property, tc.in); got != tc.want {
			t.Errorf("Canonical(%q, %q) = %q, want %q", tc.property, tc.in, got, tc.want)
		}
		// Canonical is idempotent.
		if got := Canonical(tc.property, tc.want); got != tc.want {
			t.Errorf("Canonical(%q, %q) = %q, not idempotent", tc.property, tc.want, got)
		}
	}
}

func TestDefinitions(t *testing.T) {
	defs := Definitions()
	names := Names()
	wantNames := []string{"lessons_completed", "current_lesson", "average_score", "total_study_time",
		"progress_percentage", "last_activity_date", "study_streak", "total_xp", "course_completed_date", "course_status"}
	if !slices.Equal(names, wantNames) {
		t.Fatalf("Names() = %v", names)
	}
	wantTypes := map[string][2]string{
		LessonsCompleted: {"number", "number"}, CurrentLesson: {"string", "text"},
		AverageScore: {"number", "number"}, TotalStudyTime: {"number", "number"},
		ProgressPercentage: {"number", "number"}, LastActivityDate: {"date", "date"},
		StudyStreak: {"number", "number"}, TotalXP: {"number", "number"},
		CourseCompletedDate: {"date", "date"}, CourseStatus: {"enumeration", "select"},
	}
	if len(defs) != len(wantNames) {
		t.Fatalf("%d definitions", len(defs))
	}
	for i, d := range defs {
		if d.Name != wantNames[i] {
			t.Errorf("definition %d is %s, want %s", i, d.Name, wantNames[i])
		}
		if got := [2]string{d.Type, d.FieldType}; got != wantTypes[d.Name] {
			t.Errorf("%s: type %v, want %v", d.Name, got, wantTypes[d.Name])
		}
		if d.Label == "" || d.Description == "" {
			t.Errorf("%s: label or description missing", d.Name)
		}
		if (d.Type == TypeEnumeration) != (len(d.Options) > 0) {
			t.Errorf("%s: %d options for type %s", d.Name, len(d.Options), d.Type)
		}
	}
	var opts []string
	for _, o := range defs[9].Options {
		opts = append(opts, o.Value)
		if o.Label == "" {
			t.Errorf("option %s has no label", o.Value)
		}
	}
	if !slices.Equal(opts, []string{"not_started", "in_progress", "completed"}) {
		t.Errorf("course_status options %v", opts)
	}
	if GroupName != "progresstracking" || GroupLabel != "Seguimiento de Progreso" {
		t.Errorf("group %q %q", GroupName, GroupLabel)
	}
	// Fresh slices: changing one result does not change the next.
	defs[0].Name = "changed"
	defs[9].Options[0].Value = "changed"
	names[0] = "changed"
	if d := Definitions(); d[0].Name != LessonsCompleted || d[9].Options[0].Value != StatusNotStarted {
		t.Error("Definitions shares state between calls")
	}
	if Names()[0] != LessonsCompleted {
		t.Error("Names shares state between calls")
	}
}

// seedLarge loads n students with rows progress rows each (the first half of them on B2 trabajo,
// the rest spread over the other courses) for benchmarks and plan checks.

package replication

// Table describes one published source table: how its rows name the students they concern
// (docs/contract.md §2). Setup, the decoder and check all read it from Tables.
type Table struct {
	Name string // schema-qualified
	// StudentColumn holds a student id ("" when the table's rows concern courses).
	StudentColumn string
	// ModuleColumn holds a course_lessons.module_id: every student of that module's course.
	ModuleColumn string
	// CourseColumns hold a course_modules (course_level, course_goal): every student of it.
	CourseColumns []string
	// Full says deletes and key-changing updates must carry the key columns, which are not
	// in the primary key: REPLICA IDENTITY FULL, or an identity index covering them.
	Full bool
	// TruncateConcernsAll says a TRUNCATE concerns every student (truncating users leaves
	// no student to push).
	TruncateConcernsAll bool
}

// Keys are the columns that name the students or the course a row concerns.
func (t Table) Keys() []string {
	var keys []string
	if t.StudentColumn != "" {
		keys = append(keys, t.StudentColumn)
	}
	if t.ModuleColumn != "" {
		keys = append(keys, t.ModuleColumn)
	}
	return append(keys, t.CourseColumns...)
}

// Tables are the tables whose changes concern students.
func Tables() []Table {
	return []Table{
		{Name: "public.users", StudentColumn: "id"},
		{Name: "public.course_progress", StudentColumn: "user_id", Full: true, TruncateConcernsAll: true},
		{Name: "public.user_streaks", StudentColumn: "user_id", Full: true, TruncateConcernsAll: true},
		{Name: "public.user_xp", StudentColumn: "user_id", Full: true, TruncateConcernsAll: true},
		{Name: "public.course_lessons", ModuleColumn: "module_id", Full: true, TruncateConcernsAll: true},
		{Name: "public.course_modules", CourseColumns: []string{"course_level", "course_goal"}, Full: true, TruncateConcernsAll: true},
	}
}

// sourceTable finds the description of a table by its schema-qualified name.
func sourceTable(name string) (Table, bool) {
	for _, t := range Tables() {
		if t.Name == name {
			return t, true
		}
	}
	return Table{}, false
}

func tableNames() []string {
	var names []string
	for _, t := range Tables() {
		names = append(names, t.Name)
	}
	return names
}

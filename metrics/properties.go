package metrics

import (
	"strconv"
	"strings"
	"time"
)

// HubSpot property names (docs/contract.md §3).
const (
	LessonsCompleted    = "lessons_completed"
	CurrentLesson       = "current_lesson"
	AverageScore        = "average_score"
	TotalStudyTime      = "total_study_time"
	ProgressPercentage  = "progress_percentage"
	LastActivityDate    = "last_activity_date"
	StudyStreak         = "study_streak"
	TotalXP             = "total_xp"
	CourseCompletedDate = "course_completed_date"
	CourseStatus        = "course_status"
)

// The HubSpot property group that holds the properties.
const (
	GroupName  = "progresstracking"
	GroupLabel = "Seguimiento de Progreso"
)

// HubSpot property types and field types used by the properties.
const (
	TypeNumber      = "number"
	TypeString      = "string"
	TypeDate        = "date"
	TypeEnumeration = "enumeration"

	FieldNumber = "number"
	FieldText   = "text"
	FieldDate   = "date"
	FieldSelect = "select"
)

// Definition describes one HubSpot contact property.
type Definition struct {
	Name, Label, Description, Type, FieldType string
	Options                                   []Option // enumeration only
}

// Option is one choice of an enumeration property.
type Option struct {
	Label, Value string
}

// Definitions returns the ten properties in docs/contract.md §3 order, as a fresh slice the caller may
// modify.
func Definitions() []Definition {
	return []Definition{
		{Name: LessonsCompleted, Label: "Lecciones completadas", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Número de lecciones completadas por el estudiante en todos los cursos."},
		{Name: CurrentLesson, Label: "Lección actual", Type: TypeString, FieldType: FieldText,
			Description: "Identificador de la última lección a la que accedió el estudiante."},
		{Name: AverageScore, Label: "Puntuación media", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Media de las puntuaciones de las lecciones completadas (0-100, dos decimales)."},
		{Name: TotalStudyTime, Label: "Tiempo total de estudio (minutos)", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Minutos de estudio acumulados en todas las lecciones."},
		{Name: ProgressPercentage, Label: "Porcentaje de progreso", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Porcentaje de lecciones completadas del curso asignado (nivel y objetivo del estudiante)."},
		{Name: LastActivityDate, Label: "Fecha de última actividad", Type: TypeDate, FieldType: FieldDate,
			Description: "Fecha (UTC) del último acceso del estudiante a una lección."},
		{Name: StudyStreak, Label: "Racha de estudio", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Días consecutivos de estudio de la racha actual."},
		{Name: TotalXP, Label: "XP total", Type: TypeNumber, FieldType: FieldNumber,
			Description: "Puntos de experiencia acumulados por el estudiante."},
		{Name: CourseCompletedDate, Label: "Fecha de finalización del curso", Type: TypeDate, FieldType: FieldDate,
			Description: "Fecha (UTC) en que el estudiante completó todas las lecciones de su curso asignado."},
		{Name: CourseStatus, Label: "Estado del curso", Type: TypeEnumeration, FieldType: FieldSelect,
			Description: "Estado del estudiante en su curso asignado.",
			Options: []Option{
				{Label: "No iniciado", Value: StatusNotStarted},
				{Label: "En progreso", Value: StatusInProgress},
				{Label: "Completado", Value: StatusCompleted},
			}},
	}
}

// Names returns the ten property names in docs/contract.md §3 order, as a fresh slice.
func Names() []string {
	return []string{
		LessonsCompleted, CurrentLesson, AverageScore, TotalStudyTime, ProgressPercentage,
		LastActivityDate, StudyStreak, TotalXP, CourseCompletedDate, CourseStatus,
	}
}

// Canonical normalizes a value read back from HubSpot for comparison with a computed one:
//   - number properties: a canonical decimal ("85.50" -> "85.5", "12.0" -> "12", "-0" -> "0",
//     "1e3" -> "1000"); a value that is not a decimal number is returned unchanged;
//   - date properties: epoch milliseconds at midnight UTC ("1572480000000") or an RFC 3339
//     datetime at midnight UTC ("2026-09-01T00:00:00Z") -> "2026-09-01"; a datetime that is not
//     at midnight UTC is returned unchanged (so it compares unequal and gets rewritten);
//   - any other property, or "": unchanged.
//
// Computed values are already canonical: Canonical(p, v) == v.
func Canonical(property, value string) string {
	switch property {
	case LessonsCompleted, AverageScore, TotalStudyTime, ProgressPercentage, StudyStreak, TotalXP:
		if c, ok := canonicalDecimal(strings.TrimSpace(value)); ok {
			return c
		}
	case LastActivityDate, CourseCompletedDate:
		if c, ok := canonicalDate(strings.TrimSpace(value)); ok {
			return c
		}
	}
	return value
}

// maxExponent bounds the exponent canonicalDecimal expands, so a hostile "1e999999999" cannot
// make it allocate a gigabyte; such a value is returned unchanged.
const maxExponent = 400

// canonicalDecimal parses [+-]digits[.digits][(e|E)[+-]digits] exactly (no float) and formats it
// without exponent, leading zeros or trailing fractional zeros; zero is "0".
func canonicalDecimal(s string) (string, bool) {
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	mant, exp, hasExp := s, "", false
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant, exp, hasExp = s[:i], s[i+1:], true
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	if intPart == "" && frac == "" || !allDigits(intPart) || !allDigits(frac) {
		return "", false
	}
	shift := 0
	if hasExp {
		e := strings.TrimLeft(exp, "+-")
		if e == "" || len(exp)-len(e) > 1 || !allDigits(e) || len(e) > 4 {
			return "", false
		}
		n, _ := strconv.Atoi(exp)
		if n > maxExponent || n < -maxExponent {
			return "", false
		}
		shift = n
	}
	// digits × 10^(shift - len(frac))
	digits := intPart + frac
	point := len(intPart) + shift // position of the decimal point within digits
	if point < 0 {
		digits = strings.Repeat("0", -point) + digits
		point = 0
	}
	if point > len(digits) {
		digits += strings.Repeat("0", point-len(digits))
	}
	ip := strings.TrimLeft(digits[:point], "0")
	fp := strings.TrimRight(digits[point:], "0")
	if ip == "" {
		ip = "0"
	}
	out := ip
	if fp != "" {
		out += "." + fp
	}
	if neg && out != "0" {
		out = "-" + out
	}
	return out, true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// canonicalDate turns epoch milliseconds or an RFC 3339 datetime at midnight UTC into
// YYYY-MM-DD. A YYYY-MM-DD value is already canonical and reports false (returned unchanged).
func canonicalDate(s string) (string, bool) {
	var t time.Time
	if s != "" && allDigits(strings.TrimPrefix(s, "-")) && s != "-" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return "", false
		}
		t = time.UnixMilli(ms).UTC()
	} else {
		var err error
		if t, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return "", false
		}
		t = t.UTC()
	}
	if t.Hour() != 0 || t.Minute() != 0 || t.Second() != 0 || t.Nanosecond() != 0 {
		return "", false
	}
	if t.Year() < 0 || t.Year() > 9999 {
		return "", false
	}
	return t.Format(time.DateOnly), true
}

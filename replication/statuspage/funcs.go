package statuspage

import (
	"fmt"
	"html/template"
	"strconv"
	"time"
)

func funcs() template.FuncMap {
	return template.FuncMap{
		"num":   num,
		"bytes": humanBytes,
		"utc":   func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
		"ago":   ago,
		"dur":   dur,
		"inc":   func(i int) int { return i + 1 },
		"dec":   func(i int) int { return i - 1 },
		"add":   func(n, x int) int { return x + n },
		"half":  func(x int) int { return x / 2 },
	}
}

// num writes a count with thousands separators: 100,000.
func num(v any) string {
	var n int64
	switch x := v.(type) {
	case int:
		n = int64(x)
	case int64:
		n = x
	case float64:
		n = int64(x)
	default:
		return fmt.Sprint(v)
	}
	s := strconv.FormatInt(n, 10)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	out := make([]byte, 0, len(s)+len(s)/3)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// humanBytes writes a size the way people read it: 0 bytes, 56 kB, 1.2 MB.
func humanBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return num(n) + " bytes"
	}
	v, units := float64(n), []string{"kB", "MB", "GB", "TB"}
	i := -1
	for v >= unit && i < len(units)-1 {
		v /= unit
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + units[i]
}

// ago says how long ago t was, to the second: "12 s ago", "3 min ago", "2 h ago".
func ago(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < 2*time.Minute:
		return fmt.Sprintf("%d s ago", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	}
	return fmt.Sprintf("%d days ago", int(d.Hours()/24))
}

// dur says how long something has lasted: "0 s", "45 s", "3 min 20 s", "2 h 5 min".
func dur(d time.Duration) string {
	switch s := int(d.Seconds()); {
	case s < 120:
		return fmt.Sprintf("%d s", s)
	case s < 7200:
		return fmt.Sprintf("%d min %d s", s/60, s%60)
	default:
		return fmt.Sprintf("%d h %d min", s/3600, s%3600/60)
	}
}

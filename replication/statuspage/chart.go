package statuspage

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/focusenglish/progress-sync/replication/telemetry"
)

// Chart size in SVG units; the page scales it to its column.
const (
	chartW = 600
	chartH = 140
)

// chart is one inline SVG line chart over the last hour.
type chart struct {
	ID, Title string
	W, H      int
	Lines     []line
	YMax      string // the top gridline's label
	YMid      string
	Empty     bool
	Latest    string // the newest value, in words
	From      string // the left edge's time
}

type line struct {
	Class, Label, Points string
	// Dots mark each point, so a line of one sample still shows.
	Dots []dot
}

type dot struct{ X, Y string }

// span is the time the charts cover: the last hour, or since the process started when that
// is less (at least a minute), so a young process does not draw in the last pixels.
func span(samples []telemetry.Sample, now time.Time) (from time.Time) {
	from = now.Add(-telemetry.History)
	switch {
	case len(samples) == 0:
		from = now // no point yet (a standby keeps none): the minute below
	case samples[0].At.After(from):
		from = samples[0].At
	}
	if latest := now.Add(-time.Minute); from.After(latest) {
		from = latest
	}
	return from
}

func newChart(id, title string, samples []telemetry.Sample, now time.Time) chart {
	return chart{ID: id, Title: title, W: chartW, H: chartH, From: span(samples, now).UTC().Format("15:04:05Z")}
}

func pendingChart(samples []telemetry.Sample, now time.Time) chart {
	c := newChart("pending-chart", "Students waiting to be pushed", samples, now)
	c.Empty = len(samples) == 0
	top := 0.0
	for _, s := range samples {
		top = max(top, float64(s.Pending))
	}
	top = niceCeil(top)
	c.YMax, c.YMid = strconv.FormatFloat(top, 'f', -1, 64), strconv.FormatFloat(top/2, 'f', -1, 64)
	c.Lines = []line{newLine("pending", "pending students", samples, now, top, func(s telemetry.Sample) (float64, bool) {
		return float64(s.Pending), true
	})}
	if n := len(samples); n > 0 {
		c.Latest = fmt.Sprintf("%d pending at %s", samples[n-1].Pending, samples[n-1].At.UTC().Format("15:04:05Z"))
	}
	return c
}

func latencyChart(samples []telemetry.Sample, now time.Time) chart {
	c := newChart("latency-chart", "From a change to HubSpot", samples, now)
	c.Empty = true
	top := 0.0
	var last telemetry.Sample
	for _, s := range samples {
		if s.Flushed > 0 {
			top, c.Empty, last = max(top, s.Slowest.Seconds()), false, s
		}
	}
	top = niceCeil(top)
	c.YMax, c.YMid = strconv.FormatFloat(top, 'f', -1, 64)+" s", strconv.FormatFloat(top/2, 'f', -1, 64)+" s"
	pushed := func(v func(telemetry.Sample) time.Duration) func(telemetry.Sample) (float64, bool) {
		return func(s telemetry.Sample) (float64, bool) { return v(s).Seconds(), s.Flushed > 0 }
	}
	c.Lines = []line{
		newLine("slowest", "slowest", samples, now, top, pushed(func(s telemetry.Sample) time.Duration { return s.Slowest })),
		newLine("median", "median", samples, now, top, pushed(func(s telemetry.Sample) time.Duration { return s.Median })),
	}
	if !c.Empty {
		c.Latest = fmt.Sprintf("median %s, slowest %s for the %d students pushed in the 10 s to %s",
			seconds(last.Median), seconds(last.Slowest), last.Flushed, last.At.UTC().Format("15:04:05Z"))
	}
	return c
}

func newLine(class, label string, samples []telemetry.Sample, now time.Time, top float64, value func(telemetry.Sample) (float64, bool)) line {
	l := line{Class: class, Label: label}
	l.Points, l.Dots = points(samples, now, top, value)
	return l
}

// points places the samples that have a value on the chart: the span across, 0 to top
// upwards.
func points(samples []telemetry.Sample, now time.Time, top float64, value func(telemetry.Sample) (float64, bool)) (string, []dot) {
	var b strings.Builder
	var dots []dot
	from := span(samples, now)
	width := now.Sub(from).Seconds()
	for _, s := range samples {
		v, ok := value(s)
		if !ok {
			continue
		}
		x := float64(chartW) * s.At.Sub(from).Seconds() / width
		y := float64(chartH) * (1 - v/top)
		d := dot{X: fmt.Sprintf("%.1f", min(max(x, 0), chartW)), Y: fmt.Sprintf("%.1f", min(max(y, 0), chartH))}
		fmt.Fprintf(&b, "%s,%s ", d.X, d.Y)
		dots = append(dots, d)
	}
	return strings.TrimSpace(b.String()), dots
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, so gridlines read as round numbers.
func niceCeil(v float64) float64 {
	if v <= 1 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func seconds(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s" }

package main

// Micro-benchmarks of the hot paths, with allocations:
//
//	go test -run '^$' -bench . -benchmem ./cmd/bench
//
// Each reports, besides ns/op, B/op and allocs/op, the same per unit of work (per row change,
// per student, per HubSpot input) where one op handles several.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

// corpusMessages reads a FuzzDecode seed (real pgoutput captured from PostgreSQL): a go test
// fuzz file holding one []byte of messages, each preceded by its length in two bytes.
func corpusMessages(b *testing.B, name string) [][]byte {
	b.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "replication", "testdata", "fuzz", "FuzzDecode", name))
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		b.Fatalf("%s: not a go test fuzz v1 file", name)
	}
	quoted := strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")")
	text, err := strconv.Unquote(quoted)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	data := []byte(text)
	var msgs [][]byte
	for len(data) >= 2 {
		n := min(int(binary.BigEndian.Uint16(data)), len(data)-2)
		msgs = append(msgs, data[2:2+n])
		data = data[2+n:]
	}
	return msgs
}

// perUnit reports allocations and time per unit of work, units per op. Allocations are
// counted over the whole loop, so a benchmark that stops the timer for setup inside the loop
// must not report them (noAllocs).
type perUnit struct {
	b        *testing.B
	units    int
	name     string
	mallocs  uint64
	noAllocs bool
}

func startPerUnit(b *testing.B, units int, name string) *perUnit {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ResetTimer()
	return &perUnit{b: b, units: units, name: name, mallocs: ms.Mallocs}
}

func (p *perUnit) stop() {
	p.b.StopTimer()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	n := float64(p.b.N * p.units)
	p.b.ReportMetric(float64(p.b.Elapsed().Nanoseconds())/n, "ns/"+p.name)
	if !p.noAllocs {
		p.b.ReportMetric(float64(ms.Mallocs-p.mallocs)/n, "allocs/"+p.name)
	}
}

// BenchmarkDecode decodes real pgoutput messages of course_progress to student keys.
func BenchmarkDecode(b *testing.B) {
	for _, sc := range []struct{ corpus, kind string }{
		{"update_progress_same_student", "U"}, // REPLICA IDENTITY FULL: old and new tuple
		{"insert_progress", "I"},
		{"delete_progress", "D"},
	} {
		msgs := corpusMessages(b, sc.corpus)
		var setup [][]byte // Relation messages, then a Begin
		var row, begin, commit []byte
		for _, m := range msgs {
			switch string(m[:1]) {
			case "R":
				setup = append(setup, m)
			case "B":
				begin = m
			case "C":
				commit = m
			case sc.kind:
				if row == nil {
					row = m
				}
			}
		}
		if row == nil || begin == nil || commit == nil {
			b.Fatalf("%s: no %s, Begin or Commit message", sc.corpus, sc.kind)
		}
		// One row change inside an open transaction: the cost per change.
		b.Run(sc.kind+"-row", func(b *testing.B) {
			dec := replication.NewDecoder(model.Builtin(model.Default))
			for _, m := range append(setup, begin) {
				if _, err := dec.Decode(m); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(row)))
			p := startPerUnit(b, 1, "change")
			for i := 0; i < b.N; i++ {
				if _, err := dec.Decode(row); err != nil {
					b.Fatal(err)
				}
			}
			p.stop()
		})
		// A whole transaction of one row: Begin, the row, Commit.
		b.Run(sc.kind+"-txn-of-1", func(b *testing.B) {
			dec := replication.NewDecoder(model.Builtin(model.Default))
			for _, m := range setup {
				if _, err := dec.Decode(m); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			p := startPerUnit(b, 1, "change")
			for i := 0; i < b.N; i++ {
				dec.Decode(begin) //nolint:errcheck
				dec.Decode(row)   //nolint:errcheck
				c, err := dec.Decode(commit)
				if err != nil || c == nil || len(c.Changes.Students) != 1 {
					b.Fatalf("commit %v, %v", c, err)
				}
			}
			p.stop()
		})
	}
}

// BenchmarkBuffer measures the durable buffer against a throwaway PostgreSQL: Add of 100
// students (one transaction: the pending upsert and the checkpoint), and Due of 100 from a
// buffer of 100,000 due students.
func BenchmarkBuffer(b *testing.B) {
	ctx := context.Background()
	srv, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop() //nolint:errcheck
	url, err := srv.CreateDatabase(ctx, "bench_buffer")
	if err != nil {
		b.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	store, err := state.Open(ctx, pool, model.Builtin(model.Default).Students)
	if err != nil {
		b.Fatal(err)
	}
	ids := func(n int) []uuid.UUID {
		out := make([]uuid.UUID, n)
		for i := range out {
			out[i] = uuid.New()
		}
		return out
	}

	b.Run("Add100-new", func(b *testing.B) {
		buf, _, err := buffer.Open(ctx, store, "add-new", buffer.Options{Debounce: time.Hour, MaxDelay: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		batches := make([][]uuid.UUID, b.N)
		for i := range batches {
			batches[i] = ids(100)
		}
		b.ReportAllocs()
		p := startPerUnit(b, 100, "student")
		for i := 0; i < b.N; i++ {
			if err := buf.Add(ctx, batches[i], pglogrepl.LSN(i+1)); err != nil {
				b.Fatal(err)
			}
		}
		p.stop()
	})
	b.Run("Add100-already-pending", func(b *testing.B) {
		buf, _, err := buffer.Open(ctx, store, "add-again", buffer.Options{Debounce: time.Hour, MaxDelay: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		same := ids(100)
		if err := buf.Add(ctx, same, 1); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		p := startPerUnit(b, 100, "student")
		for i := 0; i < b.N; i++ {
			if err := buf.Add(ctx, same, pglogrepl.LSN(i+2)); err != nil {
				b.Fatal(err)
			}
		}
		p.stop()
	})
	b.Run("Due100-of-100k", func(b *testing.B) {
		if _, err := pool.Exec(ctx, `TRUNCATE `+state.Schema+`.pending`); err != nil {
			b.Fatal(err)
		}
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		buf, _, err := buffer.Open(ctx, store, "due", buffer.Options{Debounce: 0, MaxDelay: 0, Now: func() time.Time { return now }})
		if err != nil {
			b.Fatal(err)
		}
		if err := buf.Add(ctx, ids(100_000), 1); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		p := startPerUnit(b, 100, "student")
		p.noAllocs = true // Retry runs with the timer stopped; allocs/op excludes it
		for i := 0; i < b.N; i++ {
			got := buf.Due(100)
			b.StopTimer()
			if len(got) != 100 {
				b.Fatalf("Due(100) took %d", len(got))
			}
			buf.Retry(got, 0) // back in the queue, due now, for the next round
			b.StartTimer()
		}
		p.stop()
	})
}

// updateInput and batchUpdateRequest have the shape of hubspot's unexported batch/update body
// (hubspot/update.go), which the client encodes with json.Marshal.
type updateInput struct {
	ID         string            `json:"id"`
	Properties map[string]string `json:"properties"`
}

type batchUpdateRequest struct {
	Inputs []updateInput `json:"inputs"`
}

// BenchmarkEncodeBatchUpdate encodes a batch/update body of 100 inputs with all ten
// properties, the most a push sends in one request.
func BenchmarkEncodeBatchUpdate(b *testing.B) {
	values := map[string]string{
		metrics.LessonsCompleted: "37", metrics.CurrentLesson: "b2-trabajo-m3-l4", metrics.AverageScore: "84.27",
		metrics.TotalStudyTime: "1234", metrics.ProgressPercentage: "83.3", metrics.LastActivityDate: "2026-03-14",
		metrics.StudyStreak: "12", metrics.TotalXP: "4821", metrics.CourseCompletedDate: "", metrics.CourseStatus: metrics.StatusInProgress,
	}
	if len(values) != len(metrics.Names()) {
		b.Fatalf("%d values for %d properties", len(values), len(metrics.Names()))
	}
	req := batchUpdateRequest{Inputs: make([]updateInput, 100)}
	for i := range req.Inputs {
		props := make(map[string]string, len(values))
		for k, v := range values {
			props[k] = v
		}
		req.Inputs[i] = updateInput{ID: fmt.Sprint(51000 + i), Properties: props}
	}
	body, err := json.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	p := startPerUnit(b, len(req.Inputs), "input")
	for i := 0; i < b.N; i++ {
		if _, err := json.Marshal(req); err != nil {
			b.Fatal(err)
		}
	}
	p.stop()
}

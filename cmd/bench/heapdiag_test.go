package main

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication/buffer"
	"github.com/focusenglish/progress-sync/replication/pgtest"
	"github.com/focusenglish/progress-sync/replication/state"
)

// TestBufferHeapProfile writes a heap profile of a buffer holding 100,000 pending students
// after 1,500,000 further changes to them (nothing drains), to show what the memory scenario's
// growth is made of. It runs only when BENCH_HEAP_PROFILE names the output file:
//
//	BENCH_HEAP_PROFILE=/tmp/heap.prof go test -run TestBufferHeapProfile -v ./cmd/bench
//	go tool pprof -sample_index=inuse_space -top /tmp/heap.prof
func TestBufferHeapProfile(t *testing.T) {
	out := os.Getenv("BENCH_HEAP_PROFILE")
	if out == "" {
		t.Skip("set BENCH_HEAP_PROFILE to the profile's path")
	}
	runtime.MemProfileRate = 4096
	ctx := context.Background()
	srv, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop() //nolint:errcheck
	url, err := srv.CreateDatabase(ctx, "heap")
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := state.Open(ctx, pool, model.Builtin(model.Default).Students)
	if err != nil {
		t.Fatal(err)
	}
	buf, _, err := buffer.Open(ctx, store, "heap", buffer.Options{Debounce: 3 * time.Second, MaxDelay: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]uuid.UUID, 100_000)
	for i := range ids {
		ids[i] = uuid.New()
	}
	if err := buf.Add(ctx, ids, 1); err != nil {
		t.Fatal(err)
	}
	for r := 0; r < 300; r++ { // 300 x 5,000 = 1,500,000 changes to pending students
		at := (r * 5000) % len(ids)
		if err := buf.Add(ctx, ids[at:at+5000], 0); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("Go heap in use %.1f MiB with %d students pending after 1,600,000 Adds", float64(ms.HeapInuse)/(1<<20), buf.Len())
}

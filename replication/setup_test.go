package replication

import (
	"context"
	"sync"
	"testing"
)

func TestSetupsStartedTogetherAllSucceed(t *testing.T) {
	ctx := context.Background()
	db := pg.NewPool(t)
	names := Names{Slot: "progress_sync", Publication: "progress_sync"}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = Setup(ctx, db, names, defaultModel(), "")
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("setup %d: %v", i, err)
		}
	}
	if gaps, err := PublicationGaps(ctx, db, defaultModel(), names.Publication); err != nil || len(gaps) > 0 {
		t.Fatalf("after the setups: gaps %v, %v", gaps, err)
	}
}

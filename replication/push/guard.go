package push

import (
	"fmt"

	"github.com/focusenglish/progress-sync/metrics"
)

// VanishedProgressMin is how many students of one batch must have lost every progress row
// at once, while HubSpot holds progress for them, before a push refuses the batch. One
// student whose rows were deleted is ordinary; a whole batch of them is far more likely a
// view of the database that hides rows (row-level security, a revoked grant, the wrong
// database) than a mass deletion.
const VanishedProgressMin = 5

// VanishedProgressError refuses a batch whose every student has no progress rows while
// at least VanishedProgressMin of them have progress on their contact.
type VanishedProgressError struct {
	Students int // whose contact shows progress
	Batch    int
}

func (e *VanishedProgressError) Error() string {
	return fmt.Sprintf("%d of the %d students of a batch have progress in HubSpot but no progress rows in the database; "+
		"nothing was written: the database most likely hides rows from the service (row-level security, a revoked grant, a wrong DATABASE_URL). "+
		"Run `progress-sync check`; if that progress was really deleted, `progress-sync backfill --allow-clearing` writes it",
		e.Students, e.Batch)
}

// guardVanishedProgress is the last line against pushing from a partial view: a batch whose
// students all come back without progress rows may not clear the progress HubSpot holds for
// many of them.
func (p *Pusher) guardVanishedProgress(students []metrics.Student, targets []*target, baseline map[string]map[string]string) error {
	if p.allowClearing {
		return nil
	}
	for _, s := range students {
		if s.Values[metrics.CourseStatus] != metrics.StatusNotStarted {
			return nil // someone has progress rows: the view is not empty
		}
	}
	had := 0
	for _, t := range targets {
		switch baseline[t.link.ContactID][metrics.CourseStatus] {
		case metrics.StatusInProgress, metrics.StatusCompleted:
			had++
		}
	}
	if had < VanishedProgressMin {
		return nil
	}
	return &VanishedProgressError{Students: had, Batch: len(students)}
}

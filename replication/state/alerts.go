package state

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// OpenAlert is a not_ready alert posted for a spell of not being ready that has not ended.
type OpenAlert struct {
	Reason string // the readiness code, such as hubspot_key_refused
	Since  time.Time
}

// OpenAlerts lists the alerts posted for the slot's spell of not being ready, if one is open.
func (s *Store) OpenAlerts(ctx context.Context, slot string) ([]OpenAlert, error) {
	if s.absent {
		return nil, nil
	}
	rows, err := s.db.Query(ctx, `SELECT reason, since FROM `+Schema+`.open_alerts WHERE slot = $1 ORDER BY since, reason`, slot)
	if err != nil {
		return nil, fmt.Errorf("read the open alerts: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[OpenAlert])
	if err != nil {
		return nil, fmt.Errorf("read the open alerts: %w", err)
	}
	return out, nil
}

// AlertPosted records a not_ready alert posted for the spell that began at since.
func (s *Store) AlertPosted(ctx context.Context, slot, reason string, since time.Time) error {
	if s.readOnly {
		return nil
	}
	_, err := s.db.Exec(ctx, `INSERT INTO `+Schema+`.open_alerts (slot, reason, since) VALUES ($1, $2, $3)
		ON CONFLICT (slot, reason) DO NOTHING`, slot, reason, since)
	if err != nil {
		return fmt.Errorf("record the alert posted: %w", err)
	}
	return nil
}

// AlertsClosed forgets the slot's open alerts: their spell ended and its recovery was posted.
func (s *Store) AlertsClosed(ctx context.Context, slot string) error {
	if s.readOnly {
		return nil
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM `+Schema+`.open_alerts WHERE slot = $1`, slot); err != nil {
		return fmt.Errorf("forget the open alerts: %w", err)
	}
	return nil
}

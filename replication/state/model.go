package state

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ModelInUse is the progress model a slot's deployment last computed with.
type ModelInUse struct {
	Name, Digest string
}

// ModelOf reads the model a slot's deployment last recorded; ok is false when none was.
func (s *Store) ModelOf(ctx context.Context, slot string) (m ModelInUse, ok bool, err error) {
	if s.absent {
		return m, false, nil
	}
	err = s.db.QueryRow(ctx, `SELECT name, digest FROM `+Schema+`.model WHERE slot = $1`, slot).Scan(&m.Name, &m.Digest)
	if errors.Is(err, pgx.ErrNoRows) {
		return m, false, nil
	}
	if err != nil {
		return m, false, fmt.Errorf("read the progress model of slot %s: %w", slot, err)
	}
	return m, true, nil
}

// SetModel records the model a slot's deployment computes with. The caller queues whatever a
// change of model requires first: a crash in between makes the next start queue it again.
func (s *Store) SetModel(ctx context.Context, slot string, m ModelInUse) error {
	if s.readOnly {
		return nil
	}
	_, err := s.db.Exec(ctx, `INSERT INTO `+Schema+`.model (slot, name, digest) VALUES ($1, $2, $3)
		ON CONFLICT (slot) DO UPDATE SET name = excluded.name, digest = excluded.digest, changed_at = now()
		WHERE (model.name, model.digest) IS DISTINCT FROM (excluded.name, excluded.digest)`, slot, m.Name, m.Digest)
	if err != nil {
		return fmt.Errorf("record the progress model of slot %s: %w", slot, err)
	}
	return nil
}

package replication

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// ReadOnlyNotice is what a database that refuses writes means for the sync, in the one line
// the consumer and the flusher log (at most once a minute while it lasts).
const ReadOnlyNotice = "the database is read-only (Supabase makes a project read-only when its disk is nearly full): " +
	"nothing is lost, the changes wait in the replication slot and are recorded and pushed once it takes writes again; " +
	"free disk space (Supabase: raise the disk size), then make the database writable"

// IsReadOnly recognises a write the database refused because it, or the session, is
// read-only (SQLSTATE 25006).
func IsReadOnly(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25006"
}

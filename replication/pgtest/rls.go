package pgtest

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// PlatformRLS is the row-level security the Focus English platform puts on its tables, per
// table: RLS enabled, with policies that match only the signed-in user's JWT claim (Supabase
// puts it in request.jwt.claim.sub). A service connection carries no claim, so a role these
// policies govern sees no rows of the table at all.
var PlatformRLS = map[string]string{
	"public.users": `ALTER TABLE public.users ENABLE ROW LEVEL SECURITY;
CREATE POLICY users_select_own ON public.users FOR SELECT
	USING (id::text = current_setting('request.jwt.claim.sub', true));
CREATE POLICY users_update_own ON public.users FOR UPDATE
	USING (id::text = current_setting('request.jwt.claim.sub', true));`,
	"public.course_progress": `ALTER TABLE public.course_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY course_progress_select_own ON public.course_progress FOR SELECT
	USING (user_id::text = current_setting('request.jwt.claim.sub', true));
CREATE POLICY course_progress_insert_own ON public.course_progress FOR INSERT
	WITH CHECK (user_id::text = current_setting('request.jwt.claim.sub', true));
CREATE POLICY course_progress_update_own ON public.course_progress FOR UPDATE
	USING (user_id::text = current_setting('request.jwt.claim.sub', true));`,
}

// Execer runs a statement: *pgx.Conn, *pgxpool.Pool and pgx.Tx all satisfy it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// EnableRLS switches on the platform's row-level security on the given tables (both of
// PlatformRLS when none are given). Run it as the tables' owner.
func EnableRLS(ctx context.Context, db Execer, tables ...string) error {
	if len(tables) == 0 {
		tables = []string{"public.users", "public.course_progress"}
	}
	for _, t := range tables {
		sql, ok := PlatformRLS[t]
		if !ok {
			return fmt.Errorf("the platform puts no row-level security on %s (it does on %s)", t, strings.Join([]string{"public.users", "public.course_progress"}, ", "))
		}
		if _, err := db.Exec(ctx, sql); err != nil {
			return fmt.Errorf("enable row-level security on %s: %w", t, err)
		}
	}
	return nil
}

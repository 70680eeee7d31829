// Package preflight checks everything the service needs before it runs (docs/contract.md §5,
// check): the database and its replication settings, the progress model against the data,
// the publication, replica identities and row-level security, the slot, the HubSpot key and
// properties. Each item is a Finding: ok, or the problem and its fix.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/focusenglish/progress-sync/hubspot"
	"github.com/focusenglish/progress-sync/metrics"
	"github.com/focusenglish/progress-sync/metrics/model"
	"github.com/focusenglish/progress-sync/replication"
	"github.com/focusenglish/progress-sync/replication/config"
	"github.com/focusenglish/progress-sync/replication/push"
)

// Finding is one item of the preflight: ok, or the problem and its fix.
type Finding struct {
	Item, Detail, Fix string
	OK                bool
}

// Database checks the database items, in order; it stops at the first item that makes the
// others meaningless (no connection).
func Database(ctx context.Context, db *pgxpool.Pool, cfg config.Config) []Finding {
	fs, user, ok := checkServer(ctx, db, cfg)
	if !ok {
		return fs
	}
	slot, err := replication.ReadSlot(ctx, db, cfg.Slot)
	if err != nil {
		return append(fs, Finding{Item: "slot", Detail: err.Error()})
	}
	more, ok := checkCapacity(ctx, db, slot)
	fs = append(fs, more...)
	if !ok {
		return fs
	}
	more, ok = checkModel(ctx, db, cfg.Model)
	fs = append(fs, more...)
	if !ok {
		return append(fs, checkSlot(cfg.Slot, slot))
	}
	fs = append(fs, checkSource(ctx, db, cfg)...)
	fs = append(fs, checkVisibility(ctx, db, cfg.Model, user)...)
	fs = append(fs, checkModelData(ctx, db, cfg.Model)...)
	return append(fs, checkSlot(cfg.Slot, slot))
}

// checkServer: the connection, a replication connection, wal_level and the replication right.
func checkServer(ctx context.Context, db *pgxpool.Pool, cfg config.Config) (fs []Finding, user string, ok bool) {
	add := func(item string, ok bool, detail, fix string) { fs = append(fs, Finding{item, detail, fix, ok}) }
	var version, walLevel string
	var replicationRole bool
	err := db.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('wal_level'), current_user,
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&version, &walLevel, &user, &replicationRole)
	if err != nil {
		add("database", false, err.Error(), "check DATABASE_URL: host, port, user, password, sslmode")
		return fs, "", false
	}
	add("database", true, fmt.Sprintf("PostgreSQL %s, connected as %s", version, user), "")
	if err := replication.CheckServer(ctx, db); err != nil {
		add("server version", false, err.Error(), fmt.Sprintf("upgrade to PostgreSQL %d or newer (Supabase: 15 or 17)", replication.MinServerVersion))
	}

	// A replication connection is what a pooler (Supavisor, PgBouncer) cannot carry.
	conn, err := replication.Connect(ctx, cfg.DatabaseURL)
	if err == nil {
		_, err = pglogrepl.IdentifySystem(ctx, conn)
		conn.Close(ctx)
	}
	add("replication connection", err == nil, detailOr(err, "direct connection accepts replication=database"),
		"use the direct connection string (Supabase: db.<project>.supabase.co:5432), not the pooler; the role needs REPLICATION")
	add("wal_level", walLevel == "logical", "wal_level = "+walLevel,
		"set wal_level = logical and restart PostgreSQL (Supabase projects have it already)")
	add("replication privilege", replicationRole, fmt.Sprintf("role %s may replicate: %v", user, replicationRole),
		fmt.Sprintf("ALTER ROLE %s REPLICATION; (or use the role from `progress-sync setup --print-sql`)", user))
	return fs, user, true
}

// checkCapacity: free slots and WAL senders, and how much WAL a stalled slot may hold.
func checkCapacity(ctx context.Context, db *pgxpool.Pool, slot replication.Slot) (fs []Finding, ok bool) {
	add := func(item string, ok bool, detail, fix string) { fs = append(fs, Finding{item, detail, fix, ok}) }
	var maxSlots, usedSlots, maxSenders, usedSenders int
	var keep string
	err := db.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots),
		current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication),
		current_setting('max_slot_wal_keep_size')`).Scan(&maxSlots, &usedSlots, &maxSenders, &usedSenders, &keep)
	if err != nil {
		add("replication settings", false, err.Error(), "grant the role read access to pg_settings")
		return fs, false
	}
	needSlot := 0
	if !slot.Exists {
		needSlot = 1
	}
	add("free replication slots", maxSlots-usedSlots >= needSlot, fmt.Sprintf("%d of %d in use", usedSlots, maxSlots),
		"raise max_replication_slots, or drop unused slots (SELECT slot_name, active FROM pg_replication_slots)")
	add("free WAL senders", maxSenders-usedSenders >= 1, fmt.Sprintf("%d of %d in use", usedSenders, maxSenders),
		"raise max_wal_senders")
	add("max_slot_wal_keep_size", keepOK(keep), "max_slot_wal_keep_size = "+keep+" (WAL a stalled slot may hold before the server invalidates it)",
		"keep it at least 1GB so an outage of the service does not lose the slot (Supabase: its config command; plain PostgreSQL: ALTER SYSTEM)")
	return fs, true
}

// checkModel: the progress model against the database (its tables, columns and queries).
func checkModel(ctx context.Context, db *pgxpool.Pool, m *model.Model) (fs []Finding, ok bool) {
	if err := m.Verify(ctx, db); err != nil {
		return []Finding{{Item: "progress model", Detail: err.Error(),
			Fix: "correct the model (docs/models.md explains each part), or choose another with PROGRESS_SYNC_MODEL; a table it needs may be missing: see `progress-sync setup --print-sql`"}}, false
	}
	return []Finding{{Item: "progress model", OK: true, Detail: fmt.Sprintf("%s: computes %s from %s",
		m.Name, strings.Join(m.Computes(), ", "), strings.Join(m.TableNames(), ", "))}}, true
}

// errReadOnly ends a transaction that only read.
var errReadOnly = errors.New("read only")

// checkModelData runs the model's query on real students and its own checks, read-only.
func checkModelData(ctx context.Context, db *pgxpool.Pool, m *model.Model) (fs []Finding) {
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		n, err := m.Trial(ctx, tx)
		if err != nil {
			fs = append(fs, Finding{Item: "progress model query", Detail: err.Error(),
				Fix: "correct the properties query (docs/models.md): one row per student of $1"})
		} else {
			fs = append(fs, Finding{Item: "progress model query", OK: true, Detail: fmt.Sprintf("ran on an empty batch and on %d students", n)})
		}
		for _, c := range m.Checks {
			problems, err := m.Problems(ctx, tx, c)
			switch {
			case err != nil:
				fs = append(fs, Finding{Item: "model check: " + c.Name, Detail: err.Error(), Fix: "correct the check's query"})
			case len(problems) == 0:
				fs = append(fs, Finding{Item: "model check: " + c.Name, OK: true, Detail: "no problem found"})
			default:
				for _, p := range problems {
					fs = append(fs, Finding{Item: "model check: " + c.Name, Detail: p, Fix: orText(c.Fix, "see the model's check")})
				}
			}
		}
		return errReadOnly // nothing to commit; a failed statement must not read as a failed commit
	})
	if err != nil && !errors.Is(err, errReadOnly) {
		fs = append(fs, Finding{Item: "progress model query", Detail: err.Error(), Fix: "see the error"})
	}
	return fs
}

// checkSource: the publication's tables and their replica identities.
func checkSource(ctx context.Context, db *pgxpool.Pool, cfg config.Config) (fs []Finding) {
	add := func(item string, ok bool, detail, fix string) { fs = append(fs, Finding{item, detail, fix, ok}) }
	missing, err := replication.MissingTables(ctx, db, cfg.Model, cfg.Publication)
	tables := fmt.Sprintf("the model's %d tables", len(cfg.Model.Tables))
	switch {
	case err != nil:
		add("publication", false, err.Error(), "")
	case len(missing) == len(cfg.Model.Tables):
		add("publication", false, fmt.Sprintf("publication %s does not exist or publishes none of %s", cfg.Publication, tables), "run `progress-sync setup` (or its --print-sql as the tables' owner)")
	default:
		add("publication", len(missing) == 0, fmt.Sprintf("publication %s publishes %s", cfg.Publication, tables)+missingNote(missing),
			fmt.Sprintf("ALTER PUBLICATION %s ADD TABLE %s;", cfg.Publication, strings.Join(missing, ", ")))
	}
	var gaps []replication.PublicationGap
	if len(missing) < len(cfg.Model.Tables) {
		gaps, err = replication.PublicationGaps(ctx, db, cfg.Model, cfg.Publication)
	}
	switch {
	case len(missing) == len(cfg.Model.Tables):
		add("publication settings", false, "no publication to read them from", "run `progress-sync setup` (it makes the publication with every setting right)")
	case err != nil:
		add("publication settings", false, err.Error(), "")
	default:
		var problems, fixes []string
		for _, g := range gaps {
			problems, fixes = append(problems, g.Problem), append(fixes, g.Fix...)
		}
		add("publication settings", len(gaps) == 0, orText(strings.Join(problems, "; "), "every insert, update, delete and truncate of "+tables+", all rows and columns"),
			strings.Join(fixes, " "))
	}
	weak, err := replication.WeakIdentities(ctx, db, cfg.Model)
	if err != nil {
		add("replica identities", false, err.Error(), "")
		return fs
	}
	var weakTables, fixes []string
	for _, w := range weak {
		weakTables, fixes = append(weakTables, w.Table), append(fixes, w.Fix+";")
	}
	add("replica identities", len(weak) == 0, identityDetail(weakTables), strings.Join(fixes, " "))
	return fs
}

// checkSlot: whether the slot can be streamed from.
func checkSlot(name string, slot replication.Slot) Finding {
	switch {
	case slot.Exists && !slot.InThisDatabase:
		return Finding{Item: "slot", Detail: fmt.Sprintf("slot %s belongs to database %q, not to this one (slot names are shared by the whole server)", name, slot.Database),
			Fix: "set PROGRESS_SYNC_SLOT to a name of this deployment's own"}
	case !slot.Exists:
		return Finding{Item: "slot", OK: true, Detail: fmt.Sprintf("slot %s does not exist yet; run creates it and backfills every student", name)}
	case slot.WALStatus == "lost":
		return Finding{Item: "slot", Detail: fmt.Sprintf("slot %s is lost: the server removed WAL it needed", name),
			Fix: "start `progress-sync run`: it recreates the slot and backfills every student"}
	case slot.Active:
		return Finding{Item: "slot", OK: true, Detail: fmt.Sprintf("slot %s: streamed by process %d (a running progress-sync; a second run waits as its standby), wal_status %s, lag %d bytes",
			name, slot.ActivePID, slot.WALStatus, slot.LagBytes)}
	default:
		return Finding{Item: "slot", OK: true, Detail: fmt.Sprintf("slot %s: wal_status %s, lag %d bytes", name, slot.WALStatus, slot.LagBytes)}
	}
}

// HubSpot checks the token, its access and the properties.
func HubSpot(ctx context.Context, hs *hubspot.Client) []Finding {
	mismatches, err := hs.CheckProperties(ctx, push.Properties())
	if errors.Is(err, hubspot.ErrUnknownAPIVersion) {
		return []Finding{{Item: "HubSpot API version", Detail: err.Error(),
			Fix: "set HUBSPOT_API_VERSION to a version HubSpot serves (" + hubspot.DefaultAPIVersion + ", or " + hubspot.LegacyAPIVersion + " for the legacy paths)"}}
	}
	if err != nil && !errors.Is(err, hubspot.ErrMissingScopes) {
		return []Finding{{Item: "HubSpot token", Detail: err.Error(),
			Fix: "create a service key (Settings > Integrations > Service Keys; or a legacy private app) with scopes " + strings.Join(hubspot.RequiredScopes(), ", ") + " and set HUBSPOT_ACCESS_TOKEN_FILE or HUBSPOT_ACCESS_TOKEN to it"}}
	}
	fs := []Finding{{Item: "HubSpot token", OK: true, Detail: fmt.Sprintf("accepted on API version %s", hs.APIVersion())}}
	for _, a := range hs.CheckAccess(ctx, metrics.GroupName, metrics.LessonsCompleted, err) {
		fs = append(fs, accessFinding(a))
	}
	if err != nil {
		return fs // the properties cannot be read: the access item above says why
	}
	var lines []string
	for _, m := range mismatches {
		lines = append(lines, m.String())
	}
	fs = append(fs, Finding{Item: "HubSpot properties", OK: len(mismatches) == 0, Detail: orText(strings.Join(lines, "; "), fmt.Sprintf("all %d present with the right types", len(push.Properties()))),
		Fix: "run `progress-sync provision`; a property of another type must be renamed or deleted in HubSpot first"})
	return fs
}

// accessFinding reports one kind of HubSpot access, with where to add a missing scope.
func accessFinding(a hubspot.Access) Finding {
	f := Finding{Item: fmt.Sprintf("HubSpot access: %s (%s)", a.What, a.Scope)}
	switch {
	case a.OK:
		f.OK, f.Detail = true, "allowed (tried without changing anything)"
	case a.Untested != "":
		// Not proven: a key without the scope must not pass for one with it.
		f.Detail = "not tried: " + a.Untested
		f.Fix = "run `progress-sync provision` (it needs crm.schemas.contacts.read and .write), then `progress-sync check` again"
	case errors.Is(a.Err, hubspot.ErrMissingScopes):
		f.Detail = "HubSpot refuses it (403): the key lacks the scope " + a.Scope
		f.Fix = "add the scope " + a.Scope + " to the service key (Settings > Integrations > Service Keys, progress-sync, Scopes) or to the private app (its Scopes tab); a key only gets scopes its creator has"
	default:
		f.Detail = a.Err.Error()
		f.Fix = "see the error; `progress-sync check` again once HubSpot answers"
	}
	return f
}

func keepOK(v string) bool {
	if v == "-1" {
		return true // unlimited: the slot is never invalidated (watch disk usage instead)
	}
	n, unit := v, ""
	for i, r := range v {
		if r < '0' || r > '9' {
			n, unit = v[:i], v[i:]
			break
		}
	}
	x, err := strconv.ParseFloat(n, 64)
	if err != nil {
		return false
	}
	mb := map[string]float64{"kB": 1.0 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024, "": 1}[unit]
	return x*mb >= 1024
}

func missingNote(missing []string) string {
	if len(missing) == 0 {
		return ""
	}
	return "; missing " + strings.Join(missing, ", ")
}

func identityDetail(wrong []string) string {
	if len(wrong) == 0 {
		return "deletes carry the student key on every table"
	}
	return "deletes would not name the student on " + strings.Join(wrong, ", ")
}

func detailOr(err error, ok string) string {
	if err != nil {
		return err.Error()
	}
	return ok
}

func orText(s, fallback string) string {
	if s == "" {
		return fallback
	}
	return s
}

// checkVisibility is one failing item per source table whose rows the role sees only in
// part, or one ok item.
func checkVisibility(ctx context.Context, db *pgxpool.Pool, m *model.Model, user string) []Finding {
	hidden, err := replication.HiddenTables(ctx, db, m, "")
	if err != nil {
		return []Finding{{Item: "row-level security", Detail: err.Error(), Fix: "grant the role read access to pg_class and pg_policy"}}
	}
	if len(hidden) == 0 {
		return []Finding{{Item: "row-level security", OK: true, Detail: fmt.Sprintf("role %s reads every row of the model's %d tables", user, len(m.Tables))}}
	}
	fs := make([]Finding, len(hidden))
	for i, h := range hidden {
		fs[i] = Finding{Item: "row-level security on " + h.Table, Detail: h.Why + "; the metrics would be computed from missing rows", Fix: h.Fix}
	}
	return fs
}

-- The progress model each slot's deployment last computed with (docs/contract.md §2b): a
-- deployment restarted with another model recomputes every student once.
CREATE TABLE progress_sync.model (
    slot       text PRIMARY KEY,
    name       text NOT NULL,
    digest     text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);

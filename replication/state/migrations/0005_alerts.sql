-- The not_ready alerts posted for a slot's spell of not being ready that has not ended: a
-- restart in the middle of the spell posts its recovery, and does not post it again.
CREATE TABLE progress_sync.open_alerts (
    slot      text NOT NULL,
    reason    text NOT NULL,
    since     timestamptz NOT NULL,
    posted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, reason)
);

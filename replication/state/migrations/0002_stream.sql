-- The streaming service's durable buffer and checkpoint.

-- Where the stream has durably got to, per replication slot: every change before `lsn` is
-- either written to HubSpot or recorded in `pending`.
CREATE TABLE progress_sync.checkpoint (
    slot          text PRIMARY KEY,
    lsn           pg_lsn NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    last_flush_at timestamptz
);

-- Students changed since their last push (the keyed buffer). `version` grows with every
-- change, so a push removes a student only if it did not change again meanwhile.
CREATE TABLE progress_sync.pending (
    student_id      uuid PRIMARY KEY,
    first_change_at timestamptz NOT NULL,
    last_change_at  timestamptz NOT NULL,
    version         bigint NOT NULL
);

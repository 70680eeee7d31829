-- The periodic reconcile (docs/contract.md §6): a walk over every linked contact that reads
-- HubSpot's values back and queues the students whose contact differs.

-- Where the walk has got to, per slot, so a restart resumes it. `after_student` is the last
-- student of the last page done; NULL when no pass is under way.
CREATE TABLE progress_sync.reconcile (
    slot          text PRIMARY KEY,
    pass          bigint NOT NULL,          -- the pass under way, or the last one completed
    after_student uuid,
    started_at    timestamptz,
    completed_at  timestamptz NOT NULL,     -- the last complete pass, or when reconciling began
    contacts_read integer NOT NULL DEFAULT 0,
    students_different integer NOT NULL DEFAULT 0,
    differed      jsonb NOT NULL DEFAULT '{}'  -- property -> contacts found different this pass
);

-- Each property found changed behind the sync's back, per contact, with the run of consecutive
-- passes it was found in: a property that comes back pass after pass names a workflow or an
-- integration that fights the sync.
CREATE TABLE progress_sync.drift (
    slot       text NOT NULL,
    contact_id text NOT NULL,
    property   text NOT NULL,
    first_pass bigint NOT NULL,
    last_pass  bigint NOT NULL,
    PRIMARY KEY (slot, contact_id, property)
);

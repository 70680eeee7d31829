-- progress-sync's own state (CONTRACT §7). Never add these tables to the publication.

-- The email -> contact id cache, kept per student: a link is valid while the student's
-- normalized email still equals `email`.
CREATE TABLE progress_sync.contact_links (
    student_id  uuid PRIMARY KEY,
    email       text NOT NULL,
    contact_id  text NOT NULL,
    is_primary  boolean NOT NULL,       -- email is the contact's primary address (not hs_additional_emails)
    resolved_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contact_links_contact_id ON progress_sync.contact_links (contact_id);

-- The last values known to be on each contact: what we pushed, or what HubSpot held when we
-- first resolved the contact. Only properties the sync owns are kept.
CREATE TABLE progress_sync.pushed_values (
    contact_id  text PRIMARY KEY,
    student_id  uuid NOT NULL,
    properties  jsonb NOT NULL,
    pushed_at   timestamptz NOT NULL DEFAULT now()
);

-- Students that could not be written: no contact, invalid email, a value HubSpot rejected,
-- or a contact claimed by another student.
CREATE TABLE progress_sync.problems (
    student_id    uuid PRIMARY KEY,
    email         text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('unmatched', 'rejected', 'conflict')),
    reason        text NOT NULL,
    contact_id    text,
    properties    jsonb,               -- the values that were refused (rejected only)
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_tried_at timestamptz NOT NULL DEFAULT now(),
    attempts      integer NOT NULL DEFAULT 1
);
CREATE INDEX problems_kind ON progress_sync.problems (kind, last_tried_at);

-- Workers reconnect (issue 14): a broken stream no longer loses a worker. Its lease does.
--
-- Additive only, so that later migrations (the `servers` table, leader leases) can follow and a
-- binary of this version keeps working against them.

-- The server process whose stream holds the worker (NULL: detached, reconnecting). Servers get
-- their own table later; until then this is the id a process picks at start.
ALTER TABLE workers ADD COLUMN server_id uuid;
-- Incremented by every session that attaches; statements a session makes about its worker carry
-- it, so a session that was replaced by a newer one changes nothing.
ALTER TABLE workers ADD COLUMN session_epoch bigint NOT NULL DEFAULT 0;
-- Until when the worker may be away before it is lost and its job re-queued: renewed while its
-- session hears from it, longer than the worker's own reconnect grace.
ALTER TABLE workers ADD COLUMN lease_expires_at timestamptz;
-- Why its last stream ended, for the reason recorded if it never comes back.
ALTER TABLE workers ADD COLUMN last_disconnect text;

CREATE INDEX workers_lease_idx ON workers (instance, lease_expires_at)
    WHERE state IN ('idle', 'busy');

-- Workers alive when this migration runs belong to a server that predates leases and does not
-- let them resume: expired at once, so the next server loses them as start-up recovery did.
UPDATE workers SET lease_expires_at = now()
    WHERE state IN ('idle', 'busy') AND lease_expires_at IS NULL;

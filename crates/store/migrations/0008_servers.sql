-- Several servers per instance (issue 14): each process holds a lease row while it lives.
--
-- A worker's `server_id` (0007) now names a row here: the server provisioning it, or the one
-- whose stream holds it. A server whose lease passed is dead: the elected server re-queues the
-- jobs of the workers it was provisioning or destroying and deletes its row; its connected
-- workers re-connect to another server or are lost when their own leases pass.
CREATE TABLE servers (
    id               uuid        PRIMARY KEY,
    instance         text        NOT NULL,
    -- What its workers dial (HODEI_SERVER): told to every worker as a place to re-connect.
    worker_address   text        NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL,
    -- Shutting down: takes no new work and is not offered to workers as an address.
    draining         boolean     NOT NULL DEFAULT false
);

CREATE INDEX servers_instance_idx ON servers (instance, lease_expires_at);

-- Which server each provisioning or terminating worker belongs to, for the takeover.
CREATE INDEX workers_server_idx ON workers (server_id)
    WHERE state IN ('provisioning', 'terminating');

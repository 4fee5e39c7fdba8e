-- Hodei Jobs schema, version 1.
-- Ids are UUIDv7, so ordering by id is ordering by creation time.

CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    command          text        NOT NULL CHECK (command <> ''),
    env              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    timeout_seconds  bigint      NOT NULL CHECK (timeout_seconds > 0),
    cpu_millis       bigint      NOT NULL DEFAULT 0 CHECK (cpu_millis >= 0),
    memory_bytes     bigint      NOT NULL DEFAULT 0 CHECK (memory_bytes >= 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts > 0),
    state            text        NOT NULL CHECK (state IN
                         ('queued', 'assigned', 'running', 'succeeded', 'failed', 'cancelled', 'timed_out')),
    -- Attempts started so far; each claim adds one.
    attempts         integer     NOT NULL DEFAULT 0,
    worker_id        uuid,
    exit_code        integer,
    reason           text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- A job bound to a worker has one; a queued or finished job may keep the last one.
    CHECK (state NOT IN ('assigned', 'running') OR worker_id IS NOT NULL),
    CHECK ((state IN ('succeeded', 'failed', 'cancelled', 'timed_out')) = (finished_at IS NOT NULL))
);

-- The queue: claims scan only queued jobs, oldest first.
CREATE INDEX jobs_queued_idx ON jobs (id) WHERE state = 'queued';
-- Jobs held by workers, for recovery and the reaper.
CREATE INDEX jobs_active_worker_idx ON jobs (worker_id) WHERE state IN ('assigned', 'running');
CREATE INDEX jobs_state_idx ON jobs (state, id);

CREATE TABLE job_attempts (
    job_id       uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL CHECK (attempt > 0),
    worker_id    uuid        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text        NOT NULL DEFAULT 'running',
    reason       text        NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE workers (
    id                 uuid PRIMARY KEY,
    -- The server deployment that owns it (label hodei.io/instance).
    instance           text        NOT NULL,
    provider           text        NOT NULL,
    state              text        NOT NULL CHECK (state IN
                           ('provisioning', 'idle', 'busy', 'terminating', 'terminated', 'failed', 'lost')),
    resource           text,
    current_job_id     uuid,
    jobs_run           integer     NOT NULL DEFAULT 0,
    reason             text        NOT NULL DEFAULT '',
    -- SHA-256 of the session credential issued by Register.
    session_hash       bytea UNIQUE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    registered_at      timestamptz,
    last_heartbeat_at  timestamptz,
    finished_at        timestamptz
);

CREATE INDEX workers_alive_idx ON workers (instance, id)
    WHERE state IN ('provisioning', 'idle', 'busy', 'terminating');

-- One-time registration tokens, stored only as SHA-256 hashes.
CREATE TABLE worker_tokens (
    token_hash   bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    worker_id    uuid        NOT NULL REFERENCES workers (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    consumed_at  timestamptz
);

CREATE INDEX worker_tokens_worker_idx ON worker_tokens (worker_id);

-- Output lines. The sequence is per job, 1, 2, 3, ... across attempts.
CREATE TABLE job_logs (
    job_id      uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    sequence    bigint      NOT NULL CHECK (sequence > 0),
    stream      smallint    NOT NULL CHECK (stream IN (1, 2)),
    data        bytea       NOT NULL,
    emitted_at  timestamptz NOT NULL,
    PRIMARY KEY (job_id, sequence)
);

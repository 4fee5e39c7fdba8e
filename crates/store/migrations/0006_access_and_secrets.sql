-- API tokens: who may call the job API. Stored only as SHA-256 hashes, like worker tokens.
CREATE TABLE api_tokens (
    id          uuid PRIMARY KEY,
    -- The principal the token acts as; jobs record it as their owner. Several tokens may share
    -- a name (a replacement before the old one is revoked).
    name        text        NOT NULL CHECK (name <> ''),
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Who created it: a principal's name, or the server-side bootstrap command.
    created_by  text        NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz
);

-- The principal that queued a job (NULL: queued while authentication was off).
ALTER TABLE jobs ADD COLUMN owner text;
CREATE INDEX jobs_owner_idx ON jobs (owner, id);

-- A job's secrets: their names are part of the job (shown), their values live apart, are read
-- only to hand the job to a worker, and are deleted once the job has ended.
ALTER TABLE jobs ADD COLUMN secret_names text[] NOT NULL DEFAULT '{}';
CREATE TABLE job_secrets (
    job_id  uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    name    text NOT NULL,
    value   text NOT NULL,
    PRIMARY KEY (job_id, name)
);

-- A re-queued job waits before its next attempt (exponential backoff), so a failure that lasts
-- a while — an image still being pushed, a node filling up — does not use up every attempt
-- within milliseconds. NULL: claimable at once (every job queued by a client).
ALTER TABLE jobs ADD COLUMN retry_at timestamptz;

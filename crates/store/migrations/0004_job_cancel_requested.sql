-- A cancel of a job that a worker is running is recorded here before the worker is told. If
-- the attempt then ends without the worker's confirmation (the worker dies, the server shuts
-- down or restarts), the job ends `cancelled` instead of being re-queued.
ALTER TABLE jobs ADD COLUMN cancel_requested text;

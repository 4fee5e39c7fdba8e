//! The job queue and each job's state transitions.

use std::{collections::HashMap, time::Duration};

use hodei_domain::{Job, JobAttempt, JobId, JobSecrets, JobSpec, JobState, WorkerId};
use uuid::Uuid;

use crate::{
    Store, StoreError, Transitions,
    rows::{AttemptRow, JobRow, job_columns},
};

/// The claim of the oldest queued job for `$1`: locked so concurrent claimers skip it, moved
/// to `assigned` with one more attempt, which is recorded. A macro so `concat!` can extend it.
macro_rules! claim_ctes {
    () => {
        "WITH next AS (
            SELECT id FROM jobs WHERE state = 'queued' AND retry_at IS NULL
            ORDER BY id LIMIT 1
            FOR UPDATE SKIP LOCKED
         ), claimed AS (
            UPDATE jobs j SET state = 'assigned', worker_id = $1, attempts = j.attempts + 1,
                   exit_code = NULL
            FROM next WHERE j.id = next.id
            RETURNING j.*
         ), attempt AS (
            INSERT INTO job_attempts (job_id, attempt, worker_id)
            SELECT id, attempts, $1 FROM claimed
         )"
    };
}

/// How long a re-queued job waits before it can be claimed again: `first` after its first
/// attempt, doubling with each further attempt, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBackoff {
    pub first: Duration,
    pub max: Duration,
}

impl RetryBackoff {
    /// Claimable again at once.
    pub const NONE: Self = Self {
        first: Duration::ZERO,
        max: Duration::ZERO,
    };

    /// The wait after `attempts` attempts (the same formula the re-queue statement applies).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// What became of a job whose attempt failed for infrastructure reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequeueOutcome {
    /// Back in the queue, claimable again after `retry_in`; attempts remain.
    Requeued { retry_in: Duration },
    /// Out of attempts: now `Failed`.
    Failed,
    /// A cancel had been requested: now `Cancelled`, not re-queued.
    Cancelled,
    /// The job was no longer held by that worker (already finished or re-queued).
    NotHeld,
}

impl Store {
    pub async fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Job::try_from).transpose()
    }

    pub async fn job_attempts(&self, id: JobId) -> Result<Vec<JobAttempt>, StoreError> {
        let mut attempts = self.attempts_of_jobs(&[id]).await?;
        Ok(attempts.remove(&id).unwrap_or_default())
    }

    /// The attempts of each of `ids` (in attempt order), in one query; a job without attempts
    /// has no entry.
    pub async fn attempts_of_jobs(
        &self,
        ids: &[JobId],
    ) -> Result<HashMap<JobId, Vec<JobAttempt>>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        // An attempt in progress is stored as `running` from its claim on; until the command
        // has started (the job is still `assigned`) it reads `assigned`, so that an attempt
        // whose worker never came up does not claim to have run anything.
        let rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT a.job_id, a.attempt, a.worker_id, a.started_at, a.finished_at, \
                    CASE WHEN a.finished_at IS NULL AND j.state = 'assigned' \
                              AND a.attempt = j.attempts \
                         THEN 'assigned' ELSE a.outcome END AS outcome, \
                    a.reason \
             FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.job_id = ANY($1) ORDER BY a.job_id, a.attempt",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut attempts: HashMap<JobId, Vec<JobAttempt>> = HashMap::new();
        for row in rows {
            let job = JobId::from_uuid(row.job_id);
            attempts.entry(job).or_default().push(JobAttempt::from(row));
        }
        Ok(attempts)
    }

    /// Newest first. `before` continues a listing after the last id of the previous page.
    /// `owner`: only the jobs of that principal (and those queued while authentication was
    /// off); `None`: every job.
    pub async fn list_jobs(
        &self,
        states: &[JobState],
        limit: u32,
        before: Option<JobId>,
        owner: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE (cardinality($1::text[]) = 0 OR state = ANY($1)) \
              AND ($2::uuid IS NULL OR id < $2) \
              AND ($4::text IS NULL OR owner = $4 OR owner IS NULL) ORDER BY id DESC LIMIT $3"
        ))
        .bind(&states)
        .bind(before.map(|id| *id.as_uuid()))
        .bind(i64::from(limit))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    pub async fn count_jobs_by_state(&self) -> Result<HashMap<JobState, i64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(state, count)| {
                let state = state
                    .parse::<JobState>()
                    .map_err(|detail| StoreError::corrupt("jobs", detail))?;
                Ok((state, count))
            })
            .collect()
    }

    /// Whether a queued job can be claimed now (not waiting out a retry). Stops at the first
    /// row of the queue index, unlike a count.
    pub async fn has_claimable_job(&self) -> Result<bool, StoreError> {
        let (exists,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued' AND retry_at IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(exists)
    }

    pub async fn count_queued(&self) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE state = 'queued'")
            .fetch_one(&self.pool)
            .await?;
        Ok(count)
    }

    /// Jobs bound to workers of `instance` that are still alive in the database.
    pub async fn jobs_held_by_instance(
        &self,
        instance: &str,
    ) -> Result<Vec<(JobId, WorkerId)>, StoreError> {
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT j.id, j.worker_id FROM jobs j JOIN workers w ON w.id = j.worker_id \
             WHERE j.state IN ('assigned', 'running') AND w.instance = $1",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(job, worker)| (JobId::from_uuid(job), WorkerId::from_uuid(worker)))
            .collect())
    }

    /// The job `worker` currently holds, if any.
    pub async fn job_held_by(&self, worker: WorkerId) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE worker_id = $1 AND state IN ('assigned', 'running')"
        ))
        .bind(worker.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Job::try_from).transpose()
    }
}

impl Transitions {
    /// Stores a new `Queued` job.
    /// Stores a new `Queued` job with its secrets (values apart from the job) in one statement.
    /// `owner`: the principal queueing it (`None` when authentication is off).
    pub async fn insert_job(
        &self,
        spec: &JobSpec,
        secrets: &JobSecrets,
        owner: Option<&str>,
    ) -> Result<Job, StoreError> {
        let id = JobId::new();
        let (names, values): (Vec<&str>, Vec<&str>) = secrets
            .expose()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .unzip();
        let row: JobRow = sqlx::query_as(concat!(
            "WITH job AS (
                INSERT INTO jobs (id, command, env, timeout_seconds, cpu_millis, memory_bytes,
                                  max_attempts, state, owner, secret_names)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9) RETURNING *
             ), secrets AS (
                INSERT INTO job_secrets (job_id, name, value)
                SELECT $1, name, value FROM unnest($9::text[], $10::text[]) AS s(name, value)
             )
             SELECT ",
            job_columns!(),
            " FROM job"
        ))
        .bind(id.as_uuid())
        .bind(&spec.command)
        .bind(sqlx::types::Json(&spec.env))
        .bind(i64::try_from(spec.timeout.as_secs()).unwrap_or(i64::MAX))
        .bind(i64::from(spec.resources.cpu_millis))
        .bind(i64::try_from(spec.resources.memory_bytes).unwrap_or(i64::MAX))
        .bind(i32::try_from(spec.max_attempts).unwrap_or(i32::MAX))
        .bind(owner)
        .bind(&names)
        .bind(&values)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// Binds the oldest queued job to the connected `worker` (`Queued → Assigned`), starting a
    /// new attempt, and records the worker as busy with it, in one statement. Concurrent
    /// claimers never get the same job (`FOR UPDATE SKIP LOCKED`).
    pub async fn claim_next_job(&self, worker: WorkerId) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            claim_ctes!(),
            ", busy AS (
                UPDATE workers w SET state = 'busy', current_job_id = claimed.id
                FROM claimed WHERE w.id = $1 AND w.state IN ('idle', 'busy')
             )
             SELECT ",
            job_columns!(),
            " FROM claimed"
        ))
        .bind(worker.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Job::try_from).transpose()
    }

    /// `Assigned → Running` once the worker reports the command started.
    pub async fn mark_job_running(&self, job: JobId, worker: WorkerId) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, now()) \
             WHERE id = $1 AND worker_id = $2 AND state = 'assigned'",
        )
        .bind(job.as_uuid())
        .bind(worker.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves a job held by `worker` to a final state and closes its attempt; a worker recorded
    /// busy with the job is recorded idle, with one more job run, in the same statement.
    /// `None` when the job is not held by that worker any more (the race was lost).
    pub async fn finish_job(
        &self,
        job: JobId,
        worker: WorkerId,
        state: JobState,
        exit_code: Option<i32>,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        debug_assert!(state.is_terminal());
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "WITH finished AS (
                UPDATE jobs SET state = $3, exit_code = $4, reason = $5, finished_at = now()
                WHERE id = $1 AND worker_id = $2 AND state IN ('assigned', 'running')
                RETURNING *
             ), attempt AS (
                UPDATE job_attempts a SET finished_at = now(), outcome = $3, reason = $5
                FROM finished WHERE a.job_id = finished.id AND a.attempt = finished.attempts
             ), idle AS (
                UPDATE workers w SET state = 'idle', current_job_id = NULL,
                       jobs_run = w.jobs_run + 1
                FROM finished WHERE w.id = finished.worker_id AND w.state = 'busy'
                  AND w.current_job_id = finished.id
             ), forget AS (
                DELETE FROM job_secrets s USING finished WHERE s.job_id = finished.id
             )
             SELECT ",
            job_columns!(),
            " FROM finished"
        ))
        .bind(job.as_uuid())
        .bind(worker.as_uuid())
        .bind(state.as_str())
        .bind(exit_code)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Job::try_from).transpose()
    }

    /// The attempt on `worker` failed for infrastructure reasons: re-queue the job if attempts
    /// remain (claimable again after `backoff`), otherwise fail it, recording `reason` either
    /// way.
    pub async fn requeue_or_fail(
        &self,
        job: JobId,
        worker: WorkerId,
        reason: &str,
        backoff: RetryBackoff,
    ) -> Result<RequeueOutcome, StoreError> {
        let updated: Option<(String, i32)> = sqlx::query_as(
            "WITH updated AS (
                UPDATE jobs SET
                    state = CASE WHEN cancel_requested IS NOT NULL THEN 'cancelled'
                                 WHEN attempts < max_attempts THEN 'queued' ELSE 'failed' END,
                    retry_at = CASE WHEN cancel_requested IS NULL AND attempts < max_attempts
                                         AND $4 > 0
                                    THEN now() + make_interval(secs => least(
                                        $4 * power(2, least(attempts - 1, 30)), $5))
                                    ELSE NULL END,
                    reason = CASE WHEN cancel_requested IS NOT NULL
                                  THEN cancel_requested
                                       || ' (the attempt ended before confirming: ' || $3 || ')'
                                  WHEN attempts < max_attempts
                                  THEN 'attempt ' || attempts || ' interrupted: ' || $3
                                  ELSE 'failed after ' || attempts || ' attempt(s): ' || $3 END,
                    finished_at = CASE WHEN cancel_requested IS NULL AND attempts < max_attempts
                                       THEN NULL ELSE now() END
                WHERE id = $1 AND worker_id = $2 AND state IN ('assigned', 'running')
                RETURNING id, attempts, state
             ), attempt AS (
                UPDATE job_attempts a SET finished_at = now(),
                       outcome = CASE WHEN updated.state = 'queued' THEN 'requeued'
                                      ELSE updated.state END,
                       reason = $3
                FROM updated WHERE a.job_id = updated.id AND a.attempt = updated.attempts
             ), forget AS (
                DELETE FROM job_secrets s USING updated
                WHERE s.job_id = updated.id AND updated.state <> 'queued'
             )
             SELECT state, attempts FROM updated",
        )
        .bind(job.as_uuid())
        .bind(worker.as_uuid())
        .bind(reason)
        .bind(backoff.first.as_secs_f64())
        .bind(backoff.max.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(match updated {
            Some((state, attempts)) if state == "queued" => RequeueOutcome::Requeued {
                retry_in: backoff.delay_after(u32::try_from(attempts).unwrap_or(u32::MAX)),
            },
            Some((state, _)) if state == "cancelled" => RequeueOutcome::Cancelled,
            Some(_) => RequeueOutcome::Failed,
            None => RequeueOutcome::NotHeld,
        })
    }

    /// Makes the re-queued jobs whose retry wait is over claimable again. Returns how many.
    pub async fn release_due_retries(&self) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET retry_at = NULL \
             WHERE retry_at IS NOT NULL AND retry_at <= now() AND state = 'queued'",
        )
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Undoes a claim whose job never reached `worker` (the worker went away between the claim
    /// and the hand-over): the job is queued again as it was, without spending an attempt, and
    /// the attempt record is removed. `false` if the job is not assigned to `worker` any more.
    pub async fn release_unsent_job(
        &self,
        job: JobId,
        worker: WorkerId,
    ) -> Result<bool, StoreError> {
        let released: Option<(i32,)> = sqlx::query_as(
            "WITH released AS (
                UPDATE jobs j SET state = 'queued', attempts = j.attempts - 1,
                       worker_id = (SELECT a.worker_id FROM job_attempts a
                                    WHERE a.job_id = j.id AND a.attempt = j.attempts - 1)
                WHERE j.id = $1 AND j.worker_id = $2 AND j.state = 'assigned'
                RETURNING j.id, j.attempts
             ), attempt AS (
                DELETE FROM job_attempts a USING released
                WHERE a.job_id = released.id AND a.attempt = released.attempts + 1
             )
             SELECT attempts FROM released",
        )
        .bind(job.as_uuid())
        .bind(worker.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        Ok(released.is_some())
    }

    /// Records that the user asked to cancel `job` while a worker holds it, so that the job
    /// ends `cancelled` even if the worker never confirms. `false` if the job is not held by a
    /// worker (any more).
    pub async fn request_cancel(&self, job: JobId, reason: &str) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE jobs SET cancel_requested = COALESCE(cancel_requested, $2) \
             WHERE id = $1 AND state IN ('assigned', 'running')",
        )
        .bind(job.as_uuid())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// `Queued → Cancelled`. `None` if the job was not queued.
    pub async fn cancel_queued_job(
        &self,
        job: JobId,
        reason: &str,
    ) -> Result<Option<Job>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(concat!(
            "WITH cancelled AS (
                UPDATE jobs SET state = 'cancelled', reason = $2, finished_at = now(),
                       retry_at = NULL
                WHERE id = $1 AND state = 'queued' RETURNING *
             ), forget AS (
                DELETE FROM job_secrets s USING cancelled WHERE s.job_id = cancelled.id
             )
             SELECT ",
            job_columns!(),
            " FROM cancelled"
        ))
        .bind(job.as_uuid())
        .bind(reason)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Job::try_from).transpose()
    }
}

/// The claim statement, on any connection (so it can run inside a caller's transaction).
pub(crate) async fn claim_next_job_in(
    conn: &mut sqlx::PgConnection,
    worker: WorkerId,
) -> Result<Option<Job>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(concat!(
        claim_ctes!(),
        " SELECT ",
        job_columns!(),
        " FROM claimed"
    ))
    .bind(worker.as_uuid())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(Job::try_from).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_backoff_doubles_per_attempt_up_to_its_maximum() {
        let backoff = RetryBackoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=8).map(|a| backoff.delay_after(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff.delay_after(u32::MAX), Duration::from_secs(60));
        assert_eq!(RetryBackoff::NONE.delay_after(5), Duration::ZERO);
    }
}

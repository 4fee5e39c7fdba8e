//! Workers as the server tracks them.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use hodei_domain::{
    JobId, SecretHash, WORKER_TRANSITIONS, Worker, WorkerId, WorkerState, WorkerStep,
};
use uuid::Uuid;

use crate::{
    Store, StoreError, Transitions,
    rows::{WorkerRow, worker_columns},
};

/// A session attached to its worker: what the database says of the worker then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// This session's epoch: statements it makes about the worker carry it.
    pub epoch: i64,
    /// Jobs the worker has run (for `max_jobs_per_worker` after a reconnect).
    pub jobs_run: u32,
}

/// A worker whose lease has passed: nobody heard from it for longer than it may be away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredLease {
    pub worker: WorkerId,
    pub epoch: i64,
    /// Why its last stream ended, if one did.
    pub last_disconnect: Option<String>,
}

pub(crate) fn interval(ttl: std::time::Duration) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX),
    }
}

impl Store {
    /// Renews the lease of `worker` while the session of `epoch` hears from it (a heartbeat).
    /// `false` when that session no longer holds the worker.
    pub async fn renew_worker_lease(
        &self,
        worker: WorkerId,
        epoch: i64,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE workers SET last_heartbeat_at = now(), lease_expires_at = now() + $3 \
             WHERE id = $1 AND session_epoch = $2 AND state IN ('idle', 'busy')",
        )
        .bind(worker.as_uuid())
        .bind(epoch)
        .bind(interval(ttl))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Workers of `instance` whose lease has passed (registration starts it; a row without one
    /// predates leases and is expired too).
    pub async fn expired_worker_leases(
        &self,
        instance: &str,
    ) -> Result<Vec<ExpiredLease>, StoreError> {
        let rows: Vec<(Uuid, i64, Option<String>)> = sqlx::query_as(
            "SELECT id, session_epoch, last_disconnect FROM workers \
             WHERE instance = $1 AND state IN ('idle', 'busy') \
               AND COALESCE(lease_expires_at, '-infinity') < now() ORDER BY id",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, epoch, last_disconnect)| ExpiredLease {
                worker: WorkerId::from_uuid(id),
                epoch,
                last_disconnect,
            })
            .collect())
    }

    /// The reason of a cancel requested for `job` while it runs, if any (a session that takes
    /// the job over after a reconnect must pass it on).
    pub async fn cancel_request_of(&self, job: JobId) -> Result<Option<String>, StoreError> {
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT cancel_requested FROM jobs WHERE id = $1")
                .bind(job.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.and_then(|(reason,)| reason))
    }

    pub async fn set_worker_resource(
        &self,
        id: WorkerId,
        resource: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET resource = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(resource)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn record_heartbeat(&self, id: WorkerId) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET last_heartbeat_at = now() WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_worker(&self, id: WorkerId) -> Result<Option<Worker>, StoreError> {
        let row: Option<WorkerRow> = sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Worker::try_from).transpose()
    }

    /// Newest first.
    /// Newest first. `before` continues a listing after the last id of the previous page.
    pub async fn list_workers(
        &self,
        include_finished: bool,
        limit: u32,
        before: Option<WorkerId>,
    ) -> Result<Vec<Worker>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE ($1 OR state IN ('provisioning', 'idle', 'busy', 'terminating')) \
              AND ($3::uuid IS NULL OR id < $3) ORDER BY id DESC LIMIT $2"
        ))
        .bind(include_finished)
        .bind(i64::from(limit))
        .bind(before.map(|id| *id.as_uuid()))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Worker::try_from).collect()
    }

    /// Workers of `instance` that are alive according to the database.
    pub async fn alive_workers(&self, instance: &str) -> Result<Vec<Worker>, StoreError> {
        let rows: Vec<WorkerRow> = sqlx::query_as(concat!(
            "SELECT ",
            worker_columns!(),
            " FROM workers WHERE instance = $1 \
              AND state IN ('provisioning', 'idle', 'busy', 'terminating') ORDER BY id"
        ))
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Worker::try_from).collect()
    }

    /// Ids among `ids` that the database knows as alive workers.
    pub async fn alive_worker_ids(
        &self,
        ids: &[WorkerId],
    ) -> Result<HashSet<WorkerId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM workers WHERE id = ANY($1) \
             AND state IN ('provisioning', 'idle', 'busy', 'terminating')",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id,)| WorkerId::from_uuid(id))
            .collect())
    }

    pub async fn count_workers_by_state(
        &self,
        instance: &str,
    ) -> Result<HashMap<WorkerState, i64>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT state, count(*) FROM workers WHERE instance = $1 GROUP BY state",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(state, count)| {
                let state = state
                    .parse::<WorkerState>()
                    .map_err(|detail| StoreError::corrupt("workers", detail))?;
                Ok((state, count))
            })
            .collect()
    }
}

/// A worker to record as `provisioning`, with its one-time token (hash only).
#[derive(Debug, Clone, Copy)]
pub struct NewWorkerRow<'a> {
    pub id: WorkerId,
    pub instance: &'a str,
    pub provider: &'a str,
    /// The server provisioning it (`None`: recorded outside any server, as tests do).
    pub server: Option<Uuid>,
    pub token: SecretHash,
    pub token_expires_at: DateTime<Utc>,
}

/// The worker row and its token, on the caller's transaction.
pub(crate) async fn insert_worker_in(
    conn: &mut sqlx::PgConnection,
    new: &NewWorkerRow<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO workers (id, instance, provider, state, server_id) \
         VALUES ($1, $2, $3, 'provisioning', $4)",
    )
    .bind(new.id.as_uuid())
    .bind(new.instance)
    .bind(new.provider)
    .bind(new.server)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO worker_tokens (token_hash, worker_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(new.token.as_bytes().as_slice())
    .bind(new.id.as_uuid())
    .bind(new.token_expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Transitions {
    /// Records a `Provisioning` worker and its one-time token (hash only) in one transaction,
    /// without a job (tools and tests; servers record theirs with their claims).
    pub async fn insert_worker(&self, new: &NewWorkerRow<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_worker_in(&mut tx, new).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `Idle → Busy` with `job`.
    pub async fn mark_worker_busy(&self, id: WorkerId, job: JobId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workers SET state = 'busy', current_job_id = $2 \
             WHERE id = $1 AND state IN ('idle', 'busy')",
        )
        .bind(id.as_uuid())
        .bind(job.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `Busy → Idle` after a job, counting it.
    pub async fn mark_worker_idle(&self, id: WorkerId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE workers SET state = 'idle', current_job_id = NULL, jobs_run = jobs_run + 1 \
             WHERE id = $1 AND state = 'busy'",
        )
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A session of server `server` attaches to `worker` (alive, `idle` or `busy`): the epoch
    /// moves on, so statements of any earlier session of the worker are fenced off, and the
    /// lease starts. Accepted whoever held it before: a worker opens a stream only after its
    /// previous one broke. `None` when the worker is no longer alive.
    pub async fn attach_session(
        &self,
        worker: WorkerId,
        server: uuid::Uuid,
        lease_ttl: std::time::Duration,
    ) -> Result<Option<Attached>, StoreError> {
        let row: Option<(i64, i32)> = sqlx::query_as(
            "UPDATE workers SET server_id = $2, session_epoch = session_epoch + 1, \
                 lease_expires_at = now() + $3, last_heartbeat_at = now(), last_disconnect = NULL \
             WHERE id = $1 AND state IN ('idle', 'busy') \
             RETURNING session_epoch, jobs_run",
        )
        .bind(worker.as_uuid())
        .bind(server)
        .bind(interval(lease_ttl))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(epoch, jobs_run)| Attached {
            epoch,
            jobs_run: u32::try_from(jobs_run).unwrap_or(0),
        }))
    }

    /// The session of `epoch` let its worker go without losing it (its stream broke): nobody
    /// holds it until it re-attaches; its lease runs on, not renewed. `false` when a newer
    /// session holds it.
    pub async fn detach_session(
        &self,
        worker: WorkerId,
        epoch: i64,
        why: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE workers SET server_id = NULL, last_disconnect = $3 \
             WHERE id = $1 AND session_epoch = $2 AND state IN ('idle', 'busy')",
        )
        .bind(worker.as_uuid())
        .bind(epoch)
        .bind(why)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// `Idle`/`Busy → Lost` for a worker nobody holds any more, fenced by the epoch its loser
    /// saw (and, with `only_if_expired`, by its lease having passed): a worker that re-attached
    /// meanwhile is left alone. Its credential is cleared, so it can never attach again.
    /// `false` when nothing changed.
    pub async fn lose_worker_at_epoch(
        &self,
        worker: WorkerId,
        epoch: i64,
        reason: &str,
        only_if_expired: bool,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE workers SET state = 'lost', server_id = NULL, current_job_id = NULL, \
                 session_hash = NULL, finished_at = now(), \
                 reason = CASE WHEN reason = '' THEN $3 ELSE reason END \
             WHERE id = $1 AND session_epoch = $2 AND state IN ('idle', 'busy') \
               AND (NOT $4 OR COALESCE(lease_expires_at, '-infinity') < now())",
        )
        .bind(worker.as_uuid())
        .bind(epoch)
        .bind(reason)
        .bind(only_if_expired)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Moves a worker to `state` (`terminating`, or one of the final states) from the states
    /// `hodei_domain::WORKER_TRANSITIONS` allow for it, keeping the first reason given. Final
    /// states are never left. `false` when the worker was in no such state.
    pub async fn set_worker_state(
        &self,
        id: WorkerId,
        state: WorkerState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let from: Vec<&str> = [
            WorkerStep::Retire,
            WorkerStep::End,
            WorkerStep::Fail,
            WorkerStep::Lose,
        ]
        .into_iter()
        .flat_map(|step| {
            WORKER_TRANSITIONS
                .iter()
                .filter(move |t| t.step == step && t.to == state)
        })
        .map(|t| t.from.as_str())
        .collect();
        let result = sqlx::query(
            "UPDATE workers SET state = $2, \
                 reason = CASE WHEN reason = '' THEN $3 ELSE reason END, \
                 current_job_id = CASE WHEN $4 THEN NULL ELSE current_job_id END, \
                 finished_at = CASE WHEN $4 THEN now() ELSE finished_at END, \
                 session_hash = CASE WHEN $4 THEN NULL ELSE session_hash END \
             WHERE id = $1 AND state = ANY($5)",
        )
        .bind(id.as_uuid())
        .bind(state.as_str())
        .bind(reason)
        .bind(!state.is_alive())
        .bind(&from)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}

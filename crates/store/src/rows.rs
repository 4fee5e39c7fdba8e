//! Rows as PostgreSQL returns them, and their conversion into domain types.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use hodei_domain::{
    Job, JobAttempt, JobId, JobSpec, JobState, Resources, Worker, WorkerId, WorkerState,
};
use uuid::Uuid;

use crate::StoreError;

/// Columns selected for a job, in one place so every query returns the same shape.
/// A macro, not a `const`, so that `concat!` can build `&'static str` queries from it.
macro_rules! job_columns {
    () => {
        "id, command, env, timeout_seconds, cpu_millis, memory_bytes, max_attempts, state, \
         attempts, worker_id, exit_code, reason, created_at, started_at, finished_at, owner, secret_names, \
         (cancel_requested IS NOT NULL) AS cancel_requested"
    };
}
pub(crate) use job_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: Uuid,
    command: String,
    env: sqlx::types::Json<BTreeMap<String, String>>,
    timeout_seconds: i64,
    cpu_millis: i64,
    memory_bytes: i64,
    max_attempts: i32,
    state: String,
    attempts: i32,
    worker_id: Option<Uuid>,
    exit_code: Option<i32>,
    reason: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    owner: Option<String>,
    secret_names: Vec<String>,
    cancel_requested: bool,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, Self::Error> {
        let corrupt =
            |detail: String| StoreError::corrupt("jobs", format!("job {}: {detail}", row.id));
        let state = row.state.parse::<JobState>().map_err(corrupt)?;
        Ok(Job {
            id: JobId::from_uuid(row.id),
            spec: JobSpec {
                command: row.command,
                env: row.env.0,
                timeout: Duration::from_secs(u64::try_from(row.timeout_seconds).unwrap_or(0)),
                resources: Resources {
                    cpu_millis: u32::try_from(row.cpu_millis).unwrap_or(u32::MAX),
                    memory_bytes: u64::try_from(row.memory_bytes).unwrap_or(0),
                },
                max_attempts: u32::try_from(row.max_attempts).unwrap_or(1),
            },
            state,
            exit_code: row.exit_code,
            reason: row.reason,
            attempts: u32::try_from(row.attempts).unwrap_or(0),
            worker_id: row.worker_id.map(WorkerId::from_uuid),
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            owner: row.owner,
            secret_names: row.secret_names,
            cancel_requested: row.cancel_requested,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AttemptRow {
    pub(crate) job_id: Uuid,
    attempt: i32,
    worker_id: Uuid,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    reason: String,
}

impl From<AttemptRow> for JobAttempt {
    fn from(row: AttemptRow) -> Self {
        JobAttempt {
            attempt: u32::try_from(row.attempt).unwrap_or(0),
            worker_id: WorkerId::from_uuid(row.worker_id),
            started_at: row.started_at,
            finished_at: row.finished_at,
            outcome: row.outcome,
            reason: row.reason,
        }
    }
}

macro_rules! worker_columns {
    () => {
        "id, provider, state, resource, current_job_id, jobs_run, reason, created_at, \
         registered_at, last_heartbeat_at"
    };
}
pub(crate) use worker_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct WorkerRow {
    id: Uuid,
    provider: String,
    state: String,
    resource: Option<String>,
    current_job_id: Option<Uuid>,
    jobs_run: i32,
    reason: String,
    created_at: DateTime<Utc>,
    registered_at: Option<DateTime<Utc>>,
    last_heartbeat_at: Option<DateTime<Utc>>,
}

impl TryFrom<WorkerRow> for Worker {
    type Error = StoreError;

    fn try_from(row: WorkerRow) -> Result<Self, Self::Error> {
        let state = row.state.parse::<WorkerState>().map_err(|detail| {
            StoreError::corrupt("workers", format!("worker {}: {detail}", row.id))
        })?;
        Ok(Worker {
            id: WorkerId::from_uuid(row.id),
            provider: row.provider,
            state,
            resource: row.resource,
            current_job_id: row.current_job_id.map(JobId::from_uuid),
            jobs_run: u32::try_from(row.jobs_run).unwrap_or(0),
            reason: row.reason,
            created_at: row.created_at,
            registered_at: row.registered_at,
            last_heartbeat_at: row.last_heartbeat_at,
        })
    }
}

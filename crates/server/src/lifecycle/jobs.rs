//! A job's transitions: queue, cancel, start, end, re-queue, give back.

use std::time::Duration;

use chrono::Utc;
use hodei_domain::{Job, JobId, JobSecrets, JobSpec, JobState, WorkerId, WorkerState};
use hodei_store::{RequeueOutcome, StoreError};

use super::Lifecycle;
use crate::{commands::SessionCommand, registry::Phase};

/// How long a cancel waits for a job being handed to an idle worker to reach it.
const RESERVED_HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("server is shutting down; queue the job again shortly")]
    Draining,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no job {0}")]
    NotFound(JobId),
    #[error("job {0} already ended ({1})")]
    AlreadyEnded(JobId, JobState),
    #[error("job {0} is {1} without a worker")]
    NoWorker(JobId, JobState),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Lifecycle {
    /// `→ Queued` with its secrets and its owner, and the dispatcher is woken. Refused while
    /// the server drains.
    pub async fn queue(
        &self,
        spec: &JobSpec,
        secrets: &JobSecrets,
        owner: Option<&str>,
    ) -> Result<Job, QueueError> {
        if self.core.is_draining() {
            return Err(QueueError::Draining);
        }
        let job = self.db.insert_job(spec, secrets, owner).await?;
        tracing::info!(job = %job.id, owner, "job queued");
        self.core.announce_work();
        Ok(job)
    }

    /// A user's cancel. A queued job ends `cancelled` at once. A job a connected worker holds
    /// is marked `cancel_requested` first — so however its attempt ends from then on, it never
    /// runs again — and its session is told to stop it. A job whose worker has not connected
    /// yet ends here, and that worker is retired.
    pub async fn cancel(&self, id: JobId, reason: &str) -> Result<(), CancelError> {
        let core = &self.core;
        if let Some(job) = self.db.cancel_queued_job(id, reason).await? {
            tracing::info!(job = %id, "queued job cancelled");
            self.ended(job.id, job.state);
            return Ok(());
        }
        let job = core
            .store
            .get_job(id)
            .await?
            .ok_or(CancelError::NotFound(id))?;
        if job.state.is_terminal() {
            return Err(CancelError::AlreadyEnded(id, job.state));
        }
        let Some(worker) = job.worker_id else {
            return Err(CancelError::NoWorker(id, job.state));
        };
        // An idle worker the dispatcher claimed this job for a moment ago is `Reserved` until
        // the job is handed over: wait for that, so the cancel goes through its session rather
        // than ending the job here while the dispatcher still sends it to the worker.
        let handover = tokio::time::Instant::now() + RESERVED_HANDOVER_WAIT;
        let phase = core
            .registry
            .wait_for_phase(worker, handover, |p| p != Phase::Reserved)
            .await;
        match phase {
            Some(Phase::Busy { job: held }) if held == id => {
                // Recorded first: however the attempt ends from here on — the worker confirms,
                // dies, or the server stops — the job is not run again.
                self.db.request_cancel(id, reason).await?;
                if let Some(commands) = core.registry.commands(worker) {
                    let _ = commands.send(SessionCommand::Cancel {
                        job: id,
                        reason: reason.to_string(),
                    });
                }
            }
            // Its worker re-connects (it holds the job, its stream broke): recorded, so the
            // session that takes the job over stops it, or its lease's expiry ends it cancelled.
            Some(Phase::Resuming) | None if job.state == JobState::Running => {
                self.db.request_cancel(id, reason).await?;
                if let Some(commands) = core.registry.commands(worker) {
                    let _ = commands.send(SessionCommand::Cancel {
                        job: id,
                        reason: reason.to_string(),
                    });
                }
            }
            // Its worker has not started yet (or is gone): end the job here and drop the worker.
            _ => {
                if let Some(job) = self
                    .db
                    .finish_job(id, worker, JobState::Cancelled, None, reason)
                    .await?
                {
                    self.ended(job.id, job.state);
                }
                if matches!(
                    phase,
                    Some(Phase::Provisioning { .. } | Phase::Registered { .. })
                ) && core.registry.retire_if_unconnected(worker)
                {
                    self.retire(
                        worker,
                        WorkerState::Terminated,
                        "its job was cancelled".into(),
                    );
                }
            }
        }
        tracing::info!(job = %id, %worker, "cancel requested");
        Ok(())
    }

    /// `Assigned → Running`: the worker reports that `job`'s command started.
    pub async fn job_started(&self, job: &Job, worker: WorkerId, pid: u32) {
        let running = self
            .core
            .retry_db("recording a job's start", || {
                self.db.mark_job_running(job.id, worker)
            })
            .await;
        match running {
            Ok(true) => {
                let waited = (Utc::now() - job.created_at).to_std().unwrap_or_default();
                self.core
                    .metrics
                    .dispatch_seconds
                    .observe(waited.as_secs_f64());
                tracing::info!(%worker, job = %job.id, pid, "job started");
            }
            Ok(false) => {
                tracing::warn!(%worker, job = %job.id, "job was no longer assigned when it started")
            }
            Err(e) => {
                tracing::error!(%worker, job = %job.id, error = %e, "cannot record job start")
            }
        }
    }

    /// `Assigned | Running →` a final state, recorded with the attempt; a worker recorded busy
    /// with the job is recorded idle in the same statement. Returns whether it was.
    pub async fn job_ended(
        &self,
        job: JobId,
        worker: WorkerId,
        state: JobState,
        exit_code: Option<i32>,
        reason: &str,
    ) -> bool {
        let finished = self
            .core
            .retry_db("recording a job's end", || {
                self.db.finish_job(job, worker, state, exit_code, reason)
            })
            .await;
        match finished {
            Ok(Some(job)) => {
                tracing::info!(%worker, job = %job.id, state = %job.state, ?exit_code, "job finished");
                self.ended(job.id, job.state);
                true
            }
            Ok(None) => {
                tracing::info!(%worker, %job, "job already ended elsewhere");
                false
            }
            Err(e) => {
                tracing::error!(%worker, %job, error = %e, "cannot record job end");
                false
            }
        }
    }

    /// The attempt of `job` on `worker` failed for infrastructure reasons: back to the queue
    /// after its retry wait, or `failed` when out of attempts, or `cancelled` if a cancel was
    /// requested meanwhile.
    pub async fn requeue(&self, job: JobId, worker: WorkerId, reason: &str) {
        let outcome = self
            .core
            .retry_db("re-queueing a job", || {
                self.db
                    .requeue_or_fail(job, worker, reason, self.core.settings.retry_backoff)
            })
            .await;
        match outcome {
            Ok(RequeueOutcome::Requeued { retry_in }) => {
                tracing::info!(%job, %worker, reason, ?retry_in, "job re-queued");
                self.core.wake_dispatcher_after(retry_in);
            }
            Ok(RequeueOutcome::Failed) => {
                tracing::warn!(%job, %worker, reason, "job failed: out of attempts");
                self.ended(job, JobState::Failed);
            }
            Ok(RequeueOutcome::Cancelled) => {
                tracing::info!(%job, %worker, reason, "job cancelled: its attempt ended before the worker confirmed the cancel");
                self.ended(job, JobState::Cancelled);
            }
            Ok(RequeueOutcome::NotHeld) => {}
            Err(e) => tracing::error!(%job, %worker, error = %e, "cannot re-queue job"),
        }
    }

    /// `job` was claimed for `worker` but never handed to it (the worker went away first): it
    /// goes back to the queue without spending an attempt.
    pub async fn give_back(&self, job: JobId, worker: WorkerId, why: &str) {
        let released = self
            .core
            .retry_db("releasing an unsent job", || {
                self.db.release_unsent_job(job, worker)
            })
            .await;
        match released {
            Ok(true) => {
                tracing::info!(%job, %worker, why, "job released before it was sent");
                self.core.announce_work();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%job, %worker, error = %e, "cannot release an unsent job; re-queueing it");
                self.requeue(job, worker, why).await;
            }
        }
    }

    /// Re-queued jobs whose retry wait is over become claimable. Returns how many.
    pub async fn release_due_retries(&self) -> Result<u64, StoreError> {
        self.db.release_due_retries().await
    }

    /// A job reached a final state: followers are told, metrics counted.
    fn ended(&self, job: JobId, state: JobState) {
        debug_assert!(state.is_terminal());
        self.core.metrics.job_finished(state);
        self.core.hub.finish(job);
        self.core.announcements.ended(job);
    }
}

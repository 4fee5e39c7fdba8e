//! State shared by the services and background tasks of one server.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hodei_domain::{Job, JobId, JobState, WorkerId, WorkerState};
use hodei_providers::WorkerProvider;
use hodei_store::{RequeueOutcome, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{Settings, log_hub::LogHub, metrics::Metrics, registry::Registry};

pub struct Core {
    pub settings: Settings,
    pub store: Store,
    pub provider: Arc<dyn WorkerProvider>,
    pub registry: Registry,
    pub hub: Arc<LogHub>,
    pub metrics: Arc<Metrics>,
    /// `HODEI_SERVER` for new workers.
    pub worker_address: String,
    /// Wakes the dispatcher: a job was queued, a worker became idle or went away.
    pub dispatch: Arc<Notify>,
    /// Set once a graceful shutdown begins: no new jobs are accepted or dispatched.
    draining: AtomicBool,
    /// A re-queued job's retry wait has ended: the dispatcher makes such jobs claimable.
    pub retries_due: Arc<AtomicBool>,
    /// Cancelled to stop every task at once without cleanup (a simulated crash), or at the very
    /// end of a graceful shutdown.
    pub kill: CancellationToken,
    /// Background work (provisioning, destroying) that a graceful shutdown waits for.
    pub tasks: TaskTracker,
}

impl Core {
    pub fn new(
        settings: Settings,
        store: Store,
        provider: Arc<dyn WorkerProvider>,
        worker_address: String,
    ) -> Self {
        Self {
            settings,
            store,
            provider,
            registry: Registry::default(),
            hub: Arc::new(LogHub::default()),
            metrics: Arc::new(Metrics::default()),
            worker_address,
            dispatch: Arc::new(Notify::new()),
            draining: AtomicBool::new(false),
            retries_due: Arc::new(AtomicBool::new(false)),
            kill: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn wake_dispatcher(&self) {
        self.dispatch.notify_one();
    }

    /// Wakes the dispatcher once `delay` has passed: a re-queued job becomes claimable then,
    /// and nothing else may happen meanwhile to wake it sooner than its safety tick.
    pub fn wake_dispatcher_after(&self, delay: Duration) {
        if delay.is_zero() {
            return self.wake_dispatcher();
        }
        let dispatch = self.dispatch.clone();
        let due = self.retries_due.clone();
        let kill = self.kill.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = kill.cancelled() => {}
                _ = tokio::time::sleep(delay) => {
                    due.store(true, Ordering::SeqCst);
                    dispatch.notify_one();
                }
            }
        });
    }

    /// Records a job reaching a final state: subscribers are told, metrics counted.
    pub fn job_finished(&self, job: &Job) {
        debug_assert!(job.state.is_terminal());
        self.metrics.job_finished(job.state);
        self.hub.finish(job.id);
    }

    /// Runs a database operation, waiting out an unreachable database (a restart, a fail-over)
    /// for up to `database_outage_grace`, so a short outage delays work instead of losing it.
    /// Any other error is returned at once. Operations must be safe to repeat: every state
    /// change is guarded by the state it expects, so a repeat after a lost reply changes nothing.
    pub async fn retry_db<T, F, Fut>(&self, what: &str, mut operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = tokio::time::Instant::now() + self.settings.database_outage_grace;
        let mut delay = Duration::from_millis(50);
        loop {
            match operation().await {
                Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(what, error = %e, "database unreachable; retrying in {delay:?}");
                    tokio::select! {
                        _ = self.kill.cancelled() => return Err(e),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                result => return result,
            }
        }
    }

    /// `job` was claimed for `worker` but never handed to it (the worker went away first): it
    /// goes back to the queue without spending an attempt.
    pub async fn release_unsent(&self, job: JobId, worker: WorkerId, why: &str) {
        let released = self
            .retry_db("releasing an unsent job", || {
                self.store.release_unsent_job(job, worker)
            })
            .await;
        match released {
            Ok(true) => {
                tracing::info!(%job, %worker, why, "job released before it was sent");
                self.wake_dispatcher();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%job, %worker, error = %e, "cannot release an unsent job; re-queueing it");
                self.requeue_or_fail(job, worker, why).await;
            }
        }
    }

    /// The attempt of `job` on `worker` failed for infrastructure reasons.
    pub async fn requeue_or_fail(&self, job: JobId, worker: WorkerId, reason: &str) {
        let outcome = self
            .retry_db("re-queueing a job", || {
                self.store
                    .requeue_or_fail(job, worker, reason, self.settings.retry_backoff)
            })
            .await;
        match outcome {
            Ok(RequeueOutcome::Requeued { retry_in }) => {
                tracing::info!(%job, %worker, reason, ?retry_in, "job re-queued");
                self.wake_dispatcher_after(retry_in);
            }
            Ok(RequeueOutcome::Failed) => {
                tracing::warn!(%job, %worker, reason, "job failed: out of attempts");
                self.metrics.job_finished(JobState::Failed);
                self.hub.finish(job);
            }
            Ok(RequeueOutcome::Cancelled) => {
                tracing::info!(%job, %worker, reason, "job cancelled: its attempt ended before the worker confirmed the cancel");
                self.metrics.job_finished(JobState::Cancelled);
                self.hub.finish(job);
            }
            Ok(RequeueOutcome::NotHeld) => {}
            Err(e) => tracing::error!(%job, %worker, error = %e, "cannot re-queue job"),
        }
    }

    /// Removes the worker's resources in the background, then records its end. The worker keeps
    /// counting against `max_workers` until its resource is really gone.
    pub fn retire_worker(self: &Arc<Self>, worker: WorkerId, state: WorkerState, reason: String) {
        debug_assert!(!state.is_alive());
        self.registry.mark_retiring(worker);
        let core = self.clone();
        self.tasks.spawn(async move {
            let _ = core
                .retry_db("recording a worker as terminating", || {
                    core.store
                        .set_worker_state(worker, WorkerState::Terminating, &reason)
                })
                .await;
            if let Err(e) = core.provider.destroy_worker(&worker).await {
                tracing::warn!(%worker, error = %e, "destroying worker failed; the orphan sweep will retry");
            }
            let recorded = core
                .retry_db("recording a worker's end", || {
                    core.store.set_worker_state(worker, state, &reason)
                })
                .await;
            if let Err(e) = recorded {
                tracing::error!(%worker, error = %e, "cannot record worker state");
            }
            core.registry.remove(worker);
            core.wake_dispatcher();
        });
    }
}

//! State shared by the services and background tasks of one server, and the plumbing they all
//! use (waking the dispatcher, waiting out a database outage, tracked tasks). No lifecycle
//! policy lives here: that is `lifecycle/`.

use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use hodei_providers::WorkerProvider;
use hodei_store::{Store, StoreError};
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Settings, log_hub::LogHub, metrics::Metrics, peers::Announcements, registry::Registry,
};

pub struct Core {
    pub settings: Settings,
    /// Reads, output and heartbeats. State changes go through the lifecycle's transitions.
    pub store: Store,
    pub provider: Arc<dyn WorkerProvider>,
    pub registry: Registry,
    pub hub: Arc<LogHub>,
    pub metrics: Arc<Metrics>,
    /// `HODEI_SERVER` for new workers.
    pub worker_address: String,
    /// This process (a restart is a new id): recorded as the holder of the workers whose
    /// streams it serves.
    pub server_id: uuid::Uuid,
    /// Wakes the dispatcher: a job was queued, a worker became idle or went away.
    dispatch: Notify,
    /// What the other servers of the instance are told (`peers`).
    pub announcements: Announcements,
    /// A re-queued job's retry wait has ended: the dispatcher makes such jobs claimable.
    retries_due: AtomicBool,
    /// Set once a graceful shutdown begins: no new jobs are accepted or dispatched.
    draining: AtomicBool,
    /// Cancelled to stop every task at once without cleanup (a simulated crash), or at the very
    /// end of a graceful shutdown.
    pub kill: CancellationToken,
    /// Cancelled when the server is going away (a child of `kill`): tasks that only wait —
    /// retry timers, log followers — end, so a shutdown does not wait for them.
    pub stop: CancellationToken,
    /// Every task the server spawns. A graceful shutdown waits for them.
    pub tasks: TaskTracker,
}

impl Core {
    pub fn new(
        settings: Settings,
        store: Store,
        provider: Arc<dyn WorkerProvider>,
        worker_address: String,
    ) -> Self {
        let kill = CancellationToken::new();
        Self {
            settings,
            store,
            provider,
            registry: Registry::default(),
            hub: Arc::new(LogHub::default()),
            metrics: Arc::new(Metrics::default()),
            worker_address,
            server_id: uuid::Uuid::now_v7(),
            dispatch: Notify::new(),
            announcements: Announcements::default(),
            retries_due: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            stop: kill.child_token(),
            kill,
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

    /// Work for any server of the instance: a job became claimable, or a worker's slot was
    /// freed. Wakes this server's dispatcher and, through the database, the others'.
    pub fn announce_work(&self) {
        self.wake_dispatcher();
        self.announcements.work();
    }

    /// Resolves when the dispatcher is woken.
    pub async fn dispatcher_woken(&self) {
        self.dispatch.notified().await;
    }

    /// Whether a retry wait ended since the last call.
    pub fn take_retries_due(&self) -> bool {
        self.retries_due.swap(false, Ordering::SeqCst)
    }

    /// Wakes the dispatcher once `delay` has passed: a re-queued job becomes claimable then,
    /// and nothing else may happen meanwhile to wake it sooner than its safety tick.
    pub fn wake_dispatcher_after(self: &Arc<Self>, delay: Duration) {
        if delay.is_zero() {
            return self.announce_work();
        }
        let core = self.clone();
        self.spawn("retry timer", async move {
            tokio::select! {
                _ = core.stop.cancelled() => {}
                _ = tokio::time::sleep(delay) => {
                    core.retries_due.store(true, Ordering::SeqCst);
                    core.wake_dispatcher();
                }
            }
        });
    }

    /// Spawns `task` on the tracker. A panic is logged here; tasks whose panic leaves state
    /// behind (sessions, provisioning) clean it up through the lifecycle's own spawners.
    pub fn spawn(&self, what: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(task).catch_unwind().await {
                tracing::error!(task = what, panic = panic_message(&*panic), "task panicked");
            }
        });
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
}

/// The message a panic was raised with, for logs and reasons.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

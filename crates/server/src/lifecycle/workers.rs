//! A worker's transitions: claims, registration, its session attaching and ending, the hand-over
//! of jobs, retirement and loss.

use std::{future::Future, panic::AssertUnwindSafe};

use chrono::Utc;
use futures::FutureExt;
use hodei_domain::{
    Job, JobId, JobState, OneTimeToken, SessionCredential, WorkerFailure, WorkerId, WorkerState,
};
use hodei_providers::WorkerStatus;
use hodei_store::{Attached, NewWorkerRow, StoreError, TokenRejection};

use super::Lifecycle;
use crate::{
    commands::{Commands, SessionCommand},
    core::panic_message,
    registry::{AttachError, Phase},
};

/// How long the re-queue of an interrupted job waits for the provider to say why.
const PLATFORM_STOP_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// After a worker's stream ends, its provider is asked this often, this many times, whether
/// its resource is gone: a worker that died is lost at once instead of at its lease's expiry.
const DETACHED_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
const DETACHED_PROBES: u32 = 8;
/// Beyond the kill grace, how long destroying a worker whose lease expired may take.
const EXPIRED_DESTROY_SLACK: std::time::Duration = std::time::Duration::from_secs(15);

/// A worker recorded (`provisioning`) together with the job it claimed, to be created now.
pub struct NewWorker {
    pub id: WorkerId,
    pub job: Job,
    /// Its one-time registration token (only the hash is stored).
    pub token: OneTimeToken,
}

/// What becomes of a worker whose job just ended.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterJob {
    /// It waits for the next job.
    Idle,
    /// It is told to exit, for this reason.
    Retire(&'static str),
}

impl Lifecycle {
    /// Idle workers take queued jobs: each worker is reserved, the oldest queued job is claimed
    /// for it (`Queued → Assigned`, the worker recorded busy), and the job goes to its session;
    /// a job whose session went away meanwhile is given back.
    pub async fn assign_idle_workers(&self) -> Result<(), StoreError> {
        let registry = &self.core.registry;
        let mut idle = registry.reserve_idle().into_iter();
        while let Some(worker) = idle.next() {
            let job = match self.db.claim_next_job(worker).await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    registry.unreserve(worker);
                    break;
                }
                Err(e) => {
                    registry.unreserve(worker);
                    idle.for_each(|rest| registry.unreserve(rest));
                    return Err(e);
                }
            };
            let id = job.id;
            match registry.assign(worker, id) {
                Some(commands) if commands.send(SessionCommand::Assign(Box::new(job))).is_ok() => {}
                _ => {
                    self.give_back(id, worker, "worker went away before the job was sent")
                        .await
                }
            }
        }
        idle.for_each(|rest| registry.unreserve(rest));
        Ok(())
    }

    /// Claims the oldest queued job for a worker that does not exist yet, recorded
    /// (`provisioning`, held by this server) with its token in the same transaction, if the
    /// instance has room: `max_workers` counts the alive workers of every server of the
    /// instance, in the database. `None` when nothing was claimable or there was no room.
    pub async fn claim_for_new_worker(&self) -> Result<Option<NewWorker>, StoreError> {
        let core = &self.core;
        let id = WorkerId::new();
        let token = OneTimeToken::generate();
        let expires = Utc::now()
            + chrono::Duration::from_std(core.settings.provisioning_timeout)
                .unwrap_or(chrono::Duration::minutes(5));
        let claimed = self
            .db
            .claim_job_for_new_worker(
                &NewWorkerRow {
                    id,
                    instance: &core.settings.instance,
                    provider: core.provider.name(),
                    server: Some(core.server_id),
                    token: token.hash(),
                    token_expires_at: expires,
                },
                Some(u32::try_from(core.settings.max_workers).unwrap_or(u32::MAX)),
            )
            .await?;
        let Some(job) = claimed else {
            return Ok(None);
        };
        core.registry.insert_provisioning(id, job.id);
        tracing::info!(worker = %id, job = %job.id, attempt = job.attempts, "provisioning a worker");
        Ok(Some(NewWorker { id, job, token }))
    }

    /// A worker failed to come up (classified by its provider, or out of time): recorded
    /// `failed`, its job re-queued, its resource destroyed; only then is its slot free, since a
    /// Pod being deleted still holds its node's resources. Nothing happens if it registered
    /// meanwhile: its session owns it then.
    pub async fn provisioning_failed(&self, worker: WorkerId, job: JobId, reason: String) {
        self.fail_provisioning(worker, job, &reason, false).await;
    }

    /// The same, for a failure the provider classified: a permanent one (the image does not
    /// exist) ends the job `failed` in this attempt, since another cannot succeed.
    pub async fn provisioning_failed_with(
        &self,
        worker: WorkerId,
        job: JobId,
        failure: &WorkerFailure,
    ) {
        self.fail_provisioning(worker, job, &failure.detailed(), failure.is_permanent())
            .await;
    }

    async fn fail_provisioning(&self, worker: WorkerId, job: JobId, reason: &str, permanent: bool) {
        let core = &self.core;
        if !core.registry.retire_if_provisioning(worker) {
            return;
        }
        let recorded = core
            .retry_db("recording a failed worker", || {
                self.db
                    .set_worker_state(worker, WorkerState::Failed, reason)
            })
            .await;
        if matches!(recorded, Ok(false)) && self.registered_in_database(worker).await {
            return self.let_go(worker);
        }
        tracing::warn!(%worker, %job, reason, permanent, "provisioning failed");
        if permanent {
            self.job_ended(job, worker, JobState::Failed, None, reason)
                .await;
        } else {
            self.requeue(job, worker, reason).await;
        }
        if let Err(e) = core.provider.destroy_worker(&worker).await {
            tracing::warn!(%worker, error = %e, "cleaning up a failed worker failed; the orphan sweep will retry");
        }
        core.registry.remove(worker);
        core.announce_work();
    }

    /// A worker this server is provisioning registered through another server of the instance
    /// (its workers dial a Service in front of several): that server holds it now, and this
    /// one lets it go without touching it. `false` when the database says otherwise, or when
    /// this server's own session has it meanwhile.
    pub async fn registered_elsewhere(&self, worker: WorkerId) -> bool {
        if !self.registered_in_database(worker).await
            || !self.core.registry.retire_if_provisioning(worker)
        {
            return false;
        }
        self.let_go(worker);
        true
    }

    /// Whether the database records `worker` as registered (`idle` or `busy`).
    async fn registered_in_database(&self, worker: WorkerId) -> bool {
        matches!(
            self.core.store.get_worker(worker).await,
            Ok(Some(w)) if matches!(w.state, WorkerState::Idle | WorkerState::Busy)
        )
    }

    /// Forgets a worker another server's session holds.
    fn let_go(&self, worker: WorkerId) {
        tracing::info!(%worker, "worker registered through another server; that server holds it now");
        self.core.registry.remove(worker);
        self.core.wake_dispatcher();
    }

    /// `Provisioning → Idle`: the worker's one-time token is consumed and its session
    /// credential recorded, atomically; every refusal has its own reason and changes nothing.
    pub async fn register(
        &self,
        worker: WorkerId,
        token: &OneTimeToken,
        session: &SessionCredential,
    ) -> Result<Result<(), TokenRejection>, StoreError> {
        let registered = self
            .db
            .register_worker(
                worker,
                token.hash(),
                session.hash(),
                self.core.settings.worker_lease_ttl(),
            )
            .await?;
        if registered.is_ok()
            && let Some(took) = self.core.registry.mark_registered(worker)
        {
            self.core
                .metrics
                .provisioning_seconds
                .observe(took.as_secs_f64());
        }
        Ok(registered)
    }

    /// The worker's session opened: it becomes `Busy` with the job it was provisioned for, or
    /// `Idle`. Returns that job.
    pub fn attach(
        &self,
        worker: WorkerId,
        commands: Commands,
    ) -> Result<Option<JobId>, AttachError> {
        self.core.registry.attach(worker, commands)
    }

    /// A session opened with the worker's credential: it holds the worker from now on (the
    /// epoch moves on, the lease starts). `None`: the worker is no longer alive.
    pub async fn attach_session(&self, worker: WorkerId) -> Result<Option<Attached>, StoreError> {
        let core = &self.core;
        self.db
            .attach_session(worker, core.server_id, core.settings.worker_lease_ttl())
            .await
    }

    /// A worker this process does not track re-connected (its stream broke, or an earlier
    /// process of this server held it): it enters the registry as `Resuming`.
    pub fn adopt(&self, worker: WorkerId, commands: Commands) -> Result<(), AttachError> {
        self.core.registry.adopt(worker, commands)
    }

    /// An adopted worker's session knows what it holds: `Busy` with `job`, or `Idle` (and the
    /// dispatcher looks for work for it). Nothing for a worker provisioned by this process,
    /// which its attach already placed.
    pub fn resumed(&self, worker: WorkerId, adopted: bool, job: Option<JobId>) {
        if !adopted {
            return;
        }
        self.core.registry.resumed(worker, job);
        if job.is_none() {
            self.core.wake_dispatcher();
        }
    }

    /// Whether `job` has ended, run last by `worker` (a worker re-sending its end after a
    /// reconnect is told it is recorded).
    pub async fn end_recorded(&self, job: JobId, worker: WorkerId) -> bool {
        let core = &self.core;
        matches!(
            core.retry_db("reading a job", || core.store.get_job(job)).await,
            Ok(Some(found)) if found.state.is_terminal() && found.worker_id == Some(worker)
        )
    }

    /// A worker's stream ended without the worker being retired or lost: it keeps its job and
    /// is expected back (on this process or another). Jobs handed to the session but never sent
    /// go back to the queue; the worker is recorded detached (its lease runs on, unrenewed) and
    /// leaves the registry. If its provider says within a few seconds that its resource is
    /// gone, it is lost at once.
    pub async fn session_detached(
        &self,
        worker: WorkerId,
        epoch: i64,
        why: String,
        unsent: Vec<JobId>,
    ) {
        let core = &self.core;
        tracing::info!(%worker, why, "worker detached: its stream ended; it may re-connect");
        for job in unsent {
            self.give_back(job, worker, "worker went away before the job was sent")
                .await;
        }
        let detached = core
            .retry_db("recording a worker as detached", || {
                self.db.detach_session(worker, epoch, &why)
            })
            .await;
        if let Err(e) = detached {
            tracing::warn!(%worker, error = %e, "cannot record the worker as detached");
        }
        core.registry.remove(worker);
        core.wake_dispatcher();
        let this = self.clone();
        core.spawn("probing a detached worker", async move {
            for _ in 0..DETACHED_PROBES {
                tokio::time::sleep(DETACHED_PROBE_INTERVAL).await;
                if this.core.registry.contains(worker) {
                    return; // it came back
                }
                let gone = match this.core.provider.worker_status(&worker).await {
                    Ok(WorkerStatus::Exited { exit_code, detail }) => {
                        let code = exit_code.map_or("no exit code".into(), |c| format!("code {c}"));
                        Some(if detail.is_empty() {
                            format!("its process exited ({code})")
                        } else {
                            format!("its process exited ({code}: {detail})")
                        })
                    }
                    Ok(WorkerStatus::Failed(failure)) => Some(failure.detailed()),
                    Ok(WorkerStatus::NotFound) => Some("its resource is gone".to_string()),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(%worker, error = %e, "cannot probe a detached worker");
                        None
                    }
                };
                if let Some(gone) = gone {
                    let reason = format!("worker lost: {why}, and {gone}");
                    this.lose_detached(worker, epoch, reason, false).await;
                    return;
                }
            }
        });
    }

    /// Workers whose lease has passed — nobody heard from them for longer than they keep a
    /// job without a server — are destroyed first (a frozen one must not run on next to the
    /// next attempt), then lost, and their jobs re-queued. Workers connected here are skipped:
    /// their sessions renew their leases.
    pub async fn expire_leases(&self) -> Result<usize, StoreError> {
        let core = &self.core;
        let mut lost = 0;
        for lease in core
            .store
            .expired_worker_leases(&core.settings.instance)
            .await?
        {
            if core.registry.contains(lease.worker) {
                continue;
            }
            let worker = lease.worker;
            let why = lease
                .last_disconnect
                .unwrap_or_else(|| "its server stopped hearing from it".into());
            let reason = format!(
                "worker lost: {why}, and it did not come back within its lease (reconnect grace {}s)",
                core.settings.reconnect_grace.as_secs()
            );
            let destroy_within = core.settings.kill_grace + EXPIRED_DESTROY_SLACK;
            match tokio::time::timeout(destroy_within, core.provider.destroy_worker(&worker)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%worker, error = %e, "cannot destroy a worker whose lease expired; retrying next pass");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%worker, "destroying a worker whose lease expired takes too long; retrying next pass");
                    continue;
                }
            }
            if self.lose_detached(worker, lease.epoch, reason, true).await {
                lost += 1;
            }
        }
        Ok(lost)
    }

    /// Loses a worker nobody holds, if it is still at `epoch` (and, with `only_if_expired`,
    /// its lease has passed), and re-queues its job. `false` when it re-attached meanwhile.
    async fn lose_detached(
        &self,
        worker: WorkerId,
        epoch: i64,
        reason: String,
        only_if_expired: bool,
    ) -> bool {
        let core = &self.core;
        let lost = core
            .retry_db("recording a worker as lost", || {
                self.db
                    .lose_worker_at_epoch(worker, epoch, &reason, only_if_expired)
            })
            .await;
        match lost {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(%worker, error = %e, "cannot record a detached worker as lost");
                return false;
            }
        }
        tracing::warn!(%worker, reason, "worker lost");
        match core
            .retry_db("reading a lost worker's job", || {
                core.store.job_held_by(worker)
            })
            .await
        {
            Ok(Some(job)) => self.requeue(job.id, worker, &reason).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(%worker, error = %e, "cannot read the job of a lost worker"),
        }
        if let Err(e) = core.provider.destroy_worker(&worker).await {
            tracing::warn!(%worker, error = %e, "destroying a lost worker failed; the orphan sweep will retry");
        }
        core.announce_work();
        true
    }

    /// The job `worker` was provisioned for, recorded as the job it is busy with — unless it
    /// was cancelled (or otherwise taken) while the worker was starting, in which case the
    /// worker becomes idle.
    pub async fn take_bound_job(&self, worker: WorkerId, job: JobId) -> Option<Job> {
        let core = &self.core;
        let found = core
            .retry_db("reading an assigned job", || core.store.get_job(job))
            .await;
        match found {
            Ok(Some(found))
                if found.state == hodei_domain::JobState::Assigned
                    && found.worker_id == Some(worker) =>
            {
                let busy = core
                    .retry_db("recording a worker as busy", || {
                        self.db.mark_worker_busy(worker, job)
                    })
                    .await;
                if let Err(e) = busy {
                    tracing::warn!(%worker, error = %e, "cannot record worker as busy");
                }
                Some(found)
            }
            Ok(_) => {
                self.worker_free(worker);
                None
            }
            Err(e) => {
                self.abandon(job, worker, &format!("cannot read the job: {e}"))
                    .await;
                None
            }
        }
    }

    /// The session could not hand `job` over (its output position could not be read): the
    /// attempt is re-queued and the worker waits for another job.
    pub async fn abandon(&self, job: JobId, worker: WorkerId, reason: &str) {
        self.requeue(job, worker, reason).await;
        self.worker_free(worker);
    }

    /// The job `worker` was running ended (`recorded_idle`: its end recorded the worker idle
    /// too). It has now run `jobs_run` jobs: it waits for another, or is retired.
    pub async fn after_job(
        &self,
        worker: WorkerId,
        jobs_run: u32,
        recorded_idle: bool,
    ) -> AfterJob {
        let core = &self.core;
        if !recorded_idle {
            let idle = core
                .retry_db("recording a worker as idle", || {
                    self.db.mark_worker_idle(worker)
                })
                .await;
            if let Err(e) = idle {
                tracing::warn!(%worker, error = %e, "cannot record worker as idle");
            }
        }
        if jobs_run >= core.settings.max_jobs_per_worker {
            return AfterJob::Retire("ran its maximum number of jobs");
        }
        if core.is_draining() {
            return AfterJob::Retire("server shutting down");
        }
        self.worker_free(worker);
        AfterJob::Idle
    }

    /// `Busy → Idle` in the registry, and the dispatcher looks for work for it.
    fn worker_free(&self, worker: WorkerId) {
        self.core.registry.mark_idle(worker);
        self.core.wake_dispatcher();
    }

    /// The worker's session tells it to exit: no job is handed to it any more.
    pub fn retiring(&self, worker: WorkerId) {
        self.core.registry.mark_retiring(worker);
    }

    /// A worker's session ended: `held` (the job it was running, or was provisioned for) is
    /// re-queued — or ends `cancelled` if the user had cancelled it —, jobs handed to the
    /// session that it never sent go back to the queue without spending an attempt, and the
    /// worker is retired as `state` (`terminated` when it was told to go, `lost` otherwise).
    pub async fn session_ended(
        &self,
        worker: WorkerId,
        state: WorkerState,
        reason: String,
        held: Option<JobId>,
        unsent: Vec<JobId>,
    ) {
        if state == WorkerState::Lost {
            tracing::warn!(%worker, reason, "worker lost");
        } else {
            tracing::info!(%worker, reason, "worker retired");
        }
        let held = match held {
            Some(job) => Some(job),
            // An adopted worker's job is known to the database only.
            None if state == WorkerState::Lost => self
                .core
                .store
                .job_held_by(worker)
                .await
                .ok()
                .flatten()
                .map(|j| j.id),
            None => None,
        };
        if let Some(job) = held {
            self.requeue(job, worker, &reason).await;
        }
        for job in unsent {
            self.give_back(job, worker, "worker went away before the job was sent")
                .await;
        }
        self.retire(worker, state, reason);
    }

    /// Why `worker`'s platform stopped it, for the attempt's reason: the worker's own words
    /// (`message`, e.g. "worker terminated by its platform (SIGTERM)"), and the provider's
    /// when it knows better (Kubernetes: the Pod deleted, evicted or preempted).
    pub async fn platform_stop_reason(&self, worker: WorkerId, message: String) -> String {
        let message = if message.is_empty() {
            "worker stopped by its platform".to_string()
        } else {
            message
        };
        let asked = tokio::time::timeout(
            PLATFORM_STOP_QUERY_TIMEOUT,
            self.core.provider.stop_cause(&worker),
        )
        .await;
        match asked {
            Ok(Ok(Some(cause))) => format!("{message}: {cause}"),
            Ok(Ok(None)) => message,
            Ok(Err(e)) => {
                tracing::warn!(%worker, error = %e, "cannot learn why the platform stopped the worker");
                message
            }
            Err(_) => {
                tracing::warn!(%worker, "the provider did not say in time why the platform stopped the worker");
                message
            }
        }
    }

    /// A worker nothing of this server can finish any more (its session panicked): the job it
    /// held — in the registry's view and in the database's — is re-queued, and it is retired
    /// as `lost`.
    pub async fn lose(&self, worker: WorkerId, reason: String) {
        let core = &self.core;
        let reason = format!("worker lost: {reason}");
        tracing::warn!(%worker, reason, "worker lost");
        let mut held: Vec<JobId> = core
            .registry
            .phase(worker)
            .and_then(Phase::job)
            .into_iter()
            .collect();
        match core
            .retry_db("reading a lost worker's job", || {
                core.store.job_held_by(worker)
            })
            .await
        {
            Ok(Some(job)) if !held.contains(&job.id) => held.push(job.id),
            Ok(_) => {}
            Err(e) => tracing::warn!(%worker, error = %e, "cannot read the job of a lost worker"),
        }
        for job in held {
            self.requeue(job, worker, &reason).await;
        }
        self.retire(worker, WorkerState::Lost, reason);
    }

    /// Removes the worker's resources in the background, then records its end. The worker
    /// keeps counting against `max_workers` until its resource is really gone.
    pub fn retire(&self, worker: WorkerId, state: WorkerState, reason: String) {
        debug_assert!(!state.is_alive());
        self.core.registry.mark_retiring(worker);
        let this = self.clone();
        self.core.spawn("retiring a worker", async move {
            let core = &this.core;
            let _ = core
                .retry_db("recording a worker as terminating", || {
                    this.db
                        .set_worker_state(worker, WorkerState::Terminating, &reason)
                })
                .await;
            if let Err(e) = core.provider.destroy_worker(&worker).await {
                tracing::warn!(%worker, error = %e, "destroying worker failed; the orphan sweep will retry");
            }
            let recorded = core
                .retry_db("recording a worker's end", || {
                    this.db.set_worker_state(worker, state, &reason)
                })
                .await;
            if let Err(e) = recorded {
                tracing::error!(%worker, error = %e, "cannot record worker state");
            }
            core.registry.remove(worker);
            core.announce_work();
        });
    }

    /// Runs a worker's session on the server's tracker. If it panics, its `finish` never ran:
    /// the worker is lost instead, so its job is re-queued and its slot freed, rather than
    /// staying `Busy` until a restart.
    pub fn spawn_session(
        &self,
        worker: WorkerId,
        session: impl Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        self.core.tasks.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(session).catch_unwind().await {
                let message = panic_message(&*panic).to_owned();
                tracing::error!(%worker, panic = message, "worker session panicked");
                this.lose(worker, format!("its session panicked: {message}"))
                    .await;
            }
        });
    }

    /// Runs the provisioning of `worker` (for `job`) on the server's tracker. If it panics, the
    /// worker is failed and its job re-queued, rather than holding its slot forever.
    pub fn spawn_provisioning(
        &self,
        worker: WorkerId,
        job: JobId,
        provisioning: impl Future<Output = ()> + Send + 'static,
    ) {
        let this = self.clone();
        self.core.tasks.spawn(async move {
            if let Err(panic) = AssertUnwindSafe(provisioning).catch_unwind().await {
                let message = panic_message(&*panic).to_owned();
                tracing::error!(%worker, panic = message, "provisioning panicked");
                this.provisioning_failed(worker, job, format!("provisioning panicked: {message}"))
                    .await;
            }
        });
    }
}

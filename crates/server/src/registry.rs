//! The workers this server process is responsible for, and what each is doing right now.
//!
//! Only in-memory facts live here (who may be handed a job, which session to talk to); the
//! database stays the record of truth. A [`Phase`] is finer than the stored
//! [`WorkerState`](hodei_domain::WorkerState): it knows whether a registered worker's session
//! is open, and which idle worker the dispatcher is claiming for. Phase → stored state:
//! `Provisioning` → `provisioning`; `Registered`, `Idle`, `Reserved` → `idle`; `Busy` → `busy`;
//! `Resuming` → `idle` or `busy`; `Retiring` → `terminating` (then a final state once its
//! resource is gone and it is removed).
//!
//! The registry holds the workers whose provisioning or stream this process holds. A worker
//! whose stream broke is removed (it is detached, and expected back); one that re-connects
//! here — also one provisioned by an earlier process of this server — is adopted.
//!
//! Every transition is one short critical section, so the dispatcher, sessions and RPC handlers
//! can race without double-assigning. Only the lifecycle module moves workers between phases.
//! The registry is observable: each worker's phase is a `watch`, and a global `watch` ticks on
//! every change, so provisioning, cancels and shutdown await a change instead of polling.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hodei_domain::{JobId, WorkerId};
use tokio::sync::watch;

use crate::commands::Commands;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Asked from the provider for `job`; not registered yet.
    Provisioning {
        job: JobId,
    },
    /// Registered; its session stream has not opened yet.
    Registered {
        job: Option<JobId>,
    },
    Idle,
    /// The dispatcher is claiming a job for it.
    Reserved,
    Busy {
        job: JobId,
    },
    /// A re-connected worker's session is finding out what it holds; nothing is handed to it.
    Resuming,
    /// Told to shut down, or being destroyed.
    Retiring,
}

impl Phase {
    /// The job bound to the worker in this phase, if any.
    pub fn job(self) -> Option<JobId> {
        match self {
            Phase::Provisioning { job } | Phase::Busy { job } => Some(job),
            Phase::Registered { job } => job,
            Phase::Idle | Phase::Reserved | Phase::Resuming | Phase::Retiring => None,
        }
    }
}

struct Entry {
    phase: watch::Sender<Phase>,
    since: Instant,
    commands: Option<Commands>,
}

impl Entry {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn set(&mut self, phase: Phase) {
        self.phase.send_replace(phase);
        self.since = Instant::now();
    }
}

pub struct Registry {
    entries: Mutex<HashMap<WorkerId, Entry>>,
    /// Ticks on every change of any worker.
    changes: watch::Sender<()>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            changes: watch::channel(()).0,
        }
    }
}

/// Why a session could not be attached.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    Unknown,
    AlreadyConnected,
    Retiring,
}

impl Registry {
    /// Runs `change` under the lock and tells every watcher afterwards.
    fn change<T>(&self, change: impl FnOnce(&mut HashMap<WorkerId, Entry>) -> T) -> T {
        let result = change(&mut self.entries.lock().unwrap_or_else(|e| e.into_inner()));
        self.changes.send_replace(());
        result
    }

    fn read<T>(&self, read: impl FnOnce(&HashMap<WorkerId, Entry>) -> T) -> T {
        read(&self.entries.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn insert_provisioning(&self, worker: WorkerId, job: JobId) {
        self.change(|entries| {
            entries.insert(
                worker,
                Entry {
                    phase: watch::channel(Phase::Provisioning { job }).0,
                    since: Instant::now(),
                    commands: None,
                },
            )
        });
    }

    /// `Provisioning → Registered`; returns how long provisioning took.
    pub fn mark_registered(&self, worker: WorkerId) -> Option<Duration> {
        self.change(|entries| {
            let entry = entries.get_mut(&worker)?;
            let Phase::Provisioning { job } = entry.phase() else {
                return None;
            };
            let took = entry.since.elapsed();
            entry.set(Phase::Registered { job: Some(job) });
            Some(took)
        })
    }

    /// Binds a session to a registered worker; returns the job it was provisioned for.
    pub fn attach(
        &self,
        worker: WorkerId,
        commands: Commands,
    ) -> Result<Option<JobId>, AttachError> {
        self.change(|entries| {
            let entry = entries.get_mut(&worker).ok_or(AttachError::Unknown)?;
            let job = match entry.phase() {
                Phase::Registered { job } => job,
                Phase::Retiring => return Err(AttachError::Retiring),
                Phase::Provisioning { .. } => return Err(AttachError::Unknown),
                _ => return Err(AttachError::AlreadyConnected),
            };
            entry.set(match job {
                Some(job) => Phase::Busy { job },
                None => Phase::Idle,
            });
            entry.commands = Some(commands);
            Ok(job)
        })
    }

    /// Enters a worker this process does not track (it re-connected) as `Resuming`, with its
    /// session's commands. Refused while an entry exists: a previous stream of the worker is
    /// still closing (`AlreadyConnected`), or it is being retired or provisioned.
    pub fn adopt(&self, worker: WorkerId, commands: Commands) -> Result<(), AttachError> {
        self.change(|entries| {
            if let Some(entry) = entries.get(&worker) {
                return Err(match entry.phase() {
                    Phase::Retiring => AttachError::Retiring,
                    Phase::Provisioning { .. } => AttachError::Unknown,
                    _ => AttachError::AlreadyConnected,
                });
            }
            entries.insert(
                worker,
                Entry {
                    phase: watch::channel(Phase::Resuming).0,
                    since: Instant::now(),
                    commands: Some(commands),
                },
            );
            Ok(())
        })
    }

    /// `Resuming → Busy` with the job it holds, or `Idle`.
    pub fn resumed(&self, worker: WorkerId, job: Option<JobId>) {
        self.change(|entries| {
            if let Some(entry) = entries.get_mut(&worker)
                && entry.phase() == Phase::Resuming
            {
                entry.set(match job {
                    Some(job) => Phase::Busy { job },
                    None => Phase::Idle,
                });
            }
        });
    }

    /// Moves every idle worker to `Reserved` and returns them.
    pub fn reserve_idle(&self) -> Vec<WorkerId> {
        self.change(|entries| {
            entries
                .iter_mut()
                .filter(|(_, e)| e.phase() == Phase::Idle)
                .map(|(id, e)| {
                    e.phase.send_replace(Phase::Reserved);
                    *id
                })
                .collect()
        })
    }

    /// `Reserved → Busy`; the session's command channel to send the job to.
    pub fn assign(&self, worker: WorkerId, job: JobId) -> Option<Commands> {
        self.change(|entries| {
            let entry = entries.get_mut(&worker)?;
            if entry.phase() != Phase::Reserved {
                return None;
            }
            entry.set(Phase::Busy { job });
            entry.commands.clone()
        })
    }

    /// `Reserved → Idle` when there was nothing to claim.
    pub fn unreserve(&self, worker: WorkerId) {
        self.change(|entries| {
            if let Some(entry) = entries.get_mut(&worker)
                && entry.phase() == Phase::Reserved
            {
                entry.phase.send_replace(Phase::Idle);
            }
        });
    }

    /// `Busy → Idle` after a job.
    pub fn mark_idle(&self, worker: WorkerId) {
        self.change(|entries| {
            if let Some(entry) = entries.get_mut(&worker)
                && matches!(entry.phase(), Phase::Busy { .. })
            {
                entry.set(Phase::Idle);
            }
        });
    }

    pub fn mark_retiring(&self, worker: WorkerId) {
        self.change(|entries| {
            if let Some(entry) = entries.get_mut(&worker) {
                entry.set(Phase::Retiring);
            }
        });
    }

    /// `Provisioning → Retiring` for a worker that failed to come up; false if it registered
    /// meanwhile. It keeps counting against the maximum until its resource is destroyed and
    /// it is removed.
    pub fn retire_if_provisioning(&self, worker: WorkerId) -> bool {
        self.change(|entries| match entries.get_mut(&worker) {
            Some(entry) if matches!(entry.phase(), Phase::Provisioning { .. }) => {
                entry.set(Phase::Retiring);
                true
            }
            _ => false,
        })
    }

    /// `Provisioning`/`Registered → Retiring`; false once a session is attached.
    pub fn retire_if_unconnected(&self, worker: WorkerId) -> bool {
        self.change(|entries| match entries.get_mut(&worker) {
            Some(entry)
                if matches!(
                    entry.phase(),
                    Phase::Provisioning { .. } | Phase::Registered { .. }
                ) =>
            {
                entry.set(Phase::Retiring);
                true
            }
            _ => false,
        })
    }

    pub fn remove(&self, worker: WorkerId) {
        self.change(|entries| entries.remove(&worker));
    }

    pub fn phase(&self, worker: WorkerId) -> Option<Phase> {
        self.read(|entries| entries.get(&worker).map(Entry::phase))
    }

    /// Follows one worker's phase; the receiver's sender is dropped when the worker is removed.
    pub fn watch(&self, worker: WorkerId) -> Option<watch::Receiver<Phase>> {
        self.read(|entries| entries.get(&worker).map(|e| e.phase.subscribe()))
    }

    /// Waits until `worker`'s phase satisfies `done`, the worker is removed, or `deadline`
    /// passes; returns its phase then (`None`: removed or unknown).
    pub async fn wait_for_phase(
        &self,
        worker: WorkerId,
        deadline: tokio::time::Instant,
        done: impl Fn(Phase) -> bool,
    ) -> Option<Phase> {
        let mut phase = self.watch(worker)?;
        let reached = tokio::time::timeout_at(deadline, phase.wait_for(|p| done(*p))).await;
        match reached {
            Ok(Ok(p)) => Some(*p),
            Ok(Err(_)) => None, // removed
            Err(_) => self.phase(worker),
        }
    }

    /// Waits until `done` holds for the registry or `deadline` passes; whether it holds.
    pub async fn wait_until(
        &self,
        deadline: tokio::time::Instant,
        done: impl Fn(&Self) -> bool,
    ) -> bool {
        let mut changes = self.changes.subscribe();
        loop {
            changes.borrow_and_update();
            if done(self) {
                return true;
            }
            // The sender lives in `self`, so `changed` only ends with a change or the deadline.
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return done(self);
            }
        }
    }

    pub fn commands(&self, worker: WorkerId) -> Option<Commands> {
        self.read(|entries| entries.get(&worker).and_then(|e| e.commands.clone()))
    }

    /// Registered workers whose session never opened within `timeout`.
    pub fn stale_registrations(&self, timeout: Duration) -> Vec<(WorkerId, Option<JobId>)> {
        self.read(|entries| {
            entries
                .iter()
                .filter_map(|(id, e)| match e.phase() {
                    Phase::Registered { job } if e.since.elapsed() > timeout => Some((*id, job)),
                    _ => None,
                })
                .collect()
        })
    }

    pub fn alive_count(&self) -> usize {
        self.read(HashMap::len)
    }

    pub fn busy_count(&self) -> usize {
        self.read(|entries| {
            entries
                .values()
                .filter(|e| matches!(e.phase(), Phase::Busy { .. }))
                .count()
        })
    }

    pub fn snapshot(&self) -> Vec<(WorkerId, Phase)> {
        self.read(|entries| entries.iter().map(|(id, e)| (*id, e.phase())).collect())
    }

    pub fn contains(&self, worker: WorkerId) -> bool {
        self.read(|entries| entries.contains_key(&worker))
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn a_provisioned_worker_becomes_busy_with_its_job_when_its_session_attaches() {
        let registry = Registry::default();
        let (worker, job) = (WorkerId::new(), JobId::new());
        registry.insert_provisioning(worker, job);
        assert!(registry.mark_registered(worker).is_some());
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(registry.attach(worker, tx.clone()), Ok(Some(job)));
        assert_eq!(registry.phase(worker), Some(Phase::Busy { job }));
        assert_eq!(
            registry.attach(worker, tx),
            Err(AttachError::AlreadyConnected)
        );
    }

    #[test]
    fn a_reconnected_worker_is_adopted_and_offered_no_job_until_it_has_resumed() {
        let registry = Registry::default();
        let (worker, job) = (WorkerId::new(), JobId::new());
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(registry.adopt(worker, tx.clone()), Ok(()));
        assert_eq!(registry.phase(worker), Some(Phase::Resuming));
        assert!(registry.commands(worker).is_some());
        // While it resumes, the dispatcher does not see it, and no second stream attaches.
        assert_eq!(registry.reserve_idle(), Vec::<WorkerId>::new());
        assert_eq!(
            registry.adopt(worker, tx.clone()),
            Err(AttachError::AlreadyConnected)
        );
        assert_eq!(
            registry.attach(worker, tx),
            Err(AttachError::AlreadyConnected)
        );
        registry.resumed(worker, Some(job));
        assert_eq!(registry.phase(worker), Some(Phase::Busy { job }));
    }

    #[test]
    fn a_worker_being_retired_or_provisioned_is_not_adopted() {
        let registry = Registry::default();
        let (retiring, provisioning) = (WorkerId::new(), WorkerId::new());
        registry.insert_provisioning(retiring, JobId::new());
        registry.mark_retiring(retiring);
        registry.insert_provisioning(provisioning, JobId::new());
        let (tx, _rx) = mpsc::unbounded_channel();
        assert_eq!(
            registry.adopt(retiring, tx.clone()),
            Err(AttachError::Retiring)
        );
        assert_eq!(registry.adopt(provisioning, tx), Err(AttachError::Unknown));
    }

    #[test]
    fn an_idle_worker_is_reserved_once() {
        let registry = Registry::default();
        let worker = WorkerId::new();
        registry.insert_provisioning(worker, JobId::new());
        registry.mark_registered(worker);
        let (tx, _rx) = mpsc::unbounded_channel();
        registry.attach(worker, tx).unwrap();
        registry.mark_idle(worker);
        assert_eq!(registry.reserve_idle(), vec![worker]);
        assert!(registry.reserve_idle().is_empty());
        registry.unreserve(worker);
        assert_eq!(registry.reserve_idle(), vec![worker]);
        let job = JobId::new();
        assert!(registry.assign(worker, job).is_some());
        assert_eq!(registry.phase(worker), Some(Phase::Busy { job }));
    }

    #[test]
    fn only_unregistered_workers_are_retired_by_a_provisioning_failure() {
        let registry = Registry::default();
        let worker = WorkerId::new();
        registry.insert_provisioning(worker, JobId::new());
        registry.mark_registered(worker);
        assert!(!registry.retire_if_provisioning(worker));
        assert!(matches!(
            registry.phase(worker),
            Some(Phase::Registered { .. })
        ));

        let failed = WorkerId::new();
        registry.insert_provisioning(failed, JobId::new());
        assert!(registry.retire_if_provisioning(failed));
        assert_eq!(registry.phase(failed), Some(Phase::Retiring));
        assert_eq!(
            registry.alive_count(),
            2,
            "a failed worker counts until it is removed"
        );
    }

    #[tokio::test]
    async fn a_waiter_wakes_on_the_change_it_waits_for_not_on_a_timer() {
        let registry = std::sync::Arc::new(Registry::default());
        let (worker, job) = (WorkerId::new(), JobId::new());
        registry.insert_provisioning(worker, job);
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let waiter = {
            let registry = registry.clone();
            tokio::spawn(async move {
                registry
                    .wait_for_phase(worker, far, |p| !matches!(p, Phase::Provisioning { .. }))
                    .await
            })
        };
        let counter = {
            let registry = registry.clone();
            tokio::spawn(async move { registry.wait_until(far, |r| r.alive_count() == 0).await })
        };
        tokio::task::yield_now().await;
        registry.mark_registered(worker);
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap(),
            Some(Phase::Registered { job: Some(job) })
        );
        registry.remove(worker);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), counter)
                .await
                .unwrap()
                .unwrap()
        );
        assert_eq!(
            registry.wait_for_phase(worker, far, |_| true).await,
            None,
            "an unknown worker is not waited for"
        );
    }

    #[test]
    fn a_phase_names_the_job_bound_to_it() {
        let job = JobId::new();
        assert_eq!(Phase::Provisioning { job }.job(), Some(job));
        assert_eq!(Phase::Registered { job: Some(job) }.job(), Some(job));
        assert_eq!(Phase::Busy { job }.job(), Some(job));
        assert_eq!(Phase::Reserved.job(), None);
    }
}

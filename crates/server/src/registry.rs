//! The workers this server process is responsible for, and what each is doing.
//!
//! Only in-memory facts live here (who may be handed a job, which session task to talk to);
//! the database stays the record of truth for jobs. Every transition is one short critical
//! section, so the dispatcher, sessions and RPC handlers can race without double-assigning.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use hodei_domain::{JobId, WorkerId};
use tokio::sync::mpsc;

use crate::session::SessionCommand;

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
    /// Told to shut down, or being destroyed.
    Retiring,
}

struct Entry {
    phase: Phase,
    since: Instant,
    commands: Option<mpsc::UnboundedSender<SessionCommand>>,
}

#[derive(Default)]
pub struct Registry {
    entries: Mutex<HashMap<WorkerId, Entry>>,
}

/// Why a session could not be attached.
#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    Unknown,
    AlreadyConnected,
    Retiring,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert_provisioning(&self, worker: WorkerId, job: JobId) {
        self.lock().insert(
            worker,
            Entry {
                phase: Phase::Provisioning { job },
                since: Instant::now(),
                commands: None,
            },
        );
    }

    /// `Provisioning → Registered`; returns how long provisioning took.
    pub fn mark_registered(&self, worker: WorkerId) -> Option<Duration> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&worker)?;
        let Phase::Provisioning { job } = entry.phase else {
            return None;
        };
        let took = entry.since.elapsed();
        entry.phase = Phase::Registered { job: Some(job) };
        entry.since = Instant::now();
        Some(took)
    }

    /// Binds a session to a registered worker; returns the job it was provisioned for.
    pub fn attach(
        &self,
        worker: WorkerId,
        commands: mpsc::UnboundedSender<SessionCommand>,
    ) -> Result<Option<JobId>, AttachError> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&worker).ok_or(AttachError::Unknown)?;
        let job = match entry.phase {
            Phase::Registered { job } => job,
            Phase::Retiring => return Err(AttachError::Retiring),
            Phase::Provisioning { .. } => return Err(AttachError::Unknown),
            _ => return Err(AttachError::AlreadyConnected),
        };
        entry.phase = match job {
            Some(job) => Phase::Busy { job },
            None => Phase::Idle,
        };
        entry.since = Instant::now();
        entry.commands = Some(commands);
        Ok(job)
    }

    /// Moves every idle worker to `Reserved` and returns them.
    pub fn reserve_idle(&self) -> Vec<WorkerId> {
        let mut entries = self.lock();
        entries
            .iter_mut()
            .filter(|(_, e)| e.phase == Phase::Idle)
            .map(|(id, e)| {
                e.phase = Phase::Reserved;
                *id
            })
            .collect()
    }

    /// `Reserved → Busy`; the session's command channel to send the job to.
    pub fn assign(
        &self,
        worker: WorkerId,
        job: JobId,
    ) -> Option<mpsc::UnboundedSender<SessionCommand>> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&worker)?;
        if entry.phase != Phase::Reserved {
            return None;
        }
        entry.phase = Phase::Busy { job };
        entry.since = Instant::now();
        entry.commands.clone()
    }

    /// `Reserved → Idle` when there was nothing to claim.
    pub fn unreserve(&self, worker: WorkerId) {
        if let Some(entry) = self.lock().get_mut(&worker)
            && entry.phase == Phase::Reserved
        {
            entry.phase = Phase::Idle;
        }
    }

    /// `Busy → Idle` after a job.
    pub fn mark_idle(&self, worker: WorkerId) {
        if let Some(entry) = self.lock().get_mut(&worker)
            && matches!(entry.phase, Phase::Busy { .. })
        {
            entry.phase = Phase::Idle;
            entry.since = Instant::now();
        }
    }

    pub fn mark_retiring(&self, worker: WorkerId) {
        if let Some(entry) = self.lock().get_mut(&worker) {
            entry.phase = Phase::Retiring;
            entry.since = Instant::now();
        }
    }

    /// `Provisioning → Retiring` for a worker that failed to come up; false if it registered
    /// meanwhile. It keeps counting against the maximum until its resource is destroyed and
    /// it is removed.
    pub fn retire_if_provisioning(&self, worker: WorkerId) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(&worker) {
            Some(entry) if matches!(entry.phase, Phase::Provisioning { .. }) => {
                entry.phase = Phase::Retiring;
                entry.since = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// `Provisioning`/`Registered → Retiring`; false once a session is attached.
    pub fn retire_if_unconnected(&self, worker: WorkerId) -> bool {
        let mut entries = self.lock();
        match entries.get_mut(&worker) {
            Some(entry)
                if matches!(
                    entry.phase,
                    Phase::Provisioning { .. } | Phase::Registered { .. }
                ) =>
            {
                entry.phase = Phase::Retiring;
                entry.since = Instant::now();
                true
            }
            _ => false,
        }
    }

    pub fn remove(&self, worker: WorkerId) {
        self.lock().remove(&worker);
    }

    pub fn phase(&self, worker: WorkerId) -> Option<Phase> {
        self.lock().get(&worker).map(|e| e.phase)
    }

    pub fn commands(&self, worker: WorkerId) -> Option<mpsc::UnboundedSender<SessionCommand>> {
        self.lock().get(&worker).and_then(|e| e.commands.clone())
    }

    /// Registered workers whose session never opened within `timeout`.
    pub fn stale_registrations(&self, timeout: Duration) -> Vec<(WorkerId, Option<JobId>)> {
        self.lock()
            .iter()
            .filter_map(|(id, e)| match e.phase {
                Phase::Registered { job } if e.since.elapsed() > timeout => Some((*id, job)),
                _ => None,
            })
            .collect()
    }

    pub fn alive_count(&self) -> usize {
        self.lock().len()
    }

    pub fn busy_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e.phase, Phase::Busy { .. }))
            .count()
    }

    pub fn snapshot(&self) -> Vec<(WorkerId, Phase)> {
        self.lock().iter().map(|(id, e)| (*id, e.phase)).collect()
    }

    pub fn contains(&self, worker: WorkerId) -> bool {
        self.lock().contains_key(&worker)
    }
}

#[cfg(test)]
mod tests {
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
}

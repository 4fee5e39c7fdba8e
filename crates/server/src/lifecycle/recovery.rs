//! Putting the database right after what a crash or a lost reply left: start-up recovery, the
//! reconciliation pass, and workers that registered but never opened their session.

use std::collections::HashSet;

use hodei_domain::{JobId, WorkerId, WorkerState};

use super::Lifecycle;

impl Lifecycle {
    /// A previous process of this instance may have died with workers alive. Connected ones
    /// (`idle`, `busy`) keep their jobs: they re-connect to this process and resume, or their
    /// lease expires ([`Lifecycle::expire_leases`]). Workers it was still provisioning or
    /// destroying had nobody else to finish that: their jobs are re-queued (or failed when out
    /// of attempts) and they are marked lost; the orphan sweep removes their resources.
    pub async fn recover_previous_run(&self) -> anyhow::Result<()> {
        let core = &self.core;
        let instance = &core.settings.instance;
        let reason = "server restarted while the worker was alive";
        let orphaned: HashSet<WorkerId> = core
            .store
            .alive_workers(instance)
            .await?
            .into_iter()
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Provisioning | WorkerState::Terminating
                )
            })
            .map(|w| w.id)
            .collect();
        for (job, worker) in core.store.jobs_held_by_instance(instance).await? {
            if orphaned.contains(&worker) {
                self.requeue(job, worker, reason).await;
            }
        }
        if !orphaned.is_empty() {
            tracing::warn!(
                count = orphaned.len(),
                "marking workers the previous run was provisioning or destroying as lost"
            );
        }
        for worker in orphaned {
            self.db
                .set_worker_state(worker, WorkerState::Lost, reason)
                .await?;
        }
        Ok(())
    }

    /// Gives up workers that registered but never opened their session within the heartbeat
    /// timeout: their job is re-queued and they are retired as lost.
    pub async fn retire_stale_registrations(&self) {
        let core = &self.core;
        for (worker, job) in core
            .registry
            .stale_registrations(core.settings.heartbeat_timeout)
        {
            // Its session may have opened since the snapshot: only a worker still unconnected
            // is given up, or its job could run twice.
            if !core.registry.retire_if_unconnected(worker) {
                continue;
            }
            let reason = "worker lost: registered but never opened its session".to_string();
            if let Some(job) = job {
                self.requeue(job, worker, &reason).await;
            }
            self.retire(worker, WorkerState::Lost, reason);
        }
    }
}

/// Finds what the database records for this instance that no part of this process will ever
/// finish: a job held by a worker the registry does not know, or a worker alive in the database
/// that the registry does not know. That happens when a statement's reply was lost to a
/// database outage (a claim committed but reported failed, a job's end never recorded), and
/// would otherwise last until the next restart. Something is acted on only when two passes in a
/// row saw it, so a worker between its claim and its registry entry is never touched. Connected
/// workers (`idle`, `busy`) this process does not track are left to their leases: they may be
/// re-connecting.
#[derive(Default)]
pub struct Reconciler {
    suspects: HashSet<(WorkerId, Option<JobId>)>,
}

impl Reconciler {
    pub async fn pass(&mut self, lifecycle: &Lifecycle) -> anyhow::Result<usize> {
        let core = &lifecycle.core;
        let instance = &core.settings.instance;
        let held = core.store.jobs_held_by_instance(instance).await?;
        let alive = core.store.alive_workers(instance).await?;
        let leased: HashSet<WorkerId> = alive
            .iter()
            .filter(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy))
            .map(|w| w.id)
            .collect();
        let held: Vec<(JobId, WorkerId)> = held
            .into_iter()
            .filter(|(_, worker)| !leased.contains(worker))
            .collect();
        let alive: Vec<_> = alive
            .into_iter()
            .filter(|w| !leased.contains(&w.id))
            .collect();
        let holders: HashSet<WorkerId> = held.iter().map(|(_, worker)| *worker).collect();
        let unknown: HashSet<(WorkerId, Option<JobId>)> = held
            .into_iter()
            .map(|(job, worker)| (worker, Some(job)))
            .chain(
                alive
                    .into_iter()
                    .filter(|w| !holders.contains(&w.id))
                    .map(|w| (w.id, None)),
            )
            .filter(|(worker, _)| !core.registry.contains(*worker))
            .collect();
        let confirmed: Vec<_> = unknown.intersection(&self.suspects).copied().collect();
        let reason = "worker lost: the server no longer tracked it";
        for (worker, job) in &confirmed {
            tracing::warn!(%worker, job = ?job, "reconciling a worker the server no longer tracked");
            if let Some(job) = job {
                lifecycle.requeue(*job, *worker, reason).await;
            }
            lifecycle
                .db
                .set_worker_state(*worker, WorkerState::Lost, reason)
                .await?;
        }
        self.suspects = unknown;
        for acted in &confirmed {
            self.suspects.remove(acted);
        }
        Ok(confirmed.len())
    }
}

//! Putting the database right after what a crash or a lost reply left: the takeover of what a
//! dead server left, the reconciliation pass, and workers that registered but never opened
//! their session.

use std::collections::HashSet;

use hodei_domain::{JobId, WorkerId, WorkerState};

use super::Lifecycle;

impl Lifecycle {
    /// What no live server will finish (run by the instance's maintenance server): workers a
    /// dead server — its lease passed, or a process of a version before server leases — was
    /// provisioning or destroying have their jobs re-queued (or failed when out of attempts) and
    /// are marked lost, and the orphan sweep removes their resources; a job still held by a
    /// worker in a final state (its re-queue lost to an outage) is re-queued. The dead server's
    /// connected workers (`idle`, `busy`) are not touched: they re-connect to another server
    /// and resume, or their own leases expire ([`Lifecycle::expire_leases`]).
    pub async fn take_over_stranded(&self) -> anyhow::Result<usize> {
        let core = &self.core;
        let stranded = core
            .store
            .stranded_workers(&core.settings.instance, core.server_id)
            .await?;
        let reason = "worker lost: the server that was provisioning or destroying it is gone";
        for found in &stranded {
            tracing::warn!(worker = %found.worker, job = ?found.job, "taking over a worker of a server that is gone");
            if let Some(job) = found.job {
                self.requeue(job, found.worker, reason).await;
            }
            self.db
                .set_worker_state(found.worker, WorkerState::Lost, reason)
                .await?;
        }
        if !stranded.is_empty() {
            core.announce_work();
        }
        Ok(stranded.len())
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

/// Finds what the database says this server is provisioning or destroying that no part of
/// this process will ever finish: a worker (and the job it holds) that the registry does not
/// know. That happens when a statement's reply was lost to a database outage (a claim committed
/// but reported failed), and would otherwise last until the next restart. Something is acted
/// on only when two passes in a row saw it, so a worker between its claim and its registry
/// entry is never touched. Connected workers (`idle`, `busy`) are left to their leases, and
/// other servers' workers to them (or, when they die, to the takeover).
#[derive(Default)]
pub struct Reconciler {
    suspects: HashSet<(WorkerId, Option<JobId>)>,
}

impl Reconciler {
    pub async fn pass(&mut self, lifecycle: &Lifecycle) -> anyhow::Result<usize> {
        let core = &lifecycle.core;
        let unknown: HashSet<(WorkerId, Option<JobId>)> = core
            .store
            .unattached_workers_of(core.server_id)
            .await?
            .into_iter()
            .map(|found| (found.worker, found.job))
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

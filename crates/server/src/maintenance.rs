//! Start-up recovery and the periodic sweep for resources nobody owns.

use std::{collections::HashSet, sync::Arc};

use hodei_domain::{JobId, WorkerId, WorkerState};

use crate::core::Core;

/// A previous process of this instance may have died with workers alive: they lost their
/// streams with it, so their jobs are re-queued (or failed when out of attempts) and the workers
/// are marked lost. Their resources are removed by the orphan sweep that follows.
pub async fn recover_previous_run(core: &Core) -> anyhow::Result<()> {
    let instance = &core.settings.instance;
    let reason = "server restarted while the worker was alive";
    for (job, worker) in core.store.jobs_held_by_instance(instance).await? {
        core.requeue_or_fail(job, worker, reason).await;
    }
    let workers = core.store.alive_workers(instance).await?;
    if !workers.is_empty() {
        tracing::warn!(
            count = workers.len(),
            "marking workers of the previous run as lost"
        );
    }
    for worker in workers {
        core.store
            .set_worker_state(worker.id, WorkerState::Lost, reason)
            .await?;
    }
    Ok(())
}

/// Destroys resources carrying this instance's labels that the server does not know as alive.
pub async fn sweep_orphans(core: &Core) -> anyhow::Result<usize> {
    let managed = core.provider.list_managed(&core.settings.instance).await?;
    let ids: Vec<WorkerId> = managed.iter().filter_map(|m| m.worker_id).collect();
    let alive: HashSet<WorkerId> = core.store.alive_worker_ids(&ids).await?;
    let mut removed = 0;
    for resource in managed {
        let Some(worker) = resource.worker_id else {
            tracing::warn!(
                resource = resource.resource,
                "managed resource without a worker id; leaving it"
            );
            continue;
        };
        if alive.contains(&worker) || core.registry.contains(worker) {
            continue;
        }
        tracing::info!(%worker, resource = resource.resource, "removing orphaned worker");
        match core.provider.destroy_worker(&worker).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(%worker, error = %e, "cannot remove orphaned worker"),
        }
    }
    Ok(removed)
}

/// Finds what the database records for this instance that no part of this process will ever
/// finish: a job held by a worker the registry does not know, or a worker alive in the database
/// that the registry does not know. That happens when a statement's reply was lost to a
/// database outage (a claim committed but reported failed, a job's end never recorded), and
/// would otherwise last until the next restart. Something is acted on only when two passes in a
/// row saw it, so a worker between its claim and its registry entry is never touched.
#[derive(Default)]
pub struct Reconciler {
    suspects: HashSet<(WorkerId, Option<JobId>)>,
}

impl Reconciler {
    pub async fn pass(&mut self, core: &Core) -> anyhow::Result<usize> {
        let instance = &core.settings.instance;
        let held = core.store.jobs_held_by_instance(instance).await?;
        let alive = core.store.alive_workers(instance).await?;
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
                core.requeue_or_fail(*job, *worker, reason).await;
            }
            core.store
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

/// Runs the orphan sweep, the reconciliation with the database, and retires workers that
/// registered but never opened their session.
pub async fn run(core: Arc<Core>) {
    let mut reconciler = Reconciler::default();
    loop {
        if let Err(e) = reconciler.pass(&core).await {
            tracing::warn!(error = %e, "reconciliation with the database failed");
        }
        if let Err(e) = sweep_orphans(&core).await {
            tracing::warn!(error = %e, "orphan sweep failed");
        }
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
                core.requeue_or_fail(job, worker, &reason).await;
            }
            core.retire_worker(worker, WorkerState::Lost, reason);
        }
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = tokio::time::sleep(core.settings.orphan_sweep_interval.min(core.settings.heartbeat_timeout)) => {}
        }
    }
}

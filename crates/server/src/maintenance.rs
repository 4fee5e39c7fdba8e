//! The periodic work of a server: reconciliation with the database, workers whose lease
//! expired (away for longer than they keep a job without a server), the sweep for resources
//! nobody owns, and workers that registered but never connected. With one server per instance
//! this server does it all; electing one server for it among several is a later step.

use std::collections::HashSet;

use hodei_domain::WorkerId;

use crate::{
    core::Core,
    lifecycle::{Lifecycle, Reconciler},
};

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
        // What was listed, not the name this worker id would be given: an orphan someone else
        // named is removed too, and one re-created under its name since is left alone.
        match core.provider.remove_managed(&resource).await {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(
                %worker,
                resource = resource.resource,
                error = %e,
                "cannot remove orphaned worker"
            ),
        }
    }
    Ok(removed)
}

/// Runs the reconciliation, the orphan sweep, and retires workers that registered but never
/// opened their session, every `orphan_sweep_interval` (at most every heartbeat timeout).
pub async fn run(lifecycle: Lifecycle) {
    let core = lifecycle.core().clone();
    let mut reconciler = Reconciler::default();
    let interval = core
        .settings
        .orphan_sweep_interval
        .min(core.settings.heartbeat_timeout);
    loop {
        if let Err(e) = reconciler.pass(&lifecycle).await {
            tracing::warn!(error = %e, "reconciliation with the database failed");
        }
        if let Err(e) = lifecycle.expire_leases().await {
            tracing::warn!(error = %e, "expiring workers' leases failed");
        }
        if let Err(e) = sweep_orphans(&core).await {
            tracing::warn!(error = %e, "orphan sweep failed");
        }
        lifecycle.retire_stale_registrations().await;
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

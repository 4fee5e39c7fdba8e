//! The periodic work of a server. Its own: reconciliation of what it provisions with the
//! database, and workers that registered with it but never connected. The instance's, run by
//! one elected server at a time (the holder of the instance's maintenance lock, a PostgreSQL
//! advisory lock on a connection of its own, released when the holder dies): the takeover of
//! what dead servers left, workers whose lease expired (away for longer than they keep a job
//! without a server), the sweep for resources nobody owns, and dead servers' rows.

use std::collections::HashSet;

use hodei_domain::WorkerId;
use hodei_store::MaintenanceLock;

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

/// How long past its lease a dead server's row is kept (for operators looking at the table).
const DEAD_SERVER_ROWS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs this server's part, and the instance's part while elected, every
/// `orphan_sweep_interval` (at most every heartbeat timeout).
pub async fn run(lifecycle: Lifecycle) {
    let core = lifecycle.core().clone();
    let mut reconciler = Reconciler::default();
    let mut lock: Option<MaintenanceLock> = None;
    let interval = core
        .settings
        .orphan_sweep_interval
        .min(core.settings.heartbeat_timeout);
    loop {
        if let Err(e) = reconciler.pass(&lifecycle).await {
            tracing::warn!(error = %e, "reconciliation with the database failed");
        }
        lifecycle.retire_stale_registrations().await;
        if elected(&core, &mut lock).await {
            instance_pass(&lifecycle).await;
        }
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Whether this server holds the instance's maintenance lock, taking it if it is free.
async fn elected(core: &Core, lock: &mut Option<MaintenanceLock>) -> bool {
    if let Some(held) = lock {
        if held.still_held().await {
            return true;
        }
        tracing::warn!("the maintenance lock's connection broke; another server may take over");
        *lock = None;
    }
    match core
        .store
        .try_maintenance_lock(&core.settings.instance)
        .await
    {
        Ok(Some(taken)) => {
            tracing::info!("this server runs the instance's maintenance now");
            *lock = Some(taken);
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot ask for the maintenance lock"),
    }
    core.metrics
        .maintenance_leader
        .set(i64::from(lock.is_some()));
    lock.is_some()
}

async fn instance_pass(lifecycle: &Lifecycle) {
    let core = lifecycle.core();
    core.metrics.maintenance_passes.inc();
    if let Err(e) = lifecycle.take_over_stranded().await {
        tracing::warn!(error = %e, "taking over what dead servers left failed");
    }
    if let Err(e) = lifecycle.expire_leases().await {
        tracing::warn!(error = %e, "expiring workers' leases failed");
    }
    if let Err(e) = sweep_orphans(core).await {
        tracing::warn!(error = %e, "orphan sweep failed");
    }
    if let Err(e) = core
        .store
        .forget_dead_servers(&core.settings.instance, DEAD_SERVER_ROWS_KEPT_FOR)
        .await
    {
        tracing::warn!(error = %e, "cannot remove dead servers' rows");
    }
}

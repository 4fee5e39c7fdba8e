//! Matches queued jobs with workers: idle workers first, then new workers up to the maximum.
//!
//! One task, woken whenever something changes (a job queued, a worker idle or gone) and once a
//! second as a safety net. Because it is the only caller of the lifecycle's claims, in-flight
//! accounting is simple: every alive worker is in the registry from the moment it is requested
//! until its resource is destroyed, so `max_workers` is never exceeded, and each new worker is
//! bound to one claimed job, so N queued jobs never provision more than N workers.

use std::time::Duration;

use crate::{lifecycle::Lifecycle, provisioning};

const SAFETY_TICK: Duration = Duration::from_secs(1);

pub async fn run(lifecycle: Lifecycle) {
    let core = lifecycle.core().clone();
    let mut backoff = Duration::from_millis(100);
    let mut ticker = tokio::time::interval(SAFETY_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The safety tick also releases retries whose timer this process does not hold (jobs
        // re-queued by another server, a previous process, or the maintenance's takeover).
        let tick = tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = core.dispatcher_woken() => false,
            _ = ticker.tick() => true,
        };
        if core.is_draining() {
            continue;
        }
        if core.take_retries_due() || tick {
            match lifecycle.release_due_retries().await {
                Ok(0) => {}
                Ok(released) => tracing::debug!(released, "re-queued jobs claimable again"),
                Err(e) => tracing::warn!(error = %e, "cannot release re-queued jobs"),
            }
        }
        match dispatch_once(&lifecycle).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::error!(error = %e, "dispatch failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn dispatch_once(lifecycle: &Lifecycle) -> anyhow::Result<()> {
    let core = lifecycle.core();
    // 1. Idle workers take queued jobs.
    lifecycle.assign_idle_workers().await?;

    // 2. New workers for what is still claimable (jobs waiting out a retry backoff are not).
    // Room is checked first, so a full fleet working through a long queue asks nothing.
    let room = || core.registry.alive_count() < core.settings.max_workers;
    if !room() || !core.store.has_claimable_job().await? {
        return Ok(());
    }
    while room() && !core.is_draining() {
        let Some(new) = lifecycle.claim_for_new_worker().await? else {
            break;
        };
        let (worker, job) = (new.id, new.job.id);
        lifecycle.spawn_provisioning(worker, job, provisioning::provision(lifecycle.clone(), new));
    }
    Ok(())
}

//! Matches queued jobs with workers: idle workers first, then new workers up to the maximum.
//!
//! One task, woken whenever something changes (a job queued, a worker idle or gone) and once a
//! second as a safety net. Because it is the only place that hands out jobs and creates
//! workers, in-flight accounting is simple: every alive worker is in the registry from the
//! moment it is requested until its resource is destroyed, so `max_workers` is never exceeded,
//! and each new worker is bound to one claimed job, so N queued jobs never provision more than
//! N workers.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use crate::{core::Core, provisioning::start_worker_for_next_job, session::SessionCommand};

const SAFETY_TICK: Duration = Duration::from_secs(1);

pub async fn run(core: Arc<Core>) {
    let mut backoff = Duration::from_millis(100);
    let mut ticker = tokio::time::interval(SAFETY_TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The safety tick also releases retries whose timer this process does not hold (jobs
        // re-queued by a previous run, or by start-up recovery before this loop started).
        let tick = tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = core.dispatch.notified() => false,
            _ = ticker.tick() => true,
        };
        if core.is_draining() {
            continue;
        }
        if core.retries_due.swap(false, Ordering::SeqCst) || tick {
            match core.store.release_due_retries().await {
                Ok(0) => {}
                Ok(released) => tracing::debug!(released, "re-queued jobs claimable again"),
                Err(e) => tracing::warn!(error = %e, "cannot release re-queued jobs"),
            }
        }
        match dispatch_once(&core).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::error!(error = %e, "dispatch failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn dispatch_once(core: &Arc<Core>) -> anyhow::Result<()> {
    // 1. Idle workers take queued jobs.
    let idle = core.registry.reserve_idle();
    let mut idle = idle.into_iter();
    for worker in idle.by_ref() {
        let job = match core.store.claim_next_job(worker).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                core.registry.unreserve(worker);
                break;
            }
            Err(e) => {
                core.registry.unreserve(worker);
                for rest in idle {
                    core.registry.unreserve(rest);
                }
                return Err(e.into());
            }
        };
        let job_id = job.id;
        match core.registry.assign(worker, job_id) {
            Some(commands) if commands.send(SessionCommand::Assign(Box::new(job))).is_ok() => {}
            _ => {
                core.release_unsent(job_id, worker, "worker went away before the job was sent")
                    .await
            }
        }
    }
    for worker in idle {
        core.registry.unreserve(worker);
    }

    // 2. New workers for what is still claimable (jobs waiting out a retry backoff are not).
    // Room is checked first, so a full fleet working through a long queue asks nothing.
    if core.registry.alive_count() >= core.settings.max_workers
        || !core.store.has_claimable_job().await?
    {
        return Ok(());
    }
    while core.registry.alive_count() < core.settings.max_workers && !core.is_draining() {
        if !start_worker_for_next_job(core).await? {
            break;
        }
    }
    Ok(())
}

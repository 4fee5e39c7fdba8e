//! Asking the provider for a worker, and watching it until it registers or fails.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use hodei_domain::{JobId, OneTimeToken, WorkerFailure, WorkerId, WorkerState};
use hodei_providers::{WorkerSpec, WorkerStatus, env};

use crate::{core::Core, registry::Phase};

/// Creates a worker for the already-claimed `job` and follows it until it registers.
/// Any failure is classified, recorded on the worker, and re-queues (or fails) the job.
pub async fn provision(core: Arc<Core>, worker: WorkerId, job: JobId, token: OneTimeToken) {
    let started = Instant::now();
    let found = core
        .retry_db("reading a job to provision for", || core.store.get_job(job))
        .await;
    let spec = match found {
        Ok(Some(job)) => job.spec,
        Ok(None) => return fail(&core, worker, job, "job disappeared".into()).await,
        Err(e) => return fail(&core, worker, job, format!("database error: {e}")).await,
    };
    let settings = &core.settings;
    let mut extra_env = std::collections::BTreeMap::new();
    if let Some(ca) = &settings.worker_ca_pem {
        extra_env.insert(env::TLS_CA_PEM.to_string(), ca.clone());
    }
    let worker_spec = WorkerSpec {
        worker_id: worker,
        token,
        server_address: core.worker_address.clone(),
        instance: settings.instance.clone(),
        resources: spec.resources,
        // Long enough to register and run the job; a bound for Pods that are never cleaned up.
        lifetime: Some(
            settings.provisioning_timeout
                + spec.timeout
                + settings.kill_grace
                + Duration::from_secs(60),
        ),
        extra_env,
    };
    let created = tokio::select! {
        _ = core.kill.cancelled() => return,
        created = core.provider.create_worker(&worker_spec) => created,
    };
    match created {
        Ok(handle) if matches!(core.registry.phase(worker), None | Some(Phase::Retiring)) => {
            // Retired while being created (its job was cancelled): the destroy that retiring
            // started may have run before the resource existed.
            tracing::info!(%worker, %job, resource = handle.resource, "worker created after it was retired; destroying it");
            if let Err(e) = core.provider.destroy_worker(&worker).await {
                tracing::warn!(%worker, error = %e, "destroying a retired worker failed; the orphan sweep will retry");
            }
            return;
        }
        Ok(handle) => {
            tracing::info!(%worker, %job, resource = handle.resource, provider = core.provider.name(), "worker created");
            if let Err(e) = core
                .store
                .set_worker_resource(worker, &handle.resource)
                .await
            {
                tracing::warn!(%worker, error = %e, "cannot record worker resource");
            }
        }
        Err(e) => return fail(&core, worker, job, e.to_worker_failure().to_string()).await,
    }

    let mut last_seen = String::from("not observed yet");
    loop {
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = tokio::time::sleep(settings.provisioning_poll_interval) => {}
        }
        match core.registry.phase(worker) {
            Some(Phase::Provisioning { .. }) => {}
            // Registered, or removed (its job was cancelled): nothing left to watch.
            _ => return,
        }
        if started.elapsed() >= settings.provisioning_timeout {
            let failure = WorkerFailure::ProvisioningTimeout {
                after: settings.provisioning_timeout,
            };
            return fail(
                &core,
                worker,
                job,
                format!("{failure} (last status: {last_seen})"),
            )
            .await;
        }
        match core.provider.worker_status(&worker).await {
            Ok(WorkerStatus::Pending { detail }) => last_seen = format!("pending: {detail}"),
            Ok(WorkerStatus::Running) => last_seen = "running, not registered".into(),
            Ok(WorkerStatus::Failed(failure)) => {
                return fail(&core, worker, job, failure.to_string()).await;
            }
            Ok(WorkerStatus::Exited { exit_code, detail }) => {
                // It may have exited right after registering; only fail it if it did not.
                if core
                    .registry
                    .phase(worker)
                    .is_some_and(|p| matches!(p, Phase::Provisioning { .. }))
                {
                    let failure = WorkerFailure::ExitedEarly { exit_code, detail };
                    return fail(&core, worker, job, failure.to_string()).await;
                }
                return;
            }
            Ok(WorkerStatus::NotFound) => {
                return fail(
                    &core,
                    worker,
                    job,
                    "worker resource disappeared before registering".into(),
                )
                .await;
            }
            Err(e) => last_seen = format!("provider error: {e}"),
        }
    }
}

async fn fail(core: &Arc<Core>, worker: WorkerId, job: JobId, reason: String) {
    if !core.registry.retire_if_provisioning(worker) {
        return; // it registered meanwhile; the session owns it now
    }
    tracing::warn!(%worker, %job, reason, "provisioning failed");
    let _ = core
        .retry_db("recording a failed worker", || {
            core.store
                .set_worker_state(worker, WorkerState::Failed, &reason)
        })
        .await;
    core.requeue_or_fail(job, worker, &reason).await;
    if let Err(e) = core.provider.destroy_worker(&worker).await {
        tracing::warn!(%worker, error = %e, "cleaning up a failed worker failed; the orphan sweep will retry");
    }
    // Only now is its slot free: a Pod being deleted still holds its node's resources.
    core.registry.remove(worker);
    core.wake_dispatcher();
}

/// Claims the oldest queued job for a new worker (recorded with its token in the same
/// transaction) and starts provisioning it. False when the queue turned out to be empty.
pub async fn start_worker_for_next_job(core: &Arc<Core>) -> anyhow::Result<bool> {
    let worker = WorkerId::new();
    let token = OneTimeToken::generate();
    let settings = &core.settings;
    let expires = Utc::now()
        + chrono::Duration::from_std(settings.provisioning_timeout)
            .unwrap_or(chrono::Duration::minutes(5));
    let claimed = core
        .store
        .claim_job_for_new_worker(
            worker,
            &settings.instance,
            core.provider.name(),
            token.hash(),
            expires,
        )
        .await?;
    let Some(job) = claimed else {
        return Ok(false);
    };
    core.registry.insert_provisioning(worker, job.id);
    tracing::info!(%worker, job = %job.id, attempt = job.attempts, "provisioning a worker");
    core.tasks
        .spawn(provision(core.clone(), worker, job.id, token));
    Ok(true)
}

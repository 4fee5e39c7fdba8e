//! Asking the provider for a worker, and watching it until it registers or fails.

use std::{collections::BTreeMap, time::Duration};

use hodei_contract::env;
use hodei_domain::WorkerFailure;
use hodei_providers::{WorkerSpec, WorkerStatus};

use crate::{
    lifecycle::{Lifecycle, NewWorker},
    registry::Phase,
};

/// Creates the worker for its already-claimed job and follows it until it registers (the
/// registry says so at once) or fails in a classified way: image pull, crash loop,
/// unschedulable, OOM, early exit, or the provisioning deadline. A failure goes to the
/// lifecycle, which re-queues the job.
pub async fn provision(lifecycle: Lifecycle, new: NewWorker) {
    let core = lifecycle.core().clone();
    let started = tokio::time::Instant::now();
    let NewWorker {
        id: worker,
        job,
        token,
    } = new;
    let settings = &core.settings;
    let fail = |reason: String| lifecycle.provisioning_failed(worker, job.id, reason);
    let mut extra_env = BTreeMap::new();
    if let Some(ca) = &settings.worker_ca_pem {
        extra_env.insert(env::TLS_CA_PEM.to_string(), ca.clone());
    }
    let worker_spec = WorkerSpec {
        worker_id: worker,
        token,
        server_address: core.worker_address.clone(),
        instance: settings.instance.clone(),
        resources: job.spec.resources,
        // Long enough to register and run the job; a bound for Pods that are never cleaned up.
        lifetime: Some(
            settings.provisioning_timeout
                + job.spec.timeout
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
            tracing::info!(%worker, job = %job.id, resource = handle.resource, "worker created after it was retired; destroying it");
            if let Err(e) = core.provider.destroy_worker(&worker).await {
                tracing::warn!(%worker, error = %e, "destroying a retired worker failed; the orphan sweep will retry");
            }
            return;
        }
        Ok(handle) => {
            tracing::info!(%worker, job = %job.id, resource = handle.resource, provider = core.provider.name(), "worker created");
            if let Err(e) = core
                .store
                .set_worker_resource(worker, &handle.resource)
                .await
            {
                tracing::warn!(%worker, error = %e, "cannot record worker resource");
            }
        }
        Err(e) => {
            let failure = e.to_worker_failure();
            return lifecycle
                .provisioning_failed_with(worker, job.id, &failure)
                .await;
        }
    }

    let Some(mut phase) = core.registry.watch(worker) else {
        return; // removed meanwhile (its job was cancelled)
    };
    let deadline = started + settings.provisioning_timeout;
    let mut last_seen = String::from("not observed yet");
    loop {
        tokio::select! {
            _ = core.kill.cancelled() => return,
            // Registered, retired or removed: nothing left to watch.
            _ = async {
                // The guard `wait_for` returns must not live across the other branches' awaits.
                let _ = phase.wait_for(|p| !matches!(p, Phase::Provisioning { .. })).await;
            } => return,
            _ = tokio::time::sleep(settings.provisioning_poll_interval) => {}
            _ = tokio::time::sleep_until(deadline) => {
                let failure = WorkerFailure::ProvisioningTimeout {
                    after: settings.provisioning_timeout,
                };
                return fail(format!("{failure} (last status: {last_seen})")).await;
            }
        }
        match core.provider.worker_status(&worker).await {
            Ok(WorkerStatus::Pending { detail }) => last_seen = format!("pending: {detail}"),
            Ok(WorkerStatus::Running) => {
                if lifecycle.registered_elsewhere(worker).await {
                    return;
                }
                last_seen = "running, not registered".into();
            }
            Ok(WorkerStatus::Failed(failure)) => {
                return lifecycle
                    .provisioning_failed_with(worker, job.id, &failure)
                    .await;
            }
            // It may have exited right after registering: the lifecycle only fails a worker
            // still provisioning.
            Ok(WorkerStatus::Exited { exit_code, detail }) => {
                let failure = WorkerFailure::ExitedEarly { exit_code, detail };
                return fail(failure.to_string()).await;
            }
            Ok(WorkerStatus::NotFound) => {
                return fail("worker resource disappeared before registering".into()).await;
            }
            Err(e) => last_seen = format!("provider error: {e}"),
        }
    }
}

//! The server in the cluster (issue 14, item 5): `deploy/kubernetes/server` applied with
//! `kubectl apply -k` to a Kind cluster — three `hodei-server` Pods of the server image, a
//! RollingUpdate strategy, a PodDisruptionBudget — sharing one PostgreSQL, with workers as Pods
//! that dial the Service. Deleting the server Pod that holds a running job's worker, or rolling
//! every server, must not re-run any job: each ends with one attempt and its whole output.
//!
//! Every test is ignored by default and run by `scripts/e2e/run-kubernetes-e2e.sh`, which
//! brings up the Kind cluster, loads the worker and server images and exports
//! `HODEI_E2E_K8S=1`, `KUBECONFIG`, `HODEI_E2E_SERVER_HOST` and `HODEI_KUBECTL_BIN`. Without
//! them each test fails saying so. They deploy into the manifests' own namespaces, so they run
//! one at a time (`.config/nextest.toml`, group `serial-infra`); `in_cluster` describes the
//! set-up and the clean-up.

mod common;
mod in_cluster;

use std::time::{Duration, Instant};

use hodei_domain::WorkerId;
use hodei_proto::v1 as pb;
use hodei_providers::kubernetes::pod_name;
use hodei_testkit::{
    Probe,
    jobs::{describe, is_final, state_of},
    log_lines::{assert_contiguous, texts},
    wait_for,
};
use in_cluster::{
    DEPLOYMENT, MAX_WORKERS, REPLICAS, SERVER_SELECTOR, SERVICE, SYSTEM_NAMESPACE,
    ServersInCluster, is_ready, name_of, names, step,
};
use k8s_openapi::{
    api::{discovery::v1::EndpointSlice, policy::v1::PodDisruptionBudget},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};

/// From queueing to running: a worker Pod scheduled, its image on the node, registered.
const POD_START: Duration = Duration::from_secs(120);
/// A job of [`numbered_lines`] that takes `seconds`, from queueing to its end, with margin for
/// its worker moving to another server.
fn job_timeout(seconds: u64) -> Duration {
    POD_START + Duration::from_secs(seconds * 2 + 60)
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kind cluster with the server image; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn the_server_deployment_runs_three_ready_replicas_in_the_cluster() -> anyhow::Result<()> {
    let servers = ServersInCluster::deploy().await?;

    // The Deployment as the manifest declares it: three replicas, rolled one extra at a time.
    let deployment = servers.deployments().get(DEPLOYMENT).await?;
    let spec = deployment.spec.expect("a Deployment has a spec");
    assert_eq!(spec.replicas, Some(REPLICAS));
    let strategy = spec.strategy.expect("deployment.yaml sets a strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.expect("RollingUpdate parameters");
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));

    // Three Ready servers, each of the image under test.
    let pods = servers.server_pods().await?;
    assert_eq!(pods.len(), REPLICAS as usize, "{:?}", names(&pods));
    let image =
        std::env::var("HODEI_SERVER_IMAGE").unwrap_or_else(|_| "hodei-server:e2e-test".into());
    for pod in &pods {
        assert!(is_ready(pod), "{} is not Ready", name_of(pod));
        let containers = &pod.spec.as_ref().expect("a Pod has a spec").containers;
        assert_eq!(containers[0].image.as_deref(), Some(image.as_str()));
    }

    // The Service sends connections to all three (readiness is the gRPC health check).
    let slices: Api<EndpointSlice> = Api::namespaced(servers.client.clone(), SYSTEM_NAMESPACE);
    let selector = format!("kubernetes.io/service-name={SERVICE}");
    wait_for(
        &format!("service/{SERVICE} to have {REPLICAS} ready endpoints"),
        Duration::from_secs(60),
        || async {
            let ready: usize = slices
                .list(&ListParams::default().labels(&selector))
                .await?
                .items
                .iter()
                .flat_map(|slice| &slice.endpoints)
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count();
            Ok(if ready == REPLICAS as usize {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{ready} ready endpoints"))
            })
        },
    )
    .await?;

    // The budget lets one server go at a time, and no more.
    let budgets: Api<PodDisruptionBudget> =
        Api::namespaced(servers.client.clone(), SYSTEM_NAMESPACE);
    let budget = wait_for(
        "poddisruptionbudget/hodei-server to count 3 healthy servers, 1 disruption allowed",
        Duration::from_secs(60),
        || async {
            let budget = budgets.get(DEPLOYMENT).await?;
            let status = budget.status.clone().unwrap_or_default();
            Ok(
                if status.current_healthy == REPLICAS && status.disruptions_allowed == 1 {
                    Probe::Ready(budget)
                } else {
                    Probe::Pending(format!(
                        "healthy {}, desired {}, allowed {}",
                        status.current_healthy, status.desired_healthy, status.disruptions_allowed
                    ))
                },
            )
        },
    )
    .await?;
    let budget_spec = budget.spec.expect("a PodDisruptionBudget has a spec");
    assert_eq!(budget_spec.max_unavailable, Some(IntOrString::Int(1)));

    // A job runs in a worker Pod that dials the Service, and succeeds the first time.
    step("a job through the in-cluster servers");
    let id = queue(&servers, &numbered_lines(5, "0.5")).await?;
    let job = wait_job(&servers, &id, "running", POD_START, |job| {
        state_of(job) == pb::JobState::Running
    })
    .await?;
    let worker_pod = servers
        .worker_pods_api()
        .get(&pod_name(&job.worker_id.parse::<WorkerId>()?))
        .await?;
    let dialled = worker_pod
        .spec
        .as_ref()
        .and_then(|spec| spec.containers[0].env.as_ref())
        .and_then(|env| {
            env.iter()
                .find(|var| var.name == hodei_contract::env::SERVER)
        })
        .and_then(|var| var.value.clone());
    assert_eq!(
        dialled,
        Some(servers.server_env("HODEI_WORKER_SERVER_URL").await?),
        "the worker Pod dials the Service"
    );
    let job = wait_job(&servers, &id, "final", job_timeout(3), |job| {
        is_final(job.state)
    })
    .await?;
    assert_succeeded_once(&servers, &job, 5).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kind cluster with the server image; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn deleting_the_server_pod_that_holds_a_running_jobs_worker_finishes_the_job_with_one_attempt()
-> anyhow::Result<()> {
    let servers = ServersInCluster::deploy().await?;
    // 60 lines, one every 0.5 s: 30 s, of which most is left when its server goes.
    let lines = 60;
    let id = queue(&servers, &numbered_lines(lines, "0.5")).await?;
    let job = wait_job(&servers, &id, "running", POD_START, |job| {
        state_of(job) == pb::JobState::Running
    })
    .await?;
    let worker = job.worker_id.clone();
    wait_lines(&servers, &id, 4).await?;

    let (holder, server_id) = servers.pod_holding(&worker).await?;
    step(&format!(
        "deleting {holder}, the server {server_id} that holds worker {worker} (job {id} running)"
    ));
    let deleted_at = Instant::now();
    servers
        .server_pods_api()
        .delete(&holder, &DeleteParams::default())
        .await?;

    // The worker keeps its job and re-attaches to another server, while the job still runs.
    let seen = wait_for(
        &format!(
            "worker {worker} to be held by a server other than {server_id}, or job {id} to end"
        ),
        Duration::from_secs(90),
        || async {
            let now = servers.worker_server_id(&worker).await?;
            let job = get_job(&servers, &id).await?;
            Ok(match now {
                Some(other) if other != server_id => Probe::Ready(Ok(other)),
                _ if is_final(job.state) => Probe::Ready(Err((now, job))),
                other => Probe::Pending(format!("held by {other:?}, job {}", describe(&job))),
            })
        },
    )
    .await?;
    let moved_to = match seen {
        Ok(server) => server,
        Err((held_by, job)) => panic!(
            "job {id} ended ({}) before its worker {worker} was seen on another server than \
             {server_id} (held by {held_by:?})",
            describe(&job)
        ),
    };
    eprintln!(
        "    worker {worker} moved to server {moved_to} {:.1?} after the deletion",
        deleted_at.elapsed()
    );

    let job = wait_job(&servers, &id, "final", job_timeout(30), |job| {
        is_final(job.state)
    })
    .await?;
    assert_eq!(job.worker_id, worker, "the same worker finished the job");
    assert_succeeded_once(&servers, &job, lines).await?;

    // The Deployment replaced the deleted server.
    let pods = servers
        .wait_rollout("the replacement of the deleted server")
        .await?;
    assert!(
        !names(&pods).contains(&holder),
        "{holder} is gone: {:?}",
        names(&pods)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kind cluster with the server image; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn a_rollout_restart_during_20_jobs_loses_none_and_reruns_none() -> anyhow::Result<()> {
    let servers = ServersInCluster::deploy().await?;
    let before = names(&servers.server_pods().await?);
    // 20 jobs of 15 s each; MAX_WORKERS at a time, so the run spans the rollout.
    let (jobs, lines) = (20, 30);
    let mut ids = Vec::new();
    for _ in 0..jobs {
        ids.push(queue(&servers, &numbered_lines(lines, "0.5")).await?);
    }
    let running = wait_for("at least 3 of the 20 jobs running", POD_START, || async {
        let running = count_in(&servers, &ids, pb::JobState::Running).await?;
        Ok(if running >= 3 {
            Probe::Ready(running)
        } else {
            Probe::Pending(format!("{running} running"))
        })
    })
    .await?;

    step(&format!(
        "kubectl rollout restart deployment/{DEPLOYMENT} with {running} jobs running (at most \
         {MAX_WORKERS} at a time)"
    ));
    servers.kubectl().run(&[
        "-n",
        SYSTEM_NAMESPACE,
        "rollout",
        "restart",
        &format!("deployment/{DEPLOYMENT}"),
    ])?;
    let restarted_at = Instant::now();
    // The restart is one new generation: complete when its three servers replaced the old.
    let after = names(&servers.wait_rollout("the rollout restart").await?);
    assert!(
        after.iter().all(|pod| !before.contains(pod)),
        "every server Pod replaced: before {before:?}, after {after:?}"
    );
    let unfinished = ids.len() - count_final(&servers, &ids).await?;
    eprintln!(
        "    rolled {before:?} → {after:?} in {:.0?}; {unfinished} of {jobs} jobs not yet finished",
        restarted_at.elapsed()
    );

    let all_done =
        POD_START + Duration::from_secs(15 * (jobs as u64).div_ceil(u64::from(MAX_WORKERS)) * 3);
    let mut finals = Vec::new();
    for id in &ids {
        finals.push(wait_job(&servers, id, "final", all_done, |job| is_final(job.state)).await?);
    }
    let mut failures = Vec::new();
    for job in &finals {
        if state_of(job) != pb::JobState::Succeeded || job.attempts != 1 {
            failures.push(format!(
                "{}: {}; {}",
                job.id,
                describe(job),
                attempts_of(job)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {jobs} jobs did not succeed at the first attempt: {failures:#?}",
        failures.len()
    );
    for job in &finals {
        assert_succeeded_once(&servers, job, lines).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Jobs through the in-cluster servers
// ---------------------------------------------------------------------------------------------

/// A job printing `line 1` … `line N`, one every `interval` seconds, in the worker image's
/// busybox shell.
fn numbered_lines(lines: u32, interval: &str) -> pb::JobSpec {
    let mut spec = hodei_testkit::jobs::spec(&format!(
        "i=1; while [ $i -le {lines} ]; do echo \"line $i\"; i=$((i + 1)); sleep {interval}; done"
    ));
    spec.timeout_seconds = Some(600);
    spec
}

fn expected_lines(lines: u32) -> Vec<String> {
    (1..=lines).map(|i| format!("line {i}")).collect()
}

async fn queue(servers: &ServersInCluster, spec: &pb::JobSpec) -> anyhow::Result<String> {
    let request = pb::QueueJobRequest {
        spec: Some(spec.clone()),
    };
    Ok(servers.jobs().queue_job(request).await?.into_inner().id)
}

async fn get_job(servers: &ServersInCluster, id: &str) -> anyhow::Result<pb::Job> {
    let request = pb::GetJobRequest {
        job_id: id.into(),
        ..Default::default()
    };
    Ok(servers.jobs().get_job(request).await?.into_inner())
}

/// Polls the job until `done`; a call that fails (its server just went away) is retried.
async fn wait_job(
    servers: &ServersInCluster,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&pb::Job) -> bool,
) -> anyhow::Result<pb::Job> {
    let done = &done;
    wait_for(&format!("job {id} to be {what}"), timeout, || async move {
        let job = get_job(servers, id).await?;
        Ok(if done(&job) {
            Probe::Ready(job)
        } else {
            Probe::Pending(describe(&job))
        })
    })
    .await
}

async fn count_in(
    servers: &ServersInCluster,
    ids: &[String],
    state: pb::JobState,
) -> anyhow::Result<usize> {
    let mut count = 0;
    for id in ids {
        if state_of(&get_job(servers, id).await?) == state {
            count += 1;
        }
    }
    Ok(count)
}

async fn count_final(servers: &ServersInCluster, ids: &[String]) -> anyhow::Result<usize> {
    let mut count = 0;
    for id in ids {
        if is_final(get_job(servers, id).await?.state) {
            count += 1;
        }
    }
    Ok(count)
}

/// Every stored line of the job, page by page.
async fn all_lines(servers: &ServersInCluster, id: &str) -> anyhow::Result<Vec<pb::LogLine>> {
    let mut lines = Vec::new();
    let mut from = 0;
    loop {
        let request = pb::GetLogsRequest {
            job_id: id.into(),
            from_sequence: from,
            limit: 1000,
        };
        let page = servers.logs().get_logs(request).await?.into_inner();
        if page.lines.is_empty() {
            return Ok(lines);
        }
        from = page.next_sequence;
        lines.extend(page.lines);
    }
}

/// Waits until the job has stored at least `count` lines: it is well under way.
async fn wait_lines(servers: &ServersInCluster, id: &str, count: usize) -> anyhow::Result<()> {
    wait_for(
        &format!("job {id} to have printed {count} lines"),
        Duration::from_secs(60),
        || async {
            let lines = all_lines(servers, id).await?.len();
            Ok(if lines >= count {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("{lines} lines"))
            })
        },
    )
    .await
}

/// Each attempt's worker, outcome and reason: why a job ran again.
fn attempts_of(job: &pb::Job) -> String {
    let attempts: Vec<String> = job
        .attempt_history
        .iter()
        .map(|a| {
            format!(
                "#{} worker {} {} {:?}",
                a.attempt, a.worker_id, a.outcome, a.reason
            )
        })
        .collect();
    format!("attempts: [{}]", attempts.join("; "))
}

/// Succeeded, exit 0, one attempt, and its output whole: `line 1` … `line N`, each once, in
/// order, numbered without gaps.
async fn assert_succeeded_once(
    servers: &ServersInCluster,
    job: &pb::Job,
    lines: u32,
) -> anyhow::Result<()> {
    assert_eq!(
        (state_of(job), job.exit_code, job.attempts),
        (pb::JobState::Succeeded, Some(0), 1),
        "job {}: {}; {}",
        job.id,
        describe(job),
        attempts_of(job)
    );
    let stored = all_lines(servers, &job.id).await?;
    assert_contiguous(&stored);
    assert_eq!(
        texts(&stored),
        expected_lines(lines),
        "output of job {}",
        job.id
    );
    Ok(())
}

#[test]
fn the_selector_names_the_deployments_pods() {
    // deploy/kubernetes/server labels its Pods so; the tests find the servers by it.
    let manifest = include_str!("../../../deploy/kubernetes/server/deployment.yaml");
    let (key, value) = SERVER_SELECTOR.split_once('=').expect("key=value");
    assert!(manifest.contains(&format!("{key}: {value}")));
}

//! End to end with workers as Docker containers: a real `hodei-server` (in process, bound to
//! `0.0.0.0`), real `hodei-worker` containers from the worker image on the local engine,
//! reaching the server through the bridge gateway, and a real PostgreSQL per test.
//!
//! Run with `scripts/e2e/run-docker-e2e.sh`, which checks the engine, builds the image
//! (`HODEI_WORKER_IMAGE`, default `hodei-worker:e2e-test`) when it is missing and removes every
//! container left behind. Without an engine or the image every test fails, saying which.
//! Every test uses its own `hodei.io/instance` and, even when it fails, removes the containers
//! labelled with it.

mod common;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Deref,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use bollard::{
    models::{ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig},
    query_parameters::{CreateContainerOptionsBuilder, ListContainersOptionsBuilder},
};
use common::{
    TestServer,
    reachability::{self, WorkerNetwork},
    test_settings,
};
use hodei_contract::env;
use hodei_domain::{OneTimeToken, WorkerId};
use hodei_proto::v1 as pb;
use hodei_providers::{
    WorkerProvider,
    docker::{DockerProvider, DockerProviderConfig, TOKEN_PATH, container_name},
    labels,
};
use hodei_server::Settings;
use hodei_testkit::jobs::{assert_state, describe, spec};
use hodei_testkit::log_lines::texts;
use hodei_testkit::{Probe, wait_for};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// Long enough for the engine to stop and remove a container.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Plumbing

/// Serialises reading `HODEI_E2E_SERVER_HOST` with the one test that changes it.
static SERVER_HOST_ENV: Mutex<()> = Mutex::new(());

/// The address containers on the default bridge use to reach this machine.
fn server_host() -> anyhow::Result<String> {
    let _guard = SERVER_HOST_ENV
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    reachability::server_host_for(WorkerNetwork::Docker, "bridge")
}

/// Test settings for container workers: the server binds every interface, workers dial the
/// bridge gateway, and destroyed workers get a short stop grace.
fn container_settings() -> anyhow::Result<Settings> {
    let mut settings = test_settings();
    settings.listen = "0.0.0.0:0".parse()?;
    settings.worker_server_host = server_host()?;
    Ok(settings)
}

/// A provider for `image`, which must exist unless `require_image` is false.
async fn docker_provider(image: &str, require_image: bool) -> anyhow::Result<Arc<DockerProvider>> {
    docker_provider_with(image, require_image, |_| {}).await
}

/// Like [`docker_provider`], with `tweak` applied to the provider's configuration.
async fn docker_provider_with(
    image: &str,
    require_image: bool,
    tweak: impl FnOnce(&mut DockerProviderConfig),
) -> anyhow::Result<Arc<DockerProvider>> {
    let mut config = DockerProviderConfig::new(image);
    config.stop_grace = Duration::from_secs(3);
    tweak(&mut config);
    let provider = DockerProvider::connect(config).await.context(
        "these tests need a Docker engine: start dockerd, or run scripts/e2e/run-docker-e2e.sh",
    )?;
    if require_image {
        provider
            .docker()
            .inspect_image(image)
            .await
            .with_context(|| {
                format!(
                    "the worker image {image} is not on the Docker engine: build it with \
                 scripts/build-worker-image.sh (scripts/e2e/run-docker-e2e.sh does so)"
                )
            })?;
    }
    Ok(Arc::new(provider))
}

/// The worker image under test: `HODEI_WORKER_IMAGE`, else `hodei-worker:e2e-test`.
fn worker_image() -> String {
    DockerProviderConfig::default().image
}

/// Removes every container of one instance when dropped, so a failing test leaves nothing.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let filter = format!("label={}={}", labels::INSTANCE, self.0);
        let Ok(output) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            eprintln!(
                "removing {} container(s) left by instance {}",
                ids.len(),
                self.0
            );
            let _ = Command::new("docker")
                .args(["rm", "--force", "--volumes"])
                .args(&ids)
                .output();
        }
    }
}

/// A server whose workers are containers, with the provider's engine client at hand.
struct DockerServer {
    server: TestServer,
    provider: Arc<DockerProvider>,
    _leftovers: Leftovers,
}

impl Deref for DockerServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl DockerServer {
    /// A server with the worker image; `tweak` adjusts the container settings.
    async fn start(tweak: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let mut settings = container_settings()?;
        tweak(&mut settings);
        Self::start_with(settings, &worker_image(), true).await
    }

    async fn start_with(
        settings: Settings,
        image: &str,
        require_image: bool,
    ) -> anyhow::Result<Self> {
        Self::start_configured(settings, image, require_image, |_| {}).await
    }

    /// A server whose provider's configuration `tweak` adjusted.
    async fn start_configured(
        settings: Settings,
        image: &str,
        require_image: bool,
        tweak: impl FnOnce(&mut DockerProviderConfig),
    ) -> anyhow::Result<Self> {
        let leftovers = Leftovers(settings.instance.clone());
        let provider = docker_provider_with(image, require_image, tweak).await?;
        let dyn_provider: Arc<dyn WorkerProvider> = provider.clone();
        let server = TestServer::start(settings, dyn_provider).await?;
        Ok(Self {
            server,
            provider,
            _leftovers: leftovers,
        })
    }

    fn docker(&self) -> &bollard::Docker {
        self.provider.docker()
    }

    fn instance(&self) -> &str {
        &self.settings.instance
    }

    async fn shutdown(self) -> anyhow::Result<()> {
        self.server.shutdown().await
    }

    /// Every container of this instance, running or not, as `(name, inspection)`.
    async fn containers(&self) -> anyhow::Result<Vec<(String, ContainerInspectResponse)>> {
        containers_of(self.docker(), self.instance()).await
    }

    /// Waits until `n` containers of this instance exist at the same time.
    async fn wait_containers(
        &self,
        n: usize,
    ) -> anyhow::Result<Vec<(String, ContainerInspectResponse)>> {
        wait_for(
            &format!("{n} worker container(s) of this instance"),
            JOB_TIMEOUT,
            || async {
                let containers = self.containers().await?;
                Ok(if containers.len() >= n {
                    Probe::Ready(containers)
                } else {
                    Probe::Pending(format!("{} container(s)", containers.len()))
                })
            },
        )
        .await
    }

    /// The SHA-256 of the worker's one-time token, as stored, and whether it was consumed.
    async fn stored_token(&self, worker: uuid::Uuid) -> anyhow::Result<(Vec<u8>, bool)> {
        Ok(sqlx::query_as(
            "SELECT token_hash, consumed_at IS NOT NULL FROM worker_tokens WHERE worker_id = $1",
        )
        .bind(worker)
        .fetch_one(self.store.pool())
        .await?)
    }
}

async fn containers_of(
    docker: &bollard::Docker,
    instance: &str,
) -> anyhow::Result<Vec<(String, ContainerInspectResponse)>> {
    let filters = HashMap::from([("label", vec![format!("{}={instance}", labels::INSTANCE)])]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let mut found = Vec::new();
    for summary in docker.list_containers(Some(options)).await? {
        let Some(id) = summary.id else { continue };
        // It may be removed between listing and inspecting.
        if let Some(container) = inspect(docker, &id).await? {
            let name = container
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            found.push((name, container));
        }
    }
    Ok(found)
}

/// The container, or None when the engine does not know it.
async fn inspect(
    docker: &bollard::Docker,
    name: &str,
) -> anyhow::Result<Option<ContainerInspectResponse>> {
    match docker.inspect_container(name, None).await {
        Ok(container) => Ok(Some(container)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting container {name}")),
    }
}

async fn wait_gone(docker: &bollard::Docker, name: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("container {name} to be removed"),
        GONE_TIMEOUT,
        || async {
            Ok(match inspect(docker, name).await? {
                None => Probe::Ready(()),
                Some(container) => Probe::Pending(format!("{:?}", status_of(&container))),
            })
        },
    )
    .await
}

fn status_of(container: &ContainerInspectResponse) -> Option<ContainerStateStatusEnum> {
    container.state.as_ref().and_then(|state| state.status)
}

fn labels_of(container: &ContainerInspectResponse) -> HashMap<String, String> {
    container
        .config
        .as_ref()
        .and_then(|config| config.labels.clone())
        .unwrap_or_default()
}

fn env_of(container: &ContainerInspectResponse) -> BTreeMap<String, String> {
    container
        .config
        .as_ref()
        .and_then(|config| config.env.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn worker_id_of(container: &ContainerInspectResponse) -> anyhow::Result<uuid::Uuid> {
    let labels = labels_of(container);
    let id = labels
        .get(labels::WORKER_ID)
        .with_context(|| format!("no {} label in {labels:?}", labels::WORKER_ID))?;
    Ok(id.parse()?)
}

/// Checks that `docker inspect` of the container shows no token: the environment points the
/// worker at the token file, and none of the environment, command, entrypoint, arguments or
/// labels is the token whose hash the database holds. Returns that hash.
async fn assert_no_token_in_configuration(
    server: &DockerServer,
    container: &ContainerInspectResponse,
) -> anyhow::Result<Vec<u8>> {
    let env = env_of(container);
    let worker = worker_id_of(container)?;
    assert_eq!(
        env.get(env::TOKEN_FILE).map(String::as_str),
        Some(TOKEN_PATH),
        "{env:?}"
    );
    assert!(!env.contains_key(env::TOKEN), "{env:?}");
    let (stored, _) = server.stored_token(worker).await?;
    let config = container.config.clone().unwrap_or_default();
    let shown = env
        .into_iter()
        .chain(config.labels.unwrap_or_default())
        .flat_map(|(name, value)| [name, value])
        .chain(config.cmd.unwrap_or_default())
        .chain(config.entrypoint.unwrap_or_default())
        .chain(container.args.clone().unwrap_or_default())
        .chain(container.path.clone());
    for value in shown {
        if let Ok(token) = OneTimeToken::parse(&value) {
            assert_ne!(
                token.hash().as_bytes().to_vec(),
                stored,
                "docker inspect shows the token of worker {worker}"
            );
        }
    }
    Ok(stored)
}

/// A container carrying our labels that no database knows; runs `sleep` from the worker image.
async fn create_labelled_container(
    docker: &bollard::Docker,
    instance: &str,
) -> anyhow::Result<String> {
    let worker = WorkerId::new();
    // Named like the provider names its workers: a server that crashed leaves exactly this.
    create_labelled_container_named(docker, instance, worker, &container_name(&worker)).await
}

/// A running container with the labels of `worker` of `instance`, named `name`.
async fn create_labelled_container_named(
    docker: &bollard::Docker,
    instance: &str,
    worker: WorkerId,
    name: &str,
) -> anyhow::Result<String> {
    let name = name.to_string();
    let body = ContainerCreateBody {
        image: Some(worker_image()),
        entrypoint: Some(vec!["/bin/sleep".into(), "300".into()]),
        labels: Some(HashMap::from([
            (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
            (labels::NAME.into(), labels::NAME_VALUE.into()),
            (labels::WORKER_ID.into(), worker.to_string()),
            (labels::INSTANCE.into(), instance.into()),
        ])),
        // As the provider runs workers: an init as PID 1 passes SIGTERM on to `sleep`.
        host_config: Some(HostConfig {
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptionsBuilder::default().name(&name).build();
    docker.create_container(Some(options), body).await?;
    docker.start_container(&name, None).await?;
    Ok(name)
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn given_a_queued_job_when_its_container_worker_registers_then_the_job_runs_and_the_container_is_removed()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let id = server
        .queue(
            "echo hello-from-a-container; \
             echo token=${HODEI_TOKEN:-unset} file=${HODEI_TOKEN_FILE:-unset}; \
             if [ -e /run/hodei/token ]; then echo token-file=present; else echo token-file=gone; fi; \
             if (: < /proc/$PPID/environ) 2>/dev/null; then echo worker-environ=readable; \
             else echo worker-environ=refused; fi; \
             if (: < /proc/$PPID/mem) 2>/dev/null; then echo worker-mem=readable; \
             else echo worker-mem=refused; fi; \
             sleep 2",
        )
        .await?;

    // A container appears, labelled and configured for this worker.
    let containers = server.wait_containers(1).await?;
    assert_eq!(containers.len(), 1, "one job, one container");
    let (name, container) = &containers[0];
    let labels = labels_of(container);
    assert_eq!(labels[labels::MANAGED_BY], "hodei");
    assert_eq!(labels[labels::NAME], "hodei-worker");
    assert_eq!(labels[labels::INSTANCE], server.instance());
    let worker = worker_id_of(container)?;
    assert_eq!(*name, format!("hodei-worker-{worker}"));
    assert_eq!(
        container.config.as_ref().and_then(|c| c.image.as_deref()),
        Some(worker_image().as_str())
    );
    let env = env_of(container);
    assert_eq!(env[env::WORKER_ID], worker.to_string());
    assert_eq!(env[env::SERVER], server.server().worker_address());
    assert!(
        env[env::SERVER].starts_with(&format!("http://{}:", server_host()?)),
        "{}",
        env[env::SERVER]
    );
    assert_no_token_in_configuration(&server, container).await?;

    // The job's output arrives through LogStreamService. The token never reaches the job: not
    // in its environment, not in the file (the worker removed it), and not through its worker
    // (its parent), which is not dumpable.
    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_eq!(
        texts(&lines),
        [
            "hello-from-a-container",
            "token=unset file=unset",
            "token-file=gone",
            "worker-environ=refused",
            "worker-mem=refused",
        ]
    );
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    let (state, exit_code, job_worker): (String, Option<i32>, uuid::Uuid) =
        sqlx::query_as("SELECT state, exit_code, worker_id FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!((state.as_str(), exit_code), ("succeeded", Some(0)));
    assert_eq!(job_worker, worker, "the job ran on another worker");
    let (_, consumed) = server.stored_token(worker).await?;
    assert!(
        consumed,
        "the worker registered without consuming its token"
    );

    // Ephemeral: the container is gone afterwards.
    wait_gone(server.docker(), name).await?;
    server.wait_no_workers(GONE_TIMEOUT).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "terminated", "{rows:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_failing_command_in_a_container_fails_the_job_with_its_exit_code_and_stderr_persisted()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let id = server
        .queue("echo to-stdout; echo oops >&2; exit 3")
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.attempts, 1, "a non-zero exit must not be retried");
    assert!(job.reason.contains("exited with code 3"), "{}", job.reason);

    let (state, exit_code): (String, Option<i32>) =
        sqlx::query_as("SELECT state, exit_code FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!((state.as_str(), exit_code), ("failed", Some(3)));
    let stored: Vec<(i16, Vec<u8>)> = sqlx::query_as(
        "SELECT stream, data FROM job_logs WHERE job_id = $1::uuid ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(server.store.pool())
    .await?;
    assert!(
        stored.contains(&(2, b"oops".to_vec())),
        "stderr not stored as stream 2: {stored:?}"
    );
    assert!(
        stored.contains(&(1, b"to-stdout".to_vec())),
        "stdout not stored as stream 1: {stored:?}"
    );
    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| l.stream == pb::LogStream::Stderr as i32)
        .map(|l| l.data.as_ref())
        .collect();
    assert_eq!(stderr, [b"oops"]);

    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn cancelling_a_running_job_destroys_its_running_container_and_leaves_nothing()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let id = server.queue("echo started; sleep 300").await?;
    let mut stream = server.subscribe(&id, 1).await?;
    let first = tokio::time::timeout(JOB_TIMEOUT, stream.message()).await??;
    assert_eq!(first.map(|l| l.data), Some("started".into()));
    let containers = server.containers().await?;
    assert_eq!(containers.len(), 1);
    let (name, container) = &containers[0];
    assert_eq!(
        status_of(container),
        Some(ContainerStateStatusEnum::RUNNING)
    );

    server.cancel(&id, "test says stop").await?;
    let job = server.wait_finished(&id, Duration::from_secs(20)).await?;
    assert_state(&job, pb::JobState::Cancelled);
    assert!(job.reason.contains("test says stop"), "{}", job.reason);
    wait_gone(server.docker(), name).await?;
    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_worker_container_killed_mid_job_is_removed_once_exited_and_its_job_completes_in_a_new_container()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; if [ \"$HODEI_JOB_ATTEMPT\" = 1 ]; then sleep 300; fi; echo done")
        .await?;
    let running = server.wait_running(&id).await?;
    let first = container_name(&running.worker_id.parse()?);
    // SIGKILL to the container's init: the container exits (code 137) with the job in it.
    server.docker().kill_container(&first, None).await?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2);
    assert_ne!(job.worker_id, running.worker_id);
    assert!(
        job.attempt_history[0].reason.contains("worker lost"),
        "{:?}",
        job.attempt_history[0]
    );
    let lines = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    assert!(lines.contains(&"attempt-2".to_string()), "{lines:?}");

    // The exited container is removed, then the second one too.
    wait_gone(server.docker(), &first).await?;
    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_worker_container_stopped_mid_job_has_its_job_requeued_not_cancelled_and_it_completes_in_a_new_container()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; if [ \"$HODEI_JOB_ATTEMPT\" = 1 ]; then sleep 300; fi; echo done")
        .await?;
    let running = server.wait_running(&id).await?;
    let first = container_name(&running.worker_id.parse()?);
    // `docker stop`: SIGTERM to the worker, SIGKILL after the engine's grace.
    let stopped = tokio::process::Command::new("docker")
        .args(["stop", "--time", "10", &first])
        .output()
        .await?;
    anyhow::ensure!(
        stopped.status.success(),
        "docker stop {first}: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2, "{}", describe(&job));
    assert_ne!(job.worker_id, running.worker_id);
    assert_eq!(job.attempt_history[0].outcome, "requeued");
    assert_eq!(
        job.attempt_history[0].reason, "worker terminated by its platform (SIGTERM)",
        "{:?}",
        job.attempt_history[0]
    );
    let lines = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    assert!(lines.contains(&"attempt-2".to_string()), "{lines:?}");

    wait_gone(server.docker(), &first).await?;
    server.wait_no_workers(GONE_TIMEOUT).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_job_in_a_container_has_no_capabilities_no_new_privileges_a_read_only_root_and_writable_tmp_and_home()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    // /home belongs to the image's user, so only a read-only root refuses the touch (/etc
    // would refuse it anyway: permission denied). CapBnd is the engine's default set unless
    // every capability is dropped; CapEff alone is 0 for any non-root user.
    let id = server
        .queue(
            "grep -E '^(CapPrm|CapEff|CapBnd|NoNewPrivs):' /proc/self/status | tr '\\t' ' '; \
             if touch /home/probe 2>/tmp/err; then echo root-fs=writable; \
             else echo \"root-fs: $(cat /tmp/err)\"; fi; \
             echo x > /tmp/probe && echo tmp=writable; \
             echo x > \"$HOME/probe\" && echo home=$HOME writable; \
             echo x > ./probe && echo cwd=$(pwd) writable; \
             sleep 2",
        )
        .await?;
    // While it runs: the engine holds the limits a job without any gets.
    let containers = server.wait_containers(1).await?;
    let host = containers[0].1.host_config.clone().unwrap_or_default();
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.pids_limit, Some(1024));
    assert_eq!(host.memory, Some(512 << 20), "the default memory limit");
    assert_eq!(host.nano_cpus, Some(1_000_000_000), "the default CPU limit");

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(
        texts(&server.follow_logs(&id, JOB_TIMEOUT).await?),
        [
            "CapPrm: 0000000000000000",
            "CapEff: 0000000000000000",
            "CapBnd: 0000000000000000",
            "NoNewPrivs: 1",
            "root-fs: touch: /home/probe: Read-only file system",
            "tmp=writable",
            "home=/home/hodei writable",
            "cwd=/home/hodei writable",
        ]
    );
    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_fork_bomb_in_a_container_stops_at_the_pid_limit_and_fails_only_its_own_job()
-> anyhow::Result<()> {
    const PIDS: i64 = 48;
    let server =
        DockerServer::start_configured(container_settings()?, &worker_image(), true, |config| {
            config.defaults.pids_limit = PIDS;
        })
        .await?;
    // Bounded even without the limit: 200 sleeps, gone with the container.
    let id = server
        .queue("i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); echo started=$i; done; echo all-started")
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    // busybox sh exits 2 at the first fork the kernel refuses.
    assert_state(&job, pb::JobState::Failed);
    assert_eq!(job.exit_code, Some(2), "{}", describe(&job));
    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    let texts = texts(&lines);
    assert!(!texts.contains(&"all-started".to_string()), "{texts:?}");
    let started = texts
        .iter()
        .filter_map(|line| line.strip_prefix("started="))
        .filter_map(|n| n.parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    assert!(
        (1..PIDS).contains(&started),
        "{started} processes started under a limit of {PIDS}"
    );
    assert!(
        texts.iter().any(|line| line.contains("can't fork")),
        "{texts:?}"
    );

    // The worker itself reported the result, and the next job runs normally.
    let id = server.queue("echo after").await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_job_whose_worker_image_is_missing_fails_in_its_first_attempt_within_seconds_and_leaves_nothing()
-> anyhow::Result<()> {
    let missing = format!(
        "hodei-worker:missing-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let server = DockerServer::start_with(container_settings()?, &missing, false).await?;
    let queued = std::time::Instant::now();
    let id = server
        .queue_spec(pb::JobSpec {
            max_attempts: Some(3),
            ..spec("echo never")
        })
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    let took = queued.elapsed();
    assert_state(&job, pb::JobState::Failed);
    // Permanent: retrying cannot make the image appear.
    assert_eq!(job.attempts, 1, "{}", describe(&job));
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
    assert_eq!(job.exit_code, None);
    let expected = format!("image not found: {missing}");
    assert!(job.reason.starts_with(&expected), "{}", job.reason);
    assert_eq!(job.reason.matches(&missing).count(), 1, "{}", job.reason);
    assert!(
        job.reason.contains("scripts/build-worker-image.sh"),
        "the reason should say how to get the image: {}",
        job.reason
    );
    assert_eq!(job.attempt_history.len(), 1, "{:?}", job.attempt_history);
    assert_eq!(job.attempt_history[0].outcome, "failed");
    assert!(
        job.attempt_history[0].reason.starts_with(&expected),
        "{:?}",
        job.attempt_history[0]
    );

    server.wait_no_workers(GONE_TIMEOUT).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows.iter()
            .all(|(_, state, reason)| state == "failed" && reason.starts_with(&expected)),
        "{rows:?}"
    );
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn three_jobs_at_once_get_three_containers_each_with_its_own_token_and_each_runs_one_job()
-> anyhow::Result<()> {
    let server = DockerServer::start(|s| s.max_workers = 3).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(server.queue("sleep 3; hostname").await?);
    }

    let containers = server.wait_containers(3).await?;
    assert_eq!(containers.len(), 3, "at most one container per queued job");
    let mut hostnames = HashMap::new();
    let mut hashes = HashSet::new();
    for (_, container) in &containers {
        hashes.insert(assert_no_token_in_configuration(&server, container).await?);
        let hostname = container
            .config
            .as_ref()
            .and_then(|c| c.hostname.clone())
            .context("no hostname")?;
        hostnames.insert(worker_id_of(container)?.to_string(), hostname);
    }
    assert_eq!(hashes.len(), 3, "two containers share a token");

    let mut workers = HashSet::new();
    for id in &ids {
        let job = server.wait_finished(id, JOB_TIMEOUT).await?;
        assert_state(&job, pb::JobState::Succeeded);
        // The job ran in its worker's container: it printed that container's hostname.
        let output = texts(&server.follow_logs(id, JOB_TIMEOUT).await?);
        let expected = hostnames
            .get(&job.worker_id)
            .with_context(|| format!("job {id} ran on an unseen worker {}", job.worker_id))?;
        assert_eq!(output, std::slice::from_ref(expected), "job {id}");
        workers.insert(job.worker_id);
    }
    assert_eq!(workers.len(), 3, "the jobs were not spread: {workers:?}");
    for worker in &workers {
        let (_, consumed) = server.stored_token(worker.parse()?).await?;
        assert!(consumed, "worker {worker} did not consume its token");
    }

    server.wait_no_workers(GONE_TIMEOUT).await?;
    assert!(server.containers().await?.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn orphaned_worker_containers_of_this_instance_are_removed_by_the_sweep_and_others_are_left_alone()
-> anyhow::Result<()> {
    let settings = container_settings()?;
    let instance = settings.instance.clone();
    let foreign_instance = format!("someone-else-{}", &instance[2..]);
    let _foreign_leftovers = Leftovers(foreign_instance.clone());
    let provider = docker_provider(&worker_image(), true).await?;
    let docker = provider.docker();
    // Left by a previous run of this instance: removed by the sweep at start-up.
    let before_start = create_labelled_container(docker, &instance).await?;
    let foreign = create_labelled_container(docker, &foreign_instance).await?;

    let server = DockerServer::start_with(settings, &worker_image(), true).await?;
    // Appearing while the server runs: removed by a periodic sweep (every 2 s here).
    let while_running = create_labelled_container(server.docker(), &instance).await?;
    wait_gone(server.docker(), &before_start).await?;
    wait_gone(server.docker(), &while_running).await?;

    let foreign_container = inspect(server.docker(), &foreign)
        .await?
        .context("another instance's container was removed")?;
    assert_eq!(
        status_of(&foreign_container),
        Some(ContainerStateStatusEnum::RUNNING)
    );
    // The sweep leaves the server's own, live workers alone.
    let id = server.queue("echo still-fine").await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn an_orphan_container_of_this_instance_that_someone_else_named_is_removed_by_the_sweep()
-> anyhow::Result<()> {
    let server = DockerServer::start(|_| {}).await?;
    let worker = WorkerId::new();
    // Labelled as a worker of this instance, named by hand: the sweep used to stop and remove
    // `hodei-worker-<id>` (not there), report it removed, and find it again every sweep.
    let name = format!("orphan-probe-{worker}");
    create_labelled_container_named(server.docker(), &server.settings.instance, worker, &name)
        .await?;
    assert_ne!(name, container_name(&worker));
    wait_gone(server.docker(), &name).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn the_harness_finds_the_bridge_gateway_and_honours_the_override() -> anyhow::Result<()> {
    use reachability::{OVERRIDE, first_host_of_ipv4_subnet};

    assert_eq!(
        first_host_of_ipv4_subnet("172.17.0.0/16"),
        Some("172.17.0.1".parse()?)
    );
    assert_eq!(
        first_host_of_ipv4_subnet("10.1.2.128/25"),
        Some("10.1.2.129".parse()?)
    );
    assert_eq!(first_host_of_ipv4_subnet("fd00::/64"), None);
    assert_eq!(first_host_of_ipv4_subnet("10.0.0.0/31"), None);

    // What the engine's bridge interface really has, asked of the kernel, not of Docker's IPAM.
    let provider = docker_provider(&worker_image(), false).await?;
    let bridge = provider.docker().inspect_network("bridge", None).await?;
    let interface = bridge
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
        .context("the bridge network names no interface")?;
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &interface])
        .output()
        .context("running ip (iproute2)")?;
    let addresses = String::from_utf8_lossy(&output.stdout);
    let interface_address = addresses
        .split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split_once('/'))
        .map(|(address, _)| address.to_string())
        .with_context(|| format!("no IPv4 address on {interface}: {addresses}"))?;

    let _guard = SERVER_HOST_ENV
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let saved = std::env::var(OVERRIDE).ok();
    // SAFETY: nextest runs each test in its own process, and within this binary every read of
    // the variable holds SERVER_HOST_ENV, which this test holds while it changes it.
    unsafe { std::env::remove_var(OVERRIDE) };
    let found = reachability::server_host_for(WorkerNetwork::Docker, "bridge");
    unsafe { std::env::set_var(OVERRIDE, " 203.0.113.7 ") };
    let overridden = reachability::server_host_for(WorkerNetwork::Docker, "bridge");
    unsafe { std::env::set_var(OVERRIDE, "") };
    let blank = reachability::server_host_for(WorkerNetwork::Docker, "bridge");
    match saved {
        Some(value) => unsafe { std::env::set_var(OVERRIDE, value) },
        None => unsafe { std::env::remove_var(OVERRIDE) },
    }

    assert_eq!(found?, interface_address, "not the bridge's address");
    assert_eq!(overridden?, "203.0.113.7");
    assert_eq!(
        blank?, interface_address,
        "a blank override must be ignored"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn cpu_and_memory_limits_from_the_job_spec_reach_the_container() -> anyhow::Result<()> {
    const MEMORY: u64 = 128 * 1024 * 1024;
    let server = DockerServer::start(|_| {}).await?;
    // cgroup v1 and v2 spell the limits differently; the job prints whichever it finds.
    let id = server
        .queue_spec(pb::JobSpec {
            resources: Some(pb::Resources {
                cpu_millis: 500,
                memory_bytes: MEMORY,
            }),
            ..spec(
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
                 q=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null) && \
                 echo \"$q $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)\" || cat /sys/fs/cgroup/cpu.max; \
                 sleep 2",
            )
        })
        .await?;
    let containers = server.wait_containers(1).await?;
    let host = containers[0]
        .1
        .host_config
        .clone()
        .context("no HostConfig")?;
    assert_eq!(host.nano_cpus, Some(500_000_000), "half a core");
    assert_eq!(host.memory, Some(MEMORY as i64));
    assert_eq!(
        host.memory_swap,
        Some(MEMORY as i64),
        "no swap beyond the limit"
    );

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    // Seen from inside: the kernel enforces what the spec asked for.
    let output = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert_eq!(output, [MEMORY.to_string(), "50000 100000".to_string()]);
    server.wait_no_workers(GONE_TIMEOUT).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh"]
async fn a_job_in_a_container_cannot_use_the_api_to_cancel_read_or_queue_jobs() -> anyhow::Result<()>
{
    let server = DockerServer::start(|s| s.max_workers = 2).await?;
    let victim = server.queue("echo victim; sleep 120").await?;
    server.wait_running(&victim).await?;
    // The attacker downloads the CLI from this machine, as the gateway of the containers'
    // network reaches it, and dials its own $HODEI_SERVER.
    let cli = common::attack::serve_file(&hodei_testkit::cli_binary()?).await?;
    let cli_url = format!("http://{}:{}/hodei", server_host()?, cli.port);
    let attacker = server
        .queue(&common::attack::script(&cli_url, &victim))
        .await?;
    let finished = server.wait_finished(&attacker, JOB_TIMEOUT).await?;
    let lines = texts(&server.follow_logs(&attacker, JOB_TIMEOUT).await?);
    common::attack::assert_refused(&lines);
    assert_state(&finished, pb::JobState::Succeeded);

    // Nothing changed: the victim still runs, and no job was queued by the attacker.
    assert_state(&server.get_job(&victim).await?, pb::JobState::Running);
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(server.store.pool())
        .await?;
    assert_eq!(jobs, 2, "the job queued another job");
    server.cancel(&victim, "test over").await?;
    server.shutdown().await
}

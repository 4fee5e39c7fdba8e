//! The Docker provider against a real engine.
//!
//! Run with `cargo test -p hodei-providers --test docker_provider -- --ignored`.
//! The containers run a throw-away image built here from `scratch` and the host's static
//! busybox, whose entrypoint evaluates `$TEST_SCRIPT`, so these tests do not depend on
//! hodei-worker. Every test uses its own `hodei.io/instance` and removes all containers with
//! it when it ends, also when it fails.
//! The two tests about a missing engine need no engine, so they are not ignored.

use std::{
    collections::BTreeMap,
    path::Path,
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use bollard::{
    models::{ContainerCreateBody, RestartPolicyNameEnum},
    query_parameters::CreateContainerOptionsBuilder,
};
use hodei_domain::{OneTimeToken, Resources, WorkerFailure, WorkerId};
use hodei_providers::{
    ManagedWorker, ProviderError, WorkerProvider, WorkerSpec, WorkerStatus,
    docker::{DockerProvider, DockerProviderConfig, IMAGE_NOT_PRESENT, container_name},
    labels,
};

const TEST_IMAGE: &str = "hodei-provider-test:busybox";
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Plumbing

/// Builds an image from `scratch` holding only `/bin/busybox`; `label` makes its id unique.
fn build_busybox_image(tag: &str, label: &str) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: install Debian's busybox-static"
    );
    let context = tempfile::tempdir()?;
    std::fs::create_dir(context.path().join("bin"))?;
    std::fs::copy(busybox, context.path().join("bin/busybox"))?;
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY bin/ /bin/\nLABEL hodei.io/test=\"{label}\"\n\
             ENTRYPOINT [\"/bin/busybox\", \"sh\", \"-c\", \"eval \\\"$TEST_SCRIPT\\\"\"]\n"
        ),
    )?;
    // The classic builder needs neither buildx nor a registry.
    let output = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(context.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "docker build of {tag} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The shared test image, built once per test process.
fn test_image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        build_busybox_image(TEST_IMAGE, "docker-provider").map_err(|e| format!("{e:#}"))
    });
    if let Err(e) = built {
        panic!("cannot build the test image: {e}");
    }
    TEST_IMAGE
}

/// A unique instance; dropping it removes every container labelled with it.
struct Instance(String);

impl Instance {
    fn new(test: &str) -> Self {
        let unique = WorkerId::new().to_string();
        Self(format!("dpt-{test}-{}", &unique[..8]))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        remove_containers_labelled(&format!("{}={}", labels::INSTANCE, self.0));
    }
}

fn remove_containers_labelled(label: &str) {
    let Ok(listed) = Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter"])
        .arg(format!("label={label}"))
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "--force", "--volumes"])
            .args(&ids)
            .output();
    }
}

/// An image only one test uses; dropping it deletes the image.
struct OwnImage(String);

impl OwnImage {
    fn build(test: &str) -> Self {
        let unique = WorkerId::new().to_string();
        let image = Self(format!("hodei-provider-test:{test}-{}", &unique[..8]));
        build_busybox_image(&image.0, &unique).expect("build a unique test image");
        image
    }

    fn delete(&self) {
        let output = Command::new("docker")
            .args(["rmi", "--force", &self.0])
            .output()
            .expect("run docker rmi");
        assert!(
            output.status.success(),
            "docker rmi {}: {}",
            self.0,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnImage {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rmi", "--force", &self.0])
            .output();
    }
}

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn config(image: &str) -> DockerProviderConfig {
    let mut config = DockerProviderConfig::new(image);
    config.stop_grace = Duration::from_secs(2);
    config.destroy_timeout = Duration::from_secs(20);
    config
}

async fn provider() -> DockerProvider {
    provider_with(test_image()).await
}

async fn provider_with(image: &str) -> DockerProvider {
    DockerProvider::connect(config(image))
        .await
        .expect("a Docker engine is needed: run scripts/e2e/run-docker-e2e.sh")
}

fn spec(instance: &Instance, script: &str) -> WorkerSpec {
    WorkerSpec {
        worker_id: WorkerId::new(),
        token: OneTimeToken::generate(),
        server_address: "http://172.17.0.1:50051".into(),
        instance: instance.0.clone(),
        resources: Resources::default(),
        lifetime: None,
        extra_env: BTreeMap::from([("TEST_SCRIPT".to_string(), script.to_string())]),
    }
}

async fn wait_for_status(
    provider: &DockerProvider,
    worker_id: &WorkerId,
    want: impl Fn(&WorkerStatus) -> bool,
) -> WorkerStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = provider.worker_status(worker_id).await.expect("status");
        if want(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "worker status still {status:?} after 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_gone(provider: &DockerProvider, worker_id: &WorkerId) {
    assert_eq!(
        provider.worker_status(worker_id).await.expect("status"),
        WorkerStatus::NotFound
    );
    let inspect = provider
        .docker()
        .inspect_container(&container_name(worker_id), None)
        .await;
    assert!(inspect.is_err(), "container still exists: {inspect:?}");
}

/// A container with our name and labels that was never started, as a server that crashed
/// between create and start would leave behind.
async fn create_unstarted(provider: &DockerProvider, image: &str, instance: &Instance) -> WorkerId {
    let worker_id = WorkerId::new();
    let options = CreateContainerOptionsBuilder::default()
        .name(&container_name(&worker_id))
        .build();
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec!["TEST_SCRIPT=sleep 60".into()]),
        labels: Some(
            [
                (labels::MANAGED_BY, labels::MANAGED_BY_VALUE.to_string()),
                (labels::NAME, labels::NAME_VALUE.to_string()),
                (labels::WORKER_ID, worker_id.to_string()),
                (labels::INSTANCE, instance.0.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        ),
        ..Default::default()
    };
    provider
        .docker()
        .create_container(Some(options), body)
        .await
        .expect("create an unstarted container");
    worker_id
}

// ---------------------------------------------------------------------------------------------
// Creating and observing workers

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn a_created_worker_container_has_our_name_labels_environment_and_limits() {
    let instance = Instance::new("create");
    let provider = provider().await;
    let mut spec = spec(&instance, "sleep 60");
    spec.resources = Resources {
        cpu_millis: 250,
        memory_bytes: 64 * MIB,
    };

    let handle = provider.create_worker(&spec).await.expect("create");
    assert_eq!(handle.worker_id, spec.worker_id);
    assert_eq!(handle.resource, format!("hodei-worker-{}", spec.worker_id));

    let container = provider
        .docker()
        .inspect_container(&handle.resource, None)
        .await
        .expect("inspect");
    let config = container.config.expect("config");
    let container_labels = config.labels.expect("labels");
    assert_eq!(container_labels[labels::MANAGED_BY], "hodei");
    assert_eq!(container_labels[labels::NAME], "hodei-worker");
    assert_eq!(
        container_labels[labels::WORKER_ID],
        spec.worker_id.to_string()
    );
    assert_eq!(container_labels[labels::INSTANCE], instance.0);
    let env = config.env.expect("env");
    assert!(env.contains(&"HODEI_TOKEN_FILE=/run/hodei/token".to_string()));
    assert!(env.contains(&"HODEI_SERVER=http://172.17.0.1:50051".to_string()));
    assert!(env.contains(&format!("HODEI_WORKER_ID={}", spec.worker_id)));
    let host = container.host_config.expect("host config");
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_eq!(host.memory, Some(64 * 1024 * 1024));
    assert_eq!(host.auto_remove, Some(false));
    assert_eq!(
        host.restart_policy.and_then(|p| p.name),
        Some(RestartPolicyNameEnum::NO)
    );

    wait_for_status(&provider, &spec.worker_id, |s| *s == WorkerStatus::Running).await;
    assert_eq!(
        provider.list_managed(&instance.0).await.expect("list"),
        vec![ManagedWorker {
            worker_id: Some(spec.worker_id),
            resource: handle.resource.clone(),
            uid: container_id(&handle.resource),
        }]
    );

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    assert_gone(&provider, &spec.worker_id).await;
}

/// The container's log so far, stdout and stderr.
fn container_log(name: &str) -> String {
    Command::new("docker")
        .args(["logs", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn a_running_worker_containers_inspect_shows_no_token_which_waits_in_a_file_only_its_user_reads()
 {
    let instance = Instance::new("token");
    let provider = provider().await;
    // Stands in for the worker: shows the file's modes and owner, and the token it holds.
    let spec = spec(
        &instance,
        "stat -c '%a %u %n' /run/hodei /run/hodei/token; cat /run/hodei/token; echo; \
         exec sleep 60",
    );
    let token = spec.token.expose().to_string();

    let handle = provider.create_worker(&spec).await.expect("create");
    wait_for_status(&provider, &spec.worker_id, |s| *s == WorkerStatus::Running).await;

    let inspect = provider
        .docker()
        .inspect_container(&handle.resource, None)
        .await
        .expect("inspect");
    let config = inspect.config.clone().expect("config");
    let env = config.env.clone().unwrap_or_default();
    assert!(
        env.contains(&"HODEI_TOKEN_FILE=/run/hodei/token".to_string()),
        "{env:?}"
    );
    assert!(
        !env.iter().any(|var| var.starts_with("HODEI_TOKEN=")),
        "{env:?}"
    );
    for (part, shown) in [
        ("Config.Env", format!("{env:?}")),
        ("Config.Cmd", format!("{:?}", config.cmd)),
        ("Config.Entrypoint", format!("{:?}", config.entrypoint)),
        ("Config.Labels", format!("{:?}", config.labels)),
        ("all of it", serde_json::to_string(&inspect).expect("JSON")),
    ] {
        assert!(
            !shown.contains(&token),
            "docker inspect shows the token in {part}"
        );
    }

    // The file arrived before the container started: private to the container's user (root
    // in this image; the worker image's user in real containers, through copyUIDGID).
    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let log = container_log(&handle.resource);
        if log.lines().count() >= 3 || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec!["700 0 /run/hodei", "400 0 /run/hodei/token", token.as_str()],
        "{log}"
    );

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn a_worker_that_exits_with_code_3_is_exited_with_its_output_as_detail() {
    let instance = Instance::new("exit");
    let provider = provider().await;
    let spec = spec(
        &instance,
        "echo 'worker starting'; echo 'cannot reach server' >&2; exit 3",
    );
    provider.create_worker(&spec).await.expect("create");

    let status = wait_for_status(&provider, &spec.worker_id, |s| {
        matches!(s, WorkerStatus::Exited { .. })
    })
    .await;
    let WorkerStatus::Exited { exit_code, detail } = status else {
        unreachable!()
    };
    assert_eq!(exit_code, Some(3));
    assert!(detail.contains("worker starting"), "{detail:?}");
    assert!(detail.contains("cannot reach server"), "{detail:?}");

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn a_worker_over_its_memory_limit_is_failed_as_oom_killed() {
    let instance = Instance::new("oom");
    let provider = provider().await;
    let mut spec = spec(&instance, "dd if=/dev/zero of=/dev/null bs=256M count=1");
    spec.resources.memory_bytes = 16 * MIB;
    provider.create_worker(&spec).await.expect("create");

    let status = wait_for_status(&provider, &spec.worker_id, |s| {
        !matches!(s, WorkerStatus::Pending { .. } | WorkerStatus::Running)
    })
    .await;
    assert_eq!(status, WorkerStatus::Failed(WorkerFailure::OomKilled));

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn a_missing_image_fails_fast_as_a_permanent_image_not_found_failure_and_leaves_nothing() {
    let instance = Instance::new("noimage");
    let image = "hodei-provider-test:does-not-exist";
    assert!(!image_exists(image), "{image} must not exist for this test");
    let provider = provider_with(image).await;
    let spec = spec(&instance, "true");

    let started = Instant::now();
    let err = provider
        .create_worker(&spec)
        .await
        .expect_err("creating with a missing image must fail");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let ProviderError::WorkerFailed(WorkerFailure::ImageNotFound {
        image: failed_image,
        detail,
    }) = &err
    else {
        panic!("expected an ImageNotFound failure, got {err:?}");
    };
    assert_eq!(failed_image, image);
    assert_eq!(detail, IMAGE_NOT_PRESENT);
    assert!(
        err.to_string().contains("scripts/build-worker-image.sh"),
        "{err}"
    );
    assert_eq!(
        provider
            .worker_status(&spec.worker_id)
            .await
            .expect("status"),
        WorkerStatus::NotFound
    );
    assert!(
        provider
            .list_managed(&instance.0)
            .await
            .expect("list")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Destroying workers in every state

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn destroy_removes_a_running_worker_that_ignores_sigterm_after_the_grace() {
    let instance = Instance::new("running");
    let provider = provider().await;
    let spec = spec(&instance, "trap '' TERM; while :; do sleep 1; done");
    provider.create_worker(&spec).await.expect("create");
    wait_for_status(&provider, &spec.worker_id, |s| *s == WorkerStatus::Running).await;

    let started = Instant::now();
    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    // The grace is 2s; the engine then kills.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "destroy took {:?}",
        started.elapsed()
    );
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn destroy_removes_a_worker_that_already_exited() {
    let instance = Instance::new("exited");
    let provider = provider().await;
    let spec = spec(&instance, "exit 0");
    provider.create_worker(&spec).await.expect("create");
    wait_for_status(&provider, &spec.worker_id, |s| {
        matches!(s, WorkerStatus::Exited { .. })
    })
    .await;

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn destroy_removes_a_container_that_was_created_but_never_started() {
    let instance = Instance::new("unstarted");
    let provider = provider().await;
    let worker_id = create_unstarted(&provider, test_image(), &instance).await;
    assert!(matches!(
        provider.worker_status(&worker_id).await.expect("status"),
        WorkerStatus::Pending { .. }
    ));

    provider.destroy_worker(&worker_id).await.expect("destroy");
    assert_gone(&provider, &worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn destroy_is_idempotent_for_removed_and_unknown_workers() {
    let instance = Instance::new("twice");
    let provider = provider().await;
    let spec = spec(&instance, "sleep 60");
    provider.create_worker(&spec).await.expect("create");

    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("first destroy");
    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("second destroy of the same worker");
    provider
        .destroy_worker(&WorkerId::new())
        .await
        .expect("destroy of a worker that never existed");
    assert_gone(&provider, &spec.worker_id).await;
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn destroy_removes_workers_whose_image_was_deleted() {
    let instance = Instance::new("noimg");
    let image = OwnImage::build("deleted");
    let provider = provider_with(&image.0).await;
    let exited = spec(&instance, "exit 0");
    provider.create_worker(&exited).await.expect("create");
    wait_for_status(&provider, &exited.worker_id, |s| {
        matches!(s, WorkerStatus::Exited { .. })
    })
    .await;
    let unstarted = create_unstarted(&provider, &image.0, &instance).await;

    image.delete();
    assert!(!image_exists(&image.0), "the image must be gone");

    provider
        .destroy_worker(&exited.worker_id)
        .await
        .expect("destroy exited");
    provider
        .destroy_worker(&unstarted)
        .await
        .expect("destroy unstarted");
    assert_gone(&provider, &exited.worker_id).await;
    assert_gone(&provider, &unstarted).await;
    assert!(
        provider
            .list_managed(&instance.0)
            .await
            .expect("list")
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// Listing for the reaper

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn list_managed_sees_only_its_own_instance_including_stopped_containers() {
    let ours = Instance::new("list-a");
    let theirs = Instance::new("list-b");
    let provider = provider().await;
    let running = spec(&ours, "sleep 60");
    let exited = spec(&ours, "exit 0");
    let other = spec(&theirs, "sleep 60");
    for spec in [&running, &exited, &other] {
        provider.create_worker(spec).await.expect("create");
    }
    wait_for_status(&provider, &exited.worker_id, |s| {
        matches!(s, WorkerStatus::Exited { .. })
    })
    .await;
    // Our instance label without `managed-by=hodei` is not ours.
    let unmanaged = Command::new("docker")
        .args(["create", "--label"])
        .arg(format!("{}={}", labels::INSTANCE, ours.0))
        .args(["-e", "TEST_SCRIPT=sleep 60", test_image()])
        .output()
        .expect("docker create");
    assert!(unmanaged.status.success(), "{unmanaged:?}");

    let mut listed = provider.list_managed(&ours.0).await.expect("list");
    listed.sort_by(|a, b| a.resource.cmp(&b.resource));
    let mut expected = vec![
        ManagedWorker {
            worker_id: Some(running.worker_id),
            resource: container_name(&running.worker_id),
            uid: container_id(&container_name(&running.worker_id)),
        },
        ManagedWorker {
            worker_id: Some(exited.worker_id),
            resource: container_name(&exited.worker_id),
            uid: container_id(&container_name(&exited.worker_id)),
        },
    ];
    expected.sort_by(|a, b| a.resource.cmp(&b.resource));
    assert_eq!(listed, expected);
    assert_eq!(
        provider.list_managed(&theirs.0).await.expect("list"),
        vec![ManagedWorker {
            worker_id: Some(other.worker_id),
            resource: container_name(&other.worker_id),
            uid: container_id(&container_name(&other.worker_id)),
        }]
    );
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn removing_a_listed_container_removes_it_by_id_and_not_one_created_since_under_its_name() {
    let instance = Instance::new("remove-listed");
    let provider = provider().await;
    let first = spec(&instance, "sleep 60");
    provider.create_worker(&first).await.expect("create");
    let name = container_name(&first.worker_id);
    let listed = provider.list_managed(&instance.0).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");

    // Between the listing and the removal, the container goes and another takes its name,
    // labelled with the same instance (so its drop guard removes it). `--volumes`: the
    // worker's anonymous volume (its token's directory) goes with it.
    let removed = Command::new("docker")
        .args(["rm", "--force", "--volumes", &name])
        .output()
        .expect("docker rm");
    assert!(removed.status.success(), "{removed:?}");
    let recreated = Command::new("docker")
        .args(["create", "--name", &name, "--label"])
        .arg(format!("{}={}", labels::INSTANCE, instance.0))
        .args(["-e", "TEST_SCRIPT=sleep 60", test_image()])
        .output()
        .expect("docker create");
    assert!(recreated.status.success(), "{recreated:?}");
    let newcomer = container_id(&name);
    assert_ne!(newcomer, listed[0].uid);

    provider
        .remove_managed(&listed[0])
        .await
        .expect("the listed container is already gone");
    assert_eq!(
        container_id(&name),
        newcomer,
        "the container created since under the name was removed"
    );
}

/// The engine's id of the container named `name`, as `docker inspect` prints it.
fn container_id(name: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", name])
        .output()
        .expect("docker inspect");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

// ---------------------------------------------------------------------------------------------
// Connecting

#[tokio::test]
async fn connecting_to_a_socket_that_does_not_exist_fails_at_once_with_a_clear_message() {
    let mut config = DockerProviderConfig::new(TEST_IMAGE);
    config.docker_host = Some("unix:///nonexistent/docker.sock".into());
    let started = Instant::now();
    let err = DockerProvider::connect(config)
        .await
        .err()
        .expect("must fail");
    assert!(started.elapsed() < Duration::from_secs(2));
    let message = err.to_string();
    assert!(
        message.contains("Docker engine not reachable at unix:///nonexistent/docker.sock")
            && message.contains("is dockerd running?"),
        "{message}"
    );
}

#[tokio::test]
async fn connecting_to_an_engine_that_never_answers_fails_after_the_connect_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("silent.sock");
    // Accepts connections (the kernel queues them) but never answers.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let mut config = DockerProviderConfig::new(TEST_IMAGE);
    config.docker_host = Some(format!("unix://{}", socket.display()));
    config.connect_timeout = Duration::from_millis(500);

    let started = Instant::now();
    let err = DockerProvider::connect(config)
        .await
        .err()
        .expect("must fail");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let message = err.to_string();
    assert!(
        message.contains("not reachable") && message.contains("no answer within 500ms"),
        "{message}"
    );
}

#[tokio::test]
#[ignore = "needs a Docker engine; run scripts/e2e/run-docker-e2e.sh"]
async fn connecting_with_a_network_that_does_not_exist_fails_with_a_clear_message() {
    let mut config = config(test_image());
    config.network = Some("hodei-no-such-network".into());
    let err = DockerProvider::connect(config)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string()
            .contains("Docker network \"hodei-no-such-network\" does not exist"),
        "{err}"
    );
}

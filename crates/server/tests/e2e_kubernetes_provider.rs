//! End to end with workers as Kubernetes Pods (epic 10): a real `hodei-server` (in process, bound
//! to `0.0.0.0`), the Kubernetes provider against a real cluster, `hodei-worker` Pods of the
//! worker image reaching the server over the Pod network, a real PostgreSQL per test.
//!
//! Every test is ignored by default and run by `scripts/e2e/run-kubernetes-e2e.sh`, which brings
//! up a Kind cluster (pinned or locally built node image), loads the worker image and exports
//! `HODEI_E2E_K8S=1`, `KUBECONFIG` and `HODEI_K8S_TEST_NAMESPACE`. Run without them, each test
//! fails with a message saying so; it never passes without having touched a cluster.
//!
//! Each test has its own server instance (`hodei.io/instance` label), and a [`ClusterGuard`] that
//! deletes the instance's Pods and Secrets when the test ends, whether it passed or not.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    TestServer,
    reachability::{WorkerNetwork, server_host_for},
    test_settings,
};
use hodei_domain::{OneTimeToken, Resources, WorkerFailure, WorkerId};
use hodei_proto::v1 as pb;
use hodei_providers::{
    WorkerProvider, WorkerSpec, WorkerStatus,
    kubernetes::{
        CONTAINER_NAME, KubernetesProvider, KubernetesProviderConfig, RestartPolicy, TOKEN_KEY,
        build_pod, pod_name, secret_name, test_namespace,
    },
    labels,
};
use hodei_server::Settings;
use hodei_testkit::jobs::{assert_state, describe, spec, state_of};
use hodei_testkit::log_lines::{assert_contiguous, texts};
use hodei_testkit::{Probe, wait_for};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{EnvVar, Namespace, Pod, Secret, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};

/// Why the tests are ignored; `cargo nextest run --run-ignored only` runs them.
const HOW_TO_RUN: &str = "run scripts/e2e/run-kubernetes-e2e.sh (a Kind cluster)";
/// Pods start slower than processes or containers: scheduling, sandbox, network, image.
const POD_START: Duration = Duration::from_secs(60);
/// From queueing to a final state, Pod start-up included.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// A deleted worker Pod must be gone by then (destroy waits; the termination grace is 2 s).
const GONE: Duration = Duration::from_secs(60);
/// The ServiceAccount of `deploy/kubernetes/rbac-test.yaml`.
const PROVIDER_SERVICE_ACCOUNT: &str = "hodei-e2e-provider";
/// An image no registry has (a tag the build script never produces).
const MISSING_IMAGE: &str = "hodei-worker:does-not-exist";

// ---------------------------------------------------------------------------------------------
// The cluster, and the guard that cleans it
// ---------------------------------------------------------------------------------------------

/// Administrator access to the test cluster (the kubeconfig of the setup scripts).
struct Cluster {
    config: kube::Config,
    client: Client,
    namespace: String,
    pods: Api<Pod>,
    secrets: Api<Secret>,
}

impl Cluster {
    /// Connects to the cluster of `KUBECONFIG`, or panics with what to do: without
    /// `HODEI_E2E_K8S=1`, a reachable API server and the test namespace, nothing this suite
    /// asserts could be true.
    async fn connect() -> Self {
        hodei_testkit::init_tracing();
        if std::env::var("HODEI_E2E_K8S").as_deref() != Ok("1") {
            panic!(
                "HODEI_E2E_K8S is not 1: this test needs a Kubernetes cluster with the worker \
                 image loaded; {HOW_TO_RUN}, or point KUBECONFIG at a prepared cluster and set \
                 HODEI_E2E_K8S=1"
            );
        }
        let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into());
        let config = kube::Config::infer().await.unwrap_or_else(|e| {
            panic!("no Kubernetes configuration (KUBECONFIG={kubeconfig}): {e}; {HOW_TO_RUN}")
        });
        let url = config.cluster_url.clone();
        let client = Client::try_from(config.clone())
            .unwrap_or_else(|e| panic!("cannot build a client for {url}: {e}"));
        match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "the Kubernetes API at {url} (KUBECONFIG={kubeconfig}) does not answer: {e}; \
                 is the cluster up? {HOW_TO_RUN}"
            ),
            Err(_) => panic!(
                "the Kubernetes API at {url} (KUBECONFIG={kubeconfig}) did not answer within \
                 15 s; is the cluster up? {HOW_TO_RUN}"
            ),
        }
        let namespace = test_namespace();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        match namespaces.get_opt(&namespace).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!(
                "namespace {namespace} does not exist at {url}: apply \
                 deploy/kubernetes/namespace-test.yaml and rbac-test.yaml (the setup scripts do)"
            ),
            Err(e) => panic!("cannot read namespace {namespace} at {url}: {e}"),
        }
        // The worker image is not checked here: the kubelet lists a newly loaded image in the
        // node's status only after up to 40 s (30 s image cache, 10 s status updates). Without
        // it, tests fail with the provider's "image pull failed for <image>".
        Self {
            pods: Api::namespaced(client.clone(), &namespace),
            secrets: Api::namespaced(client.clone(), &namespace),
            config,
            client,
            namespace,
        }
    }

    /// Deletes everything labelled with these instances when dropped.
    fn guard(&self, instances: &[&str]) -> ClusterGuard {
        ClusterGuard {
            config: self.config.clone(),
            namespace: self.namespace.clone(),
            instances: instances.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A provider with administrator credentials, as the server would use.
    async fn provider(
        &self,
        config: KubernetesProviderConfig,
    ) -> anyhow::Result<Arc<KubernetesProvider>> {
        let provider = KubernetesProvider::from_kube_config(self.config.clone(), config)?;
        provider.check().await?;
        Ok(Arc::new(provider))
    }

    /// The Pods of one instance.
    async fn instance_pods(&self, instance: &str) -> anyhow::Result<Vec<Pod>> {
        let params = ListParams::default().labels(&labels::instance_selector(instance));
        Ok(self.pods.list(&params).await?.items)
    }

    /// Names of whatever the instance still has: Pods and Secrets.
    async fn instance_leftovers(&self, instance: &str) -> anyhow::Result<Vec<String>> {
        let params = ListParams::default().labels(&labels::instance_selector(instance));
        let mut left: Vec<String> = self
            .pods
            .list(&params)
            .await?
            .items
            .iter()
            .map(|pod| format!("pod/{}", name_of(&pod.metadata)))
            .collect();
        left.extend(
            self.secrets
                .list_metadata(&params)
                .await?
                .items
                .iter()
                .map(|secret| format!("secret/{}", name_of(&secret.metadata))),
        );
        Ok(left)
    }

    async fn assert_nothing_left(&self, instance: &str) -> anyhow::Result<()> {
        let left = self.instance_leftovers(instance).await?;
        assert!(
            left.is_empty(),
            "instance {instance} left resources in {}: {left:?}",
            self.namespace
        );
        Ok(())
    }

    /// Waits until the worker's Pod and Secret no longer exist.
    async fn wait_worker_gone(&self, worker: &WorkerId) -> anyhow::Result<()> {
        let (pod, secret) = (pod_name(worker), secret_name(worker));
        wait_for(
            &format!("Pod {pod} and its Secret to be gone"),
            GONE,
            || {
                let (pod, secret) = (pod.clone(), secret.clone());
                async move {
                    let pod_left = self.pods.get_opt(&pod).await?.is_some();
                    let secret_left = self.secrets.get_metadata_opt(&secret).await?.is_some();
                    Ok(if !pod_left && !secret_left {
                        Probe::Ready(())
                    } else {
                        Probe::Pending(format!(
                            "pod exists: {pod_left}, secret exists: {secret_left}"
                        ))
                    })
                }
            },
        )
        .await
    }

    /// Waits until the worker's Pod satisfies `done`, describing the Pod while it does not.
    async fn wait_pod(
        &self,
        worker: &WorkerId,
        what: &str,
        done: impl Fn(&Pod) -> bool,
    ) -> anyhow::Result<Pod> {
        let name = pod_name(worker);
        let done = &done;
        wait_for(&format!("Pod {name} to be {what}"), POD_START, || {
            let name = name.clone();
            async move {
                Ok(match self.pods.get_opt(&name).await? {
                    Some(pod) if done(&pod) => Probe::Ready(pod),
                    Some(pod) => Probe::Pending(pod_summary(&pod)),
                    None => Probe::Pending("no such Pod".into()),
                })
            }
        })
        .await
    }

    /// A token of `service_account` from the TokenRequest API, valid for ten minutes.
    async fn service_account_token(&self, service_account: &str) -> anyhow::Result<String> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                // The API server's own audience; 600 s is the shortest lifetime it grants.
                audiences: Vec::new(),
                expiration_seconds: Some(600),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let answer = accounts
            .create_token_request(service_account, &PostParams::default(), &request)
            .await?;
        answer
            .status
            .map(|status| status.token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the TokenRequest for {service_account} gave no token"))
    }
}

/// Deletes the Pods and Secrets of its instances when dropped, also when the test panics, so a
/// failed test leaves nothing running. Runs on a thread of its own with a runtime of its own:
/// `Drop` cannot await, and the test's runtime may be shutting down.
struct ClusterGuard {
    config: kube::Config,
    namespace: String,
    instances: Vec<String>,
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let config = self.config.clone();
        let namespace = self.namespace.clone();
        let instances = self.instances.clone();
        let cleanup = std::thread::spawn(move || -> anyhow::Result<Vec<String>> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let client = Client::try_from(config)?;
                let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                let secrets: Api<Secret> = Api::namespaced(client, &namespace);
                let now = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::background()
                };
                let mut removed = Vec::new();
                for instance in &instances {
                    let params = ListParams::default().labels(&labels::instance_selector(instance));
                    let deleted = tokio::time::timeout(
                        Duration::from_secs(30),
                        pods.delete_collection(&now, &params),
                    )
                    .await??;
                    if let Some(list) = deleted.left() {
                        removed.extend(list.items.iter().map(|p| name_of(&p.metadata)));
                    }
                    let deleted = tokio::time::timeout(
                        Duration::from_secs(30),
                        secrets.delete_collection(&DeleteParams::background(), &params),
                    )
                    .await??;
                    if let Some(list) = deleted.left() {
                        removed.extend(list.items.iter().map(|s| name_of(&s.metadata)));
                    }
                }
                Ok(removed)
            })
        });
        // Never panic here: a panic while unwinding from a failed assertion aborts the process
        // and hides the assertion's message.
        match cleanup.join() {
            Ok(Ok(removed)) if removed.is_empty() => {}
            Ok(Ok(removed)) => eprintln!(
                "cleanup guard: deleted what instances {:?} left in {}: {removed:?}",
                self.instances, self.namespace
            ),
            Ok(Err(e)) => eprintln!(
                "cleanup guard: could not delete the resources of instances {:?} in {}: {e:#}; \
                 scripts/e2e/cleanup-kind.sh removes them",
                self.instances, self.namespace
            ),
            Err(_) => eprintln!("cleanup guard: the cleanup thread panicked"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers and workers for the tests
// ---------------------------------------------------------------------------------------------

/// The host address Pods dial to reach a server on this machine (HU-10.2).
fn pod_reachable_host() -> anyhow::Result<String> {
    server_host_for(WorkerNetwork::Kind, "bridge")
}

/// Server settings for Pod workers: bound to every interface so the Pod network reaches it,
/// `HODEI_SERVER` pointing at the host as Pods see it, and Pod-sized patience.
fn pod_settings() -> anyhow::Result<Settings> {
    let mut settings = test_settings();
    settings.listen = "0.0.0.0:0".parse()?;
    settings.worker_server_host = pod_reachable_host()?;
    settings.provisioning_timeout = POD_START;
    // A 2-core machine runs the control plane, the Pods and the test: leave heartbeats room.
    settings.heartbeat_timeout = Duration::from_secs(10);
    settings.max_workers = 3;
    Ok(settings)
}

/// The test namespace and worker image, with a short termination grace so deletions are quick.
fn provider_config() -> KubernetesProviderConfig {
    let mut config = KubernetesProviderConfig::for_tests();
    config.termination_grace = Duration::from_secs(2);
    config.destroy_timeout = GONE;
    config
}

/// A server with the Kubernetes provider; the returned guard removes the instance's Pods.
async fn start_server(
    cluster: &Cluster,
    settings: Settings,
    config: KubernetesProviderConfig,
) -> anyhow::Result<(TestServer, ClusterGuard)> {
    let guard = cluster.guard(&[&settings.instance]);
    let provider = cluster.provider(config).await?;
    let server = TestServer::start(settings, provider).await?;
    Ok((server, guard))
}

/// A worker started through the provider directly, without a server.
fn bare_worker(instance: &str, server_address: &str) -> WorkerSpec {
    WorkerSpec {
        worker_id: WorkerId::new(),
        token: OneTimeToken::generate(),
        server_address: server_address.into(),
        instance: instance.into(),
        resources: Resources::default(),
        lifetime: Some(Duration::from_secs(300)),
        extra_env: BTreeMap::new(),
    }
}

/// An address on the host where nothing listens: a worker keeps retrying to register (Running).
fn unanswered_address() -> anyhow::Result<String> {
    Ok(format!("http://{}:1", pod_reachable_host()?))
}

fn unique_instance(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

// ---------------------------------------------------------------------------------------------
// Reading Pods
// ---------------------------------------------------------------------------------------------

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// The worker container's waiting reason (ErrImagePull, CrashLoopBackOff, ...), if waiting.
fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn container_running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|c| c.name == CONTAINER_NAME))
        .and_then(|c| c.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|c| c.name == CONTAINER_NAME))
        .map_or(0, |c| c.restart_count)
}

fn pod_summary(pod: &Pod) -> String {
    format!(
        "phase {:?}, waiting {:?}, restarts {}",
        phase(pod),
        waiting_reason(pod),
        restart_count(pod)
    )
}

fn env_var<'a>(pod: &'a Pod, name: &str) -> Option<&'a EnvVar> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER_NAME)?
        .env
        .as_ref()?
        .iter()
        .find(|var| var.name == name)
}

/// Value of `key=value` in the job's output.
fn output_value(lines: &[String], key: &str) -> Option<String> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// HU-10.3: provisioning
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn test_k8s_pod_provisioning() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let (server, _guard) = start_server(&cluster, pod_settings()?, provider_config()).await?;
    let instance = server.settings.instance.clone();
    // Long enough to inspect the Pod while its worker runs the job.
    let id = server.queue("echo ready; sleep 6; echo bye").await?;

    let job = server
        .wait_job(&id, "running", POD_START, |j| {
            state_of(j) == pb::JobState::Running
        })
        .await?;
    let worker: WorkerId = job.worker_id.parse()?;
    // The agent can register before the kubelet has reported the container as running.
    let pod = &cluster
        .wait_pod(&worker, "Running", |pod| {
            phase(pod) == "Running" && container_running(pod)
        })
        .await?;
    let pods = cluster.instance_pods(&instance).await?;
    let names: Vec<String> = pods.iter().map(|p| name_of(&p.metadata)).collect();
    assert_eq!(names, [pod_name(&worker)], "one Pod for the one job");

    // Labels: exactly the four the provider promises.
    let expected_labels = BTreeMap::from([
        (labels::NAME.to_string(), labels::NAME_VALUE.to_string()),
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::WORKER_ID.to_string(), worker.to_string()),
        (labels::INSTANCE.to_string(), instance.clone()),
    ]);
    assert_eq!(pod.metadata.labels.as_ref(), Some(&expected_labels));
    assert_eq!(
        pod.metadata.namespace.as_deref(),
        Some(cluster.namespace.as_str())
    );

    // State: Running (above), on a node, and the job still running in it.
    let job = server.get_job(&id).await?;
    assert_state(&job, pb::JobState::Running);
    let pod_spec = pod.spec.as_ref().expect("a Pod has a spec");
    assert!(pod_spec.node_name.as_deref().is_some_and(|n| !n.is_empty()));
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod_spec.automount_service_account_token, Some(false));
    assert!(pod_spec.active_deadline_seconds.is_some_and(|s| s > 0));
    let container = &pod_spec.containers[0];
    assert_eq!(container.image, Some(provider_config().image));
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));

    // Environment: the address and id as values, the token only through the Secret.
    let server_var = env_var(pod, "HODEI_SERVER").expect("HODEI_SERVER is set");
    assert_eq!(
        server_var.value.as_deref(),
        Some(server.server().worker_address())
    );
    assert!(
        server
            .server()
            .worker_address()
            .starts_with(&format!("http://{}:", pod_reachable_host()?))
    );
    let id_var = env_var(pod, "HODEI_WORKER_ID").expect("HODEI_WORKER_ID is set");
    assert_eq!(id_var.value.as_deref(), Some(worker.to_string().as_str()));
    let token_var = env_var(pod, "HODEI_TOKEN").expect("HODEI_TOKEN is set");
    assert_eq!(
        token_var.value, None,
        "the token must not be a literal value"
    );
    let reference = token_var
        .value_from
        .as_ref()
        .and_then(|source| source.secret_key_ref.as_ref())
        .expect("HODEI_TOKEN comes from a secretKeyRef");
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        (secret_name(&worker).as_str(), TOKEN_KEY)
    );

    // The Secret: same labels, owned by the Pod (garbage-collected with it), holding the token
    // whose hash the database issued and the worker consumed.
    let secret = cluster.secrets.get(&secret_name(&worker)).await?;
    assert_eq!(secret.metadata.labels.as_ref(), Some(&expected_labels));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("Pod", pod_name(&worker).as_str())
    );
    assert_eq!(Some(owners[0].uid.as_str()), pod.metadata.uid.as_deref());
    assert_eq!(owners[0].controller, Some(true));
    let token_bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(TOKEN_KEY))
        .expect("the Secret holds the token");
    let token = OneTimeToken::parse(std::str::from_utf8(&token_bytes.0)?)?;
    let (stored_hash, consumed): (Vec<u8>, bool) = sqlx::query_as(
        "SELECT token_hash, consumed_at IS NOT NULL FROM worker_tokens WHERE worker_id = $1",
    )
    .bind(uuid::Uuid::parse_str(&worker.to_string())?)
    .fetch_one(server.store.pool())
    .await?;
    assert_eq!(stored_hash, token.hash().as_bytes().to_vec());
    assert!(consumed, "the worker registered with the token");
    assert!(
        !format!("{pod:?}").contains(token.expose()),
        "the token appears in the Pod"
    );

    // The database knows the worker by its Pod.
    let (state, resource, registered): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT state, resource, registered_at IS NOT NULL FROM workers WHERE id = $1::uuid",
    )
    .bind(worker.to_string())
    .fetch_one(server.store.pool())
    .await?;
    assert_eq!(
        (state.as_str(), resource, registered),
        ("busy", Some(pod_name(&worker)), true)
    );

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    server.wait_no_workers(GONE).await?;
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// HU-10.4: a job runs in a Pod
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn test_k8s_full_job_execution() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let (server, _guard) = start_server(&cluster, pod_settings()?, provider_config()).await?;
    let instance = server.settings.instance.clone();
    let id = server
        .queue(
            "echo hostname=$(hostname); echo uid=$(id -u); echo to-stderr >&2; \
             for i in 1 2 3; do echo line-$i; sleep 0.2; done",
        )
        .await?;
    // Subscribed before the Pod exists: history, then live lines, until the job ends.
    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    let worker: WorkerId = job.worker_id.parse()?;
    let text = texts(&lines);
    assert_contiguous(&lines);
    // A Pod's hostname is its name: the command ran inside this worker's Pod.
    assert_eq!(
        output_value(&text, "hostname"),
        Some(pod_name(&worker)),
        "{text:?}"
    );
    assert_eq!(output_value(&text, "uid"), Some("65532".into()), "{text:?}");
    let stdout: Vec<&String> = lines
        .iter()
        .zip(&text)
        .filter(|(l, _)| l.stream == pb::LogStream::Stdout as i32)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        stdout[2..],
        ["line-1", "line-2", "line-3"],
        "stdout in order: {text:?}"
    );
    let stderr: Vec<&String> = lines
        .iter()
        .zip(&text)
        .filter(|(l, _)| l.stream == pb::LogStream::Stderr as i32)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(stderr, ["to-stderr"]);

    // What PostgreSQL holds.
    let (state, exit_code, stored_worker): (String, Option<i32>, uuid::Uuid) =
        sqlx::query_as("SELECT state, exit_code, worker_id FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!((state.as_str(), exit_code), ("succeeded", Some(0)));
    assert_eq!(stored_worker.to_string(), worker.to_string());
    let (stored_lines,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM job_logs WHERE job_id = $1::uuid")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!(stored_lines, lines.len() as i64);

    // The worker is ephemeral: its Pod and Secret are deleted and gone.
    cluster.wait_worker_gone(&worker).await?;
    server.wait_no_workers(GONE).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "terminated", "{rows:?}");
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// HU-10.5: cleanup in every state
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn test_k8s_pod_cleanup() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let instance = unique_instance("cleanup");
    let _guard = cluster.guard(&[&instance]);

    // Running: a worker retrying to reach a server that does not answer.
    let provider = cluster.provider(provider_config()).await?;
    let running = bare_worker(&instance, &unanswered_address()?);
    // CrashLoopBackOff: restarted after every exit, and it exits at once (its server address
    // is not an address: configuration error, exit code 2).
    let mut looping_config = provider_config();
    looping_config.restart_policy = RestartPolicy::Always;
    let looping_provider = cluster.provider(looping_config).await?;
    let looping = bare_worker(&instance, "not-a-server-address");
    // ImagePullBackOff: an image no registry has.
    let mut missing_config = provider_config();
    missing_config.image = MISSING_IMAGE.into();
    missing_config.image_pull_grace = Duration::from_secs(5);
    let missing_provider = cluster.provider(missing_config).await?;
    let missing = bare_worker(&instance, &unanswered_address()?);

    provider.create_worker(&running).await?;
    looping_provider.create_worker(&looping).await?;
    missing_provider.create_worker(&missing).await?;

    cluster
        .wait_pod(&running.worker_id, "Running", |pod| {
            phase(pod) == "Running" && container_running(pod)
        })
        .await?;
    assert_eq!(
        provider.worker_status(&running.worker_id).await?,
        WorkerStatus::Running
    );
    cluster
        .wait_pod(&looping.worker_id, "in CrashLoopBackOff", |pod| {
            waiting_reason(pod).as_deref() == Some("CrashLoopBackOff")
        })
        .await?;
    match looping_provider.worker_status(&looping.worker_id).await? {
        WorkerStatus::Failed(WorkerFailure::CrashLoop { detail }) => {
            // The kubelet keeps the log tail as the termination message: the reason is visible.
            assert!(detail.contains("HODEI_SERVER"), "{detail}");
        }
        other => panic!("a crash-looping worker is classified as {other:?}"),
    }
    cluster
        .wait_pod(&missing.worker_id, "in ImagePullBackOff", |pod| {
            waiting_reason(pod).as_deref() == Some("ImagePullBackOff")
        })
        .await?;
    match missing_provider.worker_status(&missing.worker_id).await? {
        // Not found when the registry answers; a cluster without a route to it only times out,
        // which may pass, and fails after the (shortened) pull grace.
        WorkerStatus::Failed(
            WorkerFailure::ImageNotFound { image, .. } | WorkerFailure::ImagePull { image, .. },
        ) => {
            assert_eq!(image, MISSING_IMAGE);
        }
        other => panic!("a worker whose image is missing is classified as {other:?}"),
    }

    for (case, worker, provider) in [
        ("Running", &running.worker_id, &provider),
        ("CrashLoopBackOff", &looping.worker_id, &looping_provider),
        ("ImagePullBackOff", &missing.worker_id, &missing_provider),
    ] {
        let started = Instant::now();
        provider.destroy_worker(worker).await?;
        // destroy_worker returns once the Pod is gone, not when the deletion was accepted.
        assert!(
            cluster.pods.get_opt(&pod_name(worker)).await?.is_none(),
            "{case}: Pod still exists after destroy_worker"
        );
        assert!(
            cluster
                .secrets
                .get_metadata_opt(&secret_name(worker))
                .await?
                .is_none(),
            "{case}: token Secret left behind"
        );
        assert_eq!(
            provider.worker_status(worker).await?,
            WorkerStatus::NotFound,
            "{case}"
        );
        // Idempotent: destroying what is gone is done.
        provider.destroy_worker(worker).await?;
        tracing::info!(case, took = ?started.elapsed(), "destroyed");
    }
    assert!(provider.list_managed(&instance).await?.is_empty());
    cluster.assert_nothing_left(&instance).await
}

// ---------------------------------------------------------------------------------------------
// HU-10.6: several workers
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn test_k8s_multiple_workers() -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::connect().await);
    let mut settings = pod_settings()?;
    settings.max_workers = 3;
    settings.max_jobs_per_worker = 2;
    let (server, _guard) = start_server(&cluster, settings, provider_config()).await?;
    let instance = server.settings.instance.clone();

    // Watch the instance's Pods while the jobs run: how many exist at once.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (cluster, stop, instance) = (cluster.clone(), stop.clone(), instance.clone());
        tokio::spawn(async move {
            let mut peak = 0;
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                let pods = cluster.instance_pods(&instance).await?;
                peak = peak.max(pods.len());
                seen.extend(pods.iter().map(|p| name_of(&p.metadata)));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::Ok((peak, seen))
        })
    };

    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            server
                .queue(&format!("echo job={i}; echo hostname=$(hostname); sleep 3"))
                .await?,
        );
    }
    let mut jobs_per_worker: HashMap<String, usize> = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        let job = server.wait_finished(id, JOB_TIMEOUT).await?;
        assert_eq!(
            state_of(&job),
            pb::JobState::Succeeded,
            "job {i}: {}",
            describe(&job)
        );
        let worker: WorkerId = job.worker_id.parse()?;
        let text = texts(&server.follow_logs(id, JOB_TIMEOUT).await?);
        assert_eq!(output_value(&text, "job"), Some(i.to_string()));
        // Each job ran in the Pod of the worker the server says ran it.
        assert_eq!(
            output_value(&text, "hostname"),
            Some(pod_name(&worker)),
            "job {i}: {text:?}"
        );
        *jobs_per_worker.entry(job.worker_id).or_default() += 1;
    }
    server.wait_no_workers(GONE).await?;
    stop.store(true, Ordering::Relaxed);
    let (peak, seen) = watcher.await??;

    // Spread: six jobs over at least three workers, none over its budget of two.
    assert!(jobs_per_worker.len() >= 3, "{jobs_per_worker:?}");
    assert!(
        jobs_per_worker.values().all(|n| *n <= 2),
        "{jobs_per_worker:?}"
    );
    // Three Pods at once, never more than max_workers.
    assert_eq!(peak, 3, "at most 3 Pods, and all 3 while 6 jobs wait");
    let expected_pods: BTreeSet<String> = jobs_per_worker
        .keys()
        .map(|w| Ok(pod_name(&w.parse()?)))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        expected_pods.is_subset(&seen),
        "Pods seen {seen:?}, workers {expected_pods:?}"
    );

    // Each worker had its own token, and each registered with it.
    let tokens: Vec<(uuid::Uuid, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT t.worker_id, t.token_hash, t.consumed_at IS NOT NULL \
         FROM worker_tokens t JOIN workers w ON w.id = t.worker_id WHERE w.instance = $1",
    )
    .bind(&instance)
    .fetch_all(server.store.pool())
    .await?;
    let token_workers: BTreeSet<String> = tokens.iter().map(|t| t.0.to_string()).collect();
    let hashes: BTreeSet<&Vec<u8>> = tokens.iter().map(|t| &t.1).collect();
    assert_eq!(token_workers.len(), tokens.len(), "one token per worker");
    assert_eq!(hashes.len(), tokens.len(), "tokens are distinct");
    assert!(tokens.iter().all(|t| t.2), "every token was consumed");
    for worker in jobs_per_worker.keys() {
        assert!(
            token_workers.contains(worker),
            "worker {worker} had no token"
        );
    }
    let unregistered: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, state FROM workers WHERE instance = $1 AND registered_at IS NULL",
    )
    .bind(&instance)
    .fetch_all(server.store.pool())
    .await?;
    assert!(
        unregistered.is_empty(),
        "workers that never registered: {unregistered:?}"
    );
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Least privilege, failures, orphans
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn the_provider_works_with_only_the_permissions_of_rbac_test_yaml() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let token = cluster
        .service_account_token(PROVIDER_SERVICE_ACCOUNT)
        .await?;
    // Same cluster and CA; the identity is the ServiceAccount's token and nothing else (the
    // administrator's client certificate lives in auth_info and is dropped with it).
    let mut config = cluster.config.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };

    // It is that account, with no more than its Role: no reading Secrets (get, list and
    // watch all return their data: live workers' tokens), no other namespace.
    let restricted = Client::try_from(config.clone())?;
    let secrets: Api<Secret> = Api::namespaced(restricted.clone(), &cluster.namespace);
    let forbidden = |result: Result<(), kube::Error>, what: &str| match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what} must be forbidden: {other:?}"),
    };
    forbidden(secrets.get("anything").await.map(drop), "get secrets");
    forbidden(
        secrets.list(&ListParams::default()).await.map(drop),
        "list secrets",
    );
    forbidden(
        secrets
            .list_metadata(&ListParams::default())
            .await
            .map(drop),
        "list secrets (metadata only)",
    );
    let elsewhere: Api<Pod> = Api::namespaced(restricted, "kube-system");
    let denied = elsewhere.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&denied, kube::Error::Api(status) if status.code == 403),
        "pods of another namespace must be forbidden: {denied}"
    );

    // And that is enough for the whole life of a worker, through the server.
    let provider = KubernetesProvider::from_kube_config(config, provider_config())?;
    provider.check().await?;
    let settings = pod_settings()?;
    let _guard = cluster.guard(&[&settings.instance]);
    let instance = settings.instance.clone();
    let server = TestServer::start(settings, Arc::new(provider)).await?;
    let id = server.queue("echo as-the-service-account").await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(
        texts(&server.follow_logs(&id, JOB_TIMEOUT).await?),
        ["as-the-service-account"]
    );
    // Destroy and the reaper's listing also ran as the account (wait_no_workers lists).
    server.wait_no_workers(GONE).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "terminated", "{rows:?}");
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn a_pod_for_a_job_without_limits_is_not_best_effort_has_a_read_only_root_and_a_deadline_and_its_job_writes_tmp_and_home()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let settings = pod_settings()?;
    let (provisioning, kill_grace) = (settings.provisioning_timeout, settings.kill_grace);
    let (server, _guard) = start_server(&cluster, settings, provider_config()).await?;
    let instance = server.settings.instance.clone();
    let id = server
        .queue_spec(pb::JobSpec {
            timeout_seconds: Some(45),
            // /home belongs to the image's user: only a read-only root refuses the touch.
            ..spec(
                "if touch /home/probe 2>/tmp/err; then echo root-fs=writable; \
                 else echo \"root-fs: $(cat /tmp/err)\"; fi; \
                 echo x > /tmp/probe && echo tmp=writable; \
                 echo x > \"$HOME/probe\" && echo home=$HOME writable; \
                 echo x > ./probe && echo cwd=$(pwd) writable; \
                 sleep 4",
            )
        })
        .await?;

    let job = server
        .wait_job(&id, "running", POD_START, |j| {
            state_of(j) == pb::JobState::Running
        })
        .await?;
    let worker: WorkerId = job.worker_id.parse()?;
    let pod = cluster
        .wait_pod(&worker, "given a QoS class", |pod| {
            pod.status.as_ref().is_some_and(|s| s.qos_class.is_some())
        })
        .await?;
    let qos = pod.status.as_ref().and_then(|s| s.qos_class.clone());
    assert_eq!(qos.as_deref(), Some("Burstable"), "the job set no limits");
    let pod_spec = pod.spec.as_ref().expect("a Pod has a spec");
    let container = &pod_spec.containers[0];
    assert_eq!(
        container
            .security_context
            .as_ref()
            .and_then(|c| c.read_only_root_filesystem),
        Some(true)
    );
    let limits = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.keys().collect::<Vec<_>>(), ["cpu", "memory"]);
    // The backstop: the job's timeout, plus registering, the kill grace and a minute.
    let deadline = provisioning + Duration::from_secs(45) + kill_grace + Duration::from_secs(60);
    assert_eq!(
        pod_spec.active_deadline_seconds,
        Some(i64::try_from(deadline.as_secs_f64().ceil() as u64)?)
    );

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(
        texts(&server.follow_logs(&id, JOB_TIMEOUT).await?),
        [
            "root-fs: touch: /home/probe: Read-only file system",
            "tmp=writable",
            "home=/home/hodei writable",
            "cwd=/home/hodei writable",
        ]
    );
    server.wait_no_workers(GONE).await?;
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn a_job_whose_worker_image_does_not_exist_fails_in_its_first_attempt_without_waiting_out_the_pull_grace()
-> anyhow::Result<()> {
    // `.invalid` never resolves (RFC 6761): the kubelet's pull says `no such host`.
    const NOWHERE_IMAGE: &str = "registry.invalid/hodei/worker:does-not-exist";
    let cluster = Cluster::connect().await;
    let mut config = provider_config();
    config.image = NOWHERE_IMAGE.into();
    // Longer than the test allows: only a permanent classification ends the job in time.
    config.image_pull_grace = Duration::from_secs(300);
    let (server, _guard) = start_server(&cluster, pod_settings()?, config).await?;
    let instance = server.settings.instance.clone();

    let queued = Instant::now();
    let id = server
        .queue_spec(pb::JobSpec {
            max_attempts: Some(3),
            ..spec("echo never")
        })
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    let took = queued.elapsed();
    // BENCHMARKS.md quotes it (--no-capture).
    eprintln!("missing image {NOWHERE_IMAGE}: queued -> final state in {took:?}");
    assert_state(&job, pb::JobState::Failed);
    assert_eq!(job.attempts, 1, "{}", describe(&job));
    assert!(took < Duration::from_secs(15), "failed after {took:?}");
    assert_eq!(job.exit_code, None, "the command never ran");
    let expected = format!("image not found: {NOWHERE_IMAGE}");
    assert!(job.reason.starts_with(&expected), "{}", job.reason);
    assert_eq!(job.attempt_history.len(), 1, "{:?}", job.attempt_history);
    assert!(server.follow_logs(&id, JOB_TIMEOUT).await?.is_empty());

    server.wait_no_workers(GONE).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "failed", "{rows:?}");
    assert!(rows[0].2.starts_with(&expected), "{rows:?}");
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn a_pod_whose_sandbox_cannot_be_created_is_a_sandbox_creation_failure_within_seconds()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let instance = unique_instance("sandbox");
    let _guard = cluster.guard(&[&instance]);
    let provider = cluster.provider(provider_config()).await?;
    // A memory limit of one byte (QueueJob refuses it; the provider is asked directly): the
    // runtime cannot even create the sandbox's cgroup, and the kubelet says so in an event.
    let mut worker = bare_worker(&instance, &unanswered_address()?);
    worker.resources = Resources {
        cpu_millis: 0,
        memory_bytes: 1,
    };
    let created = Instant::now();
    provider.create_worker(&worker).await?;
    let id = worker.worker_id;
    let failure = wait_for(
        "the worker to fail as a sandbox creation failure",
        POD_START,
        || {
            let provider = provider.clone();
            async move {
                Ok(match provider.worker_status(&id).await? {
                    WorkerStatus::Failed(failure) => Probe::Ready(failure),
                    other => Probe::Pending(format!("{other:?}")),
                })
            }
        },
    )
    .await?;
    let took = created.elapsed();
    // BENCHMARKS.md quotes it (--no-capture).
    eprintln!("sandbox cannot be created: Pod created -> failure classified in {took:?}");
    assert!(
        matches!(&failure, WorkerFailure::SandboxCreation { detail } if detail.contains("sandbox")),
        "{failure:?}"
    );
    assert!(took < Duration::from_secs(15), "classified after {took:?}");
    provider.destroy_worker(&id).await?;
    cluster.assert_nothing_left(&instance).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn deleting_the_worker_pod_mid_job_requeues_the_job_with_reason_deleted_and_it_succeeds_in_a_new_pod()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let (server, _guard) = start_server(&cluster, pod_settings()?, provider_config()).await?;
    let instance = server.settings.instance.clone();
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; if [ \"$HODEI_JOB_ATTEMPT\" = 1 ]; then sleep 300; fi; echo done")
        .await?;
    let running = server.wait_running(&id).await?;
    let first: WorkerId = running.worker_id.parse()?;
    // What `kubectl delete pod`, a drain or the autoscaler do; a grace long enough for the
    // worker to stop its job and report on a busy machine.
    cluster
        .pods
        .delete(
            &pod_name(&first),
            &DeleteParams {
                grace_period_seconds: Some(30),
                ..DeleteParams::default()
            },
        )
        .await?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2, "{}", describe(&job));
    assert_ne!(job.worker_id, running.worker_id);
    let first_attempt = &job.attempt_history[0];
    assert_eq!(first_attempt.outcome, "requeued", "{first_attempt:?}");
    assert_eq!(
        first_attempt.reason, "worker terminated by its platform (SIGTERM): Pod deleted",
        "{first_attempt:?}"
    );
    let lines = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    assert!(lines.contains(&"attempt-2".to_string()), "{lines:?}");

    cluster.wait_worker_gone(&first).await?;
    server.wait_no_workers(GONE).await?;
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn the_orphan_sweep_removes_a_labelled_pod_the_database_does_not_know() -> anyhow::Result<()>
{
    let cluster = Cluster::connect().await;
    let settings = pod_settings()?;
    let instance = settings.instance.clone();
    let foreign_instance = unique_instance("foreign");
    let _guard = cluster.guard(&[&instance, &foreign_instance]);

    // Left by a previous run of this instance (a crash): the database does not know it.
    let provider = cluster.provider(provider_config()).await?;
    let orphan = bare_worker(&instance, &unanswered_address()?);
    provider.create_worker(&orphan).await?;
    // Another server's worker, which must be left alone.
    let foreign = bare_worker(&foreign_instance, &unanswered_address()?);
    provider.create_worker(&foreign).await?;
    cluster
        .wait_pod(&orphan.worker_id, "Running", |pod| phase(pod) == "Running")
        .await?;

    let server = TestServer::start(settings, cluster.provider(provider_config()).await?).await?;
    cluster.wait_worker_gone(&orphan.worker_id).await?;
    assert!(
        server.worker_rows().await?.is_empty(),
        "the sweep records nothing"
    );
    assert!(
        cluster
            .pods
            .get_opt(&pod_name(&foreign.worker_id))
            .await?
            .is_some(),
        "another instance's Pod was removed"
    );
    provider.destroy_worker(&foreign.worker_id).await?;
    cluster.assert_nothing_left(&instance).await?;
    cluster.assert_nothing_left(&foreign_instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn the_orphan_sweep_removes_a_labelled_pod_named_orphan_probe_by_the_name_it_listed()
-> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let settings = pod_settings()?;
    let instance = settings.instance.clone();
    let _guard = cluster.guard(&[&instance]);

    // A worker Pod of this instance, labelled with a worker id the database does not know, but
    // named by hand: the sweep used to delete `hodei-worker-<id>` (404) and log "removing
    // orphaned worker" for it every sweep while it stayed.
    let worker = bare_worker(&instance, &unanswered_address()?);
    let mut pod = build_pod(&worker, &provider_config());
    pod.metadata.name = Some("orphan-probe".into());
    let created = cluster.pods.create(&PostParams::default(), &pod).await?;
    let uid = created.metadata.uid.clone().unwrap_or_default();
    assert_ne!(pod_name(&worker.worker_id), "orphan-probe");

    let server = TestServer::start(settings, cluster.provider(provider_config()).await?).await?;
    let pods = &cluster.pods;
    wait_for("Pod orphan-probe of this run to be gone", GONE, || {
        let uid = uid.clone();
        async move {
            Ok(match pods.get_opt("orphan-probe").await? {
                // Another run's Pod of the same name is not this test's business.
                Some(pod) if pod.metadata.uid.as_deref() == Some(uid.as_str()) => {
                    Probe::Pending(pod_summary(&pod))
                }
                _ => Probe::Ready(()),
            })
        }
    })
    .await?;
    assert!(
        server.worker_rows().await?.is_empty(),
        "the sweep records nothing"
    );
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

// ---------------------------------------------------------------------------------------------
// Measurement (BENCHMARKS.md)
// ---------------------------------------------------------------------------------------------

/// "Queued → Pod worker registered": for 20 jobs queued one after another (each on a fresh
/// Pod, the previous one finished), `workers.registered_at - jobs.created_at` from PostgreSQL.
/// Prints the figures (`--no-capture` shows them) and fails if the 95th percentile exceeds the
/// 60 s Pod start budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn queued_to_pod_worker_registered_latency_over_20_jobs() -> anyhow::Result<()> {
    const JOBS: usize = 20;
    let cluster = Cluster::connect().await;
    let (server, _guard) = start_server(&cluster, pod_settings()?, provider_config()).await?;
    let instance = server.settings.instance.clone();

    let mut ids = Vec::new();
    for _ in 0..JOBS {
        let id = server.queue("true").await?;
        let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
        assert_state(&job, pb::JobState::Succeeded);
        // One attempt: jobs.worker_id is then the worker whose registration is measured.
        assert_eq!(job.attempts, 1, "{}", describe(&job));
        ids.push(uuid::Uuid::parse_str(&id)?);
    }
    // Job ids are UUIDv7: ordering by id is queueing order.
    let rows: Vec<(uuid::Uuid, uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT j.id, w.id, EXTRACT(EPOCH FROM (w.registered_at - j.created_at))::float8 \
         FROM jobs j JOIN workers w ON w.id = j.worker_id WHERE j.id = ANY($1) ORDER BY j.id",
    )
    .bind(&ids)
    .fetch_all(server.store.pool())
    .await?;
    assert_eq!(rows.len(), JOBS, "one registered worker per job");
    let workers: BTreeSet<uuid::Uuid> = rows.iter().map(|r| r.1).collect();
    assert_eq!(workers.len(), JOBS, "each job had a Pod of its own");
    let in_queue_order: Vec<String> = rows.iter().map(|r| format!("{:.2}", r.2)).collect();
    let mut seconds: Vec<f64> = rows.iter().map(|r| r.2).collect();
    seconds.sort_by(f64::total_cmp);
    // Nearest-rank percentiles.
    let percentile = |p: f64| seconds[((p * JOBS as f64).ceil() as usize).max(1) - 1];
    let (p50, p95) = (percentile(0.50), percentile(0.95));
    println!(
        "queued -> Pod worker registered over {JOBS} jobs (Kind): p50 {p50:.2} s, \
         p95 {p95:.2} s, min {:.2} s, max {:.2} s; in queueing order: {in_queue_order:?}",
        seconds[0],
        seconds[JOBS - 1],
    );
    assert!(seconds[0] > 0.0, "registered before queued? {seconds:?}");
    assert!(
        p95 < POD_START.as_secs_f64(),
        "p95 {p95:.2} s exceeds the Pod start budget"
    );
    server.wait_no_workers(GONE).await?;
    cluster.assert_nothing_left(&instance).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster; run scripts/e2e/run-kubernetes-e2e.sh"]
async fn a_job_in_a_pod_cannot_use_the_api_to_cancel_read_or_queue_jobs() -> anyhow::Result<()> {
    let cluster = Cluster::connect().await;
    let mut settings = pod_settings()?;
    settings.max_workers = 2;
    let (server, _guard) = start_server(&cluster, settings, provider_config()).await?;
    let victim = server.queue("echo victim; sleep 120").await?;
    server.wait_running(&victim).await?;
    // The attacker downloads the CLI from this machine, through the address Pods reach it at,
    // and dials its own $HODEI_SERVER.
    let cli = common::attack::serve_file(&hodei_testkit::cli_binary()?).await?;
    let cli_url = format!("http://{}:{}/hodei", pod_reachable_host()?, cli.port);
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

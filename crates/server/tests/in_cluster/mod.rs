//! `deploy/kubernetes/server` in the Kind cluster, as the servers' suite uses it: three
//! `hodei-server` Pods of the server image, a PostgreSQL on this machine, an admin API token, and
//! a gRPC client for the test.
//!
//! [`ServersInCluster::deploy`] applies the real manifests with `kubectl apply -k`, through an
//! overlay it writes in a temporary directory that adds only what a test run needs:
//! - the `hodei-database` Secret (the deployment's documented prerequisite), pointing at
//!   [`HostPostgres`];
//! - the images under test (`HODEI_SERVER_IMAGE`, `HODEI_WORKER_IMAGE`; the manifests' own
//!   names by default);
//! - `HODEI_MAX_WORKERS` and a small CPU request per worker Pod, so that every worker the
//!   servers start fits the suite's 2-core node at once (an unschedulable worker Pod would be a
//!   provisioning failure, and its job a second attempt, which the tests count);
//! - a NodePort Service, so the test reaches whichever servers are Ready from this machine
//!   (`kubectl port-forward` would pin one Pod, which the tests delete).
//!
//! Dropping it deletes everything the overlay created (`kubectl delete -k`, the namespaces with
//! their worker Pods included), after printing the Pods and the servers' last log lines — shown
//! by nextest when the test failed.

mod host_postgres;
mod kubectl;

use std::{
    net::IpAddr,
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hodei_proto::v1::{
    self as pb, job_service_client::JobServiceClient,
    log_stream_service_client::LogStreamServiceClient,
};
use hodei_testkit::{
    Probe,
    auth::{Authed, Bearer},
    wait_for,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Node, Pod, Service},
};
use kube::{
    Api, Client,
    api::{ListParams, LogParams},
};
use sqlx::{Connection, PgConnection};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub use host_postgres::HostPostgres;
pub use kubectl::Kubectl;

pub const HOW_TO_RUN: &str = "run scripts/e2e/run-kubernetes-e2e.sh (a Kind cluster with the \
                              worker and server images loaded)";
/// The namespaces, Deployment and labels of `deploy/kubernetes/server`.
pub const SYSTEM_NAMESPACE: &str = "hodei-system";
pub const WORKER_NAMESPACE: &str = "hodei-workers";
pub const DEPLOYMENT: &str = "hodei-server";
pub const SERVICE: &str = "hodei-server";
pub const SERVER_SELECTOR: &str = "app.kubernetes.io/name=hodei-server";
pub const REPLICAS: i32 = 3;
/// The test's own way in (see the module documentation).
const TEST_SERVICE: &str = "hodei-server-e2e";
/// Three servers Ready after an apply or a restart: Pods created, the image already on the
/// node, the startup probe passing every 2 s, one at a time during a rollout.
pub const ROLLOUT: Duration = Duration::from_secs(240);
/// Workers alive at once, as the overlay sets it.
pub const MAX_WORKERS: u32 = 8;
/// A previous run's namespaces must be gone before this one applies them again.
const NAMESPACES_GONE: Duration = Duration::from_secs(180);

/// The servers of `deploy/kubernetes/server` running in the cluster, and a client for them.
pub struct ServersInCluster {
    pub client: Client,
    kubectl: Kubectl,
    /// The overlay `kubectl apply -k` applied; deleted with it when dropped.
    overlay: tempfile::TempDir,
    channel: Channel,
    token: String,
    pub api_url: String,
    /// Dropped last: the servers shut down while their database still answers.
    pub database: HostPostgres,
}

impl ServersInCluster {
    /// Applies `deploy/kubernetes/server` (through the overlay) and waits until its three
    /// servers are Ready and the API answers through the NodePort Service.
    pub async fn deploy() -> anyhow::Result<Self> {
        hodei_testkit::init_tracing();
        let client = connect().await;
        let kubectl = Kubectl::from_env();
        step("waiting until no earlier run's hodei-system or hodei-workers is terminating");
        wait_namespaces_gone_or_active(&client).await?;

        let address = pod_reachable_address()?;
        step(&format!(
            "starting PostgreSQL on {address}, this machine as Pods see it"
        ));
        let database = HostPostgres::start(address).await?;
        step("creating the first admin API token: hodei-server tokens create");
        let token = create_admin_token(database.url())?;

        let overlay = write_overlay(database.url())?;
        let overlay_path = path_str(overlay.path())?.to_string();
        step(&format!(
            "kubectl apply -k {overlay_path} (deploy/kubernetes/server and the test's additions)"
        ));
        let applied = kubectl.run(&["apply", "-k", &overlay_path]);
        // From here on, dropping `servers` deletes whatever the apply created.
        let mut servers = Self {
            client,
            kubectl,
            overlay,
            channel: Endpoint::lazy("http://127.0.0.1:1")?,
            token,
            api_url: String::new(),
            database,
        };
        for line in applied?.lines() {
            eprintln!("    {line}");
        }
        step("waiting for the first rollout");
        servers.wait_rollout("the first rollout").await?;
        servers.api_url = servers.node_port_url().await?;
        servers.channel = Endpoint::lazy(&servers.api_url)?;
        step(&format!("waiting for the API at {}", servers.api_url));
        servers.wait_api().await?;
        Ok(servers)
    }

    pub fn kubectl(&self) -> &Kubectl {
        &self.kubectl
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
    }

    pub fn server_pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
    }

    pub fn worker_pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), WORKER_NAMESPACE)
    }

    /// The server Pods that are not being deleted.
    pub async fn server_pods(&self) -> anyhow::Result<Vec<Pod>> {
        let params = ListParams::default().labels(SERVER_SELECTOR);
        let mut pods: Vec<Pod> = self
            .server_pods_api()
            .list(&params)
            .await?
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .collect();
        pods.sort_by_key(|pod| pod.metadata.name.clone());
        Ok(pods)
    }

    /// Waits until the Deployment has rolled out completely: its current generation observed,
    /// three updated replicas, all Ready and available, and no old Pod left. Returns the three.
    pub async fn wait_rollout(&self, what: &str) -> anyhow::Result<Vec<Pod>> {
        let started = Instant::now();
        let pods = wait_for(
            &format!(
                "{what}: deployment/{DEPLOYMENT} with {REPLICAS} updated, Ready servers and no \
                 other Pod"
            ),
            ROLLOUT,
            || async {
                let deployment = self.deployments().get(DEPLOYMENT).await?;
                let generation = deployment.metadata.generation.unwrap_or_default();
                let status = deployment.status.unwrap_or_default();
                let params = ListParams::default().labels(SERVER_SELECTOR);
                let all = self.server_pods_api().list(&params).await?.items;
                let done = status.observed_generation.unwrap_or_default() >= generation
                    && status.replicas == Some(REPLICAS)
                    && status.updated_replicas == Some(REPLICAS)
                    && status.ready_replicas == Some(REPLICAS)
                    && status.available_replicas == Some(REPLICAS)
                    && all.len() == REPLICAS as usize
                    && all.iter().all(is_ready);
                Ok(if done {
                    Probe::Ready(all)
                } else {
                    Probe::Pending(format!(
                        "generation {generation} observed {:?}, replicas {:?}, updated {:?}, \
                         ready {:?}, available {:?}; Pods: {}",
                        status.observed_generation,
                        status.replicas,
                        status.updated_replicas,
                        status.ready_replicas,
                        status.available_replicas,
                        all.iter().map(pod_summary).collect::<Vec<_>>().join("; ")
                    ))
                })
            },
        )
        .await?;
        eprintln!(
            "    {what}: {} Ready after {:.0?}",
            names(&pods).join(", "),
            started.elapsed()
        );
        Ok(pods)
    }

    /// `http://<node address>:<node port of the test's Service>`.
    async fn node_port_url(&self) -> anyhow::Result<String> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let service = services.get(TEST_SERVICE).await?;
        let port = service
            .spec
            .and_then(|spec| spec.ports)
            .and_then(|ports| ports.into_iter().find_map(|port| port.node_port))
            .with_context(|| format!("service/{TEST_SERVICE} has no node port"))?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let address = nodes
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|node| node.status?.addresses)
            .flatten()
            .find(|address| address.type_ == "InternalIP")
            .map(|address| address.address)
            .context("no node has an InternalIP address")?;
        Ok(format!("http://{address}:{port}"))
    }

    async fn wait_api(&self) -> anyhow::Result<()> {
        wait_for(
            &format!("ListJobs to answer at {}", self.api_url),
            Duration::from_secs(60),
            || async {
                let request = pb::ListJobsRequest {
                    limit: 1,
                    ..Default::default()
                };
                Ok(match self.jobs().list_jobs(request).await {
                    Ok(_) => Probe::Ready(()),
                    Err(status) => Probe::Pending(format!("{status}")),
                })
            },
        )
        .await
    }

    pub fn jobs(&self) -> JobServiceClient<Authed> {
        JobServiceClient::new(self.authed())
    }

    pub fn logs(&self) -> LogStreamServiceClient<Authed> {
        LogStreamServiceClient::new(self.authed())
    }

    fn authed(&self) -> Authed {
        let bearer = Bearer::new(&self.token).expect("an API token is a valid header value");
        InterceptedService::new(self.channel.clone(), bearer)
    }

    /// The value the Deployment gives a server's environment variable `name`.
    pub async fn server_env(&self, name: &str) -> anyhow::Result<String> {
        let deployment = self.deployments().get(DEPLOYMENT).await?;
        deployment
            .spec
            .and_then(|spec| spec.template.spec)
            .and_then(|spec| spec.containers.into_iter().next())
            .and_then(|container| container.env)
            .and_then(|env| env.into_iter().find(|var| var.name == name))
            .and_then(|var| var.value)
            .with_context(|| format!("deployment/{DEPLOYMENT} sets no {name}"))
    }

    /// The server id the database records for the worker (`workers.server_id`: the server
    /// whose stream holds it); `None` while it is detached or not yet connected.
    pub async fn worker_server_id(&self, worker: &str) -> anyhow::Result<Option<String>> {
        let mut connection = PgConnection::connect(self.database.url()).await?;
        let row: Option<(Option<String>,)> =
            sqlx::query_as("SELECT server_id::text FROM workers WHERE id::text = $1")
                .bind(worker)
                .fetch_optional(&mut connection)
                .await?;
        Ok(row.and_then(|(server,)| server))
    }

    /// The server Pod whose stream holds `worker`, with that server's id. The database says
    /// which server (`workers.server_id`); the Pod is the one that logged that id when it
    /// started ("hodei-server listening"). A server that does not log its id (before issue 14's
    /// several-servers step) is found by the log line of the worker's session instead.
    pub async fn pod_holding(&self, worker: &str) -> anyhow::Result<(String, String)> {
        let server_id = wait_for(
            &format!("workers.server_id of worker {worker} to be set (its stream attached)"),
            Duration::from_secs(60),
            || async {
                Ok(match self.worker_server_id(worker).await? {
                    Some(server) => Probe::Ready(server),
                    None => Probe::Pending("NULL (or no such worker)".into()),
                })
            },
        )
        .await?;
        let pod = wait_for(
            &format!(
                "the one server Pod whose log names server {server_id} or worker {worker}'s session"
            ),
            Duration::from_secs(30),
            || async {
                let mut by_server = Vec::new();
                let mut by_session = Vec::new();
                for pod in self.server_pods().await? {
                    let name = name_of(&pod);
                    let log = self
                        .server_pods_api()
                        .logs(&name, &LogParams::default())
                        .await?;
                    // Its own start-up line, not another server's mention of it (a takeover).
                    if log
                        .lines()
                        .any(|line| line.contains(&server_id) && line.contains("listening"))
                    {
                        by_server.push(name.clone());
                    }
                    if log
                        .lines()
                        .any(|line| line.contains(worker) && line.contains("session opened"))
                    {
                        by_session.push(name);
                    }
                }
                Ok(match (by_server.as_slice(), by_session.as_slice()) {
                    ([pod], _) | ([], [pod]) => Probe::Ready(pod.clone()),
                    _ => Probe::Pending(format!(
                        "Pods logging the server id: {by_server:?}; Pods logging the worker's \
                         session: {by_session:?}"
                    )),
                })
            },
        )
        .await?;
        Ok((pod, server_id))
    }

    /// What a reader of a failed test wants to see: the Deployment, every Pod of both
    /// namespaces, the servers' last log lines.
    fn print_state(&self) {
        let k = &self.kubectl;
        eprintln!(
            "\n--- deployment/{DEPLOYMENT}, Pods of {SYSTEM_NAMESPACE} and {WORKER_NAMESPACE}"
        );
        eprintln!(
            "{}",
            k.show(&[
                "-n",
                SYSTEM_NAMESPACE,
                "get",
                "deployment,pdb,pods",
                "-o",
                "wide"
            ])
        );
        eprintln!(
            "{}",
            k.show(&["-n", WORKER_NAMESPACE, "get", "pods", "-o", "wide"])
        );
        eprintln!("--- the servers' last 40 log lines each");
        eprintln!(
            "{}",
            k.show(&[
                "-n",
                SYSTEM_NAMESPACE,
                "logs",
                "-l",
                SERVER_SELECTOR,
                "--prefix",
                "--tail=40",
                "--max-log-requests=10",
            ])
        );
    }
}

impl Drop for ServersInCluster {
    fn drop(&mut self) {
        self.print_state();
        let overlay = self.overlay.path().display().to_string();
        step(&format!("clean-up: kubectl delete -k {overlay}"));
        // Waits for the namespaces, so the next test can apply them again; a server's shutdown
        // is bounded by its termination grace (60 s).
        match self.kubectl.run(&[
            "delete",
            "-k",
            &overlay,
            "--ignore-not-found",
            "--wait",
            "--timeout=180s",
        ]) {
            Ok(output) => eprint!("{output}"),
            Err(e) => eprintln!(
                "clean-up failed: {e:#}; scripts/e2e/run-kubernetes-e2e.sh deletes the objects \
                 of deploy/kubernetes/server when it ends"
            ),
        }
    }
}

/// A gRPC endpoint to the API with deadlines, so a call to a server that went away fails
/// instead of hanging; the channel connects again on the next call.
struct Endpoint;

impl Endpoint {
    fn lazy(url: &str) -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy())
    }
}

/// Connects to the cluster of `KUBECONFIG`, or panics saying how to run the suite: without
/// `HODEI_E2E_K8S=1` and a reachable API server nothing it asserts could be true.
async fn connect() -> Client {
    if std::env::var("HODEI_E2E_K8S").as_deref() != Ok("1") {
        panic!(
            "HODEI_E2E_K8S is not 1: this test needs a Kubernetes cluster with the worker and \
             server images loaded; {HOW_TO_RUN}"
        );
    }
    let kubeconfig = std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into());
    let client = Client::try_default().await.unwrap_or_else(|e| {
        panic!("no Kubernetes client (KUBECONFIG={kubeconfig}): {e}; {HOW_TO_RUN}")
    });
    match tokio::time::timeout(Duration::from_secs(15), client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!(
            "the Kubernetes API (KUBECONFIG={kubeconfig}) does not answer: {e}; {HOW_TO_RUN}"
        ),
        Err(_) => panic!(
            "the Kubernetes API (KUBECONFIG={kubeconfig}) did not answer within 15 s; {HOW_TO_RUN}"
        ),
    }
}

async fn wait_namespaces_gone_or_active(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_for(
        &format!("namespaces {SYSTEM_NAMESPACE} and {WORKER_NAMESPACE} to be absent or Active"),
        NAMESPACES_GONE,
        || async {
            let mut terminating = Vec::new();
            for name in [SYSTEM_NAMESPACE, WORKER_NAMESPACE] {
                if let Some(namespace) = namespaces.get_opt(name).await?
                    && namespace.status.and_then(|s| s.phase).as_deref() == Some("Terminating")
                {
                    terminating.push(name);
                }
            }
            Ok(if terminating.is_empty() {
                Probe::Ready(())
            } else {
                Probe::Pending(format!("terminating: {terminating:?}"))
            })
        },
    )
    .await
}

/// This machine's address as Pods see it (`HODEI_E2E_SERVER_HOST`, else the `kind` network's
/// gateway), which the database listens on.
fn pod_reachable_address() -> anyhow::Result<IpAddr> {
    use crate::common::reachability::{WorkerNetwork, server_host_for};
    let host = server_host_for(WorkerNetwork::Kind, "bridge")?;
    host.parse().with_context(|| {
        format!(
            "the servers' suite runs PostgreSQL on this machine at the address Pods reach it \
             by, and {host:?} is not an IP address (Docker Desktop is not supported); set \
             HODEI_E2E_SERVER_HOST to the 'kind' network's gateway"
        )
    })
}

/// `hodei-server tokens create` against the database, as README says to bootstrap a deployment
/// (the servers refuse to start on 0.0.0.0 without a token). Also creates the schema.
fn create_admin_token(database_url: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hodei-server"))
        .args(["tokens", "create", "--name", "e2e-admin", "--scopes", "all"])
        .env("HODEI_DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .context("running hodei-server tokens create")?;
    if !output.status.success() {
        bail!(
            "hodei-server tokens create failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "hodei-server tokens create printed no token"
    );
    Ok(token)
}

/// The kustomize overlay of the module documentation, in a new temporary directory.
fn write_overlay(database_url: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("hodei-servers-overlay-")
        .tempdir()?;
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/server");
    let manifests = manifests
        .canonicalize()
        .with_context(|| format!("{}", manifests.display()))?;
    // kustomize refuses absolute paths to a base; a relative one may leave the overlay's root.
    let base = relative_path(dir.path(), &manifests)?;
    let server_image =
        std::env::var("HODEI_SERVER_IMAGE").unwrap_or_else(|_| "hodei-server:e2e-test".into());
    let worker_image =
        std::env::var("HODEI_WORKER_IMAGE").unwrap_or_else(|_| "hodei-worker:e2e-test".into());
    let (server_name, server_tag) = split_image(&server_image)?;
    anyhow::ensure!(
        !database_url.contains('\''),
        "a database URL with a quote cannot be written into the overlay"
    );
    let kustomization = format!(
        r#"# Written by crates/server/tests/in_cluster/mod.rs: deploy/kubernetes/server as users
# apply it, plus what only the test needs.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {base}
  - test-service.yaml
secretGenerator:
  - name: hodei-database
    namespace: {SYSTEM_NAMESPACE}
    literals:
      - 'url={database_url}'
    options:
      disableNameSuffixHash: true
images:
  - name: hodei-server
    newName: {server_name}
    newTag: {server_tag}
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: {DEPLOYMENT}
        namespace: {SYSTEM_NAMESPACE}
      spec:
        template:
          spec:
            containers:
              - name: server
                env:
                  - name: HODEI_WORKER_IMAGE
                    value: "{worker_image}"
                  - name: HODEI_MAX_WORKERS
                    value: "{MAX_WORKERS}"
                  - name: HODEI_WORKER_DEFAULT_CPU_REQUEST_MILLIS
                    value: "10"
"#,
        base = path_str(&base)?,
    );
    let service = format!(
        r#"# The test's way in from this machine: the node's address, any Ready server.
apiVersion: v1
kind: Service
metadata:
  name: {TEST_SERVICE}
  namespace: {SYSTEM_NAMESPACE}
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: hodei-server
  ports:
    - name: grpc
      port: 50051
      targetPort: grpc
"#
    );
    std::fs::write(dir.path().join("kustomization.yaml"), kustomization)?;
    std::fs::write(dir.path().join("test-service.yaml"), service)?;
    Ok(dir)
}

/// `to` as seen from `from`; both absolute.
fn relative_path(from: &Path, to: &Path) -> anyhow::Result<PathBuf> {
    let from = from.canonicalize()?;
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for component in &to[common..] {
        path.push(component);
    }
    Ok(path)
}

/// `name:tag`, never `latest` (Kubernetes would pull it instead of using the loaded image).
fn split_image(image: &str) -> anyhow::Result<(&str, &str)> {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) if &image[slash + colon + 1..] != "latest" => {
            Ok((&image[..slash + colon], &image[slash + colon + 1..]))
        }
        _ => bail!("image {image} needs a fixed tag other than latest, e.g. hodei-server:e2e-test"),
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Prints a step of the set-up or the test, as the scripts do.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

pub fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(name_of).collect()
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|status| status.conditions.as_ref())
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
}

/// Name, phase, readiness, restarts and why a container waits: one line per Pod.
pub fn pod_summary(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_ref());
    let restarts: i32 = containers.map_or(0, |c| c.iter().map(|c| c.restart_count).sum());
    let waiting: Vec<String> = containers
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .collect();
    format!(
        "{} {}{}{} restarts {restarts}{}",
        name_of(pod),
        status.and_then(|s| s.phase.as_deref()).unwrap_or("?"),
        if is_ready(pod) {
            " Ready"
        } else {
            " not Ready"
        },
        if pod.metadata.deletion_timestamp.is_some() {
            " terminating"
        } else {
            ""
        },
        if waiting.is_empty() {
            String::new()
        } else {
            format!(" waiting {waiting:?}")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_splits_into_name_and_tag_and_latest_is_refused() {
        assert_eq!(
            split_image("hodei-server:e2e-test").unwrap(),
            ("hodei-server", "e2e-test")
        );
        assert_eq!(
            split_image("registry:5000/team/hodei-server:1.2").unwrap(),
            ("registry:5000/team/hodei-server", "1.2")
        );
        assert!(split_image("hodei-server").is_err());
        assert!(split_image("registry:5000/hodei-server").is_err());
        assert!(split_image("hodei-server:latest").is_err());
    }

    #[test]
    fn a_relative_path_climbs_to_the_common_ancestor() {
        let from = std::env::temp_dir();
        let to = Path::new(env!("CARGO_MANIFEST_DIR"));
        let relative = relative_path(&from, to).unwrap();
        assert!(relative.is_relative());
        assert_eq!(
            from.canonicalize()
                .unwrap()
                .join(&relative)
                .canonicalize()
                .unwrap(),
            to.canonicalize().unwrap()
        );
    }
}

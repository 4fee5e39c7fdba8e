//! The harness shared by the E2E suites (local processes, Docker, Kubernetes): an in-process
//! server. What the suites assert about jobs and output is in `hodei_testkit::{jobs, log_lines}`.
//!
//! Each test gets its own PostgreSQL database ([`TestDatabase`]), an in-process `hodei-server`
//! on a random port with the provider under test, and gRPC clients. Every wait has a deadline
//! and says what it waited for when it expires.
#![allow(dead_code)] // each suite uses a different part of the harness

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use hodei_domain::{ApiToken, Scopes};
use hodei_proto::v1::{
    self as pb, job_service_client::JobServiceClient,
    log_stream_service_client::LogStreamServiceClient,
    worker_agent_service_client::WorkerAgentServiceClient,
    worker_query_service_client::WorkerQueryServiceClient,
};
use hodei_providers::{
    WorkerProvider,
    local::{LocalProvider, LocalProviderConfig},
};
use hodei_server::{RunningServer, Settings};
use hodei_store::Store;
use hodei_testkit::auth::{Authed, Bearer};
use hodei_testkit::{
    Probe, TestDatabase,
    jobs::{describe, is_final, spec, state_of},
    wait_for,
};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig},
};

/// A server under test with its database and provider.
pub struct TestServer {
    pub db: TestDatabase,
    /// Direct database access, for assertions on what is stored.
    pub store: Store,
    pub provider: Arc<dyn WorkerProvider>,
    pub settings: Settings,
    server: Option<RunningServer>,
    url: String,
    client_tls: Option<ClientTlsConfig>,
    /// An API token with every scope, which the clients below send.
    pub admin_token: ApiToken,
}

/// Settings for tests: random ports, short timers, an instance name of its own.
pub fn test_settings() -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().expect("static address"),
        metrics_listen: Some("127.0.0.1:0".parse().expect("static address")),
        instance: format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        max_workers: 4,
        max_jobs_per_worker: 1,
        idle_timeout: Duration::from_secs(10),
        provisioning_timeout: Duration::from_secs(30),
        provisioning_poll_interval: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(500),
        heartbeat_timeout: Duration::from_secs(3),
        kill_grace: Duration::from_secs(1),
        // A worker left without a server gives up after 2 s; its lease (2 s + the kill grace +
        // 1 s) passes 4 s after its session last heard from it.
        reconnect_grace: Duration::from_secs(2),
        lease_slack: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(10),
        orphan_sweep_interval: Duration::from_secs(2),
        server_lease: Duration::from_secs(3),
        ..Settings::default()
    }
}

pub fn local_provider() -> anyhow::Result<Arc<dyn WorkerProvider>> {
    let mut config = LocalProviderConfig::new(hodei_testkit::worker_binary()?);
    config.kill_grace = Duration::from_secs(2);
    Ok(Arc::new(LocalProvider::new(config)?))
}

impl TestServer {
    /// A server with the local provider; `tweak` adjusts the test settings.
    pub async fn local(tweak: impl FnOnce(&mut Settings)) -> anyhow::Result<Self> {
        let mut settings = test_settings();
        tweak(&mut settings);
        Self::start(settings, local_provider()?).await
    }

    pub async fn start(
        settings: Settings,
        provider: Arc<dyn WorkerProvider>,
    ) -> anyhow::Result<Self> {
        hodei_testkit::init_tracing();
        let db = TestDatabase::create().await?;
        let store = Store::connect(db.url(), 10, Duration::from_secs(30)).await?;
        let admin_token = ApiToken::generate();
        store
            .insert_api_token(
                "admin",
                Scopes::all(),
                admin_token.hash(),
                None,
                "test harness",
            )
            .await?;
        let mut this = Self {
            db,
            store,
            provider,
            settings,
            server: None,
            url: String::new(),
            client_tls: None,
            admin_token,
        };
        this.boot().await?;
        Ok(this)
    }

    /// Trust `ca_pem` and expect the server under `domain` when connecting clients.
    pub fn use_client_tls(&mut self, ca_pem: &str, domain: &str) {
        self.client_tls = Some(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name(domain),
        );
    }

    /// Present this client certificate (after [`Self::use_client_tls`]); `None` presents none.
    pub fn use_client_identity(
        &mut self,
        identity: Option<(&str, &str)>,
        ca_pem: &str,
        domain: &str,
    ) {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name(domain);
        if let Some((cert, key)) = identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        self.client_tls = Some(tls);
    }

    async fn boot(&mut self) -> anyhow::Result<()> {
        let store = Store::connect(self.db.url(), 20, Duration::from_secs(30)).await?;
        let server =
            hodei_server::start(self.settings.clone(), store, self.provider.clone()).await?;
        let scheme = if self.settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        self.url = format!("{scheme}://127.0.0.1:{}", server.addr().port());
        // Later starts (restarts) must come back on the same port: workers and clients know it.
        self.settings.listen = server.addr();
        if let Some(addr) = server.metrics_addr() {
            self.settings.metrics_listen = Some(addr);
        }
        self.server = Some(server);
        Ok(())
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server is running")
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Graceful shutdown, then a new server on the same database, port and instance.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await?;
        }
        self.boot().await
    }

    /// Everything stops at once, as in a crash, then a new server starts on the same database.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.kill().await;
        }
        self.boot().await
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match self.server.take() {
            Some(server) => server.shutdown().await,
            None => Ok(()),
        }
    }

    /// A channel whose calls carry the admin token.
    pub async fn channel(&self) -> anyhow::Result<Authed> {
        self.channel_as(Some(&self.admin_token)).await
    }

    /// A channel whose calls carry `token` (`None`: no token at all).
    pub async fn channel_as(&self, token: Option<&ApiToken>) -> anyhow::Result<Authed> {
        let bearer = match token {
            Some(token) => Bearer::new(token.expose())?,
            None => Bearer::none(),
        };
        Ok(InterceptedService::new(self.raw_channel().await?, bearer))
    }

    /// A channel whose calls carry nothing (what a worker agent uses).
    pub async fn raw_channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint =
            Channel::from_shared(self.url.clone())?.connect_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.client_tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Authed>> {
        Ok(JobServiceClient::new(self.channel().await?))
    }

    pub async fn logs(&self) -> anyhow::Result<LogStreamServiceClient<Authed>> {
        Ok(LogStreamServiceClient::new(self.channel().await?))
    }

    pub async fn workers(&self) -> anyhow::Result<WorkerQueryServiceClient<Authed>> {
        Ok(WorkerQueryServiceClient::new(self.channel().await?))
    }

    pub async fn agent(&self) -> anyhow::Result<WorkerAgentServiceClient<Channel>> {
        Ok(WorkerAgentServiceClient::new(self.raw_channel().await?))
    }

    /// A token named `name` with `scopes`, created as an administrator would.
    pub async fn token(&self, name: &str, scopes: &str) -> anyhow::Result<ApiToken> {
        let token = ApiToken::generate();
        self.store
            .insert_api_token(
                name,
                Scopes::parse_list(scopes)?,
                token.hash(),
                None,
                "test harness",
            )
            .await?;
        Ok(token)
    }

    /// Queues `command` with the given timeout and returns the job id.
    pub async fn queue(&self, command: &str) -> anyhow::Result<String> {
        self.queue_spec(spec(command)).await
    }

    pub async fn queue_spec(&self, spec: pb::JobSpec) -> anyhow::Result<String> {
        let response = self
            .jobs()
            .await?
            .queue_job(pb::QueueJobRequest { spec: Some(spec) })
            .await?
            .into_inner();
        Ok(response.id)
    }

    pub async fn get_job(&self, id: &str) -> anyhow::Result<pb::Job> {
        Ok(self
            .jobs()
            .await?
            .get_job(pb::GetJobRequest {
                job_id: id.into(),
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// Waits until the job is in a final state and returns it.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> anyhow::Result<pb::Job> {
        self.wait_job(id, "a final state", timeout, |job| is_final(job.state))
            .await
    }

    pub async fn wait_job(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&pb::Job) -> bool,
    ) -> anyhow::Result<pb::Job> {
        let client = self.jobs().await?;
        let done = &done;
        wait_for(&format!("job {id} to reach {what}"), timeout, || {
            let mut client = client.clone();
            async move {
                let job = client
                    .get_job(pb::GetJobRequest {
                        job_id: id.into(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(if done(&job) {
                    Probe::Ready(job)
                } else {
                    Probe::Pending(describe(&job))
                })
            }
        })
        .await
    }

    /// Follows the job's output from the start until the stream ends (the job finished).
    pub async fn follow_logs(
        &self,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<Vec<pb::LogLine>> {
        let mut stream = self.subscribe(id, 1).await?;
        let mut lines = Vec::new();
        let collect = async {
            while let Some(line) = stream.message().await? {
                lines.push(line);
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, collect)
            .await
            .with_context(|| {
                format!("the log stream of job {id} did not end within {timeout:?}")
            })??;
        Ok(lines)
    }

    /// Rows of `workers` for this instance, for assertions.
    pub async fn worker_rows(&self) -> anyhow::Result<Vec<(String, String, String)>> {
        let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
            "SELECT id, state, reason FROM workers WHERE instance = $1 ORDER BY created_at",
        )
        .bind(&self.settings.instance)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, state, reason)| (id.to_string(), state, reason))
            .collect())
    }

    /// Waits until no worker of this instance is alive, neither in the server, nor in the
    /// database, nor at the provider.
    pub async fn wait_no_workers(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for("every worker to be gone", timeout, || async {
            let in_server = self.server().alive_workers();
            let at_provider = self.provider.list_managed(&self.settings.instance).await?;
            let alive_rows: Vec<_> = self
                .worker_rows()
                .await?
                .into_iter()
                .filter(|(_, state, _)| {
                    matches!(
                        state.as_str(),
                        "provisioning" | "idle" | "busy" | "terminating"
                    )
                })
                .collect();
            Ok(
                if in_server == 0 && at_provider.is_empty() && alive_rows.is_empty() {
                    Probe::Ready(())
                } else {
                    Probe::Pending(format!(
                        "{in_server} in the server, {} at the provider, alive rows {alive_rows:?}",
                        at_provider.len()
                    ))
                },
            )
        })
        .await
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .server()
            .metrics_addr()
            .context("metrics are disabled")?;
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::ensure!(
            response.starts_with("HTTP/1.1 200"),
            "metrics answered: {response}"
        );
        Ok(response)
    }
}

/// Where workers outside this process reach the server (HU-10.2).
///
/// The server binds `0.0.0.0`; what differs is the address a container or Pod must dial:
/// - `HODEI_E2E_SERVER_HOST`, when set, wins;
/// - Docker Desktop (macOS, Windows): `host.docker.internal`;
/// - Linux Docker: the gateway of the network the containers join (default `bridge`);
/// - Linux Kind: the gateway of the `kind` Docker network.
///
/// `kubectl port-forward` cannot help here: it only forwards from the host *into* a Pod.
pub mod reachability {
    use std::process::Command;

    use anyhow::{Context, bail};

    /// Which kind of infrastructure the workers run on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WorkerNetwork {
        /// Containers on the default (or `network`) Docker network.
        Docker,
        /// Pods of a Kind cluster.
        Kind,
    }

    pub const OVERRIDE: &str = "HODEI_E2E_SERVER_HOST";

    /// The host address workers on `network` use to reach a server on this machine.
    pub fn server_host_for(network: WorkerNetwork, docker_network: &str) -> anyhow::Result<String> {
        if let Ok(host) = std::env::var(OVERRIDE)
            && !host.trim().is_empty()
        {
            return Ok(host.trim().to_string());
        }
        if is_docker_desktop()? {
            return Ok("host.docker.internal".into());
        }
        match network {
            WorkerNetwork::Kind => docker_network_gateway("kind"),
            WorkerNetwork::Docker => docker_network_gateway(docker_network),
        }
    }

    fn is_docker_desktop() -> anyhow::Result<bool> {
        let os = docker(&["info", "--format", "{{.OperatingSystem}}"])?;
        Ok(os.contains("Docker Desktop"))
    }

    /// The IPv4 gateway of a Docker network, e.g. 172.17.0.1 for `bridge`.
    pub fn docker_network_gateway(network: &str) -> anyhow::Result<String> {
        let gateways = docker(&[
            "network",
            "inspect",
            network,
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        ])?;
        if let Some(gateway) = gateways
            .split_whitespace()
            .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok())
        {
            return Ok(gateway.to_string());
        }
        // Some engines (Debian's docker.io 20.10) list only the subnet of the default bridge;
        // the engine then gives the bridge the subnet's first address, which is the gateway.
        let subnets = docker(&[
            "network",
            "inspect",
            network,
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        ])?;
        subnets
            .split_whitespace()
            .find_map(first_host_of_ipv4_subnet)
            .map(|gateway| gateway.to_string())
            .with_context(|| {
                format!(
                    "Docker network {network} has no IPv4 gateway (gateways {gateways:?}, \
                     subnets {subnets:?}); set {OVERRIDE}"
                )
            })
    }

    /// `172.17.0.0/16` → `172.17.0.1`; None for anything but an IPv4 CIDR with room for hosts.
    pub fn first_host_of_ipv4_subnet(cidr: &str) -> Option<std::net::Ipv4Addr> {
        let (address, prefix) = cidr.split_once('/')?;
        let address: std::net::Ipv4Addr = address.parse().ok()?;
        let prefix: u32 = prefix.parse().ok()?;
        if prefix > 30 {
            return None;
        }
        let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
        Some(std::net::Ipv4Addr::from((u32::from(address) & mask) + 1))
    }

    fn docker(args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new("docker")
            .args(args)
            .output()
            .context("running the docker CLI (is it installed?)")?;
        if !output.status.success() {
            bail!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

impl TestServer {
    /// Opens a log subscription from `from_sequence`, following live output.
    pub async fn subscribe(
        &self,
        id: &str,
        from_sequence: u64,
    ) -> anyhow::Result<tonic::Streaming<pb::LogLine>> {
        Ok(self
            .logs()
            .await?
            .subscribe_logs(pb::SubscribeLogsRequest {
                job_id: id.into(),
                from_sequence,
                follow: true,
            })
            .await?
            .into_inner())
    }

    /// Cancels a job, returning the job as the server answered.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<pb::Job, tonic::Status> {
        let mut jobs = self
            .jobs()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        jobs.cancel_job(pb::CancelJobRequest {
            job_id: id.into(),
            reason: reason.into(),
        })
        .await
        .map(tonic::Response::into_inner)
    }

    /// Waits until the job is running on a worker.
    pub async fn wait_running(&self, id: &str) -> anyhow::Result<pb::Job> {
        self.wait_job(id, "running", Duration::from_secs(60), |j| {
            state_of(j) == pb::JobState::Running
        })
        .await
    }
}

/// What a job does to attack the client API from inside its worker, as an attacker would: fetch
/// the `hodei` CLI, dial the server the worker was given (`$HODEI_SERVER`, in every job's
/// environment), and try to cancel, read and follow another job and to queue one of its own.
///
/// Used where the worker image has no CLI (containers, Pods): the test serves it
/// ([`attack::serve_file`]) and the job downloads it with busybox's `wget`.
pub mod attack {
    use std::path::Path;

    use anyhow::Context;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// The calls the job tries; each must be refused.
    pub const CALLS: usize = 4;

    /// The job's command. Its output: the number of credential-like variables it sees (`0`),
    /// then `refused: <call>: <why>` or `ALLOWED: <call>` per call. Exits 3 if it cannot fetch
    /// the CLI and 4 if the CLI does not run in the image, so a broken test never passes.
    pub fn script(cli_url: &str, victim: &str) -> String {
        format!(
            "cli=/tmp/hodei-cli-$$; \
             wget -q -O $cli {cli_url} || {{ echo 'cannot fetch the CLI from {cli_url}'; exit 3; }}; \
             chmod +x $cli; \
             $cli --version >/dev/null 2>&1 || {{ echo 'the CLI does not run in this image'; exit 4; }}; \
             env | grep -c -e HODEI_TOKEN -e HODEI_API_TOKEN -e HODEI_DATABASE_URL || true; \
             err=$(mktemp); \
             for call in 'jobs cancel {victim}' 'jobs get {victim}' 'jobs logs {victim}' \
                         'run -- echo smuggled'; do \
               if $cli --server \"$HODEI_SERVER\" $call >/dev/null 2>\"$err\"; then \
                 echo \"ALLOWED: $call\"; \
               else \
                 echo \"refused: $call: $(grep -o -e 'needs an API token' \"$err\" | head -n 1)\"; \
               fi; \
             done; rm -f \"$err\" $cli"
        )
    }

    /// Checks the attacking job's output lines: no credential in sight, every call refused
    /// because the caller is not authenticated. The CLI says "needs an API token" only when
    /// the server answered `UNAUTHENTICATED`: the calls reached it.
    pub fn assert_refused(lines: &[String]) {
        assert_eq!(
            lines.first().map(String::as_str),
            Some("0"),
            "credentials in the job's environment (or no CLI): {lines:?}"
        );
        assert_eq!(lines.len(), 1 + CALLS, "{lines:?}");
        for line in &lines[1..] {
            assert!(
                line.starts_with("refused: ") && line.ends_with(": needs an API token"),
                "{lines:?}"
            );
        }
    }

    /// A file served over plain HTTP on every interface, for jobs to download; stops serving
    /// when dropped.
    pub struct FileServer {
        pub port: u16,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FileServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Serves `path` as the answer to every request (HTTP/1.0, one request per connection).
    pub async fn serve_file(path: &Path) -> anyhow::Result<FileServer> {
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let listener = TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            let body = std::sync::Arc::new(body);
            while let Ok((mut stream, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    // The request's head is read and ignored: there is one file.
                    let mut head = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let header = format!(
                        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(header.as_bytes()).await;
                    let _ = stream.write_all(&body).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(FileServer { port, task })
    }
}

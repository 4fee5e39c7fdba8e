//! How the server behaves, independent of where the values come from (flags, env, tests).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use hodei_domain::{JobSpecLimits, Scope, Scopes};
use hodei_store::RetryBackoff;

/// Server behaviour. `Default` gives the production defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// gRPC listen address. Bind `0.0.0.0` when workers run in containers or Pods.
    pub listen: SocketAddr,
    /// Prometheus `/metrics` listen address; None disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// The web dashboard's listen address (HTTP); None (the default) disables it.
    pub web_listen: Option<SocketAddr>,
    /// Mark the dashboard's login cookie `Secure`: set it when browsers reach the dashboard
    /// over HTTPS (a TLS-terminating proxy in front of `web_listen`).
    pub web_secure_cookie: bool,
    /// Value of the `hodei.io/instance` label on everything this server creates. The reaper
    /// only removes resources of its own instance.
    pub instance: String,
    /// The address workers dial (`HODEI_SERVER`). None: `<scheme>://<worker_host>:<bound port>`.
    pub worker_server_url: Option<String>,
    /// Host part used when `worker_server_url` is None.
    pub worker_server_host: String,
    /// At most this many workers alive at once (provisioning, connected or terminating).
    pub max_workers: usize,
    /// Jobs a worker runs before it is retired; 1 makes every worker strictly ephemeral.
    pub max_jobs_per_worker: u32,
    /// An idle worker is retired after this long without a job.
    pub idle_timeout: Duration,
    /// A worker that has not registered by then is failed, and its job re-queued.
    pub provisioning_timeout: Duration,
    /// How often the provider is asked about workers that have not registered yet.
    pub provisioning_poll_interval: Duration,
    /// How long a failing image pull that may pass (a registry timing out, a rate limit) is
    /// waited out before the attempt fails (Kubernetes). An image that does not exist fails
    /// at once, whatever this says.
    pub image_pull_grace: Duration,
    pub heartbeat_interval: Duration,
    /// A connected worker silent for this long has its stream closed; it is lost only when its
    /// lease passes (or its provider says it is gone).
    pub heartbeat_timeout: Duration,
    /// How long a worker that cannot reach any server keeps its job before it kills it and
    /// exits (sent to workers at registration; they use the smaller of it and their own).
    pub reconnect_grace: Duration,
    /// Added to the reconnect grace and the kill grace to make a worker's lease: covers the time
    /// a worker may take to notice a dead connection (HTTP/2 keep-alive, about 30 s).
    pub lease_slack: Duration,
    /// SIGTERM → SIGKILL grace for a job's process group.
    pub kill_grace: Duration,
    /// On shutdown, how long running jobs may finish before their workers are told to move
    /// (they keep their jobs and reconnect to the next server of the instance).
    pub shutdown_grace: Duration,
    /// How often resources unknown to the database are looked for (also at start-up).
    pub orphan_sweep_interval: Duration,
    /// How long this server counts as alive after renewing its row (every third of it): then
    /// another server takes over what it was provisioning or destroying.
    pub server_lease: Duration,
    pub job_limits: JobSpecLimits,
    pub tls: Option<TlsFiles>,
    /// PEM of the CA workers should trust (passed as `HODEI_TLS_CA_PEM`).
    pub worker_ca_pem: Option<String>,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// How long a database that cannot be reached (a restart, a fail-over) is waited out by
    /// work in progress — recording output, a job's start or end, a re-queue — before that work
    /// is given up.
    pub database_outage_grace: Duration,
    /// How long a job re-queued after an infrastructure failure waits before its next attempt.
    pub retry_backoff: RetryBackoff,
    /// Whether callers of the client API must authenticate.
    pub auth: AuthMode,
    /// PEM file of the CA whose client certificates authenticate callers (mutual TLS, on top
    /// of API tokens; needs `tls`).
    pub client_ca: Option<PathBuf>,
    /// What a caller authenticated by a client certificate may do.
    pub client_certificate_scopes: Scopes,
    /// Faults tests inject; all off in production.
    #[doc(hidden)]
    pub faults: Faults,
}

/// Whether callers of the client API (jobs, logs, workers, tokens) must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// API tokens (or client certificates); the default.
    Required,
    /// Everyone who can reach the port may do everything (`--insecure-no-auth`): only for a
    /// server nobody else can reach, and never with the local provider on a shared host (its
    /// jobs run on the same host and could call the API).
    Off,
}

/// Faults a test injects into a running server to prove what happens when code that should
/// never fail does. Production leaves every one off.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The next this-many worker sessions panic when their worker reports a job's start.
    pub session_panics: Arc<AtomicU32>,
}

impl Faults {
    /// Takes one of the session panics asked for, if any is left.
    pub(crate) fn take_session_panic(&self) -> bool {
        self.session_panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            // Loopback: the metrics name jobs and workers; expose them deliberately.
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            web_listen: None,
            web_secure_cookie: false,
            instance: "default".into(),
            worker_server_url: None,
            worker_server_host: "127.0.0.1".into(),
            max_workers: 10,
            max_jobs_per_worker: 1,
            idle_timeout: Duration::from_secs(60),
            provisioning_timeout: Duration::from_secs(120),
            provisioning_poll_interval: Duration::from_secs(1),
            image_pull_grace: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(20),
            kill_grace: Duration::from_secs(10),
            reconnect_grace: Duration::from_secs(300),
            lease_slack: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            orphan_sweep_interval: Duration::from_secs(30),
            server_lease: Duration::from_secs(15),
            job_limits: JobSpecLimits::default(),
            tls: None,
            worker_ca_pem: None,
            max_message_bytes: 4 << 20,
            database_outage_grace: Duration::from_secs(60),
            retry_backoff: RetryBackoff::default(),
            auth: AuthMode::Required,
            client_ca: None,
            client_certificate_scopes: [Scope::JobsSubmit, Scope::JobsRead].into_iter().collect(),
            faults: Faults::default(),
        }
    }
}

impl Settings {
    /// How long a worker's lease lasts after its session last heard from it: longer than the
    /// worker may keep its job without a server (reconnect grace, then the kill grace).
    pub fn worker_lease_ttl(&self) -> Duration {
        self.reconnect_grace + self.kill_grace + self.lease_slack
    }

    /// The `HODEI_SERVER` value for workers, given the port the server actually bound.
    pub fn worker_address(&self, bound_port: u16) -> String {
        match &self.worker_server_url {
            Some(url) => url.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let host = &self.worker_server_host;
                if host.contains(':') && !host.starts_with('[') {
                    format!("{scheme}://[{host}]:{bound_port}")
                } else {
                    format!("{scheme}://{host}:{bound_port}")
                }
            }
        }
    }
}

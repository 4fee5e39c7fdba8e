//! Configuration of `hodei-server`, from flags and `HODEI_*` environment variables.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use hodei_contract::duration;
use hodei_domain::Resources;
use hodei_domain::{Scopes, TokenId};
use hodei_providers::{
    WorkerDefaults, WorkerProvider,
    docker::{DockerProvider, DockerProviderConfig},
    kubernetes::{KubernetesProvider, KubernetesProviderConfig, RestartPolicy},
    local::{LocalProvider, LocalProviderConfig},
};
use hodei_server::{AuthMode, RetryBackoff, Settings, TlsFiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Workers are child processes on this machine.
    Local,
    /// Workers are containers on a Docker engine.
    Docker,
    /// Workers are Pods in a Kubernetes namespace.
    Kubernetes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Hodei Jobs server: queues jobs in PostgreSQL and runs each on an ephemeral worker.
#[derive(Debug, Clone, Parser)]
#[command(name = "hodei-server", version)]
pub struct Config {
    /// PostgreSQL URL, e.g. postgres://hodei@localhost/hodei.
    #[arg(long, env = "HODEI_DATABASE_URL")]
    pub database_url: String,
    #[arg(long, env = "HODEI_DATABASE_MAX_CONNECTIONS", default_value_t = 20)]
    pub database_max_connections: u32,
    #[arg(long, env = "HODEI_DATABASE_CONNECT_TIMEOUT", default_value = "30s", value_parser = duration::parse)]
    pub database_connect_timeout: Duration,

    /// gRPC listen address; use 0.0.0.0 when workers run in containers or Pods.
    #[arg(long, env = "HODEI_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Prometheus /metrics listen address, or "off". On a non-loopback address a scrape needs
    /// `Authorization: Bearer <API token with metrics:read>`.
    #[arg(long, env = "HODEI_METRICS_LISTEN", default_value = "127.0.0.1:9090")]
    pub metrics_listen: String,
    /// Web dashboard listen address (HTTP), or "off". It asks for an API token at login, like
    /// the API; put a TLS-terminating proxy in front of it beyond loopback.
    #[arg(long, env = "HODEI_WEB_LISTEN", default_value = "off")]
    pub web_listen: String,
    /// Mark the dashboard's login cookie Secure (browsers reach it over HTTPS through a proxy).
    #[arg(long, env = "HODEI_WEB_SECURE_COOKIE")]
    pub web_secure_cookie: bool,

    /// Serve the client API without authentication: anyone who can reach the port may run any
    /// command. Only for a server nobody else can reach; logged as a warning at start-up.
    #[arg(long, env = "HODEI_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// PEM of a CA whose client certificates authenticate callers (mutual TLS; needs
    /// --tls-cert/--tls-key). The principal is `cert:<common name>`.
    #[arg(long, env = "HODEI_CLIENT_CA")]
    pub client_ca: Option<PathBuf>,
    /// Scopes of callers authenticated by a client certificate.
    #[arg(long, env = "HODEI_CLIENT_CERTIFICATE_SCOPES", default_value = "jobs:submit,jobs:read", value_parser = parse_scopes)]
    pub client_certificate_scopes: Scopes,
    /// Name of this deployment; set as label hodei.io/instance on every worker.
    #[arg(long, env = "HODEI_INSTANCE", default_value = "default")]
    pub instance: String,

    #[arg(long, env = "HODEI_PROVIDER", value_enum, default_value_t = ProviderKind::Local)]
    pub provider: ProviderKind,
    /// Address workers dial (HODEI_SERVER), e.g. http://10.0.0.1:50051.
    /// Default: http(s)://<worker-server-host>:<listen port>.
    #[arg(long, env = "HODEI_WORKER_SERVER_URL")]
    pub worker_server_url: Option<String>,
    #[arg(long, env = "HODEI_WORKER_SERVER_HOST", default_value = "127.0.0.1")]
    pub worker_server_host: String,

    #[arg(long, env = "HODEI_MAX_WORKERS", default_value_t = 10)]
    pub max_workers: usize,
    /// Jobs per worker before it is retired; 1 = every job gets a fresh worker.
    #[arg(long, env = "HODEI_MAX_JOBS_PER_WORKER", default_value_t = 1)]
    pub max_jobs_per_worker: u32,
    #[arg(long, env = "HODEI_IDLE_TIMEOUT", default_value = "60s", value_parser = duration::parse)]
    pub idle_timeout: Duration,
    #[arg(long, env = "HODEI_PROVISIONING_TIMEOUT", default_value = "120s", value_parser = duration::parse)]
    pub provisioning_timeout: Duration,
    /// How long a failing image pull that may pass (a registry timing out, a rate limit) is
    /// waited out before the attempt fails (Kubernetes); an image that does not exist fails at
    /// once.
    #[arg(long, env = "HODEI_IMAGE_PULL_GRACE", default_value = "30s", value_parser = duration::parse)]
    pub image_pull_grace: Duration,
    #[arg(long, env = "HODEI_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = duration::parse)]
    pub heartbeat_interval: Duration,
    #[arg(long, env = "HODEI_HEARTBEAT_TIMEOUT", default_value = "20s", value_parser = duration::parse)]
    pub heartbeat_timeout: Duration,
    /// Between SIGTERM and SIGKILL of a cancelled or timed-out job.
    #[arg(long, env = "HODEI_KILL_GRACE", default_value = "10s", value_parser = duration::parse)]
    pub kill_grace: Duration,
    /// How long a worker that cannot reach any server keeps its job running before it kills
    /// it and exits; a worker unheard of for longer (plus the kill grace and --lease-slack) is
    /// lost and its job re-queued.
    #[arg(long, env = "HODEI_RECONNECT_GRACE", default_value = "5m", value_parser = duration::parse)]
    pub reconnect_grace: Duration,
    /// Added to a worker's lease beyond its reconnect and kill graces: the time a worker may
    /// take to notice that its connection died.
    #[arg(long, env = "HODEI_LEASE_SLACK", default_value = "60s", value_parser = duration::parse)]
    pub lease_slack: Duration,
    /// On SIGTERM, how long running jobs may finish before their workers are told to move
    /// (they keep running their jobs and reconnect to the next server of the instance).
    #[arg(long, env = "HODEI_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,
    #[arg(long, env = "HODEI_ORPHAN_SWEEP_INTERVAL", default_value = "30s", value_parser = duration::parse)]
    pub orphan_sweep_interval: Duration,
    /// How long this server counts as alive after it last renewed its row in the database
    /// (renewed three times per period): when it passes, another server of the instance takes
    /// over the workers it was provisioning or destroying.
    #[arg(long, env = "HODEI_SERVER_LEASE", default_value = "15s", value_parser = duration::parse)]
    pub server_lease: Duration,
    #[arg(long, env = "HODEI_DEFAULT_JOB_TIMEOUT", default_value = "1h", value_parser = duration::parse)]
    pub default_job_timeout: Duration,
    /// Wait before the second attempt of a job re-queued after an infrastructure failure;
    /// doubled for each further attempt, up to --retry-backoff-max.
    #[arg(long, env = "HODEI_RETRY_BACKOFF", default_value = "1s", value_parser = duration::parse)]
    pub retry_backoff: Duration,
    #[arg(long, env = "HODEI_RETRY_BACKOFF_MAX", default_value = "60s", value_parser = duration::parse)]
    pub retry_backoff_max: Duration,

    /// PEM certificate chain; with --tls-key, serve gRPC over TLS.
    #[arg(long, env = "HODEI_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "HODEI_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM of the CA workers must trust (handed to them as HODEI_TLS_CA_PEM).
    #[arg(long, env = "HODEI_WORKER_CA")]
    pub worker_ca: Option<PathBuf>,

    /// Local provider: the hodei-worker executable. Default: next to hodei-server, else PATH.
    #[arg(long, env = "HODEI_WORKER_BINARY")]
    pub worker_binary: Option<PathBuf>,

    /// Docker and Kubernetes providers: the worker image (never `:latest`).
    #[arg(
        long,
        env = "HODEI_WORKER_IMAGE",
        default_value = "hodei-worker:e2e-test"
    )]
    pub worker_image: String,
    /// Docker provider: network for worker containers (default: the engine's default bridge).
    #[arg(long, env = "HODEI_DOCKER_NETWORK")]
    pub docker_network: Option<String>,
    /// Kubernetes provider: namespace of the worker Pods.
    #[arg(long, env = "HODEI_K8S_NAMESPACE", default_value = "hodei-workers")]
    pub k8s_namespace: String,
    /// Kubernetes provider: restartPolicy of worker Pods (Never, OnFailure, Always).
    #[arg(long, env = "HODEI_K8S_RESTART_POLICY", default_value = "Never")]
    pub k8s_restart_policy: String,
    /// Kubernetes provider: service account of worker Pods (its token is never mounted).
    #[arg(long, env = "HODEI_K8S_SERVICE_ACCOUNT")]
    pub k8s_service_account: Option<String>,
    /// Docker and Kubernetes providers: CPU limit, in thousandths of a core, of a worker whose
    /// job sets none (0: none; else 100 to 1024000, as a job's).
    #[arg(long, env = "HODEI_WORKER_DEFAULT_CPU_MILLIS", default_value_t = WorkerDefaults::DEFAULT_CPU_MILLIS)]
    pub worker_default_cpu_millis: u32,
    /// Kubernetes provider: CPU request of a worker whose job sets no CPU (at most the limit).
    #[arg(long, env = "HODEI_WORKER_DEFAULT_CPU_REQUEST_MILLIS", default_value_t = WorkerDefaults::DEFAULT_CPU_REQUEST_MILLIS)]
    pub worker_default_cpu_request_millis: u32,
    /// Docker and Kubernetes providers: memory limit (and request), in MiB, of a worker whose
    /// job sets none (0: none; else 16 MiB to 4 TiB, as a job's).
    #[arg(long, env = "HODEI_WORKER_DEFAULT_MEMORY_MIB", default_value_t = WorkerDefaults::DEFAULT_MEMORY_BYTES >> 20)]
    pub worker_default_memory_mib: u64,
    /// Docker provider: most processes a worker container may have (0: no limit).
    #[arg(long, env = "HODEI_WORKER_PIDS_LIMIT", default_value_t = WorkerDefaults::DEFAULT_PIDS_LIMIT as u32)]
    pub worker_pids_limit: u32,
    /// Docker and Kubernetes providers: the worker image's home (and working) directory,
    /// writable and empty at each start under the read-only root file system, as /tmp is.
    #[arg(long, env = "HODEI_WORKER_HOME", default_value = WorkerDefaults::DEFAULT_HOME)]
    pub worker_home: String,

    #[arg(long, env = "HODEI_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Server-side commands that work on the database directly, without a running server.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// API tokens: create the first admin token, or recover when every admin token is lost.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokensCommand {
    /// Creates a token and prints it (only it) on standard output: shown this once.
    Create {
        /// The principal it acts as; jobs it queues are owned by this name.
        #[arg(long)]
        name: String,
        /// Comma-separated: jobs:submit, jobs:read, jobs:admin, workers:read, tokens:admin,
        /// metrics:read, or "all".
        #[arg(long, value_parser = parse_scopes)]
        scopes: Scopes,
        /// Lifetime (e.g. 30d); default: no expiry.
        #[arg(long, value_parser = duration::parse)]
        ttl: Option<Duration>,
    },
    /// Lists every token (never the secrets).
    List,
    /// Revokes a token: refused at once from then on.
    Revoke {
        /// The token's id, as `list` shows it.
        id: TokenId,
    },
}

/// `jobs:submit,jobs:read`, or `all`.
fn parse_scopes(list: &str) -> Result<Scopes, String> {
    if list.trim() == "all" {
        return Ok(Scopes::all());
    }
    let scopes = Scopes::parse_list(list).map_err(|e| e.to_string())?;
    if scopes.is_empty() {
        return Err("give at least one scope".into());
    }
    Ok(scopes)
}

impl Config {
    pub fn init_tracing(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }

    /// The configuration as printed at start-up: the database password is hidden.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        copy.database_url = redact_url(&copy.database_url);
        copy
    }

    pub fn settings(&self) -> anyhow::Result<Settings> {
        anyhow::ensure!(self.max_workers > 0, "--max-workers must be at least 1");
        anyhow::ensure!(
            self.max_jobs_per_worker > 0,
            "--max-jobs-per-worker must be at least 1"
        );
        anyhow::ensure!(
            self.heartbeat_timeout > self.heartbeat_interval,
            "--heartbeat-timeout must be longer than --heartbeat-interval"
        );
        anyhow::ensure!(
            hodei_providers::labels::is_valid_label_value(&self.instance)
                && !self.instance.is_empty(),
            "--instance {:?} is not a valid label value (letters, digits, '-', '_', '.', at most 63)",
            self.instance
        );
        self.worker_defaults()?;
        let metrics_listen = match self.metrics_listen.as_str() {
            "off" | "" => None,
            addr => Some(addr.parse().with_context(|| {
                format!("--metrics-listen {addr:?} is not an address or \"off\"")
            })?),
        };
        let web_listen =
            match self.web_listen.as_str() {
                "off" | "" => None,
                addr => Some(addr.parse().with_context(|| {
                    format!("--web-listen {addr:?} is not an address or \"off\"")
                })?),
            };
        let worker_ca_pem = match &self.worker_ca {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --worker-ca {}", path.display()))?,
            ),
            None => None,
        };
        let mut settings = Settings {
            listen: self.listen,
            metrics_listen,
            web_listen,
            web_secure_cookie: self.web_secure_cookie,
            instance: self.instance.clone(),
            worker_server_url: self.worker_server_url.clone(),
            worker_server_host: self.worker_server_host.clone(),
            max_workers: self.max_workers,
            max_jobs_per_worker: self.max_jobs_per_worker,
            idle_timeout: self.idle_timeout,
            provisioning_timeout: self.provisioning_timeout,
            image_pull_grace: self.image_pull_grace,
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            kill_grace: self.kill_grace,
            reconnect_grace: self.reconnect_grace,
            lease_slack: self.lease_slack,
            shutdown_grace: self.shutdown_grace,
            orphan_sweep_interval: self.orphan_sweep_interval,
            server_lease: self.server_lease,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            worker_ca_pem,
            retry_backoff: RetryBackoff {
                first: self.retry_backoff,
                max: self.retry_backoff_max,
            },
            auth: if self.insecure_no_auth {
                AuthMode::Off
            } else {
                AuthMode::Required
            },
            client_ca: self.client_ca.clone(),
            client_certificate_scopes: self.client_certificate_scopes,
            ..Settings::default()
        };
        settings.job_limits.default_timeout = self.default_job_timeout;
        Ok(settings)
    }

    /// What Docker and Kubernetes workers get when their job sets no limits, within the bounds
    /// a job's own limits have (`Resources::validate`).
    pub fn worker_defaults(&self) -> anyhow::Result<WorkerDefaults> {
        let memory_bytes = self
            .worker_default_memory_mib
            .checked_mul(1 << 20)
            .filter(|&bytes| bytes <= Resources::MAX_MEMORY_BYTES)
            .with_context(|| {
                format!(
                    "--worker-default-memory-mib {} is above the maximum of {} MiB",
                    self.worker_default_memory_mib,
                    Resources::MAX_MEMORY_BYTES >> 20
                )
            })?;
        Resources {
            cpu_millis: self.worker_default_cpu_millis,
            memory_bytes,
        }
        .validate()
        .map_err(|e| {
            anyhow::anyhow!("--worker-default-cpu-millis / --worker-default-memory-mib: {e}")
        })?;
        let cpu_request_millis = self.worker_default_cpu_request_millis;
        anyhow::ensure!(
            self.worker_default_cpu_millis == 0
                || cpu_request_millis <= self.worker_default_cpu_millis,
            "--worker-default-cpu-request-millis {cpu_request_millis} is above \
             --worker-default-cpu-millis {}",
            self.worker_default_cpu_millis
        );
        anyhow::ensure!(
            cpu_request_millis <= Resources::MAX_CPU_MILLIS,
            "--worker-default-cpu-request-millis {cpu_request_millis} is above the maximum of {}",
            Resources::MAX_CPU_MILLIS
        );
        let home = self.worker_home.trim_end_matches('/');
        anyhow::ensure!(
            home.starts_with('/') && !home.split('/').any(|part| part == ".."),
            "--worker-home {:?} must be an absolute path other than /",
            self.worker_home
        );
        Ok(WorkerDefaults {
            cpu_millis: self.worker_default_cpu_millis,
            cpu_request_millis,
            memory_bytes,
            pids_limit: i64::from(self.worker_pids_limit),
            home: home.to_string(),
        })
    }

    pub async fn provider(&self) -> anyhow::Result<Arc<dyn WorkerProvider>> {
        match self.provider {
            ProviderKind::Local => {
                let binary = match &self.worker_binary {
                    Some(path) => path.clone(),
                    None => default_worker_binary(),
                };
                let mut config = LocalProviderConfig::new(binary);
                config.kill_grace = self.kill_grace;
                Ok(Arc::new(LocalProvider::new(config)?))
            }
            ProviderKind::Docker => {
                let mut config = DockerProviderConfig::new(&self.worker_image);
                config.network = self.docker_network.clone();
                config.stop_grace = self.kill_grace;
                config.defaults = self.worker_defaults()?;
                Ok(Arc::new(DockerProvider::connect(config).await?))
            }
            ProviderKind::Kubernetes => {
                let mut config =
                    KubernetesProviderConfig::new(&self.k8s_namespace, &self.worker_image);
                config.restart_policy = self
                    .k8s_restart_policy
                    .parse::<RestartPolicy>()
                    .map_err(|e| anyhow::anyhow!("--k8s-restart-policy: {e}"))?;
                config.service_account = self.k8s_service_account.clone();
                config.image_pull_grace = self.image_pull_grace;
                config.defaults = self.worker_defaults()?;
                Ok(Arc::new(KubernetesProvider::connect(config).await?))
            }
        }
    }
}

/// `hodei-worker` next to this executable (how releases and `cargo build` lay them out), else
/// the first one on PATH.
fn default_worker_binary() -> PathBuf {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("hodei-worker")));
    if let Some(sibling) = sibling.filter(|p| p.is_file()) {
        return sibling;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("hodei-worker"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("hodei-worker"))
}

fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    // The password in the authority: scheme://user:password@host/...
    let mut redacted = match base.find("://") {
        Some(scheme) => {
            let rest = &base[scheme + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => match rest[..at].split_once(':') {
                    Some((user, _)) => {
                        format!("{}{user}:***{}", &base[..scheme + 3], &rest[at..])
                    }
                    None => base.to_string(),
                },
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    // ... and passwords given as parameters: ?password=...&sslpassword=...
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if key.to_ascii_lowercase().ends_with("password") => {
                    format!("{key}=***")
                }
                _ => param.to_string(),
            })
            .collect();
        redacted.push('?');
        redacted.push_str(&params.join("&"));
    }
    redacted
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_image_pull_grace_is_a_setting_from_its_flag_or_environment() {
        let default = Config::try_parse_from(["hodei-server", "--database-url", "postgres://x/y"])
            .expect("valid flags");
        assert_eq!(default.image_pull_grace, Duration::from_secs(30));
        let config = Config::try_parse_from([
            "hodei-server",
            "--database-url",
            "postgres://x/y",
            "--image-pull-grace",
            "5s",
        ])
        .expect("valid flags");
        let settings = config.settings().expect("valid settings");
        assert_eq!(settings.image_pull_grace, Duration::from_secs(5));
        let flag = Config::command()
            .get_arguments()
            .find(|arg| arg.get_id() == "image_pull_grace")
            .and_then(|arg| arg.get_env().map(|env| env.to_os_string()));
        assert_eq!(flag.as_deref(), Some("HODEI_IMAGE_PULL_GRACE".as_ref()));
    }

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec!["hodei-server", "--database-url", "postgres://x/y"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).expect("valid flags")
    }

    #[test]
    fn workers_get_default_limits_a_pid_limit_and_a_home_from_flags_or_environment() {
        assert_eq!(
            parse(&[]).worker_defaults().expect("valid defaults"),
            WorkerDefaults::default()
        );
        let config = parse(&[
            "--worker-default-cpu-millis",
            "2000",
            "--worker-default-cpu-request-millis",
            "250",
            "--worker-default-memory-mib",
            "1024",
            "--worker-pids-limit",
            "0",
            "--worker-home",
            "/work/",
        ]);
        assert_eq!(
            config.worker_defaults().expect("valid defaults"),
            WorkerDefaults {
                cpu_millis: 2000,
                cpu_request_millis: 250,
                memory_bytes: 1 << 30,
                pids_limit: 0,
                home: "/work".into(),
            }
        );
        let envs: Vec<_> = Config::command()
            .get_arguments()
            .filter(|arg| arg.get_id().as_str().starts_with("worker_"))
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        for env in [
            "HODEI_WORKER_DEFAULT_CPU_MILLIS",
            "HODEI_WORKER_DEFAULT_CPU_REQUEST_MILLIS",
            "HODEI_WORKER_DEFAULT_MEMORY_MIB",
            "HODEI_WORKER_PIDS_LIMIT",
            "HODEI_WORKER_HOME",
        ] {
            assert!(envs.iter().any(|e| e == env), "{env} missing from {envs:?}");
        }
    }

    #[test]
    fn default_worker_limits_outside_a_jobs_bounds_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (
                &["--worker-default-memory-mib", "8"][..],
                "--worker-default-memory-mib",
            ),
            (
                &["--worker-default-memory-mib", "99999999999999"],
                "--worker-default-memory-mib",
            ),
            (
                &["--worker-default-cpu-millis", "50"],
                "--worker-default-cpu-millis",
            ),
            (
                &["--worker-default-cpu-request-millis", "1500"],
                "--worker-default-cpu-request-millis",
            ),
            (&["--worker-home", "relative"], "--worker-home"),
            (&["--worker-home", "/"], "--worker-home"),
        ] {
            let config = parse(args);
            let err = config.worker_defaults().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
            assert!(config.settings().is_err(), "{args:?}: settings accepted it");
        }
        // Zero turns a default off.
        let config = parse(&[
            "--worker-default-cpu-millis",
            "0",
            "--worker-default-memory-mib",
            "0",
        ]);
        let defaults = config.worker_defaults().expect("zero is no default");
        assert_eq!((defaults.cpu_millis, defaults.memory_bytes), (0, 0));
    }

    #[test]
    fn duration_flags_read_the_contracts_grammar() {
        let config = Config::try_parse_from([
            "hodei-server",
            "--database-url",
            "postgres://x/y",
            "--idle-timeout",
            "1h30m",
            "--kill-grace",
            "500ms",
        ])
        .expect("valid flags");
        assert_eq!(config.idle_timeout, Duration::from_secs(5400));
        assert_eq!(config.kill_grace, Duration::from_millis(500));
        let err = Config::try_parse_from([
            "hodei-server",
            "--database-url",
            "postgres://x/y",
            "--idle-timeout",
            "99999999999999999h",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--idle-timeout") && err.contains("too long"),
            "{err}"
        );
    }

    #[test]
    fn database_passwords_are_not_printed() {
        assert_eq!(
            redact_url("postgres://hodei:s3cret@db:5432/hodei"),
            "postgres://hodei:***@db:5432/hodei"
        );
        assert_eq!(redact_url("postgres://db/hodei"), "postgres://db/hodei");
        assert_eq!(
            redact_url("postgres://db/hodei?user=x&password=s3cret&sslmode=require"),
            "postgres://db/hodei?user=x&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p%40ss@db/hodei?sslpassword=k3y"),
            "postgres://u:***@db/hodei?sslpassword=***"
        );
        assert_eq!(
            redact_url("postgres://db/hodei?application_name=a@b"),
            "postgres://db/hodei?application_name=a@b"
        );
    }

    #[test]
    fn an_invalid_instance_name_is_refused() {
        let config = Config::parse_from([
            "hodei-server",
            "--database-url",
            "postgres://x/y",
            "--instance",
            "not valid/",
        ]);
        assert!(
            config
                .settings()
                .unwrap_err()
                .to_string()
                .contains("--instance")
        );
    }
}

//! What every benchmark stands on: a private PostgreSQL and a real `hodei-server` process with
//! the local provider, started from release binaries, and gRPC clients to it.
//!
//! The server runs as its own process so that its CPU and memory are its own (the benchmark
//! client does not share its runtime or heap), exactly as it would in production.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hodei_proto::v1::{
    job_service_client::JobServiceClient, log_stream_service_client::LogStreamServiceClient,
    worker_query_service_client::WorkerQueryServiceClient,
};
use hodei_testkit::{
    TestDatabase,
    auth::Authed,
    server_process::{ServerCommand, ServerProcess},
};
use sqlx::{PgPool, postgres::PgPoolOptions};

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub server: PathBuf,
    pub worker: PathBuf,
}

impl Binaries {
    /// `hodei-server` and `hodei-worker` next to this executable (as `cargo build --release`
    /// lays them out), unless given explicitly.
    pub fn locate(server: Option<PathBuf>, worker: Option<PathBuf>) -> anyhow::Result<Self> {
        let here = std::env::current_exe()?;
        let dir = here
            .parent()
            .context("cannot tell the directory of hodei-bench")?;
        let server = server.unwrap_or_else(|| dir.join("hodei-server"));
        let worker = worker.unwrap_or_else(|| dir.join("hodei-worker"));
        for (path, package) in [(&server, "hodei-server"), (&worker, "hodei-worker")] {
            if !path.is_file() {
                bail!(
                    "{} does not exist: build it with `cargo build --release -p {package}` (or \
                     pass --server-binary/--worker-binary)",
                    path.display()
                );
            }
        }
        Ok(Self { server, worker })
    }
}

/// Knobs of one server run; everything else is the production default.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_workers: usize,
    pub max_jobs_per_worker: u32,
    pub idle_timeout: &'static str,
    /// `RUST_LOG` of the server (and of its workers, which inherit it).
    pub log_filter: String,
    /// Whether clients authenticate (`false`: the server runs with `--insecure-no-auth`, to
    /// measure what authentication costs). Clients send their token either way.
    pub auth: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_workers: 1,
            max_jobs_per_worker: 1_000_000,
            idle_timeout: "1h",
            log_filter: "info".into(),
            auth: true,
        }
    }
}

/// A private PostgreSQL with a `hodei-server` process on it.
pub struct Environment {
    // Field order is drop order: the server goes before its database.
    server: ServerProcess,
    pub db: PgPool,
    _database: TestDatabase,
    pub url: String,
    pub instance: String,
    _log_dir: tempfile::TempDir,
}

impl Environment {
    pub async fn start(binaries: &Binaries, options: &ServerOptions) -> anyhow::Result<Self> {
        let database = TestDatabase::create()
            .await
            .context("starting a private PostgreSQL")?;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(database.url())
            .await
            .context("connecting to the private PostgreSQL")?;
        let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let log_dir = tempfile::Builder::new().prefix("hodei-bench-").tempdir()?;
        let args: Vec<OsString> = [
            "--database-url",
            database.url(),
            "--instance",
            &instance,
            "--provider",
            "local",
            "--max-workers",
            &options.max_workers.to_string(),
            "--max-jobs-per-worker",
            &options.max_jobs_per_worker.to_string(),
            "--idle-timeout",
            options.idle_timeout,
            "--shutdown-grace",
            "2s",
            "--kill-grace",
            "2s",
        ]
        .iter()
        .map(OsString::from)
        .chain([
            OsString::from("--worker-binary"),
            binaries.worker.clone().into(),
        ])
        .chain((!options.auth).then(|| OsString::from("--insecure-no-auth")))
        .collect();
        let server = ServerProcess::start(ServerCommand {
            binary: binaries.server.clone(),
            args,
            log_filter: options.log_filter.clone(),
            log: log_dir.path().join("hodei-server.log"),
        })
        .await?;
        Ok(Self {
            url: server.url(),
            server,
            db,
            _database: database,
            instance,
            _log_dir: log_dir,
        })
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.pid()
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        self.server.log_tail()
    }

    pub async fn channel(&self) -> anyhow::Result<Authed> {
        self.server.channel().await
    }

    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Authed>> {
        self.server.jobs().await
    }

    pub async fn logs(&self) -> anyhow::Result<LogStreamServiceClient<Authed>> {
        self.server.logs().await
    }

    pub async fn workers(&self) -> anyhow::Result<WorkerQueryServiceClient<Authed>> {
        self.server.workers().await
    }

    /// Waits until `count` workers are connected and idle, and returns their process ids.
    pub async fn wait_idle_workers(&self, count: usize) -> anyhow::Result<Vec<u32>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows: Vec<(Option<String>,)> = sqlx::query_as(
                "SELECT resource FROM workers WHERE instance = $1 AND state = 'idle'",
            )
            .bind(&self.instance)
            .fetch_all(&self.db)
            .await?;
            if rows.len() >= count {
                return rows
                    .into_iter()
                    .map(|(resource,)| pid_of_resource(resource.as_deref()))
                    .collect();
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {count} workers became idle within 120 s:\n{}",
                    rows.len(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until no job is queued, assigned or running.
    pub async fn wait_all_final(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (open,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'assigned', 'running')",
            )
            .fetch_one(&self.db)
            .await?;
            if open == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{open} jobs still unfinished after {timeout:?}:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM (graceful shutdown: workers are destroyed), SIGKILL if it takes over 30 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let status = self.server.stop(Duration::from_secs(30)).await?;
        if !status.success() {
            eprintln!("hodei-server exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }
}

/// `pid/<n>`, how the local provider names its workers.
pub fn pid_of_resource(resource: Option<&str>) -> anyhow::Result<u32> {
    let resource = resource.context("worker without a recorded resource")?;
    resource
        .strip_prefix("pid/")
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("unexpected local worker resource {resource:?}"))
}

/// A spec for `command` with a one-minute timeout.
pub use hodei_testkit::jobs::spec;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// `VmRSS`: every resident page, shared ones (the binary's text, libc) included.
    pub rss_kib: u64,
    /// `RssAnon`: private heap and stacks, what the process really adds.
    pub anon_kib: u64,
}

pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {name} in {}", path.display()))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

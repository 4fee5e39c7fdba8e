//! What every benchmark stands on: a private PostgreSQL and real `hodei-server` processes with
//! the local provider, started from release binaries, and gRPC clients to them.
//!
//! The server runs as its own process so that its CPU and memory are its own (the benchmark
//! client does not share its runtime or heap), exactly as it would in production. With
//! `servers > 1` there are several processes of one instance on the one database (issue 14):
//! same `--instance` and `--max-workers` (the instance's limit, counted in the database), each
//! on its own port, each with its own log file.

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

use crate::measure::step;

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
    /// Server processes of the instance.
    pub servers: usize,
    /// Keep the servers' log directory after the run (its path is printed).
    pub keep_logs: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_workers: 1,
            max_jobs_per_worker: 1_000_000,
            idle_timeout: "1h",
            log_filter: "info".into(),
            auth: true,
            servers: 1,
            keep_logs: false,
        }
    }
}

/// A private PostgreSQL with one or more `hodei-server` processes of one instance on it.
pub struct Environment {
    // Field order is drop order: the servers go before their database.
    servers: Vec<ServerProcess>,
    pub db: PgPool,
    _database: TestDatabase,
    /// The first server's address.
    pub url: String,
    pub instance: String,
    _log_dir: tempfile::TempDir,
}

impl Environment {
    pub async fn start(binaries: &Binaries, options: &ServerOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(options.servers >= 1, "at least one server is needed");
        let database = TestDatabase::create()
            .await
            .context("starting a private PostgreSQL")?;
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(database.url())
            .await
            .context("connecting to the private PostgreSQL")?;
        let instance = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let log_dir = tempfile::Builder::new()
            .prefix("hodei-bench-")
            .disable_cleanup(options.keep_logs)
            .tempdir()?;
        if options.keep_logs {
            step(format!("server logs kept in {}", log_dir.path().display()));
        }
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
        let mut servers = Vec::new();
        for i in 0..options.servers {
            // One server keeps the log name it always had.
            let log = if options.servers == 1 {
                "hodei-server.log".to_string()
            } else {
                format!("hodei-server-{i}.log")
            };
            servers.push(
                ServerProcess::start(ServerCommand {
                    binary: binaries.server.clone(),
                    args: args.clone(),
                    log_filter: options.log_filter.clone(),
                    log: log_dir.path().join(log),
                })
                .await?,
            );
        }
        Ok(Self {
            url: servers[0].url(),
            servers,
            db,
            _database: database,
            instance,
            _log_dir: log_dir,
        })
    }

    /// How many server processes the instance has (killed ones included).
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// The first server's process id, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.servers[0].pid()
    }

    /// The last lines of every server's log, for error messages.
    pub fn log_tail(&self) -> String {
        if let [server] = self.servers.as_slice() {
            return server.log_tail();
        }
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("server {i} ({}):\n{}", s.url(), s.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub async fn channel(&self) -> anyhow::Result<Authed> {
        self.servers[0].channel().await
    }

    /// A client of the first server.
    pub async fn jobs(&self) -> anyhow::Result<JobServiceClient<Authed>> {
        self.jobs_on(0).await
    }

    /// A client of server `index`.
    pub async fn jobs_on(&self, index: usize) -> anyhow::Result<JobServiceClient<Authed>> {
        self.servers[index].jobs().await
    }

    /// One client per server, in server order: callers that spread their calls take them in
    /// turn (round robin).
    pub async fn jobs_on_every_server(&self) -> anyhow::Result<Vec<JobServiceClient<Authed>>> {
        let mut clients = Vec::with_capacity(self.servers.len());
        for server in &self.servers {
            clients.push(server.jobs().await?);
        }
        Ok(clients)
    }

    pub async fn logs(&self) -> anyhow::Result<LogStreamServiceClient<Authed>> {
        self.servers[0].logs().await
    }

    pub async fn workers(&self) -> anyhow::Result<WorkerQueryServiceClient<Authed>> {
        self.servers[0].workers().await
    }

    /// The `servers.id` of each server process, in server order (`None`: no row, e.g. a killed
    /// server whose row was already removed). A server's row names the address its workers
    /// dial, which is its gRPC address.
    pub async fn server_ids(&self) -> anyhow::Result<Vec<Option<String>>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id::text, worker_address FROM servers WHERE instance = $1")
                .bind(&self.instance)
                .fetch_all(&self.db)
                .await?;
        Ok(self
            .servers
            .iter()
            .map(|server| {
                rows.iter()
                    .find(|(_, address)| *address == server.url())
                    .map(|(id, _)| id.clone())
            })
            .collect())
    }

    /// How many alive (idle or busy) workers each server's stream holds, in server order.
    pub async fn workers_per_server(&self) -> anyhow::Result<Vec<usize>> {
        let ids = self.server_ids().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT server_id::text, count(*) FROM workers \
             WHERE instance = $1 AND state IN ('idle', 'busy') AND server_id IS NOT NULL \
             GROUP BY server_id",
        )
        .bind(&self.instance)
        .fetch_all(&self.db)
        .await?;
        Ok(ids
            .iter()
            .map(|id| {
                rows.iter()
                    .find(|(server, _)| Some(server) == id.as_ref())
                    .map_or(0, |(_, n)| *n as usize)
            })
            .collect())
    }

    /// SIGKILL of server `index`, as a crash would.
    pub fn kill_server(&mut self, index: usize) -> anyhow::Result<()> {
        self.servers[index].kill()
    }

    /// Waits until `count` workers of the instance (on any of its servers) are connected and
    /// idle, and returns their process ids.
    pub async fn wait_idle_workers(&self, count: usize) -> anyhow::Result<Vec<u32>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let rows: Vec<(Option<String>,)> = sqlx::query_as(
                "SELECT resource FROM workers \
                 WHERE instance = $1 AND state = 'idle' AND server_id IS NOT NULL",
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

    /// SIGTERM to each running server in turn, SIGKILL if one takes over 30 s. With others
    /// alive a server moves its workers to them; the last one destroys them (graceful
    /// shutdown).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        for i in 0..self.servers.len() {
            if self.servers[i].pid().is_none() {
                continue;
            }
            let status = self.servers[i].stop(Duration::from_secs(30)).await?;
            if !status.success() {
                eprintln!(
                    "hodei-server {i} exited with {status}:\n{}",
                    self.servers[i].log_tail()
                );
            }
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

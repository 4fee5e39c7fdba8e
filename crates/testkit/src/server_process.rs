//! A real `hodei-server` process, for suites that need the binary itself: a crash is a real
//! SIGKILL, memory figures are the server's own, and shutdown is the one production runs.
//!
//! The harness picks the gRPC port, turns metrics off, sends the server's output to a log file
//! (whose tail error messages quote), waits until the server answers `ListJobs`, and makes the
//! server die with the test ([`die_with_parent`]).

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use hodei_proto::v1::{
    self as pb, job_service_client::JobServiceClient,
    log_stream_service_client::LogStreamServiceClient,
    worker_query_service_client::WorkerQueryServiceClient,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{
    auth::{Authed, Bearer},
    process::{Signal, die_with_parent, send_signal},
    wait::{Probe, wait_for},
};

/// How long a server may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of the server's log quoted in error messages.
const LOG_TAIL_LINES: usize = 60;

/// How to start the server: everything but `--listen`, which the harness sets, and
/// `--metrics-listen`, which it turns off unless given.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    pub binary: PathBuf,
    pub args: Vec<OsString>,
    /// `RUST_LOG` of the server (and of the local workers it starts, which inherit it).
    pub log_filter: String,
    /// Where the server's stdout and stderr go; appended to across restarts.
    pub log: PathBuf,
}

/// A running `hodei-server`; killed when dropped.
pub struct ServerProcess {
    command: ServerCommand,
    port: u16,
    child: Option<Child>,
    /// An API token with every scope, made with `hodei-server tokens create` before the first
    /// start, as an operator would.
    token: String,
}

impl ServerProcess {
    /// Creates an admin token, starts the server on a free loopback port and waits until it
    /// serves.
    pub async fn start(command: ServerCommand) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let token = create_admin_token(&command)?;
        let mut this = Self {
            command,
            port,
            child: None,
            token,
        };
        this.spawn().await?;
        Ok(this)
    }

    /// The admin token clients of this server use.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id, while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.command.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- server log (last lines) ---\n{}",
            lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.command.log
    }

    /// A channel whose calls carry the admin token.
    pub async fn channel(&self) -> anyhow::Result<Authed> {
        Ok(InterceptedService::new(
            connect(&self.url()).await?,
            Bearer::new(&self.token)?,
        ))
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

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the server is not running")?;
        send_signal(child.id(), Signal::SIGKILL)?;
        child.wait()?;
        Ok(())
    }

    /// A new process with the same command line: same port, database and instance.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "the server is still running");
        self.spawn().await
    }

    /// SIGTERM, then waits up to `timeout` for the graceful shutdown to end; past it the
    /// server is killed and this is an error.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the server is not running");
        };
        send_signal(child.id(), Signal::SIGTERM)?;
        let exited = wait_for("hodei-server to shut down", timeout, || {
            let status = child.try_wait();
            async move {
                Ok(match status? {
                    Some(status) => Probe::Ready(status),
                    None => Probe::Pending("still running".into()),
                })
            }
        })
        .await;
        match exited {
            Ok(status) => Ok(status),
            Err(e) => {
                let _ = send_signal(child.id(), Signal::SIGKILL);
                let _ = child.wait();
                Err(e.context(self.log_tail()))
            }
        }
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.command.log)
            .with_context(|| format!("opening {}", self.command.log.display()))?;
        let mut command = Command::new(&self.command.binary);
        command
            .args(&self.command.args)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)]);
        // Metrics off unless the command asks for them.
        if !self.command.args.iter().any(|a| a == "--metrics-listen") {
            command.args(["--metrics-listen", "off"]);
        }
        command
            .env("RUST_LOG", &self.command.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = die_with_parent(&mut command)
            .spawn()
            .with_context(|| format!("starting {}", self.command.binary.display()))?;
        self.child = Some(child);
        self.wait_serving().await
    }

    async fn wait_serving(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let token = self.token.clone();
        let child = self.child.as_mut().context("the server is not running")?;
        let served = wait_for("hodei-server to serve", START_TIMEOUT, || {
            let exited = child.try_wait();
            let url = url.clone();
            let token = token.clone();
            async move {
                // An exit ends the wait at once: it is the answer.
                if let Some(status) = exited? {
                    return Ok(Probe::Ready(Err(status)));
                }
                Ok(match answers(&url, &token).await {
                    Ok(()) => Probe::Ready(Ok(())),
                    Err(last) => Probe::Pending(last),
                })
            }
        })
        .await
        .with_context(|| self.log_tail())?;
        if let Err(status) = served {
            self.child = None;
            bail!(
                "hodei-server exited at start-up ({status})\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }
}

/// A channel to the server at `url`.
async fn connect(url: &str) -> anyhow::Result<Channel> {
    Channel::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// `hodei-server <args> tokens create --name harness --scopes all`: the token it prints.
fn create_admin_token(command: &ServerCommand) -> anyhow::Result<String> {
    let output = Command::new(&command.binary)
        .args(&command.args)
        .args(["tokens", "create", "--name", "harness", "--scopes", "all"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {} tokens create", command.binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "hodei-server tokens create failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout.trim().to_owned())
}

/// Whether the server at `url` answers `ListJobs`; what went wrong if not.
async fn answers(url: &str, token: &str) -> Result<(), String> {
    let channel = connect(url).await.map_err(|e| format!("{e:#}"))?;
    let bearer = Bearer::new(token).map_err(|e| format!("{e:#}"))?;
    let mut jobs = JobServiceClient::with_interceptor(channel, bearer);
    jobs.list_jobs(pb::ListJobsRequest {
        limit: 1,
        ..Default::default()
    })
    .await
    .map(drop)
    .map_err(|status| format!("{status:?}"))
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = send_signal(child.id(), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

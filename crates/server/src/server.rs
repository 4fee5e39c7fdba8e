//! Starting and stopping a server: the gRPC endpoint, the background tasks, and the graceful
//! shutdown sequence.
//!
//! Task structure (each line one task):
//! - tonic serving the four services plus health and reflection;
//! - the dispatcher ([`crate::dispatcher`]);
//! - maintenance ([`crate::maintenance`]): orphan sweep, stale registrations;
//! - the metrics endpoint, when enabled;
//! - one session per connected worker, one provisioning task per worker being created.
//!
//! Shutdown ([`RunningServer::shutdown`]): stop taking jobs → let running jobs finish for
//! `shutdown_grace` → re-queue what still runs → tell every worker to exit → destroy every
//! worker → stop serving. [`RunningServer::kill`] instead drops everything on the floor, as a
//! crash would, so tests can prove recovery.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use hodei_domain::{JobId, WorkerId, WorkerState};
use hodei_proto::v1::{
    FILE_DESCRIPTOR_SET, job_service_server::JobServiceServer,
    log_stream_service_server::LogStreamServiceServer,
    worker_agent_service_server::WorkerAgentServiceServer,
    worker_query_service_server::WorkerQueryServiceServer,
};
use hodei_providers::WorkerProvider;
use hodei_store::Store;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, ServerTlsConfig};

use crate::{
    Settings,
    core::Core,
    dispatcher, maintenance, metrics,
    registry::Phase,
    services::{AgentService, JobsService, LogsService, WorkersService},
    session::SessionCommand,
};

/// At shutdown, how long giving running jobs back to the queue may take in all.
const SHUTDOWN_GIVE_BACK: Duration = Duration::from_secs(15);

/// A started server.
pub struct RunningServer {
    core: Arc<Core>,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop_serving: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds, recovers what a previous run of this instance left behind, and starts serving.
pub async fn start(
    settings: Settings,
    store: Store,
    provider: Arc<dyn WorkerProvider>,
) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let worker_address = settings.worker_address(addr.port());
    let tls = match &settings.tls {
        Some(files) => {
            let cert = tokio::fs::read(&files.cert)
                .await
                .with_context(|| format!("reading TLS certificate {}", files.cert.display()))?;
            let key = tokio::fs::read(&files.key)
                .await
                .with_context(|| format!("reading TLS key {}", files.key.display()))?;
            Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
        }
        None => None,
    };
    let core = Arc::new(Core::new(settings, store, provider, worker_address));
    maintenance::recover_previous_run(&core)
        .await
        .context("recovering the previous run")?;

    let stop_serving = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(dispatcher::run(core.clone())),
        tokio::spawn(maintenance::run(core.clone())),
    ];
    let metrics_addr = match core.settings.metrics_listen {
        Some(listen) => {
            let (addr, task) = metrics::serve(
                listen,
                core.metrics.clone(),
                core.store.clone(),
                core.settings.instance.clone(),
                stop_serving.clone(),
            )
            .await
            .with_context(|| format!("cannot listen for metrics on {listen}"))?;
            tasks.push(task);
            Some(addr)
        }
        None => None,
    };

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<JobsService>>()
        .await;
    health_reporter
        .set_serving::<LogStreamServiceServer<LogsService>>()
        .await;
    health_reporter
        .set_serving::<WorkerAgentServiceServer<AgentService>>()
        .await;
    health_reporter
        .set_serving::<WorkerQueryServiceServer<WorkersService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let limit = core.settings.max_message_bytes;
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // Bounds per connection, so one client cannot hold unbounded work.
        .concurrency_limit_per_connection(256)
        .max_concurrent_streams(Some(1024));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            JobServiceServer::new(JobsService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            LogStreamServiceServer::new(LogsService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            WorkerAgentServiceServer::new(AgentService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            WorkerQueryServiceServer::new(WorkersService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
    let incoming = TcpListenerStream::new(listener);
    let shutdown = stop_serving.clone();
    let serve = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%addr, worker_address = core.worker_address, provider = core.provider.name(),
        instance = core.settings.instance, "hodei-server listening");
    core.wake_dispatcher();
    Ok(RunningServer {
        core,
        addr,
        metrics_addr,
        stop_serving,
        tasks,
        serve,
    })
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The `HODEI_SERVER` value given to workers.
    pub fn worker_address(&self) -> &str {
        &self.core.worker_address
    }

    /// Workers this server currently accounts for (provisioning, connected or being destroyed).
    pub fn alive_workers(&self) -> usize {
        self.core.registry.alive_count()
    }

    /// Graceful shutdown; returns when every worker is gone and the endpoint is closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let core = &self.core;
        core.start_draining();
        tracing::info!("shutting down: waiting for running jobs");
        let deadline = tokio::time::Instant::now() + core.settings.shutdown_grace;
        while core.registry.busy_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Giving jobs back waits out a database outage (retry_db), but not for longer than this
        // in all: what is left is re-queued by the next start's recovery instead.
        let give_back_by = tokio::time::Instant::now() + SHUTDOWN_GIVE_BACK;
        let give_back = |job: JobId, worker: WorkerId, reason: &'static str| async move {
            let requeued =
                tokio::time::timeout_at(give_back_by, core.requeue_or_fail(job, worker, reason));
            if requeued.await.is_err() {
                tracing::warn!(%job, %worker, "database unreachable at shutdown; the next start re-queues the job");
            }
        };
        for (worker, phase) in core.registry.snapshot() {
            match phase {
                Phase::Busy { job } => {
                    give_back(job, worker, "server shut down while the job was running").await;
                    retire(core, worker, true);
                }
                Phase::Idle | Phase::Reserved => retire(core, worker, false),
                Phase::Provisioning { job } | Phase::Registered { job: Some(job) } => {
                    if core.registry.retire_if_unconnected(worker) {
                        give_back(job, worker, "server shut down before the worker registered")
                            .await;
                        core.retire_worker(
                            worker,
                            WorkerState::Terminated,
                            "server shut down".into(),
                        );
                    }
                }
                Phase::Registered { job: None } => {
                    if core.registry.retire_if_unconnected(worker) {
                        core.retire_worker(
                            worker,
                            WorkerState::Terminated,
                            "server shut down".into(),
                        );
                    }
                }
                Phase::Retiring => {}
            }
        }

        let deadline =
            tokio::time::Instant::now() + core.settings.kill_grace + Duration::from_secs(15);
        while core.registry.alive_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        core.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), core.tasks.wait()).await;
        let leftover = core.registry.alive_count();
        if leftover > 0 {
            tracing::warn!(
                leftover,
                "workers still alive at shutdown; the next start will reap them"
            );
        }
        self.stop_serving.cancel();
        core.kill.cancel();
        let serve = tokio::time::timeout(Duration::from_secs(5), self.serve).await;
        for task in self.tasks {
            task.abort();
        }
        core.store.pool().close().await;
        tracing::info!("shut down");
        match serve {
            Ok(Ok(Ok(()))) | Err(_) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(e)) => Err(e.into()),
        }
    }

    /// Stops everything at once without any cleanup, as a crash would.
    pub async fn kill(self) {
        self.core.kill.cancel();
        self.stop_serving.cancel();
        self.serve.abort();
        for task in self.tasks {
            task.abort();
        }
        let _ = self.serve.await;
        self.core.store.pool().close().await;
    }
}

fn retire(core: &Arc<Core>, worker: hodei_domain::WorkerId, now: bool) {
    if let Some(commands) = core.registry.commands(worker) {
        let _ = commands.send(SessionCommand::Retire {
            reason: "server shutting down".into(),
            now,
        });
    }
}

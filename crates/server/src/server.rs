//! Starting and stopping a server: the gRPC endpoint, the background tasks, and the graceful
//! shutdown sequence.
//!
//! Task structure (each line one task):
//! - tonic serving the four services plus health and reflection;
//! - the dispatcher ([`crate::dispatcher`]);
//! - maintenance ([`crate::maintenance`]): orphan sweep, stale registrations;
//! - the metrics endpoint, when enabled;
//! - the web dashboard ([`crate::web`]), when enabled;
//! - on the core's tracker: one session per connected worker, one provisioning task per worker
//!   being created, workers being destroyed, retry timers, log followers.
//!
//! Shutdown ([`RunningServer::shutdown`]): the lifecycle's sequence (stop taking jobs → let
//! running jobs finish for `shutdown_grace` → re-queue what still runs → tell every worker to
//! exit → destroy every worker → wait for the tracked tasks), then stop serving. [`RunningServer::kill`] instead drops everything on the floor, as a
//! crash would, so tests can prove recovery.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use hodei_proto::v1::{
    FILE_DESCRIPTOR_SET, job_service_server::JobServiceServer,
    log_stream_service_server::LogStreamServiceServer, token_service_server::TokenServiceServer,
    worker_agent_service_server::WorkerAgentServiceServer,
    worker_query_service_server::WorkerQueryServiceServer,
};
use hodei_providers::WorkerProvider;
use hodei_store::Store;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::{
    Settings,
    access::{Access, AccessLayer},
    core::Core,
    dispatcher, incoming,
    lifecycle::Lifecycle,
    maintenance, metrics, peers,
    services::{AgentService, JobsService, LogsService, TokensService, WorkersService},
    settings::AuthMode,
    web,
};

/// A started server.
pub struct RunningServer {
    lifecycle: Lifecycle,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    web_addr: Option<SocketAddr>,
    stop_serving: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds, records this server among the instance's servers, and starts serving.
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
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
            if let Some(ca) = &settings.client_ca {
                let ca = tokio::fs::read(ca)
                    .await
                    .with_context(|| format!("reading client CA {}", ca.display()))?;
                // Optional: workers and token-carrying clients connect without a certificate;
                // one that presents a certificate must present a valid one.
                tls = tls
                    .client_ca_root(Certificate::from_pem(ca))
                    .client_auth_optional(true);
            }
            Some(tls)
        }
        None if settings.client_ca.is_some() => {
            anyhow::bail!(
                "a client CA (mutual TLS) needs the server to serve TLS: give a certificate and key too"
            )
        }
        None => None,
    };
    if settings.auth == AuthMode::Required
        && settings.client_ca.is_none()
        && !store
            .has_usable_api_token()
            .await
            .context("looking for API tokens")?
    {
        let advice = "create one with `hodei-server tokens create --name admin --scopes all` \
                      (it works before the server runs)";
        if !settings.listen.ip().is_loopback() {
            anyhow::bail!(
                "no API token exists, so nobody could use this server on {}: {advice}, or, only \
                 where nobody else can reach the port, start with --insecure-no-auth",
                settings.listen
            );
        }
        tracing::warn!(
            "no API token exists yet: every call to the job API is refused until you {advice}"
        );
    }
    if settings.auth == AuthMode::Off {
        let reach = if addr.ip().is_loopback() {
            "every process on this host"
        } else {
            "anyone who can reach this address"
        };
        tracing::warn!(%addr, "AUTHENTICATION IS OFF (--insecure-no-auth): {reach} may queue and cancel any job, read any output and list workers; jobs of the local provider run on this host and can call this API too");
    }
    let access = Arc::new(Access::new(
        settings.auth,
        store.clone(),
        settings.client_certificate_scopes,
    ));
    let core = Arc::new(Core::new(settings, store, provider, worker_address));
    let lifecycle = Lifecycle::new(core.clone());
    // What an earlier process of this server left is taken over by the instance's maintenance
    // server (this one, if it is alone) once that process's lease has passed.
    peers::register(&core)
        .await
        .context("recording this server in the database")?;

    let stop_serving = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(dispatcher::run(lifecycle.clone())),
        tokio::spawn(maintenance::run(lifecycle.clone())),
    ];
    tasks.extend(peers::spawn(&core));
    let metrics_addr = match core.settings.metrics_listen {
        Some(listen) => {
            let (addr, task) = metrics::serve(
                listen,
                core.metrics.clone(),
                core.store.clone(),
                core.settings.instance.clone(),
                access.clone(),
                stop_serving.clone(),
            )
            .await
            .with_context(|| format!("cannot listen for metrics on {listen}"))?;
            tasks.push(task);
            Some(addr)
        }
        None => None,
    };
    let web_addr = match core.settings.web_listen {
        Some(listen) => {
            let (addr, task) = web::serve(
                listen,
                lifecycle.clone(),
                core.clone(),
                access.clone(),
                stop_serving.clone(),
            )
            .await
            .with_context(|| format!("cannot serve the web dashboard on {listen}"))?;
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
    health_reporter
        .set_serving::<TokenServiceServer<TokensService>>()
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
    let serves_tls = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("TLS configuration")?;
    }
    let router = builder
        .layer(AccessLayer::new(access.clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            JobServiceServer::new(JobsService::new(lifecycle.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            LogStreamServiceServer::new(LogsService::new(core.clone(), access.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            WorkerAgentServiceServer::new(AgentService::new(lifecycle.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            WorkerQueryServiceServer::new(WorkersService::new(core.clone()))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        )
        .add_service(
            TokenServiceServer::new(TokensService::new(core.store.clone(), access))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
        );
    let incoming = incoming::connections(listener, serves_tls, stop_serving.clone());
    let shutdown = stop_serving.clone();
    let serve = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
    });
    tracing::info!(%addr, worker_address = core.worker_address, provider = core.provider.name(),
        instance = core.settings.instance, server_id = %core.server_id, "hodei-server listening");
    core.wake_dispatcher();
    Ok(RunningServer {
        lifecycle,
        addr,
        metrics_addr,
        web_addr,
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

    /// Where the web dashboard listens, when enabled.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The `HODEI_SERVER` value given to workers.
    pub fn worker_address(&self) -> &str {
        &self.lifecycle.core().worker_address
    }

    /// This process's id in the instance's `servers` table.
    pub fn server_id(&self) -> uuid::Uuid {
        self.lifecycle.core().server_id
    }

    /// Workers this server currently accounts for (provisioning, connected or being destroyed).
    pub fn alive_workers(&self) -> usize {
        self.lifecycle.core().registry.alive_count()
    }

    /// Graceful shutdown; returns when every worker is gone and the endpoint is closed.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.lifecycle.shutdown().await;
        let core = self.lifecycle.core();
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
        let core = self.lifecycle.core();
        core.kill.cancel();
        self.stop_serving.cancel();
        self.serve.abort();
        for task in self.tasks {
            task.abort();
        }
        let _ = self.serve.await;
        core.store.pool().close().await;
    }
}

//! Prometheus metrics and the `/metrics` endpoint.
//!
//! Counts of jobs and workers by state come from the database at scrape time (they must agree
//! with what `ListJobs` shows); latencies are histograms observed as events happen.

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use hodei_domain::{JobState, Scope, WorkerState};
use hodei_store::Store;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio_util::sync::CancellationToken;

use crate::{access::Access, settings::AuthMode};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

pub struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    workers: Family<StateLabel, Gauge>,
    /// Provider asked → worker registered.
    pub provisioning_seconds: Histogram,
    /// Job queued → command started on a worker.
    pub dispatch_seconds: Histogram,
    jobs_finished: Family<OutcomeLabel, Counter>,
    pub log_lines: Counter,
    /// 1 while this server holds its instance's maintenance lock.
    pub maintenance_leader: Gauge,
    /// Instance-wide maintenance passes this server ran (as the elected server).
    pub maintenance_passes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hodei");
        let jobs = Family::<StateLabel, Gauge>::default();
        let queue_depth = Gauge::default();
        let workers = Family::<StateLabel, Gauge>::default();
        // 1 ms … ~65 s
        let provisioning_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        // 0.25 ms … ~16 s
        let dispatch_seconds = Histogram::new(exponential_buckets(0.00025, 2.0, 17));
        let jobs_finished = Family::<OutcomeLabel, Counter>::default();
        let log_lines = Counter::default();
        registry.register("jobs", "Jobs by state", jobs.clone());
        registry.register(
            "queue_depth",
            "Jobs waiting for a worker",
            queue_depth.clone(),
        );
        registry.register(
            "workers",
            "Workers of this instance by state",
            workers.clone(),
        );
        registry.register(
            "worker_provisioning_seconds",
            "Time from asking the provider for a worker to its registration",
            provisioning_seconds.clone(),
        );
        registry.register(
            "job_dispatch_seconds",
            "Time from a job being queued to its command starting on a worker",
            dispatch_seconds.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that reached a final state, by state",
            jobs_finished.clone(),
        );
        registry.register("log_lines", "Output lines persisted", log_lines.clone());
        let maintenance_leader = Gauge::default();
        registry.register(
            "maintenance_leader",
            "1 while this server runs the instance-wide maintenance (orphan sweep, leases, takeover)",
            maintenance_leader.clone(),
        );
        let maintenance_passes = Counter::default();
        registry.register(
            "maintenance_passes",
            "Instance-wide maintenance passes run by this server",
            maintenance_passes.clone(),
        );
        Self {
            registry,
            jobs,
            queue_depth,
            workers,
            provisioning_seconds,
            dispatch_seconds,
            jobs_finished,
            log_lines,
            maintenance_leader,
            maintenance_passes,
        }
    }
}

impl Metrics {
    pub fn job_finished(&self, state: JobState) {
        self.jobs_finished
            .get_or_create(&OutcomeLabel {
                outcome: state.as_str().into(),
            })
            .inc();
    }

    /// Refreshes the gauges from the database and renders the text exposition format.
    pub async fn render(&self, store: &Store, instance: &str) -> anyhow::Result<String> {
        let jobs = store.count_jobs_by_state().await?;
        for state in JobState::ALL {
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(jobs.get(&state).copied().unwrap_or(0));
        }
        self.queue_depth
            .set(jobs.get(&JobState::Queued).copied().unwrap_or(0));
        let workers = store.count_workers_by_state(instance).await?;
        for state in WorkerState::ALL {
            self.workers
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(workers.get(&state).copied().unwrap_or(0));
        }
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

struct Endpoint {
    metrics: Arc<Metrics>,
    store: Store,
    instance: String,
    /// Set when the endpoint is reachable from other hosts: a scrape needs a token with
    /// `metrics:read`.
    access: Option<Arc<Access>>,
}

/// Serves `GET /metrics` until `shutdown` is cancelled. Returns the bound address. On a
/// loopback address anyone on the host may scrape; on any other address (with authentication
/// on) a scrape needs `Authorization: Bearer <token with metrics:read>`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    store: Store,
    instance: String,
    access: Arc<Access>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let guarded = !addr.ip().is_loopback() && access.mode() == AuthMode::Required;
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(Arc::new(Endpoint {
            metrics,
            store,
            instance,
            access: guarded.then_some(access),
        }));
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((addr, task))
}

async fn render(
    State(endpoint): State<Arc<Endpoint>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    if let Some(access) = &endpoint.access {
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let allowed = match access.authenticate(authorization, None).await {
            Ok(caller) if caller.may(Scope::MetricsRead) => Ok(()),
            Ok(caller) => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not scrape metrics: it needs the scope metrics:read\n",
                    caller.name()
                ),
            )),
            Err(refused) => Err((StatusCode::UNAUTHORIZED, format!("{}\n", refused.message()))),
        };
        if let Err(refused) = allowed {
            return refused.into_response();
        }
    }
    match endpoint
        .metrics
        .render(&endpoint.store, &endpoint.instance)
        .await
    {
        Ok(body) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("metrics unavailable: {e:#}\n"),
        )
            .into_response(),
    }
}

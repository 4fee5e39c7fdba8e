//! Throughput: `true` jobs per second end to end (queued → `Succeeded`) with warm workers.
//!
//! The workers are provisioned first (one `sleep` job each, unlimited jobs per worker), so the
//! figure is about dispatching and recording jobs, not about starting workers. Then `clients`
//! concurrent clients queue the jobs as fast as the server accepts them, and the run ends when
//! the last job is final. The rate is taken from PostgreSQL's own timestamps: jobs divided by
//! (last `finished_at` − first `created_at`).
//!
//! With several servers (one instance, one database) each client sends its calls to the
//! servers in turn (round robin, client `c` starting at server `c`), and the workers are held
//! by whichever servers provisioned them; how many each holds is printed with the figures.

use std::time::{Duration, Instant};

use hodei_proto::v1 as pb;

use crate::{
    baseline,
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Samples, Target, step},
};

pub struct Options {
    pub jobs: usize,
    pub workers: usize,
    pub clients: usize,
    /// Server processes of the instance.
    pub servers: usize,
    pub log_filter: String,
    /// `false`: the server runs without authentication.
    pub auth: bool,
    pub keep_logs: bool,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step(format!(
        "throughput: starting PostgreSQL, {} hodei-server process(es), {} workers",
        options.servers, options.workers
    ));
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: options.workers,
            log_filter: options.log_filter.clone(),
            auth: options.auth,
            servers: options.servers,
            keep_logs: options.keep_logs,
            ..ServerOptions::default()
        },
    )
    .await?;

    step("throughput: provisioning the workers");
    let mut everywhere = env.jobs_on_every_server().await?;
    let servers = everywhere.len();
    for i in 0..options.workers {
        everywhere[i % servers]
            .queue_job(pb::QueueJobRequest {
                spec: Some(spec("sleep 1")),
            })
            .await?;
    }
    env.wait_all_final(Duration::from_secs(120)).await?;
    env.wait_idle_workers(options.workers).await?;
    let held = env.workers_per_server().await?;
    let (marker,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT now()").fetch_one(&env.db).await?;

    step(format!(
        "throughput: {} clients queueing {} `true` jobs",
        options.clients, options.jobs
    ));
    let started = Instant::now();
    let mut clients = Vec::new();
    for client in 0..options.clients {
        let count =
            options.jobs / options.clients + usize::from(client < options.jobs % options.clients);
        let mut jobs = env.jobs_on_every_server().await?;
        clients.push(tokio::spawn(async move {
            for call in 0..count {
                jobs[(client + call) % servers]
                    .queue_job(pb::QueueJobRequest {
                        spec: Some(spec("true")),
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    let queued_in = started.elapsed();
    env.wait_all_final(Duration::from_secs(900)).await?;

    let (succeeded, total, span, first_to_last_queued): (i64, i64, f64, f64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'succeeded'), count(*), \
                extract(epoch FROM max(finished_at) - min(created_at))::float8, \
                extract(epoch FROM max(created_at) - min(created_at))::float8 \
         FROM jobs WHERE created_at > $1",
    )
    .bind(marker)
    .fetch_one(&env.db)
    .await?;
    anyhow::ensure!(
        total as usize == options.jobs && succeeded == total,
        "{succeeded} of {total} jobs succeeded ({} queued)",
        options.jobs
    );
    let latencies: Vec<(f64,)> = sqlx::query_as(
        "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM jobs \
         WHERE created_at > $1",
    )
    .bind(marker)
    .fetch_all(&env.db)
    .await?;
    let latencies = Samples::new(
        latencies
            .into_iter()
            .map(|(s,)| Duration::from_secs_f64(s.max(0.0)))
            .collect(),
    );
    let attempts: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id \
         WHERE j.created_at > $1",
    )
    .bind(marker)
    .fetch_one(&env.db)
    .await?;
    env.stop().await?;

    step(format!(
        "throughput: baseline (bare `sh -c true` with {} threads)",
        options.workers
    ));
    let bare = baseline::spawn_rate(options.workers, 4000).await?;

    let rate = options.jobs as f64 / span;
    let mut figures = vec![
        Figure::new(
            format!(
                "{} jobs, {} warm workers, queued -> Succeeded",
                options.jobs, options.workers
            ),
            rate,
            "jobs/s",
        )
        .baseline("bare `sh -c true` spawn+wait rate", bare)
        .target(Target::AtLeast(1000.0)),
        Figure::new(
            "QueueJob accepted (client side)",
            options.jobs as f64 / queued_in.as_secs_f64(),
            "jobs/s",
        ),
        Figure::new("first to last queued", first_to_last_queued, "s"),
        Figure::new("first queued to last finished", span, "s"),
        Figure::millis("queued -> finished p50", latencies.percentile(50.0)),
        Figure::millis("queued -> finished p99", latencies.percentile(99.0)),
        Figure::new(
            "attempts per job (1 = no re-queue)",
            attempts.0 as f64 / total as f64,
            "",
        ),
    ];
    if servers > 1 {
        for (i, held) in held.iter().enumerate() {
            figures.push(Figure::new(
                format!("workers held by server {i}"),
                *held as f64,
                "workers",
            ));
        }
    }
    Ok(figures)
}

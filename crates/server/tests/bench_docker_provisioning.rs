//! Benchmark: how long a queued job waits for its container worker to register.
//!
//! Not part of the suite; run it with `scripts/e2e/run-docker-e2e.sh --bench`, which prints the
//! figures (they go into `BENCHMARKS.md`). Times come from PostgreSQL's clock:
//! `jobs.created_at` (queued) → `workers.registered_at` of the worker of the job's first
//! attempt, and `workers.created_at` (the server claimed the job and asks the provider) →
//! `workers.registered_at`, which is what the `hodei_worker_provisioning_seconds` histogram
//! measures.
//!
//! Two phases, after one warm-up job that is not counted:
//! - sequential: 20 jobs one after the other, each with a fresh container; the latency of one
//!   cold provisioning on an otherwise idle engine;
//! - burst: 20 jobs queued at once with at most 4 workers; queued → registered then includes
//!   the wait for a free slot, claimed → registered the engine under concurrent starts.

mod common;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use common::{
    TestServer,
    reachability::{self, WorkerNetwork},
    test_settings,
};
use hodei_proto::v1 as pb;
use hodei_providers::{
    WorkerProvider,
    docker::{DockerProvider, DockerProviderConfig},
};
use hodei_testkit::jobs::{describe, state_of};

const JOBS: usize = 20;
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; needs Docker and the worker image; run scripts/e2e/run-docker-e2e.sh --bench"]
async fn queued_to_container_worker_registered_over_20_jobs() -> anyhow::Result<()> {
    let config = DockerProviderConfig::default();
    let image = config.image.clone();
    let provider = DockerProvider::connect(config)
        .await
        .context("the benchmark needs a Docker engine")?;
    provider
        .docker()
        .inspect_image(&image)
        .await
        .with_context(|| {
            format!(
                "the worker image {image} is missing: build it with scripts/build-worker-image.sh"
            )
        })?;
    let provider: Arc<dyn WorkerProvider> = Arc::new(provider);

    let mut settings = test_settings();
    settings.listen = "0.0.0.0:0".parse()?;
    settings.worker_server_host = reachability::server_host_for(WorkerNetwork::Docker, "bridge")?;
    settings.max_workers = 4;
    settings.provisioning_timeout = Duration::from_secs(60);
    let server = TestServer::start(settings, provider).await?;

    let warm_up = server.queue("echo warm-up").await?;
    expect_success(&server, &warm_up).await?;

    let mut sequential = Vec::new();
    for i in 0..JOBS {
        let id = server.queue(&format!("echo job-{i}")).await?;
        expect_success(&server, &id).await?;
        sequential.push(id);
    }
    server.wait_no_workers(Duration::from_secs(60)).await?;

    let mut burst = Vec::new();
    for i in 0..JOBS {
        burst.push(server.queue(&format!("echo burst-{i}")).await?);
    }
    for id in &burst {
        expect_success(&server, id).await?;
    }
    server.wait_no_workers(Duration::from_secs(60)).await?;

    println!();
    println!("queued → container worker registered, image {image}, {JOBS} jobs per phase");
    report(&server, "sequential (1 job at a time)", &sequential).await?;
    report(&server, "burst (20 queued at once, max 4 workers)", &burst).await?;
    let metrics = server.metrics().await?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("hodei_worker_provisioning_seconds_sum")
            || l.starts_with("hodei_worker_provisioning_seconds_count")
    }) {
        println!(
            "  server histogram (all {} jobs incl. warm-up): {line}",
            2 * JOBS + 1
        );
    }
    server.shutdown().await
}

async fn expect_success(server: &TestServer, id: &str) -> anyhow::Result<()> {
    let job = server.wait_finished(id, JOB_TIMEOUT).await?;
    anyhow::ensure!(
        state_of(&job) == pb::JobState::Succeeded && job.attempts == 1,
        "job {id}: {}",
        describe(&job)
    );
    Ok(())
}

/// Prints p50, p90, min and max of both intervals, in milliseconds, for `ids`.
async fn report(server: &TestServer, phase: &str, ids: &[String]) -> anyhow::Result<()> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.parse()).collect::<Result<_, _>>()?;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (w.registered_at - j.created_at))::float8 * 1000, \
                EXTRACT(EPOCH FROM (w.registered_at - w.created_at))::float8 * 1000 \
         FROM jobs j \
         JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1 \
         JOIN workers w ON w.id = a.worker_id \
         WHERE j.id = ANY($1) AND w.registered_at IS NOT NULL",
    )
    .bind(&ids)
    .fetch_all(server.store.pool())
    .await?;
    anyhow::ensure!(
        rows.len() == ids.len(),
        "{} of {} jobs have a registered worker",
        rows.len(),
        ids.len()
    );
    let (queued, claimed): (Vec<f64>, Vec<f64>) = rows.into_iter().unzip();
    println!("  {phase}:");
    println!("    queued  → registered: {}", summary(queued));
    println!("    claimed → registered: {}", summary(claimed));
    Ok(())
}

fn summary(mut samples: Vec<f64>) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "p50 {:.0} ms, p90 {:.0} ms, min {:.0} ms, max {:.0} ms (n = {})",
        percentile(&samples, 50),
        percentile(&samples, 90),
        samples.first().copied().unwrap_or(f64::NAN),
        samples.last().copied().unwrap_or(f64::NAN),
        samples.len()
    )
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

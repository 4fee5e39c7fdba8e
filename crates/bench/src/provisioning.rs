//! Cold provisioning with the local provider: queued → worker registered.
//!
//! Every job gets a fresh worker (`max_jobs_per_worker 1`). Jobs run one at a time, and the
//! next is queued only once the previous worker is gone, so each provisioning starts from
//! nothing and competes with nothing. From PostgreSQL's timestamps: `jobs.created_at` →
//! `workers.created_at` (claimed together with a new worker record and its token) →
//! `workers.registered_at` (the worker's `Register` consumed the token).

use std::time::{Duration, Instant};

use anyhow::bail;
use hodei_proto::v1 as pb;

use crate::{
    baseline,
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Samples, step},
};

pub struct Options {
    pub jobs: usize,
    pub log_filter: String,
    /// `false`: the server runs without authentication.
    pub auth: bool,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step("provisioning: starting PostgreSQL and hodei-server (fresh worker per job)");
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: 2,
            max_jobs_per_worker: 1,
            log_filter: options.log_filter.clone(),
            auth: options.auth,
            ..ServerOptions::default()
        },
    )
    .await?;
    let mut jobs = env.jobs().await?;
    step(format!(
        "provisioning: {} jobs, each on a new worker",
        options.jobs
    ));
    // One extra first job warms the page cache with the worker binary.
    for _ in 0..=options.jobs {
        jobs.queue_job(pb::QueueJobRequest {
            spec: Some(spec("true")),
        })
        .await?;
        env.wait_all_final(Duration::from_secs(60)).await?;
        wait_no_alive_workers(&env).await?;
    }

    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM w.created_at - j.created_at)::float8, \
                extract(epoch FROM w.registered_at - j.created_at)::float8 \
         FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1 \
         JOIN workers w ON w.id = a.worker_id \
         WHERE j.state = 'succeeded' AND w.registered_at IS NOT NULL ORDER BY j.id OFFSET 1",
    )
    .fetch_all(&env.db)
    .await?;
    anyhow::ensure!(
        rows.len() == options.jobs,
        "{} of {} jobs ran on a registered worker",
        rows.len(),
        options.jobs
    );
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let claimed = Samples::new(rows.iter().map(|r| secs(r.0)).collect());
    let registered = Samples::new(rows.iter().map(|r| secs(r.1)).collect());
    env.stop().await?;

    step("provisioning: baselines (bare spawns of `sh -c true` and `hodei-worker --version`)");
    let (_, sh) = baseline::spawn_costs("/bin/sh".as_ref(), &["-c", "true"], 200).await?;
    let (_, worker) = baseline::spawn_costs(&binaries.worker, &["--version"], 100).await?;

    let mut figures = Vec::new();
    for p in [50.0, 95.0] {
        let bare = sh.percentile(p);
        figures.push(
            Figure::millis(
                format!(
                    "queued -> registered p{p:.0} ({} workers)",
                    registered.len()
                ),
                registered.percentile(p),
            )
            .baseline(
                format!("bare `sh -c true` spawn+wait p{p:.0}"),
                bare.as_secs_f64() * 1000.0,
            ),
        );
    }
    figures.push(Figure::millis(
        "  of which queued -> worker record claimed p50",
        claimed.percentile(50.0),
    ));
    figures.push(Figure::millis(
        "`hodei-worker --version` spawn+wait p50",
        worker.percentile(50.0),
    ));
    Ok(figures)
}

async fn wait_no_alive_workers(env: &Environment) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (alive,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM workers \
             WHERE state IN ('provisioning', 'idle', 'busy', 'terminating')",
        )
        .fetch_one(&env.db)
        .await?;
        if alive == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{alive} workers still alive after 60 s:\n{}",
                env.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

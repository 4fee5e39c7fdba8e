//! Dispatch latency: queued → started on a worker that is already connected and idle.
//!
//! One warm worker (`max_workers 1`, unlimited jobs per worker). Jobs (`true`) are queued one
//! at a time, `interval` apart, so each finds the worker idle; nothing polls the server while a
//! job is being dispatched. Afterwards the timestamps PostgreSQL recorded give each latency on
//! one clock: `jobs.created_at` (the QueueJob insert) → `jobs.started_at` (the worker reported
//! the command started, i.e. after fork + exec of `/bin/sh`). A job queued before the previous
//! one finished is not on an idle worker and is left out (and counted).
//!
//! With several servers (one instance, one database) job `k` is queued on server `k mod n`
//! (round robin), so most jobs reach the worker's server through PostgreSQL's `NOTIFY`: the
//! figures are also given apart for jobs queued on the server holding the worker and on
//! another one.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;

use crate::{
    baseline,
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Samples, Target, step},
};

pub struct Options {
    pub jobs: usize,
    pub interval: Duration,
    /// Server processes of the instance.
    pub servers: usize,
    pub log_filter: String,
    /// `false`: the server runs without authentication.
    pub auth: bool,
    pub keep_logs: bool,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step(format!(
        "dispatch: starting PostgreSQL, {} hodei-server process(es), 1 worker",
        options.servers
    ));
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: 1,
            log_filter: options.log_filter.clone(),
            auth: options.auth,
            servers: options.servers,
            keep_logs: options.keep_logs,
            ..ServerOptions::default()
        },
    )
    .await?;
    let mut jobs = env.jobs().await?;

    step("dispatch: warming up one worker");
    for _ in 0..5 {
        jobs.queue_job(hodei_proto::v1::QueueJobRequest {
            spec: Some(spec("true")),
        })
        .await?;
    }
    env.wait_all_final(Duration::from_secs(60)).await?;
    env.wait_idle_workers(1).await?;
    let holder = worker_holder(&env).await?;
    let (marker,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT now()").fetch_one(&env.db).await?;

    step(format!(
        "dispatch: queueing {} jobs, one every {:?}",
        options.jobs, options.interval
    ));
    let mut everywhere = env.jobs_on_every_server().await?;
    let servers = everywhere.len();
    // The jobs queued on the server whose stream holds the worker.
    let mut on_holder = HashSet::new();
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in 0..options.jobs {
        ticker.tick().await;
        let job = everywhere[k % servers]
            .queue_job(hodei_proto::v1::QueueJobRequest {
                spec: Some(spec("true")),
            })
            .await?
            .into_inner();
        if k % servers == holder {
            on_holder.insert(job.id);
        }
    }
    env.wait_all_final(Duration::from_secs(120)).await?;

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT extract(epoch FROM a.started_at - j.created_at)::float8, \
                extract(epoch FROM j.started_at - a.started_at)::float8, \
                extract(epoch FROM j.created_at - lag(j.finished_at) OVER (ORDER BY j.id))::float8, \
                j.state, j.id::text \
         FROM jobs j JOIN job_attempts a ON a.job_id = j.id AND a.attempt = 1 \
         WHERE j.created_at > $1 ORDER BY j.id",
    )
    .bind(marker)
    .fetch_all(&env.db)
    .await
    .context("reading the recorded timestamps")?;
    anyhow::ensure!(
        worker_holder(&env).await? == holder,
        "the worker moved to another server during the run:\n{}",
        env.log_tail()
    );
    let failed = rows.iter().filter(|r| r.3 != "succeeded").count();
    anyhow::ensure!(failed == 0, "{failed} dispatch jobs did not succeed");
    // The first job follows the warm-up; later ones must come after their predecessor ended.
    let idle: Vec<_> = rows
        .iter()
        .filter(|(_, _, gap, _, _)| gap.is_none_or(|gap| gap > 0.0))
        .collect();
    let busy = rows.len() - idle.len();
    let to_claim = Samples::new(idle.iter().map(|r| secs(r.0)).collect());
    let to_start = Samples::new(idle.iter().map(|r| secs(r.0 + r.1)).collect());
    let claim_to_start = Samples::new(idle.iter().map(|r| secs(r.1)).collect());
    let (same, other): (Vec<&Row>, Vec<&Row>) = idle.iter().partition(|r| on_holder.contains(&r.4));
    let on_same = Samples::new(same.iter().map(|r| secs(r.0 + r.1)).collect());
    let on_other = Samples::new(other.iter().map(|r| secs(r.0 + r.1)).collect());
    let claim_on_other = Samples::new(other.iter().map(|r| secs(r.0)).collect());

    step("dispatch: baselines (bare `sh -c true` spawns, PostgreSQL round trips)");
    let (spawn, _) = baseline::spawn_costs("/bin/sh".as_ref(), &["-c", "true"], 200).await?;
    let round_trip = baseline::round_trips(&env.db, 1000).await?;
    env.stop().await?;

    let bare_spawn = spawn.percentile(50.0);
    let spawn_baseline = "bare `sh -c true` spawn p50";
    let mut figures = Vec::new();
    for (p, target) in [(50.0, Some(5.0)), (95.0, None), (99.0, None)] {
        let mut figure = Figure::millis(
            format!("queued -> started p{p:.0} ({} jobs)", to_start.len()),
            to_start.percentile(p),
        )
        .baseline(spawn_baseline, ms(bare_spawn));
        if let Some(limit) = target {
            figure = figure.target(Target::AtMost(limit));
        }
        figures.push(figure);
    }
    figures.push(Figure::millis(
        "  of which queued -> claimed p50",
        to_claim.percentile(50.0),
    ));
    figures.push(Figure::millis(
        "  of which claimed -> started p50",
        claim_to_start.percentile(50.0),
    ));
    figures.push(Figure::millis("max", to_start.max()));
    if servers > 1 {
        for (what, samples) in [
            ("queued on the worker's server", &on_same),
            ("queued on another server", &on_other),
        ] {
            for p in [50.0, 95.0] {
                figures.push(Figure::millis(
                    format!("  {what} p{p:.0} ({})", samples.len()),
                    samples.percentile(p),
                ));
            }
        }
        figures.push(Figure::millis(
            "    of which queued -> claimed p50",
            claim_on_other.percentile(50.0),
        ));
    }
    figures.push(Figure::millis(
        "PostgreSQL round trip p50 (SELECT 1)",
        round_trip.percentile(50.0),
    ));
    figures.push(Figure::new(
        "jobs left out (queued before the previous ended)",
        busy as f64,
        "jobs",
    ));
    Ok(figures)
}

/// queued → claimed, claimed → started, time since the previous job ended (s); state; job id.
type Row = (f64, f64, Option<f64>, String, String);

/// The index of the server whose stream holds the instance's one worker.
async fn worker_holder(env: &Environment) -> anyhow::Result<usize> {
    env.workers_per_server()
        .await?
        .iter()
        .position(|held| *held == 1)
        .context("no server holds the worker")
}

fn secs(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0))
}

fn ms(value: Duration) -> f64 {
    value.as_secs_f64() * 1000.0
}

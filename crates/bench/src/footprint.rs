//! Footprint: resident memory of idle `hodei-worker`s and of `hodei-server` with `workers`
//! connected workers.
//!
//! The server starts with room for `workers` workers that never retire; `workers` `sleep` jobs
//! make it provision exactly that many (no worker is idle while they are queued). Once every
//! job has ended and every worker sits idle on its open session, `/proc/<pid>/status` of the
//! server and of each worker is read.

use std::time::Duration;

use hodei_proto::v1 as pb;

use crate::{
    harness::{Binaries, Environment, ServerOptions, memory_of, spec},
    measure::{Figure, Target, step},
};

pub struct Options {
    pub workers: usize,
    pub log_filter: String,
    /// `false`: the server runs without authentication.
    pub auth: bool,
}

const MIB: f64 = 1024.0;

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step(format!(
        "footprint: starting PostgreSQL and hodei-server (room for {} workers)",
        options.workers
    ));
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: options.workers,
            log_filter: options.log_filter.clone(),
            auth: options.auth,
            ..ServerOptions::default()
        },
    )
    .await?;
    let server_pid = env
        .server_pid()
        .ok_or_else(|| anyhow::anyhow!("no server process"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let empty = memory_of(server_pid)?;

    step(format!(
        "footprint: provisioning {} workers",
        options.workers
    ));
    let mut jobs = env.jobs().await?;
    for _ in 0..options.workers {
        jobs.queue_job(pb::QueueJobRequest {
            spec: Some(spec("sleep 3")),
        })
        .await?;
    }
    env.wait_all_final(Duration::from_secs(300)).await?;
    let pids = env.wait_idle_workers(options.workers).await?;
    // Let allocations from the burst settle, as a long-idle fleet would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = memory_of(server_pid)?;
    let mut workers = pids
        .iter()
        .map(|&pid| memory_of(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;
    workers.sort_by_key(|m| m.rss_kib);
    env.stop().await?;

    let median = workers[workers.len() / 2];
    let largest = workers[workers.len() - 1];
    let n = options.workers;
    Ok(vec![
        Figure::new(
            format!("idle hodei-worker RSS (median of {n})"),
            median.rss_kib as f64 / MIB,
            "MiB",
        )
        .target(Target::AtMost(10.0)),
        Figure::new(
            "idle hodei-worker RSS (largest)",
            largest.rss_kib as f64 / MIB,
            "MiB",
        )
        .target(Target::AtMost(10.0)),
        Figure::new(
            "idle hodei-worker private memory (RssAnon, median)",
            median.anon_kib as f64 / MIB,
            "MiB",
        ),
        Figure::new(
            format!("hodei-server RSS with {n} connected workers"),
            loaded.rss_kib as f64 / MIB,
            "MiB",
        )
        .baseline("with no worker", empty.rss_kib as f64 / MIB),
        Figure::new(
            "hodei-server RSS per connected worker",
            (loaded.rss_kib.saturating_sub(empty.rss_kib)) as f64 / n as f64,
            "KiB",
        ),
    ])
}

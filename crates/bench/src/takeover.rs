//! Takeover: a server of the instance is killed (SIGKILL) while its workers run jobs; how long
//! until each of those workers is attached to another server.
//!
//! `servers` processes of one instance, `workers` long jobs queued round robin over them (a
//! numbered line every 100 ms), one worker each (`max_workers` = `workers`). Once every job
//! runs, the server whose streams hold the most workers is killed. A worker whose stream
//! breaks keeps its job running and re-connects to the other servers (the servers' default
//! `--reconnect-grace` of 5 min is far longer than this run); the server that accepts it
//! attaches it in one statement (`workers.server_id` = its own id, `session_epoch + 1`,
//! `last_heartbeat_at = now()`).
//!
//! The measure is that statement's `now()` (its `last_heartbeat_at`, which the session renews
//! at most once per heartbeat interval, 5 s, so the first value seen after the attach is the
//! attach's own) minus the moment of the SIGKILL: PostgreSQL's clock and this process's are
//! the same system clock on this machine. The victims' rows are read every 10 ms; a worker
//! counts as taken over at the first read that shows a higher `session_epoch` and a
//! `server_id` that is not the killed server's. When that read *returned* is printed as well:
//! an upper bound (one poll plus the read's own time, which a loaded machine stretches).
//! Then every job must succeed in its first attempt with all its lines stored once.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use hodei_proto::v1 as pb;

use crate::{
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Samples, step},
};

/// Time between two reads of the `workers` table.
const POLL: Duration = Duration::from_millis(10);
/// How long the killed server's workers may take to re-attach before the run gives up on them.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Options {
    pub servers: usize,
    pub workers: usize,
    /// How long each job prints its lines (one every 100 ms).
    pub job_secs: u64,
    pub log_filter: String,
    /// `false`: the servers run without authentication.
    pub auth: bool,
    pub keep_logs: bool,
}

/// One worker of the killed server, as it was before the kill.
struct Victim {
    worker: String,
    epoch: i64,
    job: Option<String>,
}

/// When a worker was seen attached to another server.
struct Takeover {
    /// SIGKILL → the return of the first read that showed it attached (an upper bound).
    polled: Duration,
    /// SIGKILL → the attach statement's `now()`.
    stamped: Option<Duration>,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    anyhow::ensure!(
        options.servers >= 2,
        "takeover needs at least 2 servers (--servers), one to kill and one to take over"
    );
    step(format!(
        "takeover: starting PostgreSQL, {} hodei-server processes, room for {} workers",
        options.servers, options.workers
    ));
    let mut env = Environment::start(
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

    let lines = options.job_secs * 10;
    let command =
        format!("i=1; while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); sleep 0.1; done");
    step(format!(
        "takeover: queueing {} jobs printing {lines} lines, one every 100 ms",
        options.workers
    ));
    let mut everywhere = env.jobs_on_every_server().await?;
    let mut ids = Vec::new();
    for k in 0..options.workers {
        let job = everywhere[k % options.servers]
            .queue_job(pb::QueueJobRequest {
                spec: Some(pb::JobSpec {
                    // Room for a slow machine: the loop's forks add to its 100 ms steps.
                    timeout_seconds: Some(options.job_secs as i64 * 3 + 60),
                    ..spec(&command)
                }),
            })
            .await?
            .into_inner();
        ids.push(job.id);
    }
    wait_running(&env, &ids).await?;
    // Let every job print for a while, so the kill lands on steady output.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let server_ids = env.server_ids().await?;
    let held = env.workers_per_server().await?;
    let (victim, &most) = held
        .iter()
        .enumerate()
        .max_by_key(|(_, n)| **n)
        .context("no server")?;
    let victim_id = server_ids[victim]
        .clone()
        .context("the server to kill has no row in `servers`")?;
    let victims: Vec<Victim> = sqlx::query_as::<_, (String, i64, Option<String>)>(
        "SELECT w.id::text, w.session_epoch, j.id::text FROM workers w \
         LEFT JOIN jobs j ON j.worker_id = w.id AND j.state = 'running' \
         WHERE w.server_id = $1::uuid AND w.state IN ('idle', 'busy')",
    )
    .bind(&victim_id)
    .fetch_all(&env.db)
    .await?
    .into_iter()
    .map(|(worker, epoch, job)| Victim { worker, epoch, job })
    .collect();
    step(format!(
        "takeover: workers per server {held:?}; killing server {victim} ({most} workers)"
    ));

    let killed_wall = chrono::Utc::now();
    let killed = Instant::now();
    env.kill_server(victim)?;
    let taken = watch_takeover(&env, &victims, &victim_id, killed, killed_wall).await?;
    let after = env.workers_per_server().await?;

    step("takeover: waiting for every job to end");
    env.wait_all_final(Duration::from_secs(options.job_secs * 3 + 120))
        .await?;
    let victim_jobs: Vec<String> = victims.iter().filter_map(|v| v.job.clone()).collect();
    let one_attempt = succeeded_once(&env, &ids).await?;
    let victims_once = victim_jobs
        .iter()
        .filter(|job| one_attempt.contains(*job))
        .count();
    let complete = complete_output(&env, &victim_jobs, lines as i64).await?;
    env.stop().await?;

    let polled = Samples::new(taken.values().map(|t| t.polled).collect());
    let stamped = Samples::new(taken.values().filter_map(|t| t.stamped).collect());
    let mut figures = vec![
        Figure::new(
            format!("workers on the killed server (of {})", options.workers),
            victims.len() as f64,
            "workers",
        ),
        Figure::new(
            "  re-attached to another server",
            taken.len() as f64,
            "workers",
        ),
    ];
    for p in [50.0, 95.0] {
        figures.push(Figure::millis(
            format!("kill -> re-attached p{p:.0} (attach's now())"),
            stamped.percentile(p),
        ));
    }
    figures.push(Figure::millis("  max (attach's now())", stamped.max()));
    for p in [50.0, 95.0] {
        figures.push(Figure::millis(
            format!("kill -> seen re-attached p{p:.0} (10 ms polls)"),
            polled.percentile(p),
        ));
    }
    figures.push(Figure::millis("  max (seen)", polled.max()));
    figures.push(Figure::new(
        format!("its jobs Succeeded in 1 attempt (of {})", victim_jobs.len()),
        victims_once as f64,
        "jobs",
    ));
    figures.push(Figure::new(
        format!("  with all {lines} lines once, in order"),
        complete as f64,
        "jobs",
    ));
    figures.push(Figure::new(
        format!("all jobs Succeeded in 1 attempt (of {})", ids.len()),
        one_attempt.len() as f64,
        "jobs",
    ));
    for (i, n) in after.iter().enumerate() {
        figures.push(Figure::new(
            format!("workers held by server {i} after the takeover"),
            *n as f64,
            "workers",
        ));
    }
    Ok(figures)
}

/// Waits until every job in `ids` runs.
async fn wait_running(env: &Environment, ids: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (running,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs WHERE id::text = ANY($1) AND state = 'running'",
        )
        .bind(ids)
        .fetch_one(&env.db)
        .await?;
        if running as usize == ids.len() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {running} of {} jobs ran within 120 s:\n{}",
            ids.len(),
            env.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A worker's id, `session_epoch`, `server_id` and `last_heartbeat_at`.
type WorkerRow = (
    String,
    i64,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// Polls the victims' rows until each is attached to a server other than `killed_server`
/// with a newer session, or [`TAKEOVER_TIMEOUT`] passes (the missing ones are said on stderr).
async fn watch_takeover(
    env: &Environment,
    victims: &[Victim],
    killed_server: &str,
    killed: Instant,
    killed_wall: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<HashMap<String, Takeover>> {
    let before: HashMap<&str, i64> = victims
        .iter()
        .map(|v| (v.worker.as_str(), v.epoch))
        .collect();
    let workers: Vec<&str> = before.keys().copied().collect();
    let mut taken = HashMap::new();
    while taken.len() < victims.len() && killed.elapsed() < TAKEOVER_TIMEOUT {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            "SELECT id::text, session_epoch, server_id::text, last_heartbeat_at \
             FROM workers WHERE id::text = ANY($1)",
        )
        .bind(&workers)
        .fetch_all(&env.db)
        .await?;
        // The rows are at most as old as the read's end: an upper bound of each attach.
        let seen = killed.elapsed();
        for (worker, epoch, server, heartbeat) in rows {
            let moved = epoch > before[worker.as_str()]
                && server.as_deref().is_some_and(|s| s != killed_server);
            if moved && !taken.contains_key(&worker) {
                let stamped = heartbeat.and_then(|at| (at - killed_wall).to_std().ok());
                taken.insert(
                    worker,
                    Takeover {
                        polled: seen,
                        stamped,
                    },
                );
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if taken.len() < victims.len() {
        let missing: Vec<&str> = workers
            .iter()
            .copied()
            .filter(|w| !taken.contains_key(*w))
            .collect();
        step(format!(
            "takeover: {} workers not re-attached within {TAKEOVER_TIMEOUT:?}: {missing:?}",
            missing.len()
        ));
    }
    Ok(taken)
}

/// The jobs among `ids` that succeeded in their first attempt.
async fn succeeded_once(env: &Environment, ids: &[String]) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT id::text, state, attempts FROM jobs WHERE id::text = ANY($1)")
            .bind(ids)
            .fetch_all(&env.db)
            .await?;
    let (good, bad): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|(_, state, attempts)| state == "succeeded" && *attempts == 1);
    if !bad.is_empty() {
        step(format!(
            "takeover: jobs not Succeeded in one attempt: {bad:?}"
        ));
    }
    Ok(good.into_iter().map(|(id, _, _)| id).collect())
}

/// How many of `jobs` stored exactly `line-1` … `line-<lines>`, once each, in order.
async fn complete_output(env: &Environment, jobs: &[String], lines: i64) -> anyhow::Result<usize> {
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT job_id::text, sequence, convert_from(data, 'UTF8') FROM job_logs \
         WHERE job_id::text = ANY($1) ORDER BY job_id, sequence",
    )
    .bind(jobs)
    .fetch_all(&env.db)
    .await?;
    let mut by_job: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
    for (job, sequence, data) in &rows {
        by_job
            .entry(job.as_str())
            .or_default()
            .push((*sequence, data.trim_end()));
    }
    let complete =
        jobs.iter()
            .filter(|job| {
                by_job.get(job.as_str()).is_some_and(|got| {
                    got.len() as i64 == lines
                        && got.iter().zip(1..).all(|((sequence, data), i)| {
                            *sequence == i && *data == format!("line-{i}")
                        })
                })
            })
            .collect::<Vec<_>>();
    if complete.len() < jobs.len() {
        step(format!(
            "takeover: {} of the killed server's jobs have incomplete or disordered output",
            jobs.len() - complete.len()
        ));
    }
    Ok(complete.len())
}

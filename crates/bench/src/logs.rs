//! Log streaming: one job printing `lines` lines (`seq 1 N`), followed by one subscriber from
//! the moment it is queued.
//!
//! Every line is checked: the subscriber must receive sequence n with the text "n", for every n,
//! once, in order; PostgreSQL must hold exactly N rows for the job. Rates:
//! - persisted: N / (`started_at` → `finished_at` of the job); the server records the end only
//!   after every batch before it is stored;
//! - delivered: N / (QueueJob sent → last line received by the subscriber), client clock.

use std::time::{Duration, Instant};

use anyhow::Context;
use hodei_proto::v1 as pb;

use crate::{
    baseline,
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Target, step},
};

pub struct Options {
    pub lines: u64,
    pub log_filter: String,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step("logs: starting PostgreSQL and hodei-server (1 worker)");
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: 1,
            log_filter: options.log_filter.clone(),
            ..ServerOptions::default()
        },
    )
    .await?;
    let mut jobs = env.jobs().await?;
    jobs.queue_job(pb::QueueJobRequest {
        spec: Some(spec("true")),
    })
    .await?;
    env.wait_all_final(Duration::from_secs(60)).await?;
    env.wait_idle_workers(1).await?;

    let n = options.lines;
    step(format!("logs: one job printing {n} lines, one subscriber"));
    let queued = Instant::now();
    let job = jobs
        .queue_job(pb::QueueJobRequest {
            spec: Some(pb::JobSpec {
                timeout_seconds: Some(3600),
                ..spec(&format!("seq 1 {n}"))
            }),
        })
        .await?
        .into_inner()
        .job
        .context("QueueJob returned no job")?;
    let mut stream = env
        .logs()
        .await?
        .subscribe_logs(pb::SubscribeLogsRequest {
            job_id: job.id.clone(),
            from_sequence: 1,
            follow: true,
        })
        .await?
        .into_inner();
    let mut expected = 1u64;
    let mut wrong = 0u64;
    let mut first_line = None;
    let mut text = String::new();
    while let Some(line) = stream.message().await? {
        first_line.get_or_insert_with(Instant::now);
        text.clear();
        text.push_str(&String::from_utf8_lossy(&line.data));
        if line.sequence != expected || text != expected.to_string() {
            wrong += 1;
            if wrong <= 5 {
                eprintln!(
                    "    unexpected line: sequence {} text {text:?}, expected {expected}",
                    line.sequence
                );
            }
        }
        expected = line.sequence + 1;
    }
    let delivered_in = queued.elapsed();
    let received = expected - 1;

    let (state, persisted_span, rows, distinct, max_seq): (String, f64, i64, i64, Option<i64>) =
        sqlx::query_as(
            "SELECT j.state, extract(epoch FROM j.finished_at - j.started_at)::float8, \
                    (SELECT count(*) FROM job_logs WHERE job_id = j.id), \
                    (SELECT count(DISTINCT sequence) FROM job_logs WHERE job_id = j.id), \
                    (SELECT max(sequence) FROM job_logs WHERE job_id = j.id) \
             FROM jobs j WHERE j.id = $1::uuid",
        )
        .bind(&job.id)
        .fetch_one(&env.db)
        .await?;
    anyhow::ensure!(state == "succeeded", "the log job ended {state}");
    anyhow::ensure!(
        wrong == 0 && received == n,
        "the subscriber got {received} lines ({wrong} out of order or wrong) of {n}"
    );
    anyhow::ensure!(
        rows == n as i64 && distinct == n as i64 && max_seq == Some(n as i64),
        "PostgreSQL holds {rows} rows ({distinct} distinct, max {max_seq:?}) of {n}"
    );

    step("logs: baselines (reading `seq` through a pipe, PostgreSQL inserts of 1000 rows)");
    let pipe = baseline::pipe_rate(&format!("seq 1 {n}"), n).await?;
    let insert = baseline::insert_rate(&env.db, n, 1000).await?;
    env.stop().await?;

    let persisted = n as f64 / persisted_span;
    let delivered = n as f64 / delivered_in.as_secs_f64();
    let first = first_line.map_or(Duration::ZERO, |t| t - queued);
    Ok(vec![
        Figure::new(format!("persisted ({n} lines)"), persisted, "lines/s")
            .baseline("raw PostgreSQL insert rate", insert)
            .target(Target::AtLeast(200_000.0)),
        Figure::new(
            format!("delivered to a subscriber ({n} lines)"),
            delivered,
            "lines/s",
        )
        .baseline("bare pipe read of `seq`", pipe)
        .target(Target::AtLeast(200_000.0)),
        Figure::millis("queued -> first line at the subscriber", first),
        Figure::new(
            "lines lost, duplicated or out of order",
            wrong as f64,
            "lines",
        ),
    ])
}

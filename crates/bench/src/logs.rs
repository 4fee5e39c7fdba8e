//! Log streaming: one job printing `lines` lines (`seq 1 N`), followed by one subscriber from
//! the moment it is queued.
//!
//! Every line is checked: the subscriber must receive sequence n with the text "n", for every n,
//! once, in order; PostgreSQL must hold exactly N rows for the job. Rates:
//! - persisted: N / (`started_at` → `finished_at` of the job); the server records the end only
//!   after every batch before it is stored;
//! - delivered: N / (QueueJob sent → last line received by the subscriber), client clock.

use std::time::{Duration, Instant};

use hodei_proto::v1 as pb;

use crate::{
    baseline,
    harness::{Binaries, Environment, ServerOptions, spec},
    measure::{Figure, Target, step},
};

pub struct Options {
    pub lines: u64,
    pub log_filter: String,
    /// `false`: the server runs without authentication.
    pub auth: bool,
}

pub async fn run(binaries: &Binaries, options: &Options) -> anyhow::Result<Vec<Figure>> {
    step("logs: starting PostgreSQL and hodei-server (1 worker)");
    let env = Environment::start(
        binaries,
        &ServerOptions {
            max_workers: 1,
            log_filter: options.log_filter.clone(),
            auth: options.auth,
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
    step(format!(
        "logs: one job printing {n} lines, nobody following"
    ));
    let alone = stream_job(&env, n, false).await?;
    env.wait_idle_workers(1).await?;
    step(format!("logs: one job printing {n} lines, one subscriber"));
    let followed = stream_job(&env, n, true).await?;

    step("logs: baselines (reading `seq` through a pipe, PostgreSQL inserts of 1000 rows)");
    let pipe = baseline::pipe_rate(&format!("seq 1 {n}"), n).await?;
    let insert = baseline::insert_rate(&env.db, n, 1000).await?;
    env.stop().await?;

    let mut figures = vec![
        Figure::new(
            format!("persisted, nobody following ({n} lines)"),
            n as f64 / alone.persisted_in,
            "lines/s",
        )
        .baseline("raw PostgreSQL insert rate", insert)
        .target(Target::AtLeast(200_000.0)),
        Figure::new(
            "  lines per stored batch (mean)",
            n as f64 / alone.batches as f64,
            "lines",
        ),
        Figure::new(
            format!("persisted, one subscriber ({n} lines)"),
            n as f64 / followed.persisted_in,
            "lines/s",
        )
        .baseline("raw PostgreSQL insert rate", insert)
        .target(Target::AtLeast(200_000.0)),
        Figure::new(
            "  lines per stored batch (mean)",
            n as f64 / followed.batches as f64,
            "lines",
        ),
    ];
    if let Some(delivered) = followed.delivered {
        figures.push(
            Figure::new(
                format!("delivered to the subscriber ({n} lines)"),
                n as f64 / delivered.all.as_secs_f64(),
                "lines/s",
            )
            .baseline("bare pipe read of `seq`", pipe)
            .target(Target::AtLeast(200_000.0)),
        );
        figures.push(Figure::millis(
            "queued -> first line at the subscriber",
            delivered.first,
        ));
        figures.push(Figure::new(
            "lines lost, duplicated or out of order",
            delivered.wrong as f64,
            "lines",
        ));
    }
    Ok(figures)
}

/// What one log job showed.
struct JobRun {
    /// Seconds from the job's start to its end, as PostgreSQL recorded them.
    persisted_in: f64,
    /// INSERT statements that stored its output.
    batches: i64,
    delivered: Option<Delivery>,
}

struct Delivery {
    /// From QueueJob to the last line received.
    all: Duration,
    /// From QueueJob to the first line received.
    first: Duration,
    wrong: u64,
}

/// Runs `seq 1 n` as a job, following its output when `follow`, and checks what was stored
/// (and received): every line once, in order, numbered 1..=n.
async fn stream_job(env: &Environment, n: u64, follow: bool) -> anyhow::Result<JobRun> {
    let queued = Instant::now();
    let job = env
        .jobs()
        .await?
        .queue_job(pb::QueueJobRequest {
            spec: Some(pb::JobSpec {
                timeout_seconds: Some(3600),
                ..spec(&format!("seq 1 {n}"))
            }),
        })
        .await?
        .into_inner();
    let delivered = if follow {
        Some(follow_output(env, &job.id, n, queued).await?)
    } else {
        None
    };
    env.wait_all_final(Duration::from_secs(3600)).await?;

    // Each batch is one INSERT, hence one transaction: distinct `xmin`s count the batches.
    let (state, persisted_in, rows, distinct, max_seq, batches): (
        String,
        f64,
        i64,
        i64,
        Option<i64>,
        i64,
    ) = sqlx::query_as(
        "SELECT j.state, extract(epoch FROM j.finished_at - j.started_at)::float8, \
                (SELECT count(*) FROM job_logs WHERE job_id = j.id), \
                (SELECT count(DISTINCT sequence) FROM job_logs WHERE job_id = j.id), \
                (SELECT max(sequence) FROM job_logs WHERE job_id = j.id), \
                (SELECT count(DISTINCT xmin::text) FROM job_logs WHERE job_id = j.id) \
         FROM jobs j WHERE j.id = $1::uuid",
    )
    .bind(&job.id)
    .fetch_one(&env.db)
    .await?;
    anyhow::ensure!(state == "succeeded", "the log job ended {state}");
    anyhow::ensure!(
        rows == n as i64 && distinct == n as i64 && max_seq == Some(n as i64),
        "PostgreSQL holds {rows} rows ({distinct} distinct, max {max_seq:?}) of {n}"
    );
    Ok(JobRun {
        persisted_in,
        batches: batches.max(1),
        delivered,
    })
}

/// Follows the job from its first line; line n must have sequence n and the text "n".
async fn follow_output(
    env: &Environment,
    job: &str,
    n: u64,
    queued: Instant,
) -> anyhow::Result<Delivery> {
    let mut stream = env
        .logs()
        .await?
        .subscribe_logs(pb::SubscribeLogsRequest {
            job_id: job.to_string(),
            from_sequence: 1,
            follow: true,
        })
        .await?
        .into_inner();
    let mut expected = 1u64;
    let mut wrong = 0u64;
    let mut first = None;
    let mut text = String::new();
    while let Some(line) = stream.message().await? {
        first.get_or_insert_with(|| queued.elapsed());
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
    let all = queued.elapsed();
    anyhow::ensure!(
        wrong == 0 && expected - 1 == n,
        "the subscriber got up to line {} ({wrong} out of order or wrong) of {n}",
        expected - 1
    );
    Ok(Delivery {
        all,
        first: first.unwrap_or_default(),
        wrong,
    })
}

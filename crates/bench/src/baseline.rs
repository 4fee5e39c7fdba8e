//! Reference costs measured in the same run, so each figure can be read against what the
//! machine itself can do: starting a process, reading a pipe, inserting rows.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;
use sqlx::PgPool;

use crate::measure::Samples;

/// `program args…` started (fork + exec returned) and waited for, `count` times in a row.
/// Returns (spawn durations, spawn-and-wait durations).
pub async fn spawn_costs(
    program: &Path,
    args: &[&str],
    count: usize,
) -> anyhow::Result<(Samples, Samples)> {
    let program = program.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut spawned = Vec::with_capacity(count);
        let mut completed = Vec::with_capacity(count);
        for _ in 0..count {
            let started = Instant::now();
            let mut child = Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?;
            spawned.push(started.elapsed());
            child.wait()?;
            completed.push(started.elapsed());
        }
        Ok((Samples::new(spawned), Samples::new(completed)))
    })
    .await?
}

/// How many `sh -c true` processes per second `parallel` threads can start and wait for.
pub async fn spawn_rate(parallel: usize, total: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let per_thread = total.div_ceil(parallel);
    let mut threads = Vec::new();
    for _ in 0..parallel {
        threads.push(tokio::task::spawn_blocking(move || {
            for _ in 0..per_thread {
                Command::new("/bin/sh")
                    .args(["-c", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
            }
            anyhow::Ok(())
        }));
    }
    for thread in threads {
        thread.await??;
    }
    Ok((per_thread * parallel) as f64 / started.elapsed().as_secs_f64())
}

/// Lines per second read from `sh -c <command>` through a pipe, line by line.
pub async fn pipe_rate(command: &str, expected_lines: u64) -> anyhow::Result<f64> {
    let command = command.to_string();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = Command::new("/bin/sh")
            .args(["-c", &command])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut reader = BufReader::with_capacity(8 * 1024, stdout);
        let mut line = Vec::new();
        let mut lines = 0u64;
        while reader.read_until(b'\n', &mut line)? > 0 {
            lines += 1;
            line.clear();
        }
        child.wait()?;
        anyhow::ensure!(
            lines == expected_lines,
            "read {lines} lines, expected {expected_lines}"
        );
        Ok(lines as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// Rows per second PostgreSQL takes with the statement the server uses for output
/// (`INSERT … SELECT … FROM UNNEST(…)`), in batches of `batch` rows, into a copy of `job_logs`
/// (same columns, primary key and logging, no foreign key), one batch at a time on one
/// connection.
pub async fn insert_rate(db: &PgPool, rows: u64, batch: u64) -> anyhow::Result<f64> {
    let mut conn = db.acquire().await?;
    sqlx::query("CREATE TABLE bench_logs (LIKE job_logs INCLUDING ALL)")
        .execute(&mut *conn)
        .await?;
    let job = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let started = Instant::now();
    let mut next = 1u64;
    while next <= rows {
        let end = (next + batch).min(rows + 1);
        let sequences: Vec<i64> = (next..end).map(|s| s as i64).collect();
        let streams = vec![1i16; sequences.len()];
        let data: Vec<Vec<u8>> = (next..end).map(|s| s.to_string().into_bytes()).collect();
        let emitted = vec![now; sequences.len()];
        sqlx::query(
            "INSERT INTO bench_logs (job_id, sequence, stream, data, emitted_at) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::smallint[], $4::bytea[], $5::timestamptz[])",
        )
        .bind(job)
        .bind(&sequences)
        .bind(&streams)
        .bind(&data)
        .bind(&emitted)
        .execute(&mut *conn)
        .await?;
        next = end;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_logs")
        .execute(&mut *conn)
        .await?;
    Ok(rate)
}

/// One PostgreSQL round trip (`SELECT 1`), `count` times in a row.
pub async fn round_trips(db: &PgPool, count: usize) -> anyhow::Result<Samples> {
    let mut conn = db.acquire().await?;
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        samples.push(started.elapsed());
    }
    Ok(Samples::new(samples))
}

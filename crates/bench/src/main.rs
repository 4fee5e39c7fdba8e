//! `hodei-bench`: runs the benchmarks of the `hodei_bench` library and prints their figures.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use hodei_bench::{
    dispatch, footprint,
    harness::Binaries,
    logs,
    measure::{Figure, print_section, step},
    provisioning, throughput,
};

/// Benchmarks of Hodei Jobs against a private PostgreSQL and release binaries.
#[derive(Debug, Parser)]
#[command(name = "hodei-bench", version)]
struct Args {
    /// The hodei-server to measure [default: next to hodei-bench].
    #[arg(long, global = true)]
    server_binary: Option<PathBuf>,
    /// The hodei-worker to measure [default: next to hodei-bench].
    #[arg(long, global = true)]
    worker_binary: Option<PathBuf>,
    /// RUST_LOG of the server and its workers (their logs go to a temporary file).
    #[arg(long, global = true, default_value = "info")]
    log_filter: String,
    /// Run the server without authentication (`--insecure-no-auth`), to measure what
    /// authentication costs.
    #[arg(long, global = true)]
    insecure_no_auth: bool,
    #[command(subcommand)]
    benchmark: Benchmark,
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// Queued -> started on an already idle worker, p50/p95/p99.
    Dispatch {
        #[arg(long, default_value_t = 1000)]
        jobs: usize,
        /// Pause between jobs, so each finds the worker idle.
        #[arg(long, default_value = "50", value_name = "MS")]
        interval_ms: u64,
    },
    /// `true` jobs per second, queued -> Succeeded, with warm workers.
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 8)]
        workers: usize,
        #[arg(long, default_value_t = 8)]
        clients: usize,
    },
    /// One job printing many lines: lines/s persisted and delivered, none lost or duplicated.
    Logs {
        #[arg(long, default_value_t = 1_000_000)]
        lines: u64,
    },
    /// Queued -> worker registered with the local provider, p50/p95.
    Provisioning {
        #[arg(long, default_value_t = 100)]
        jobs: usize,
    },
    /// RSS of idle workers and of the server with many connected workers.
    Footprint {
        #[arg(long, default_value_t = 100)]
        workers: usize,
    },
    /// Every benchmark above with its defaults.
    All,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hodei-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hodei-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let binaries = Binaries::locate(args.server_binary.clone(), args.worker_binary.clone())?;
    step(format!(
        "binaries: {} and {}",
        binaries.server.display(),
        binaries.worker.display()
    ));
    print_machine();
    let log_filter = args.log_filter.clone();
    let benchmarks = match args.benchmark {
        Benchmark::All => vec![
            Benchmark::Dispatch {
                jobs: 1000,
                interval_ms: 50,
            },
            Benchmark::Throughput {
                jobs: 10_000,
                workers: 8,
                clients: 8,
            },
            Benchmark::Logs { lines: 1_000_000 },
            Benchmark::Provisioning { jobs: 100 },
            Benchmark::Footprint { workers: 100 },
        ],
        one => vec![one],
    };
    for benchmark in benchmarks {
        let (title, figures) =
            run_one(&binaries, benchmark, &log_filter, !args.insecure_no_auth).await?;
        print_section(&title, &figures);
    }
    Ok(())
}

async fn run_one(
    binaries: &Binaries,
    benchmark: Benchmark,
    log_filter: &str,
    auth: bool,
) -> anyhow::Result<(String, Vec<Figure>)> {
    let log_filter = log_filter.to_string();
    Ok(match benchmark {
        Benchmark::Dispatch { jobs, interval_ms } => (
            "dispatch latency".into(),
            dispatch::run(
                binaries,
                &dispatch::Options {
                    jobs,
                    interval: Duration::from_millis(interval_ms),
                    log_filter,
                    auth,
                },
            )
            .await?,
        ),
        Benchmark::Throughput {
            jobs,
            workers,
            clients,
        } => (
            "throughput".into(),
            throughput::run(
                binaries,
                &throughput::Options {
                    jobs,
                    workers,
                    clients,
                    log_filter,
                    auth,
                },
            )
            .await?,
        ),
        Benchmark::Logs { lines } => (
            "log streaming".into(),
            logs::run(
                binaries,
                &logs::Options {
                    lines,
                    log_filter,
                    auth,
                },
            )
            .await?,
        ),
        Benchmark::Provisioning { jobs } => (
            "cold provisioning (local provider)".into(),
            provisioning::run(
                binaries,
                &provisioning::Options {
                    jobs,
                    log_filter,
                    auth,
                },
            )
            .await?,
        ),
        Benchmark::Footprint { workers } => (
            "footprint".into(),
            footprint::run(
                binaries,
                &footprint::Options {
                    workers,
                    log_filter,
                    auth,
                },
            )
            .await?,
        ),
        Benchmark::All => anyhow::bail!("`all` is expanded before running"),
    })
}

/// What the figures were measured on.
fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cores} cores, {cpu}; load average at start: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

//! `hodei-bench`: runs the benchmarks of the `hodei_bench` library and prints their figures.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use hodei_bench::{
    dispatch, footprint,
    harness::Binaries,
    logs,
    measure::{Figure, print_section, step},
    provisioning, takeover, throughput,
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
    /// Server processes of one instance on the one database, each on its own port (their
    /// `--max-workers` is the instance's limit); clients spread their calls over them round
    /// robin. For throughput and dispatch [default: 1] and takeover [default: 3].
    #[arg(long, global = true, value_name = "N")]
    servers: Option<usize>,
    /// Keep the servers' logs after the run (dispatch, throughput and takeover; the directory
    /// is printed).
    #[arg(long, global = true)]
    keep_logs: bool,
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
    /// A server killed (SIGKILL) while its workers run jobs -> each of them attached to
    /// another server, p50/p95; and whether its jobs still succeed in one attempt.
    Takeover {
        #[arg(long, default_value_t = 30)]
        workers: usize,
        /// How long each job runs, printing a line every 100 ms.
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        job_secs: u64,
    },
    /// Every benchmark above but takeover, with its defaults, on one server.
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
    if let Some(servers) = args.servers {
        anyhow::ensure!(servers >= 1, "--servers must be at least 1");
        anyhow::ensure!(
            servers == 1
                || matches!(
                    args.benchmark,
                    Benchmark::Dispatch { .. }
                        | Benchmark::Throughput { .. }
                        | Benchmark::Takeover { .. }
                ),
            "--servers applies to dispatch, throughput and takeover only"
        );
    }
    let common = Common {
        log_filter,
        auth: !args.insecure_no_auth,
        servers: args.servers,
        keep_logs: args.keep_logs,
    };
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
        let (title, figures) = run_one(&binaries, benchmark, &common).await?;
        print_section(&title, &figures);
    }
    Ok(())
}

/// The global options every benchmark takes.
struct Common {
    log_filter: String,
    auth: bool,
    servers: Option<usize>,
    keep_logs: bool,
}

/// `" (N servers)"` in a title, when there are several.
fn servers_in_title(servers: usize) -> String {
    if servers > 1 {
        format!(" ({servers} servers)")
    } else {
        String::new()
    }
}

async fn run_one(
    binaries: &Binaries,
    benchmark: Benchmark,
    common: &Common,
) -> anyhow::Result<(String, Vec<Figure>)> {
    let log_filter = common.log_filter.clone();
    let auth = common.auth;
    let keep_logs = common.keep_logs;
    Ok(match benchmark {
        Benchmark::Dispatch { jobs, interval_ms } => {
            let servers = common.servers.unwrap_or(1);
            (
                format!("dispatch latency{}", servers_in_title(servers)),
                dispatch::run(
                    binaries,
                    &dispatch::Options {
                        jobs,
                        interval: Duration::from_millis(interval_ms),
                        servers,
                        log_filter,
                        auth,
                        keep_logs,
                    },
                )
                .await?,
            )
        }
        Benchmark::Throughput {
            jobs,
            workers,
            clients,
        } => {
            let servers = common.servers.unwrap_or(1);
            (
                format!("throughput{}", servers_in_title(servers)),
                throughput::run(
                    binaries,
                    &throughput::Options {
                        jobs,
                        workers,
                        clients,
                        servers,
                        log_filter,
                        auth,
                        keep_logs,
                    },
                )
                .await?,
            )
        }
        Benchmark::Takeover { workers, job_secs } => {
            let servers = common.servers.unwrap_or(3);
            (
                format!("takeover{}", servers_in_title(servers)),
                takeover::run(
                    binaries,
                    &takeover::Options {
                        servers,
                        workers,
                        job_secs,
                        log_filter,
                        auth,
                        keep_logs,
                    },
                )
                .await?,
            )
        }
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

//! `hodei-worker`: see the `hodei_worker` library for everything.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
};

use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before any secret is read: from here on, a job running as our user cannot read our
    // environment or memory (see `hardening`).
    if let Err(err) = hodei_worker::hardening::make_undumpable() {
        eprintln!(
            "hodei-worker: cannot make the worker non-dumpable (prctl PR_SET_DUMPABLE), so its \
             jobs could read its session credential; refusing to run: {err}"
        );
        return ExitCode::from(1);
    }
    let config = match hodei_worker::Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("hodei-worker: {err}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: still single-threaded: the async runtime, the only source of threads, starts
    // below.
    unsafe { hodei_worker::hardening::remove_secret_variables() };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A worker outlives whoever reads its log (a local server that died): a failed write
        // is dropped, never reported on stderr — which would panic on the same broken pipe.
        .log_internal_errors(false)
        // Colours only for a person at a terminal, not in a container's log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    // One thread: the worker waits on a handful of sockets and pipes, and a small footprint
    // matters more than parallelism next to the job it runs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hodei-worker: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(async {
        let terminate = hodei_worker::signals::termination()?;
        hodei_worker::run(config, terminate).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One plain sentence, the last line of the log, whatever the log filter (and
            // whether or not anybody still reads it).
            let _ = writeln!(std::io::stderr(), "hodei-worker: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

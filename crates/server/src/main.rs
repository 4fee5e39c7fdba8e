//! `hodei-server`: parses its configuration, connects to PostgreSQL, picks a provider and serves
//! until SIGTERM or SIGINT, then shuts down gracefully.

mod config;
mod tokens;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::config::{Command, Config};

fn main() -> ExitCode {
    // Before anything reads a secret: a process of this user (a local-provider job is one) may
    // otherwise read the server's environment (`HODEI_DATABASE_URL`) and memory through /proc.
    if let Err(e) = make_undumpable() {
        eprintln!("error: cannot make hodei-server non-dumpable (prctl PR_SET_DUMPABLE): {e}");
        return ExitCode::FAILURE;
    }
    let config = Config::parse();
    config.init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let sentence = each_cause_once(&e);
            tracing::error!("{sentence}");
            eprintln!("error: {sentence}");
            ExitCode::FAILURE
        }
    }
}

/// Makes this process non-dumpable: only `CAP_SYS_PTRACE` may then read its /proc files and
/// memory, and it leaves no core dump (which would hold the database password too).
fn make_undumpable() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(Command::Tokens(command)) = &config.command {
        let store =
            hodei_store::Store::connect(&config.database_url, 2, config.database_connect_timeout)
                .await
                .context("cannot use the database")?;
        return tokens::run(command, &store).await;
    }
    tracing::info!(config = ?config.redacted(), "starting hodei-server");
    let settings = config.settings()?;
    let store = hodei_store::Store::connect(
        &config.database_url,
        config.database_max_connections,
        config.database_connect_timeout,
    )
    .await
    .context("cannot use the database")?;
    let provider = config.provider().await?;
    let server = hodei_server::start(settings, store, provider).await?;
    wait_for_signal().await?;
    server.shutdown().await
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

/// The error and its causes as one sentence, `what failed: why: why`. A cause whose text its
/// parent already quotes (as `"database error: {source}"` does) is not said a second time.
fn each_cause_once(error: &anyhow::Error) -> String {
    let mut sentence = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if sentence.contains(&text) {
            continue;
        }
        if !sentence.is_empty() {
            sentence.push_str(": ");
        }
        sentence.push_str(&text);
    }
    sentence
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once_even_when_a_parent_quotes_it() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = anyhow::Error::new(Quoting(refused)).context("cannot use the database");
        assert_eq!(
            each_cause_once(&error),
            "cannot use the database: database error: refused"
        );
        let plain = anyhow::Error::new(std::io::Error::other("disk full")).context("writing");
        assert_eq!(each_cause_once(&plain), "writing: disk full");
    }
}

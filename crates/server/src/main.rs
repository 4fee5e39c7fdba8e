//! `hodei-server`: parses its configuration, connects to PostgreSQL, picks a provider and serves
//! until SIGTERM or SIGINT, then shuts down gracefully.

mod config;

use std::process::ExitCode;

use clap::Parser;

use crate::config::Config;

fn main() -> ExitCode {
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
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing::info!(config = ?config.redacted(), "starting hodei-server");
    let settings = config.settings()?;
    let store = hodei_store::Store::connect(
        &config.database_url,
        config.database_max_connections,
        config.database_connect_timeout,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot use the database: {e}"))?;
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

//! SIGTERM and SIGINT: how a provider (or a person) asks the worker to stop.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

use crate::WorkerError;

/// Installs the handlers now (so a signal arriving during registration is not lost, and the
/// default action — dying without reporting — never applies) and resolves on the first signal,
/// with its name. Must be called inside the Tokio runtime.
pub fn termination() -> Result<impl Future<Output = &'static str>, WorkerError> {
    let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "termination signal received");
        name
    })
}

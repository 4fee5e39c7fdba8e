//! SIGTERM and SIGINT: how a provider (or a person) asks the worker to stop.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

use crate::WorkerError;

/// Installs the handlers now (so a signal arriving during registration is not lost, and the
/// default action — dying without reporting — never applies) and resolves on the first signal.
/// Must be called inside the Tokio runtime.
pub fn termination() -> Result<impl Future<Output = ()>, WorkerError> {
    let mut term = signal(SignalKind::terminate()).map_err(WorkerError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(WorkerError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

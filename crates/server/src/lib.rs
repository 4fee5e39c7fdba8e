//! The Hodei Jobs server.
//!
//! Start reading at [`server::start`]: it wires the [`Settings`], a [`hodei_store::Store`] and a
//! [`hodei_providers::WorkerProvider`] into the gRPC services and the background tasks.
//! `ARCHITECTURE.md` at the repository root has the map.

mod access;
mod commands;
mod core;
mod dispatcher;
mod incoming;
mod lifecycle;
mod log_hub;
mod maintenance;
mod metrics;
mod peers;
mod provisioning;
mod registry;
pub mod server;
mod services;
mod session;
mod settings;
mod web;

pub use server::{RunningServer, start};

pub use hodei_store::RetryBackoff;
pub use settings::{AuthMode, Faults, Settings, TlsFiles};

/// A message that breaks the contract (a missing field, an invalid spec): the caller's mistake.
pub(crate) fn contract_status(error: hodei_contract::ContractError) -> tonic::Status {
    tonic::Status::invalid_argument(error.to_string())
}

/// A store failure as the client sees it: the database is the server's problem, not theirs.
pub(crate) fn store_status(error: hodei_store::StoreError) -> tonic::Status {
    tracing::error!(%error, "database error");
    if error.is_connection_error() {
        tonic::Status::unavailable(format!("database unavailable: {error}"))
    } else {
        tonic::Status::internal(format!("database error: {error}"))
    }
}

//! The Hodei Jobs server.
//!
//! Start reading at [`server::start`]: it wires the [`Settings`], a [`hodei_store::Store`] and a
//! [`hodei_providers::WorkerProvider`] into the gRPC services and the background tasks.
//! `ARCHITECTURE.md` at the repository root has the map.

mod convert;
mod core;
mod dispatcher;
mod log_hub;
mod maintenance;
mod metrics;
mod provisioning;
mod registry;
pub mod server;
mod services;
mod session;
mod settings;

pub use server::{RunningServer, start};

/// The gRPC-edge conversions, for the fuzz targets in `fuzz/`. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::convert::{
        datetime, job_state_from_proto, job_state_to_proto, parse_job_id, spec_from_proto,
        spec_to_proto, stream_from_proto, timestamp,
    };
    pub use tonic::Code;
}
pub use hodei_store::RetryBackoff;
pub use settings::{Settings, TlsFiles};

/// A store failure as the client sees it: the database is the server's problem, not theirs.
pub(crate) fn store_status(error: hodei_store::StoreError) -> tonic::Status {
    tracing::error!(%error, "database error");
    if error.is_connection_error() {
        tonic::Status::unavailable(format!("database unavailable: {error}"))
    } else {
        tonic::Status::internal(format!("database error: {error}"))
    }
}

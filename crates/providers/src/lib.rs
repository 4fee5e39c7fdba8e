//! Providers start and stop worker agents: a local process, a Docker container or a Kubernetes
//! Pod. The server talks to them only through [`WorkerProvider`].
//!
//! Every resource a provider creates carries the labels of [`labels`] (or, for processes, the
//! equivalent environment variables) so that [`WorkerProvider::list_managed`] can find
//! resources the database no longer knows about, and the reaper can remove them.

pub mod docker;
pub mod kubernetes;
pub mod labels;
pub mod local;
mod provider;

pub use provider::{
    ManagedWorker, ProviderError, WorkerHandle, WorkerProvider, WorkerSpec, WorkerStatus,
};

/// Environment variables every worker agent receives.
pub mod env {
    /// The one-time registration token.
    pub const TOKEN: &str = "HODEI_TOKEN";
    /// The gRPC address of the server, e.g. `http://10.0.0.1:50051`.
    pub const SERVER: &str = "HODEI_SERVER";
    /// The id the token is bound to.
    pub const WORKER_ID: &str = "HODEI_WORKER_ID";
    /// PEM of the CA that signed the server's certificate (TLS only).
    pub const TLS_CA_PEM: &str = "HODEI_TLS_CA_PEM";
}

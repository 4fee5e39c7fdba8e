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
    ManagedWorker, ProviderError, WorkerDefaults, WorkerHandle, WorkerProvider, WorkerSpec,
    WorkerStatus,
};

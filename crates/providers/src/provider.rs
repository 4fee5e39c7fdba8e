//! The contract between the server and the places workers run.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use hodei_domain::{OneTimeToken, Resources, WorkerFailure, WorkerId};

/// Everything a provider needs to start one worker agent.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub worker_id: WorkerId,
    /// Handed to the agent as `HODEI_TOKEN`; providers must not log it.
    pub token: OneTimeToken,
    /// Handed to the agent as `HODEI_SERVER`: the server address as the agent can reach it.
    pub server_address: String,
    /// Value of the `hodei.io/instance` label.
    pub instance: String,
    /// Limits for the worker's container; the local provider ignores them.
    pub resources: Resources,
    /// Upper bound on the worker's lifetime (Kubernetes `activeDeadlineSeconds`); None: unbounded.
    pub lifetime: Option<Duration>,
    /// More environment for the agent (e.g. `HODEI_TLS_CA_PEM`).
    pub extra_env: BTreeMap<String, String>,
}

/// The resources a worker gets for the limits its job leaves unset (zero), and the pieces of
/// the worker image the hardening needs to know. One value for the Docker and Kubernetes
/// providers, set from the server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerDefaults {
    /// CPU limit, in thousandths of a core, of a job that sets none; 0: no limit.
    pub cpu_millis: u32,
    /// Kubernetes: the CPU request of a job that sets no CPU; below the limit, so small nodes
    /// still fit a few workers (Burstable, not BestEffort). 0: no request. Docker has none.
    pub cpu_request_millis: u32,
    /// Memory limit (and, on Kubernetes, request) of a job that sets none; 0: no limit.
    pub memory_bytes: u64,
    /// Docker: the container's PID limit (a fork bomb stops there); 0 or less: none.
    /// Kubernetes sets PID limits per node (the kubelet's `podPidsLimit`), not per Pod.
    pub pids_limit: i64,
    /// The worker image's home directory, also its working directory: with the root file
    /// system read-only, it and `/tmp` are the writable places (empty at every start).
    pub home: String,
}

impl WorkerDefaults {
    /// 1 CPU (100m requested), 512 MiB, 1024 processes, `/home/hodei` (the worker image's).
    pub const DEFAULT_CPU_MILLIS: u32 = 1000;
    pub const DEFAULT_CPU_REQUEST_MILLIS: u32 = 100;
    pub const DEFAULT_MEMORY_BYTES: u64 = 512 << 20;
    pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
    pub const DEFAULT_HOME: &'static str = "/home/hodei";

    /// `resources` with each unset (zero) limit taken from these defaults.
    pub fn fill(&self, resources: Resources) -> Resources {
        Resources {
            cpu_millis: match resources.cpu_millis {
                0 => self.cpu_millis,
                set => set,
            },
            memory_bytes: match resources.memory_bytes {
                0 => self.memory_bytes,
                set => set,
            },
        }
    }
}

impl Default for WorkerDefaults {
    fn default() -> Self {
        Self {
            cpu_millis: Self::DEFAULT_CPU_MILLIS,
            cpu_request_millis: Self::DEFAULT_CPU_REQUEST_MILLIS,
            memory_bytes: Self::DEFAULT_MEMORY_BYTES,
            pids_limit: Self::DEFAULT_PIDS_LIMIT,
            home: Self::DEFAULT_HOME.to_string(),
        }
    }
}

/// What the provider created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerHandle {
    pub worker_id: WorkerId,
    /// The provider's name for it: Pod or container name, process id.
    pub resource: String,
}

/// The provider's view of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerStatus {
    /// Being created, scheduled, pulled or started.
    Pending {
        detail: String,
    },
    Running,
    /// Ended on its own; `detail` holds what the provider knows (log tail, termination message).
    Exited {
        exit_code: Option<i32>,
        detail: String,
    },
    /// Cannot run, or was killed, for a classified reason.
    Failed(WorkerFailure),
    /// No such resource.
    NotFound,
}

/// A resource carrying our labels, as listed by [`WorkerProvider::list_managed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedWorker {
    /// From the `hodei.io/worker-id` label; None when the label is missing or not a UUID.
    pub worker_id: Option<WorkerId>,
    /// Its name, for people: Pod name (`secret/<name>` for a Secret), container name,
    /// `pid/<pid>`. Not necessarily the name the provider would give this worker id.
    pub resource: String,
    /// This very object as the backend identifies it: the Kubernetes UID, the Docker
    /// container id, the process id. [`WorkerProvider::remove_managed`] removes by it, so an
    /// object created since under the same name is never hit.
    pub uid: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The backend (Docker engine, Kubernetes API, the worker binary) cannot be reached or used.
    #[error("{provider} provider unavailable: {detail}")]
    Unavailable {
        provider: &'static str,
        detail: String,
    },
    /// The backend refused the request.
    #[error("{provider} provider refused the request: {detail}")]
    Rejected {
        provider: &'static str,
        detail: String,
    },
    #[error("{provider} provider timed out after {after:?} waiting for {what}")]
    Timeout {
        provider: &'static str,
        what: String,
        after: Duration,
    },
    /// The request reached the backend, which answered with a classified worker failure
    /// (e.g. the image does not exist).
    #[error("{}", .0.detailed())]
    WorkerFailed(WorkerFailure),
}

impl ProviderError {
    /// The failure to record on the worker when provisioning fails with this error.
    pub fn to_worker_failure(&self) -> WorkerFailure {
        match self {
            ProviderError::WorkerFailed(failure) => failure.clone(),
            other => WorkerFailure::Provider {
                detail: other.to_string(),
            },
        }
    }
}

/// Starts and stops worker agents. Implementations are cheap to share (`Arc<dyn WorkerProvider>`).
#[async_trait]
pub trait WorkerProvider: Send + Sync + 'static {
    /// Short name: `local`, `docker`, `kubernetes`.
    fn name(&self) -> &'static str;

    /// Starts one worker agent. Returns once the resource exists, not when the agent registered.
    async fn create_worker(&self, spec: &WorkerSpec) -> Result<WorkerHandle, ProviderError>;

    /// Classifies the worker's current condition, for provisioning deadlines and diagnostics.
    async fn worker_status(&self, worker_id: &WorkerId) -> Result<WorkerStatus, ProviderError>;

    /// Why the worker's platform stopped it (its Pod deleted, evicted or preempted), when the
    /// platform says so; `None` when it does not (a signal to a process, `docker stop`).
    async fn stop_cause(&self, _worker_id: &WorkerId) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    /// Stops the worker and removes its resources; returns when they are gone.
    /// Idempotent: a worker that does not exist is already destroyed.
    async fn destroy_worker(&self, worker_id: &WorkerId) -> Result<(), ProviderError>;

    /// Every resource this provider can see with `instance`'s labels, for the reaper.
    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedWorker>, ProviderError>;

    /// Removes exactly the resource `found` that [`Self::list_managed`] listed — by the name
    /// and identity it was listed with, not by a name derived from its worker id, so one that
    /// someone else named is removed too and one created since under the same name is left
    /// alone. Idempotent: a resource already gone is removed. Does not wait for it to go.
    async fn remove_managed(&self, found: &ManagedWorker) -> Result<(), ProviderError>;
}

//! Workers as Kubernetes Pods, through the API (kube-rs).
//!
//! Per worker, in the configured namespace:
//! - a Secret `hodei-worker-<id>-token` holding the one-time token under the key `token`;
//! - a Pod `hodei-worker-<id>` whose agent reads it through `env.valueFrom.secretKeyRef`, so
//!   the token never appears in the Pod spec;
//! - then the Secret gets the Pod as its owner, so Kubernetes deletes it with the Pod.
//!
//! The token is in the worker's environment, then, but neither in the Pod spec nor within its
//! jobs' reach: the worker is non-dumpable, so a job (same user) cannot read
//! `/proc/<worker>/environ` or its memory, and the job's own environment never holds it. A
//! mounted Secret file would instead stay readable by the jobs, as the worker could not remove
//! it from the read-only volume.
//!
//! Both carry the labels of [`crate::labels`]. The Pod runs as a non-root user without
//! capabilities or a service-account token, with `imagePullPolicy: IfNotPresent` (images
//! loaded with `kind load` are found), resources requests = limits from the job, and
//! `activeDeadlineSeconds` from the worker's lifetime. [`status`](self::status) explains how
//! Pod states map to [`WorkerStatus`](crate::WorkerStatus).
//!
//! The provider never logs the token. Do not enable `kube=trace` in production: request
//! bodies, including the Secret, may then reach the log.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hodei_providers::ProviderError> {
//! use hodei_providers::kubernetes::{KubernetesProvider, KubernetesProviderConfig, RestartPolicy};
//!
//! let mut config = KubernetesProviderConfig::for_tests(); // hodei-e2e, HODEI_WORKER_IMAGE
//! config.restart_policy = RestartPolicy::OnFailure;
//! let provider = KubernetesProvider::connect(config).await?; // KUBECONFIG or in-cluster
//! # Ok(()) }
//! ```

mod config;
mod errors;
mod events;
mod pod;
mod provider;
pub mod status;

pub use self::{
    config::{
        DEFAULT_NAMESPACE, DEFAULT_TEST_NAMESPACE, DEFAULT_WORKER_IMAGE, KubernetesProviderConfig,
        RestartPolicy, TEST_NAMESPACE_ENV, WORKER_IMAGE_ENV, WORKER_UID, test_namespace,
    },
    pod::{CONTAINER_NAME, TOKEN_KEY, build_pod, build_secret, pod_name, secret_name},
    provider::KubernetesProvider,
};

const PROVIDER: &str = "kubernetes";

//! What the Kubernetes provider asks of the cluster, and how patient it is.

use std::{fmt, time::Duration};

use crate::WorkerDefaults;

/// Namespace of worker Pods in production when the configuration names none.
pub const DEFAULT_NAMESPACE: &str = "hodei-workers";
/// The worker image used when neither the configuration nor `HODEI_WORKER_IMAGE` names one.
/// A fixed tag, never `:latest`: a moving tag lets a stale image pass unnoticed (the provider
/// sets `imagePullPolicy: IfNotPresent`, so an image loaded with `kind load` is used as is).
pub const DEFAULT_WORKER_IMAGE: &str = "hodei-worker:e2e-test";
/// Environment variable naming the worker image.
pub const WORKER_IMAGE_ENV: &str = "HODEI_WORKER_IMAGE";
/// Environment variable naming the namespace the Kubernetes tests use.
pub const TEST_NAMESPACE_ENV: &str = "HODEI_K8S_TEST_NAMESPACE";
/// Namespace of the Kubernetes tests (`deploy/kubernetes/namespace-test.yaml`).
pub const DEFAULT_TEST_NAMESPACE: &str = "hodei-e2e";
/// The user of the worker image (the conventional "nonroot" uid of distroless images).
pub const WORKER_UID: i64 = 65532;

/// The namespace for tests: `HODEI_K8S_TEST_NAMESPACE`, else [`DEFAULT_TEST_NAMESPACE`].
pub fn test_namespace() -> String {
    non_empty_env(TEST_NAMESPACE_ENV).unwrap_or_else(|| DEFAULT_TEST_NAMESPACE.to_string())
}

/// The Pod's `restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// A worker that exits stays exited: its exit code explains a failed registration.
    #[default]
    Never,
    /// Restarted after a non-zero exit; a worker that keeps failing shows as CrashLoopBackOff.
    OnFailure,
    Always,
}

impl RestartPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "Never",
            RestartPolicy::OnFailure => "OnFailure",
            RestartPolicy::Always => "Always",
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RestartPolicy::Never,
            RestartPolicy::OnFailure,
            RestartPolicy::Always,
        ]
        .into_iter()
        .find(|policy| policy.as_str().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| format!("unknown restart policy {s:?}: expected Never, OnFailure or Always"))
    }
}

#[derive(Debug, Clone)]
pub struct KubernetesProviderConfig {
    /// Namespace of the worker Pods and their token Secrets. It must exist.
    pub namespace: String,
    /// The worker image, pulled with `imagePullPolicy: IfNotPresent`.
    pub image: String,
    /// The Pods' `restartPolicy`.
    pub restart_policy: RestartPolicy,
    /// `serviceAccountName` of the worker Pods; None: the namespace's `default`. Its token is
    /// never mounted (`automountServiceAccountToken: false`); this only matters for
    /// `imagePullSecrets` attached to the account.
    pub service_account: Option<String>,
    /// uid and gid the worker runs as (`runAsNonRoot` is always set).
    pub run_as_user: i64,
    /// How long ErrImagePull / ImagePullBackOff is reported as Pending (the kubelet retries,
    /// and a registry may be briefly unreachable) before it is a failure. Counted from the
    /// Pod's creation.
    pub image_pull_grace: Duration,
    /// How long an Unschedulable Pod is reported as Pending before it is a failure. Counted
    /// from the Pod's creation. Raise it on clusters whose autoscaler adds nodes on demand.
    pub unschedulable_grace: Duration,
    /// `terminationGracePeriodSeconds` of the Pods, and the grace of `destroy_worker`'s delete:
    /// the time between SIGTERM and SIGKILL.
    pub termination_grace: Duration,
    /// How long `destroy_worker` waits for the Pod to disappear.
    pub destroy_timeout: Duration,
    /// How often `destroy_worker` checks whether the Pod is gone.
    pub poll_interval: Duration,
    /// Upper bound on every single API request.
    pub request_timeout: Duration,
    /// Requests and limits of jobs that set none, and the image's home directory (an
    /// `emptyDir`, as `/tmp` is, under the read-only root file system).
    pub defaults: WorkerDefaults,
}

impl KubernetesProviderConfig {
    /// Defaults with the given namespace and image.
    pub fn new(namespace: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            image: image.into(),
            restart_policy: RestartPolicy::Never,
            service_account: None,
            run_as_user: WORKER_UID,
            image_pull_grace: Duration::from_secs(30),
            unschedulable_grace: Duration::from_secs(30),
            termination_grace: Duration::from_secs(10),
            destroy_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            defaults: WorkerDefaults::default(),
        }
    }

    /// Defaults for the test namespace ([`test_namespace`]) and the image of
    /// `HODEI_WORKER_IMAGE`.
    pub fn for_tests() -> Self {
        Self::new(test_namespace(), image_from_env())
    }
}

impl Default for KubernetesProviderConfig {
    /// Namespace [`DEFAULT_NAMESPACE`]; the image from `HODEI_WORKER_IMAGE`, else
    /// [`DEFAULT_WORKER_IMAGE`].
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE, image_from_env())
    }
}

fn image_from_env() -> String {
    non_empty_env(WORKER_IMAGE_ENV).unwrap_or_else(|| DEFAULT_WORKER_IMAGE.to_string())
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policies_parse_case_insensitively_and_reject_unknown_names() {
        assert_eq!("onfailure".parse(), Ok(RestartPolicy::OnFailure));
        assert_eq!("Never".parse(), Ok(RestartPolicy::Never));
        assert_eq!(" Always ".parse(), Ok(RestartPolicy::Always));
        let err = "Sometimes".parse::<RestartPolicy>().unwrap_err();
        assert!(err.contains("expected Never, OnFailure or Always"), "{err}");
    }

    #[test]
    fn defaults_never_restart_and_tolerate_a_slow_pull_briefly() {
        let config = KubernetesProviderConfig::new("ns", "img:1");
        assert_eq!(config.restart_policy, RestartPolicy::Never);
        assert_eq!(config.run_as_user, WORKER_UID);
        assert_eq!(config.image_pull_grace, Duration::from_secs(30));
        assert!(config.destroy_timeout > config.termination_grace);
    }
}

//! Workers: the agents a provider starts, their lifecycle and the classified reasons they fail.

use std::{fmt, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{JobId, WorkerId};

/// `Provisioning → Idle ⇄ Busy → Terminating → Terminated`, or `Failed` (never registered) or
/// `Lost` (registered, then went silent or dropped its stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Provisioning,
    Idle,
    Busy,
    Terminating,
    Terminated,
    Failed,
    Lost,
}

impl WorkerState {
    pub const ALL: [WorkerState; 7] = [
        WorkerState::Provisioning,
        WorkerState::Idle,
        WorkerState::Busy,
        WorkerState::Terminating,
        WorkerState::Terminated,
        WorkerState::Failed,
        WorkerState::Lost,
    ];

    /// Whether the worker still holds (or may hold) a resource at its provider.
    pub const fn is_alive(self) -> bool {
        matches!(
            self,
            WorkerState::Provisioning
                | WorkerState::Idle
                | WorkerState::Busy
                | WorkerState::Terminating
        )
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerState::Provisioning => "provisioning",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Terminating => "terminating",
            WorkerState::Terminated => "terminated",
            WorkerState::Failed => "failed",
            WorkerState::Lost => "lost",
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown worker state {s:?}"))
    }
}

/// Why a worker never became usable, or stopped being usable. Providers classify what they see
/// (Pod conditions, container state, process exit) into one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerFailure {
    /// The image could not be pulled (ErrImagePull / ImagePullBackOff) for a reason that may
    /// pass: a registry timing out, refusing for a while, rate limits.
    ImagePull {
        image: String,
        detail: String,
    },
    /// The image does not exist where the worker's platform looks for it (the registry says
    /// `not found` / `manifest unknown`, its host never resolves, or it is not on the Docker
    /// engine or node and must not be pulled). Permanent: no retry can succeed.
    ImageNotFound {
        image: String,
        detail: String,
    },
    /// The image reference is not valid.
    InvalidImage {
        image: String,
        detail: String,
    },
    /// The worker keeps crashing (CrashLoopBackOff); the last termination message if any.
    CrashLoop {
        detail: String,
    },
    /// No node can run it.
    Unschedulable {
        detail: String,
    },
    OomKilled,
    Evicted {
        detail: String,
    },
    /// The node could not create the Pod's sandbox (event `FailedCreatePodSandBox`), e.g. a
    /// memory limit too small for it; the container never starts.
    SandboxCreation {
        detail: String,
    },
    /// The worker exited before it registered.
    ExitedEarly {
        exit_code: Option<i32>,
        detail: String,
    },
    /// It did not register within the provisioning deadline.
    ProvisioningTimeout {
        after: Duration,
    },
    /// The provider's API refused or failed.
    Provider {
        detail: String,
    },
    /// Registered, then stopped heartbeating or dropped its connection.
    Lost {
        detail: String,
    },
}

impl fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerFailure::ImagePull { image, detail } => {
                write!(f, "image pull failed for {image}: {detail}")
            }
            // Short, for the job's reason; `detailed` adds what the platform said.
            WorkerFailure::ImageNotFound { image, .. } => write!(f, "image not found: {image}"),
            WorkerFailure::InvalidImage { image, detail } => {
                write!(f, "invalid image name {image}: {detail}")
            }
            WorkerFailure::CrashLoop { detail } => write!(f, "worker crash-looping: {detail}"),
            WorkerFailure::Unschedulable { detail } => write!(f, "worker unschedulable: {detail}"),
            WorkerFailure::OomKilled => f.write_str("worker killed: out of memory"),
            WorkerFailure::Evicted { detail } => write!(f, "worker evicted: {detail}"),
            WorkerFailure::SandboxCreation { detail } => {
                write!(f, "worker Pod sandbox could not be created: {detail}")
            }
            WorkerFailure::ExitedEarly {
                exit_code: Some(code),
                detail,
            } => write!(
                f,
                "worker exited with code {code} before registering: {detail}"
            ),
            WorkerFailure::ExitedEarly {
                exit_code: None,
                detail,
            } => write!(f, "worker exited before registering: {detail}"),
            WorkerFailure::ProvisioningTimeout { after } => {
                write!(f, "worker did not register within {}s", after.as_secs())
            }
            WorkerFailure::Provider { detail } => write!(f, "provider error: {detail}"),
            WorkerFailure::Lost { detail } => write!(f, "worker lost: {detail}"),
        }
    }
}

impl WorkerFailure {
    /// Whether another attempt cannot succeed, so the job fails in this one instead of being
    /// retried: an image that does not exist or cannot even be named.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            WorkerFailure::ImageNotFound { .. } | WorkerFailure::InvalidImage { .. }
        )
    }

    /// The sentence with everything the platform said, for the job's and the worker's reason;
    /// `Display` alone names the class and the image, short enough for a list.
    pub fn detailed(&self) -> String {
        match self {
            WorkerFailure::ImageNotFound { detail, .. } if !detail.is_empty() => {
                format!("{self} ({detail})")
            }
            other => other.to_string(),
        }
    }
}

/// What a failed pull of `image` was, judged by the platform's message (`detail`): the image
/// does not exist — permanent — or something that may pass. Messages come from container
/// runtimes and registries (containerd, CRI-O, dockerd), so this matches the phrases they share
/// rather than error codes, which the kubelet does not pass on.
pub fn image_pull_failure(image: &str, detail: &str) -> WorkerFailure {
    const MISSING: [&str; 8] = [
        "not found",
        "manifest unknown",
        "no such host",
        "name unknown",
        "repository does not exist",
        "no such image",
        "errimageneverpull",
        "not present",
    ];
    let lower = detail.to_lowercase();
    let (image, detail) = (image.to_string(), detail.to_string());
    if MISSING.iter().any(|phrase| lower.contains(phrase)) {
        WorkerFailure::ImageNotFound { image, detail }
    } else {
        WorkerFailure::ImagePull { image, detail }
    }
}

/// A worker as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub id: WorkerId,
    pub provider: String,
    pub state: WorkerState,
    pub resource: Option<String>,
    pub current_job_id: Option<JobId>,
    pub jobs_run: u32,
    pub reason: String,
    pub created_at: DateTime<Utc>,
    pub registered_at: Option<DateTime<Utc>>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_strings() {
        for state in WorkerState::ALL {
            assert_eq!(state.as_str().parse::<WorkerState>(), Ok(state));
        }
    }

    #[test]
    fn a_pull_of_an_image_that_does_not_exist_is_permanent() {
        for detail in [
            "ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \
             \"docker.io/library/nope:1\": failed to resolve reference \
             \"docker.io/library/nope:1\": docker.io/library/nope:1: not found",
            "ErrImagePull: initializing source docker://quay.io/x/nope:1: reading manifest 1 \
             in quay.io/x/nope: manifest unknown",
            "ErrImagePull: failed to do request: Head \"https://registry.invalid/v2/x/manifests/1\": \
             dial tcp: lookup registry.invalid: no such host",
            "ErrImageNeverPull: Container image \"x:1\" is not present with pull policy of Never",
        ] {
            let failure = image_pull_failure("x:1", detail);
            assert!(
                matches!(failure, WorkerFailure::ImageNotFound { .. }),
                "{detail}: {failure:?}"
            );
            assert!(failure.is_permanent(), "{detail}");
        }
    }

    #[test]
    fn a_pull_that_may_succeed_later_is_not_permanent() {
        for detail in [
            "ErrImagePull: failed to do request: Head \"https://ghcr.io/v2/x/manifests/1\": \
             dial tcp 140.82.121.34:443: i/o timeout",
            "ErrImagePull: toomanyrequests: You have reached your pull rate limit",
            "ImagePullBackOff: Back-off pulling image \"x:1\"",
        ] {
            let failure = image_pull_failure("x:1", detail);
            assert!(
                matches!(failure, WorkerFailure::ImagePull { .. }),
                "{detail}: {failure:?}"
            );
            assert!(!failure.is_permanent(), "{detail}");
        }
    }

    #[test]
    fn a_missing_image_reads_short_with_the_detail_kept_apart() {
        let failure = image_pull_failure("x:1", "ErrImagePull: x:1: not found");
        assert_eq!(failure.to_string(), "image not found: x:1");
        assert_eq!(
            failure.detailed(),
            "image not found: x:1 (ErrImagePull: x:1: not found)"
        );
    }

    #[test]
    fn failures_read_as_sentences() {
        let failure = WorkerFailure::ImagePull {
            image: "hodei-worker:nope".into(),
            detail: "ErrImagePull".into(),
        };
        assert_eq!(
            failure.to_string(),
            "image pull failed for hodei-worker:nope: ErrImagePull"
        );
        assert_eq!(
            WorkerFailure::ProvisioningTimeout {
                after: Duration::from_secs(60)
            }
            .to_string(),
            "worker did not register within 60s"
        );
    }
}

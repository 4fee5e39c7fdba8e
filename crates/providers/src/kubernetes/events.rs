//! What a worker Pod's events say that its status does not: a sandbox the node could not
//! create. The Pod then stays `Pending` with its container `ContainerCreating` while the kubelet
//! retries, so only the event (`FailedCreatePodSandBox … cannot allocate memory`) tells that
//! the worker will not start; without it the job waited out the provisioning deadline.
//!
//! One failed sandbox fails the worker at once: its job is re-queued with backoff like any
//! provisioning failure, which is the retry for a node whose network plugin was not ready yet.

use hodei_domain::WorkerFailure;
use k8s_openapi::api::core::v1::{Event, Pod};

/// The kubelet's reason for a sandbox it could not create.
pub const SANDBOX_FAILED: &str = "FailedCreatePodSandBox";
/// Bound on the event message kept as the failure's detail (the runtime's error chain).
const MAX_DETAIL_BYTES: usize = 1024;

/// Whether the Pod is where a sandbox is being created: scheduled to a node, still `Pending`,
/// and no container has run yet. Only then are its events worth a request.
pub fn may_be_creating_sandbox(pod: &Pod) -> bool {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some();
    let status = pod.status.as_ref();
    let pending = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending") == "Pending";
    let container_started = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref())
        .any(|state| state.running.is_some() || state.terminated.is_some());
    scheduled && pending && !container_started
}

/// The field selector for the sandbox events of the Pod with `uid` (not its name: a Pod
/// re-created under the same name has other events).
pub fn sandbox_events_selector(pod_uid: &str) -> String {
    format!("involvedObject.uid={pod_uid},reason={SANDBOX_FAILED}")
}

/// The failure the newest sandbox event describes, if any.
pub fn sandbox_failure(events: &[Event]) -> Option<WorkerFailure> {
    let newest = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some(SANDBOX_FAILED))
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        })?;
    let message = newest.message.as_deref().unwrap_or("").trim();
    let detail = if message.is_empty() {
        SANDBOX_FAILED.to_string()
    } else {
        bounded(message, MAX_DETAIL_BYTES)
    };
    Some(WorkerFailure::SandboxCreation { detail })
}

fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            ContainerState, ContainerStateRunning, ContainerStateWaiting, ContainerStatus, PodSpec,
            PodStatus,
        },
        apimachinery::pkg::apis::meta::v1::Time,
        jiff::Timestamp,
    };

    use super::*;

    const NO_MEMORY: &str = "Failed to create pod sandbox: rpc error: code = Unknown desc = \
                             failed to start sandbox container task: cannot allocate memory";

    fn event(reason: &str, message: &str, at: i64) -> Event {
        Event {
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_timestamp: Some(Time(Timestamp::from_second(at).unwrap())),
            ..Event::default()
        }
    }

    fn pod(node: Option<&str>, phase: &str, state: Option<ContainerState>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: state.map(|state| {
                    vec![ContainerStatus {
                        name: "worker".into(),
                        state: Some(state),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn a_failed_sandbox_event_is_a_sandbox_creation_failure_with_the_newest_message() {
        let events = [
            event(
                SANDBOX_FAILED,
                "older: network plugin not ready",
                1_800_000_000,
            ),
            event(
                "Scheduled",
                "Successfully assigned hodei-e2e/x to node",
                1_800_000_001,
            ),
            event(SANDBOX_FAILED, NO_MEMORY, 1_800_000_002),
        ];
        assert_eq!(
            sandbox_failure(&events),
            Some(WorkerFailure::SandboxCreation {
                detail: NO_MEMORY.into()
            })
        );
        assert!(
            sandbox_failure(&events)
                .unwrap()
                .to_string()
                .starts_with("worker Pod sandbox could not be created: Failed to create pod")
        );
    }

    #[test]
    fn other_events_are_not_a_failure() {
        assert_eq!(sandbox_failure(&[]), None);
        assert_eq!(
            sandbox_failure(&[event("Pulling", "Pulling image", 1_800_000_000)]),
            None
        );
    }

    #[test]
    fn a_huge_message_is_kept_bounded() {
        let failure = sandbox_failure(&[event(SANDBOX_FAILED, &"é".repeat(4000), 0)]);
        let Some(WorkerFailure::SandboxCreation { detail }) = failure else {
            panic!("{failure:?}");
        };
        assert!(
            detail.len() <= MAX_DETAIL_BYTES + '…'.len_utf8(),
            "{}",
            detail.len()
        );
    }

    #[test]
    fn only_a_scheduled_pending_pod_whose_container_never_ran_is_asked_about_its_sandbox() {
        let creating = Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("ContainerCreating".into()),
                message: None,
            }),
            ..ContainerState::default()
        });
        let running = Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        });
        assert!(may_be_creating_sandbox(&pod(Some("n1"), "Pending", None)));
        assert!(may_be_creating_sandbox(&pod(
            Some("n1"),
            "Pending",
            creating
        )));
        assert!(
            !may_be_creating_sandbox(&pod(None, "Pending", None)),
            "not scheduled"
        );
        assert!(!may_be_creating_sandbox(&pod(
            Some("n1"),
            "Running",
            running.clone()
        )));
        assert!(!may_be_creating_sandbox(&pod(
            Some("n1"),
            "Pending",
            running
        )));
    }
}

//! Classifying a worker Pod: a pure function of the Pod and the current time, so every case is
//! a unit test with a Pod built in code.
//!
//! | the Pod shows | classified as |
//! |---|---|
//! | container terminated `OOMKilled` (now or before a restart) | `Failed(OomKilled)` |
//! | phase Failed, reason `Evicted` | `Failed(Evicted)` |
//! | waiting `InvalidImageName` | `Failed(InvalidImage)` at once |
//! | waiting `ErrImageNeverPull`, or `ErrImagePull` / `ImagePullBackOff` saying the image does not exist (`not found`, `manifest unknown`, `no such host`) | `Failed(ImageNotFound)` at once |
//! | waiting `ErrImagePull` / `ImagePullBackOff` otherwise | `Pending` during the pull grace, then `Failed(ImagePull)` |
//! | waiting `CrashLoopBackOff` | `Failed(CrashLoop)` with the last termination |
//! | condition PodScheduled=False, reason `Unschedulable` | `Pending` during the unschedulable grace, then `Failed(Unschedulable)` |
//! | phase Succeeded or Failed (also `DeadlineExceeded`) | `Exited` with the exit code and reason |
//! | phase Running with the container running | `Running` |
//! | anything else (scheduling, ContainerCreating, …) | `Pending` with what is known |
//!
//! Both graces count from the Pod's creation. The kubelet keeps retrying a pull, so a brief
//! registry hiccup must not fail the worker (an image that does not exist will not appear by
//! retrying, so it does not wait); the scheduler keeps retrying too, and an
//! autoscaler may add a node, so Unschedulable is only final after its grace.

use std::time::Duration;

use hodei_domain::{WorkerFailure, image_pull_failure};
use k8s_openapi::{
    api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, Pod},
    jiff::Timestamp,
};

use super::pod::CONTAINER_NAME;
use crate::WorkerStatus;

/// How long transient-looking conditions are tolerated.
#[derive(Debug, Clone, Copy)]
pub struct Graces {
    pub image_pull: Duration,
    pub unschedulable: Duration,
}

/// The worker's condition as the Pod shows it at `now`.
pub fn classify(pod: &Pod, now: Timestamp, graces: &Graces) -> WorkerStatus {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    let pod_reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("");
    let pod_message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
    let container = worker_container(pod);
    let age = age(pod, now);

    let current = container.and_then(|c| c.state.as_ref());
    let last = container.and_then(|c| c.last_state.as_ref());
    if [current, last]
        .into_iter()
        .flatten()
        .filter_map(terminated)
        .any(|t| t.reason.as_deref() == Some("OOMKilled"))
    {
        return WorkerStatus::Failed(WorkerFailure::OomKilled);
    }

    if phase == "Failed" && pod_reason == "Evicted" {
        return WorkerStatus::Failed(WorkerFailure::Evicted {
            detail: pod_message.to_string(),
        });
    }

    if let Some(waiting) = current.and_then(|s| s.waiting.as_ref()) {
        let reason = waiting.reason.as_deref().unwrap_or("");
        let message = waiting.message.as_deref().unwrap_or("");
        let detail = join(reason, message);
        let image = container_image(pod);
        match reason {
            "InvalidImageName" => {
                return WorkerStatus::Failed(WorkerFailure::InvalidImage { image, detail });
            }
            "ErrImageNeverPull" => {
                return WorkerStatus::Failed(WorkerFailure::ImageNotFound { image, detail });
            }
            "ErrImagePull" | "ImagePullBackOff" => {
                let failure = image_pull_failure(&image, &detail);
                return if failure.is_permanent() || age >= graces.image_pull {
                    WorkerStatus::Failed(failure)
                } else {
                    WorkerStatus::Pending { detail }
                };
            }
            "CrashLoopBackOff" => {
                let restarts = container.map_or(0, |c| c.restart_count);
                let last = last.and_then(terminated).map_or_else(
                    || "no termination recorded".to_string(),
                    describe_termination,
                );
                return WorkerStatus::Failed(WorkerFailure::CrashLoop {
                    detail: format!("restarted {restarts} times; last exit: {last}"),
                });
            }
            _ => {}
        }
    }

    match phase {
        "Succeeded" | "Failed" => {
            let terminated = current.and_then(terminated);
            let detail = match (pod_reason, terminated) {
                ("", Some(t)) => describe_termination(t),
                ("", None) => format!("Pod {phase}"),
                (reason, _) => join(reason, pod_message),
            };
            WorkerStatus::Exited {
                exit_code: terminated.map(|t| t.exit_code),
                detail,
            }
        }
        "Running" if current.is_some_and(|s| s.running.is_some()) => WorkerStatus::Running,
        _ => {
            if let Some(unschedulable) = unschedulable_message(pod) {
                return if age >= graces.unschedulable {
                    WorkerStatus::Failed(WorkerFailure::Unschedulable {
                        detail: unschedulable,
                    })
                } else {
                    WorkerStatus::Pending {
                        detail: join("Unschedulable", &unschedulable),
                    }
                };
            }
            WorkerStatus::Pending {
                detail: pending_detail(pod, phase, current),
            }
        }
    }
}

/// Why Kubernetes is stopping (or stopped) a worker Pod whose agent got SIGTERM, in the words an
/// operator would use: `evicted`, `preempted` or `deleted`, with what the API says. The
/// `DisruptionTarget` condition (Kubernetes 1.26+) names the cause of a disruption; a kubelet's
/// node-pressure eviction sets the Pod's reason `Evicted`; any other stop of a Pod we have not
/// deleted ourselves is a deletion (`kubectl delete`, a controller, the autoscaler) and shows
/// only as a deletion timestamp. `None`: the Pod is not being stopped.
pub fn stop_cause(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref();
    if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
        let message = status.and_then(|s| s.message.as_deref()).unwrap_or("");
        return Some(join("Pod evicted", message));
    }
    let disruption = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| {
            conditions
                .iter()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        });
    if let Some(condition) = disruption {
        let reason = condition.reason.as_deref().unwrap_or("");
        let what = match reason {
            "PreemptionByScheduler" | "PreemptionByKubeScheduler" => "Pod preempted",
            "EvictionByEvictionAPI" | "TerminationByKubelet" | "DeletionByTaintManager" => {
                "Pod evicted"
            }
            _ => "Pod deleted",
        };
        let detail = join(reason, condition.message.as_deref().unwrap_or(""));
        return Some(join(what, &detail));
    }
    pod.metadata
        .deletion_timestamp
        .as_ref()
        .map(|_| "Pod deleted".to_string())
}

/// Time since the Pod was created; a Pod without a creation time counts as old, so a failure
/// is reported rather than waited on forever.
fn age(pod: &Pod, now: Timestamp) -> Duration {
    pod.metadata
        .creation_timestamp
        .as_ref()
        .map_or(Duration::MAX, |created| {
            Duration::try_from(now.duration_since(created.0)).unwrap_or(Duration::ZERO)
        })
}

fn worker_container(pod: &Pod) -> Option<&ContainerStatus> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses
        .iter()
        .find(|c| c.name == CONTAINER_NAME)
        .or_else(|| statuses.first())
}

fn container_image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn terminated(state: &ContainerState) -> Option<&ContainerStateTerminated> {
    state.terminated.as_ref()
}

/// `exit code 1 (Error): <message>`; with `FallbackToLogsOnError` the message is the log tail.
fn describe_termination(t: &ContainerStateTerminated) -> String {
    let mut out = format!("exit code {}", t.exit_code);
    if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
        out.push_str(&format!(" ({reason})"));
    }
    if let Some(message) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        out.push_str(": ");
        out.push_str(message);
    }
    out
}

fn unschedulable_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
        })
        .map(|c| c.message.clone().unwrap_or_default())
}

fn pending_detail(pod: &Pod, phase: &str, current: Option<&ContainerState>) -> String {
    if let Some(waiting) = current.and_then(|s| s.waiting.as_ref()) {
        return join(
            waiting.reason.as_deref().unwrap_or("waiting"),
            waiting.message.as_deref().unwrap_or(""),
        );
    }
    let scheduled = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "PodScheduled"))
        .is_some_and(|c| c.status == "True");
    match phase {
        "Pending" if scheduled => "scheduled, starting the container".into(),
        "Pending" => "waiting to be scheduled".into(),
        "Unknown" => "phase Unknown: the node stopped reporting".into(),
        other => format!("phase {other}"),
    }
}

fn join(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.trim().is_empty()) {
        (_, true) => reason.to_string(),
        (true, false) => message.trim().to_string(),
        (false, false) => format!("{reason}: {}", message.trim()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{
            Container, ContainerStateRunning, ContainerStateWaiting, PodCondition, PodSpec,
            PodStatus,
        },
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    use super::*;

    const IMAGE: &str = "hodei-worker:e2e-test";
    const GRACES: Graces = Graces {
        image_pull: Duration::from_secs(30),
        unschedulable: Duration::from_secs(20),
    };

    fn created_at() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn after(seconds: i64) -> Timestamp {
        Timestamp::from_second(created_at().as_second() + seconds).unwrap()
    }

    /// A worker Pod in `phase` whose container is in `state`.
    fn pod(phase: &str, state: Option<ContainerState>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("hodei-worker-x".into()),
                creation_timestamp: Some(Time(created_at())),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: CONTAINER_NAME.into(),
                    image: Some(IMAGE.into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: state.map(|state| {
                    vec![ContainerStatus {
                        name: CONTAINER_NAME.into(),
                        image: IMAGE.into(),
                        state: Some(state),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    fn waiting(reason: &str, message: &str) -> Option<ContainerState> {
        Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message: Some(message.into()),
            }),
            ..ContainerState::default()
        })
    }

    fn terminated_with(exit_code: i32, reason: &str, message: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code,
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn running() -> Option<ContainerState> {
        Some(ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..ContainerState::default()
        })
    }

    fn with_condition(mut pod: Pod, status: &str, reason: &str, message: &str) -> Pod {
        pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..PodCondition::default()
        }]);
        pod
    }

    #[test]
    fn a_pod_waiting_for_a_node_is_pending() {
        assert_eq!(
            classify(&pod("Pending", None), after(1), &GRACES),
            WorkerStatus::Pending {
                detail: "waiting to be scheduled".into()
            }
        );
    }

    #[test]
    fn a_container_being_created_is_pending_with_the_reason() {
        let pod = pod("Pending", waiting("ContainerCreating", ""));
        assert_eq!(
            classify(&pod, after(100), &GRACES),
            WorkerStatus::Pending {
                detail: "ContainerCreating".into()
            }
        );
    }

    #[test]
    fn a_running_container_is_running() {
        assert_eq!(
            classify(&pod("Running", running()), after(5), &GRACES),
            WorkerStatus::Running
        );
    }

    #[test]
    fn an_image_pull_failure_is_pending_during_the_grace_then_failed() {
        let pod = pod(
            "Pending",
            waiting(
                "ImagePullBackOff",
                "Back-off pulling image \"hodei-worker:e2e-test\"",
            ),
        );
        assert!(matches!(
            classify(&pod, after(29), &GRACES),
            WorkerStatus::Pending { detail } if detail.starts_with("ImagePullBackOff: Back-off")
        ));
        assert_eq!(
            classify(&pod, after(30), &GRACES),
            WorkerStatus::Failed(WorkerFailure::ImagePull {
                image: IMAGE.into(),
                detail: "ImagePullBackOff: Back-off pulling image \"hodei-worker:e2e-test\"".into(),
            })
        );
    }

    #[test]
    fn err_image_pull_counts_like_image_pull_backoff() {
        let pod = pod("Pending", waiting("ErrImagePull", "i/o timeout"));
        assert!(matches!(
            classify(&pod, after(29), &GRACES),
            WorkerStatus::Pending { .. }
        ));
        assert!(matches!(
            classify(&pod, after(31), &GRACES),
            WorkerStatus::Failed(WorkerFailure::ImagePull { detail, .. }) if detail == "ErrImagePull: i/o timeout"
        ));
    }

    #[test]
    fn an_image_the_registry_does_not_have_fails_at_once_without_waiting_out_the_grace() {
        let message = "rpc error: code = NotFound desc = failed to pull and unpack image \
                       \"docker.io/library/hodei-worker:e2e-test\": not found";
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let pod = pod("Pending", waiting(reason, message));
            assert_eq!(
                classify(&pod, after(1), &GRACES),
                WorkerStatus::Failed(WorkerFailure::ImageNotFound {
                    image: IMAGE.into(),
                    detail: format!("{reason}: {message}"),
                })
            );
        }
    }

    #[test]
    fn an_image_that_must_not_be_pulled_and_is_absent_fails_at_once() {
        let pod = pod(
            "Pending",
            waiting("ErrImageNeverPull", "Container image is not present"),
        );
        assert!(matches!(
            classify(&pod, after(0), &GRACES),
            WorkerStatus::Failed(WorkerFailure::ImageNotFound { .. })
        ));
    }

    #[test]
    fn an_invalid_image_name_fails_at_once() {
        let pod = pod(
            "Pending",
            waiting("InvalidImageName", "couldn't parse image"),
        );
        assert_eq!(
            classify(&pod, after(0), &GRACES),
            WorkerStatus::Failed(WorkerFailure::InvalidImage {
                image: IMAGE.into(),
                detail: "InvalidImageName: couldn't parse image".into(),
            })
        );
    }

    #[test]
    fn a_crash_loop_fails_with_the_last_termination() {
        let mut pod = pod("Running", waiting("CrashLoopBackOff", "back-off 10s"));
        let container = &mut pod
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0];
        container.restart_count = 3;
        container.last_state = Some(terminated_with(
            2,
            "Error",
            "cannot reach server http://172.18.0.1:50051\n",
        ));
        assert_eq!(
            classify(&pod, after(40), &GRACES),
            WorkerStatus::Failed(WorkerFailure::CrashLoop {
                detail: "restarted 3 times; last exit: exit code 2 (Error): cannot reach server \
                         http://172.18.0.1:50051"
                    .into()
            })
        );
    }

    #[test]
    fn an_unschedulable_pod_is_pending_during_the_grace_then_failed() {
        let pod = with_condition(
            pod("Pending", None),
            "False",
            "Unschedulable",
            "0/1 nodes are available: 1 Insufficient cpu.",
        );
        assert_eq!(
            classify(&pod, after(19), &GRACES),
            WorkerStatus::Pending {
                detail: "Unschedulable: 0/1 nodes are available: 1 Insufficient cpu.".into()
            }
        );
        assert_eq!(
            classify(&pod, after(20), &GRACES),
            WorkerStatus::Failed(WorkerFailure::Unschedulable {
                detail: "0/1 nodes are available: 1 Insufficient cpu.".into()
            })
        );
    }

    #[test]
    fn a_scheduled_pod_without_container_status_is_starting() {
        let pod = with_condition(pod("Pending", None), "True", "", "");
        assert_eq!(
            classify(&pod, after(1), &GRACES),
            WorkerStatus::Pending {
                detail: "scheduled, starting the container".into()
            }
        );
    }

    #[test]
    fn an_oom_kill_is_classified_whether_final_or_before_a_restart() {
        let final_kill = pod("Failed", Some(terminated_with(137, "OOMKilled", "")));
        assert_eq!(
            classify(&final_kill, after(5), &GRACES),
            WorkerStatus::Failed(WorkerFailure::OomKilled)
        );

        let mut looping = pod("Running", waiting("CrashLoopBackOff", ""));
        looping
            .status
            .as_mut()
            .unwrap()
            .container_statuses
            .as_mut()
            .unwrap()[0]
            .last_state = Some(terminated_with(137, "OOMKilled", ""));
        assert_eq!(
            classify(&looping, after(5), &GRACES),
            WorkerStatus::Failed(WorkerFailure::OomKilled)
        );
    }

    #[test]
    fn an_evicted_pod_fails_with_the_kubelets_message() {
        let mut pod = pod("Failed", None);
        let status = pod.status.as_mut().unwrap();
        status.reason = Some("Evicted".into());
        status.message = Some("The node was low on resource: memory.".into());
        assert_eq!(
            classify(&pod, after(5), &GRACES),
            WorkerStatus::Failed(WorkerFailure::Evicted {
                detail: "The node was low on resource: memory.".into()
            })
        );
    }

    #[test]
    fn an_exceeded_deadline_is_an_exit_that_says_so() {
        let mut pod = pod("Failed", Some(terminated_with(137, "Error", "")));
        let status = pod.status.as_mut().unwrap();
        status.reason = Some("DeadlineExceeded".into());
        status.message =
            Some("Pod was active on the node longer than the specified deadline".into());
        assert_eq!(
            classify(&pod, after(5), &GRACES),
            WorkerStatus::Exited {
                exit_code: Some(137),
                detail: "DeadlineExceeded: Pod was active on the node longer than the specified \
                         deadline"
                    .into()
            }
        );
    }

    #[test]
    fn a_finished_pod_exits_with_its_code_and_log_tail() {
        let failed = pod(
            "Failed",
            Some(terminated_with(3, "Error", "registration refused\n")),
        );
        assert_eq!(
            classify(&failed, after(5), &GRACES),
            WorkerStatus::Exited {
                exit_code: Some(3),
                detail: "exit code 3 (Error): registration refused".into()
            }
        );
        let succeeded = pod("Succeeded", Some(terminated_with(0, "Completed", "")));
        assert_eq!(
            classify(&succeeded, after(5), &GRACES),
            WorkerStatus::Exited {
                exit_code: Some(0),
                detail: "exit code 0 (Completed)".into()
            }
        );
    }

    fn with_disruption(mut pod: Pod, reason: &str, message: &str) -> Pod {
        pod.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..PodCondition::default()
        }]);
        pod
    }

    #[test]
    fn a_running_pod_nobody_stops_has_no_stop_cause() {
        assert_eq!(stop_cause(&pod("Running", running())), None);
    }

    #[test]
    fn a_pod_with_a_deletion_timestamp_was_deleted() {
        let mut pod = pod("Running", running());
        pod.metadata.deletion_timestamp = Some(Time(after(3)));
        assert_eq!(stop_cause(&pod), Some("Pod deleted".into()));
    }

    #[test]
    fn a_disruption_target_says_evicted_or_preempted_over_a_plain_deletion() {
        let mut drained = with_disruption(
            pod("Running", running()),
            "EvictionByEvictionAPI",
            "Eviction API: evicting",
        );
        drained.metadata.deletion_timestamp = Some(Time(after(3)));
        assert_eq!(
            stop_cause(&drained),
            Some("Pod evicted: EvictionByEvictionAPI: Eviction API: evicting".into())
        );
        let preempted = with_disruption(
            pod("Running", running()),
            "PreemptionByScheduler",
            "default-scheduler: preempting to accommodate a higher priority pod",
        );
        assert_eq!(
            stop_cause(&preempted),
            Some(
                "Pod preempted: PreemptionByScheduler: default-scheduler: preempting to \
                 accommodate a higher priority pod"
                    .into()
            )
        );
    }

    #[test]
    fn a_node_pressure_eviction_says_evicted_with_the_kubelets_message() {
        let mut pod = pod("Failed", None);
        let status = pod.status.as_mut().unwrap();
        status.reason = Some("Evicted".into());
        status.message = Some("The node was low on resource: memory.".into());
        assert_eq!(
            stop_cause(&pod),
            Some("Pod evicted: The node was low on resource: memory.".into())
        );
    }

    #[test]
    fn a_pod_without_creation_time_does_not_wait_out_a_grace() {
        let mut pod = pod("Pending", waiting("ErrImagePull", ""));
        pod.metadata.creation_timestamp = None;
        assert!(matches!(
            classify(&pod, after(0), &GRACES),
            WorkerStatus::Failed(WorkerFailure::ImagePull { .. })
        ));
    }
}

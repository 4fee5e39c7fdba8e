//! Mapping a container's state, as `docker inspect` reports it, to a [`WorkerStatus`].

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use hodei_domain::WorkerFailure;

use crate::WorkerStatus;

/// What the state alone says. An exit also needs the container's log to explain itself, which
/// the caller fetches.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Observed {
    Status(WorkerStatus),
    Exited {
        exit_code: Option<i32>,
        /// The engine's own error (e.g. the entrypoint could not be executed), if any.
        engine_error: Option<String>,
    },
}

pub(super) fn observe(container: &ContainerInspectResponse) -> Observed {
    let Some(state) = &container.state else {
        return Observed::Status(WorkerStatus::Pending {
            detail: "the engine reports no state yet".into(),
        });
    };
    // Checked first: an OOM-killed container is also `exited`, and the exit code alone (137)
    // cannot tell OOM from any other SIGKILL.
    if state.oom_killed == Some(true) {
        return Observed::Status(WorkerStatus::Failed(WorkerFailure::OomKilled));
    }
    let exit_code = state.exit_code.and_then(|code| i32::try_from(code).ok());
    let engine_error = state.error.clone().filter(|e| !e.trim().is_empty());
    match state.status {
        // A start that failed leaves the container `created` with the engine's error.
        Some(ContainerStateStatusEnum::CREATED) if engine_error.is_some() => Observed::Exited {
            exit_code,
            engine_error,
        },
        Some(ContainerStateStatusEnum::CREATED) | None | Some(ContainerStateStatusEnum::EMPTY) => {
            Observed::Status(WorkerStatus::Pending {
                detail: "container created, not started".into(),
            })
        }
        Some(
            ContainerStateStatusEnum::RUNNING
            | ContainerStateStatusEnum::RESTARTING
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::STOPPING,
        ) => Observed::Status(WorkerStatus::Running),
        Some(
            ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::REMOVING,
        ) => Observed::Exited {
            exit_code,
            engine_error,
        },
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::ContainerState;

    use super::*;

    fn container(state: ContainerState) -> ContainerInspectResponse {
        ContainerInspectResponse {
            state: Some(state),
            ..Default::default()
        }
    }

    fn with_status(status: ContainerStateStatusEnum) -> ContainerState {
        ContainerState {
            status: Some(status),
            exit_code: Some(0),
            error: Some(String::new()),
            ..Default::default()
        }
    }

    #[test]
    fn a_created_container_is_pending() {
        assert!(matches!(
            observe(&container(with_status(ContainerStateStatusEnum::CREATED))),
            Observed::Status(WorkerStatus::Pending { .. })
        ));
    }

    #[test]
    fn a_running_container_is_running() {
        assert_eq!(
            observe(&container(with_status(ContainerStateStatusEnum::RUNNING))),
            Observed::Status(WorkerStatus::Running)
        );
    }

    #[test]
    fn an_exited_container_reports_its_exit_code() {
        let mut state = with_status(ContainerStateStatusEnum::EXITED);
        state.exit_code = Some(3);
        assert_eq!(
            observe(&container(state)),
            Observed::Exited {
                exit_code: Some(3),
                engine_error: None
            }
        );
    }

    #[test]
    fn an_oom_killed_container_is_a_classified_failure_not_an_exit() {
        let mut state = with_status(ContainerStateStatusEnum::EXITED);
        state.exit_code = Some(137);
        state.oom_killed = Some(true);
        assert_eq!(
            observe(&container(state)),
            Observed::Status(WorkerStatus::Failed(WorkerFailure::OomKilled))
        );
    }

    #[test]
    fn a_container_whose_start_failed_is_exited_with_the_engine_error() {
        let mut state = with_status(ContainerStateStatusEnum::CREATED);
        state.exit_code = Some(127);
        state.error = Some("exec: \"/usr/local/bin/hodei-worker\": no such file".into());
        assert_eq!(
            observe(&container(state)),
            Observed::Exited {
                exit_code: Some(127),
                engine_error: Some("exec: \"/usr/local/bin/hodei-worker\": no such file".into()),
            }
        );
    }
}

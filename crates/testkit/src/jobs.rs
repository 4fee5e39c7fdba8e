//! Jobs as the end-to-end suites see them through the API: a spec to queue, a state to assert,
//! and a one-line description for when an assertion fails.

use hodei_proto::v1 as pb;

/// A spec for `command` with a 60 s timeout.
pub fn spec(command: &str) -> pb::JobSpec {
    pb::JobSpec {
        command: command.into(),
        timeout_seconds: Some(60),
        ..Default::default()
    }
}

/// The job's state; `UNSPECIFIED` for a value this build does not know.
pub fn state_of(job: &pb::Job) -> pb::JobState {
    pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified)
}

pub fn is_final(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded
            | pb::JobState::Failed
            | pb::JobState::Cancelled
            | pb::JobState::TimedOut)
    )
}

/// State, exit code, attempts and reason: what a failing assertion should show.
pub fn describe(job: &pb::Job) -> String {
    format!(
        "{:?} (exit {:?}, attempts {}, reason {:?})",
        state_of(job),
        job.exit_code,
        job.attempts,
        job.reason
    )
}

/// Asserts the job is in `expected`, showing the job (see [`describe`]) when it is not.
#[track_caller]
pub fn assert_state(job: &pb::Job, expected: pb::JobState) {
    assert_eq!(state_of(job), expected, "job {}: {}", job.id, describe(job));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_assertion_shows_the_job() {
        let job = pb::Job {
            id: "j-1".into(),
            state: pb::JobState::Failed.into(),
            exit_code: Some(3),
            attempts: 1,
            reason: "exited with code 3".into(),
            ..Default::default()
        };
        assert_state(&job, pb::JobState::Failed);
        let message = std::panic::catch_unwind(|| assert_state(&job, pb::JobState::Succeeded))
            .expect_err("the assertion fails");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            message.contains(
                "job j-1: Failed (exit Some(3), attempts 1, reason \"exited with code 3\")"
            ),
            "{message}"
        );
        assert!(is_final(job.state));
        assert!(!is_final(pb::JobState::Running.into()));
    }
}

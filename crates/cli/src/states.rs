//! Job and worker states between the wire (`hodei.v1` enums as `i32`) and the words people
//! read and type (`queued`, `timed_out`, ...), which are the domain's names.

use hodei_domain::{JobState, WorkerState};
use hodei_proto::v1 as pb;

/// The domain state of a wire value; `None` for `UNSPECIFIED` or a value newer than this client.
pub fn job_state(wire: i32) -> Option<JobState> {
    match pb::JobState::try_from(wire).ok()? {
        pb::JobState::Unspecified => None,
        pb::JobState::Queued => Some(JobState::Queued),
        pb::JobState::Assigned => Some(JobState::Assigned),
        pb::JobState::Running => Some(JobState::Running),
        pb::JobState::Succeeded => Some(JobState::Succeeded),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
        pb::JobState::TimedOut => Some(JobState::TimedOut),
    }
}

pub fn job_state_to_wire(state: JobState) -> pb::JobState {
    match state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Assigned => pb::JobState::Assigned,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
        JobState::TimedOut => pb::JobState::TimedOut,
    }
}

/// `queued`, `timed_out`, ... or `unknown` for a state this client does not know.
pub fn job_state_name(wire: i32) -> &'static str {
    job_state(wire).map_or("unknown", JobState::as_str)
}

pub fn worker_state_name(wire: i32) -> &'static str {
    let state = match pb::WorkerState::try_from(wire) {
        Ok(pb::WorkerState::Provisioning) => WorkerState::Provisioning,
        Ok(pb::WorkerState::Idle) => WorkerState::Idle,
        Ok(pb::WorkerState::Busy) => WorkerState::Busy,
        Ok(pb::WorkerState::Terminating) => WorkerState::Terminating,
        Ok(pb::WorkerState::Terminated) => WorkerState::Terminated,
        Ok(pb::WorkerState::Failed) => WorkerState::Failed,
        Ok(pb::WorkerState::Lost) => WorkerState::Lost,
        Ok(pb::WorkerState::Unspecified) | Err(_) => return "unknown",
    };
    state.as_str()
}

/// For clap: `--state timed_out`; also accepts `timed-out` and any case.
pub fn parse_job_state(input: &str) -> Result<JobState, String> {
    let normalized = input.trim().to_ascii_lowercase().replace('-', "_");
    normalized.parse().map_err(|_| {
        let known: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown job state {input:?}; one of: {}", known.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_state_survives_the_wire() {
        for state in JobState::ALL {
            assert_eq!(job_state(job_state_to_wire(state) as i32), Some(state));
        }
    }

    #[test]
    fn unknown_wire_values_have_a_name_instead_of_an_error() {
        assert_eq!(job_state_name(0), "unknown");
        assert_eq!(job_state_name(99), "unknown");
        assert_eq!(job_state_name(pb::JobState::TimedOut as i32), "timed_out");
        assert_eq!(worker_state_name(99), "unknown");
        assert_eq!(worker_state_name(pb::WorkerState::Lost as i32), "lost");
    }

    #[test]
    fn states_are_parsed_leniently_and_errors_list_the_choices() {
        assert_eq!(parse_job_state("Timed-Out"), Ok(JobState::TimedOut));
        let err = parse_job_state("done").unwrap_err();
        assert!(err.contains("queued") && err.contains("timed_out"), "{err}");
    }
}

//! proto ↔ domain, at the gRPC edge only.

use chrono::{DateTime, Utc};
use hodei_domain::{
    Job, JobAttempt, JobId, JobSpec, JobSpecLimits, JobState, LogLine, LogStreamKind, Resources,
    Worker, WorkerState,
};
use hodei_proto::v1 as pb;
use tonic::Status;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn parse_job_id(raw: &str) -> Result<JobId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("job_id is required"));
    }
    raw.parse()
        .map_err(|e: hodei_domain::IdParseError| Status::invalid_argument(e.to_string()))
}

pub fn spec_from_proto(
    spec: Option<pb::JobSpec>,
    limits: &JobSpecLimits,
) -> Result<JobSpec, Status> {
    let spec = spec.ok_or_else(|| Status::invalid_argument("spec is required"))?;
    let resources = spec.resources.unwrap_or_default();
    JobSpec::new(
        spec.command,
        spec.env.into_iter().collect(),
        spec.timeout_seconds,
        Resources {
            cpu_millis: resources.cpu_millis,
            memory_bytes: resources.memory_bytes,
        },
        spec.max_attempts,
        limits,
    )
    .map_err(|e| Status::invalid_argument(format!("invalid job spec: {e}")))
}

pub fn spec_to_proto(spec: &JobSpec) -> pb::JobSpec {
    pb::JobSpec {
        command: spec.command.clone(),
        env: spec.env.clone().into_iter().collect(),
        timeout_seconds: i64::try_from(spec.timeout.as_secs()).ok(),
        resources: Some(pb::Resources {
            cpu_millis: spec.resources.cpu_millis,
            memory_bytes: spec.resources.memory_bytes,
        }),
        max_attempts: Some(spec.max_attempts),
    }
}

pub fn job_state_to_proto(state: JobState) -> pb::JobState {
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

pub fn job_state_from_proto(raw: i32) -> Result<JobState, Status> {
    Ok(match pb::JobState::try_from(raw) {
        Ok(pb::JobState::Queued) => JobState::Queued,
        Ok(pb::JobState::Assigned) => JobState::Assigned,
        Ok(pb::JobState::Running) => JobState::Running,
        Ok(pb::JobState::Succeeded) => JobState::Succeeded,
        Ok(pb::JobState::Failed) => JobState::Failed,
        Ok(pb::JobState::Cancelled) => JobState::Cancelled,
        Ok(pb::JobState::TimedOut) => JobState::TimedOut,
        Ok(pb::JobState::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!("unknown job state {raw}")));
        }
    })
}

pub fn job_to_proto(job: &Job, attempts: &[JobAttempt]) -> pb::Job {
    pb::Job {
        id: job.id.to_string(),
        spec: Some(spec_to_proto(&job.spec)),
        state: job_state_to_proto(job.state).into(),
        exit_code: job.exit_code,
        reason: job.reason.clone(),
        attempts: job.attempts,
        worker_id: job.worker_id.map(|w| w.to_string()).unwrap_or_default(),
        created_at: Some(timestamp(job.created_at)),
        started_at: job.started_at.map(timestamp),
        finished_at: job.finished_at.map(timestamp),
        attempt_history: attempts
            .iter()
            .map(|a| pb::JobAttempt {
                attempt: a.attempt,
                worker_id: a.worker_id.to_string(),
                started_at: Some(timestamp(a.started_at)),
                finished_at: a.finished_at.map(timestamp),
                outcome: a.outcome.clone(),
                reason: a.reason.clone(),
            })
            .collect(),
    }
}

pub fn worker_to_proto(worker: &Worker) -> pb::Worker {
    let state = match worker.state {
        WorkerState::Provisioning => pb::WorkerState::Provisioning,
        WorkerState::Idle => pb::WorkerState::Idle,
        WorkerState::Busy => pb::WorkerState::Busy,
        WorkerState::Terminating => pb::WorkerState::Terminating,
        WorkerState::Terminated => pb::WorkerState::Terminated,
        WorkerState::Failed => pb::WorkerState::Failed,
        WorkerState::Lost => pb::WorkerState::Lost,
    };
    pb::Worker {
        id: worker.id.to_string(),
        provider: worker.provider.clone(),
        state: state.into(),
        resource: worker.resource.clone().unwrap_or_default(),
        current_job_id: worker
            .current_job_id
            .map(|j| j.to_string())
            .unwrap_or_default(),
        jobs_run: worker.jobs_run,
        reason: worker.reason.clone(),
        created_at: Some(timestamp(worker.created_at)),
        registered_at: worker.registered_at.map(timestamp),
        last_heartbeat_at: worker.last_heartbeat_at.map(timestamp),
    }
}

pub fn stream_to_proto(stream: LogStreamKind) -> pb::LogStream {
    match stream {
        LogStreamKind::Stdout => pb::LogStream::Stdout,
        LogStreamKind::Stderr => pb::LogStream::Stderr,
    }
}

/// Unknown values are treated as stdout rather than dropping output.
pub fn stream_from_proto(raw: i32) -> LogStreamKind {
    match pb::LogStream::try_from(raw) {
        Ok(pb::LogStream::Stderr) => LogStreamKind::Stderr,
        _ => LogStreamKind::Stdout,
    }
}

/// `job_id` is `line.job_id` already formatted: callers convert many lines of one job, and
/// formatting the id once per line cost as much as the rest of the conversion.
pub fn log_line_to_proto(line: &LogLine, job_id: &str) -> pb::LogLine {
    debug_assert_eq!(line.job_id.to_string(), job_id);
    pb::LogLine {
        job_id: job_id.to_string(),
        sequence: line.sequence,
        stream: stream_to_proto(line.stream).into(),
        data: line.data.clone(),
        emitted_at: Some(timestamp(line.emitted_at)),
    }
}

pub fn datetime(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_spec_and_an_invalid_spec_are_invalid_arguments() {
        let limits = JobSpecLimits::default();
        assert_eq!(
            spec_from_proto(None, &limits).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let status = spec_from_proto(
            Some(pb::JobSpec {
                command: " ".into(),
                ..Default::default()
            }),
            &limits,
        )
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("command is empty"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn job_ids_must_be_uuids() {
        assert_eq!(
            parse_job_id("").unwrap_err().message(),
            "job_id is required"
        );
        assert!(
            parse_job_id("123")
                .unwrap_err()
                .message()
                .contains("invalid job id")
        );
    }

    #[test]
    fn every_state_round_trips() {
        for state in JobState::ALL {
            let raw: i32 = job_state_to_proto(state).into();
            assert_eq!(job_state_from_proto(raw).unwrap(), state);
        }
        assert!(job_state_from_proto(0).is_err());
        assert!(job_state_from_proto(99).is_err());
    }
}

//! proto ↔ domain: the only place where wire messages become domain values and back. The
//! server's gRPC edge, the worker and the CLI all convert here.

use chrono::{DateTime, Utc};
use hodei_domain::{
    ApiTokenInfo, Job, JobAttempt, JobId, JobSecrets, JobSpec, JobSpecLimits, JobState, LogLine,
    LogStreamKind, Resources, TerminalOutcome, Worker, WorkerState,
};
use hodei_proto::v1 as pb;

use crate::ContractError;

pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// `None` for a missing or out-of-range timestamp.
pub fn datetime(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
}

pub fn parse_job_id(raw: &str) -> Result<JobId, ContractError> {
    if raw.is_empty() {
        return Err(ContractError::Missing("job_id"));
    }
    Ok(raw.parse()?)
}

/// A submitted spec and its secrets, validated against `limits`.
pub fn spec_from_proto(
    spec: Option<pb::JobSpec>,
    limits: &JobSpecLimits,
) -> Result<(JobSpec, JobSecrets), ContractError> {
    let spec = spec.ok_or(ContractError::Missing("spec"))?;
    let resources = spec.resources.unwrap_or_default();
    let validated = JobSpec::new(
        spec.command,
        spec.env.into_iter().collect(),
        spec.timeout_seconds,
        Resources {
            cpu_millis: resources.cpu_millis,
            memory_bytes: resources.memory_bytes,
        },
        spec.max_attempts,
        limits,
    )?;
    let secrets = JobSecrets::new(spec.secrets.into_iter().collect(), &validated.env, limits)?;
    Ok((validated, secrets))
}

/// A stored spec as clients see it: secrets are never part of it (see `Job.secret_names`).
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
        secrets: Default::default(),
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

/// Refuses `UNSPECIFIED` and values newer than this build.
pub fn job_state_from_proto(raw: i32) -> Result<JobState, ContractError> {
    let unknown = ContractError::UnknownEnum {
        what: "job state",
        value: raw,
    };
    Ok(
        match pb::JobState::try_from(raw).map_err(|_| unknown.clone())? {
            pb::JobState::Unspecified => return Err(unknown),
            pb::JobState::Queued => JobState::Queued,
            pb::JobState::Assigned => JobState::Assigned,
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
            pb::JobState::TimedOut => JobState::TimedOut,
        },
    )
}

/// A `ListJobs` state filter: the states asked for, or none (any state) when the list is empty
/// or holds `UNSPECIFIED` — the value a client sends when it sets no state. Values newer than
/// this build are refused rather than silently widening the filter.
pub fn job_state_filter_from_proto(raw: &[i32]) -> Result<Vec<JobState>, ContractError> {
    if raw.contains(&(pb::JobState::Unspecified as i32)) {
        // Still refuse garbage next to it.
        for &value in raw
            .iter()
            .filter(|&&v| v != pb::JobState::Unspecified as i32)
        {
            job_state_from_proto(value)?;
        }
        return Ok(Vec::new());
    }
    raw.iter()
        .map(|&value| job_state_from_proto(value))
        .collect()
}

pub fn worker_state_to_proto(state: WorkerState) -> pb::WorkerState {
    match state {
        WorkerState::Provisioning => pb::WorkerState::Provisioning,
        WorkerState::Idle => pb::WorkerState::Idle,
        WorkerState::Busy => pb::WorkerState::Busy,
        WorkerState::Terminating => pb::WorkerState::Terminating,
        WorkerState::Terminated => pb::WorkerState::Terminated,
        WorkerState::Failed => pb::WorkerState::Failed,
        WorkerState::Lost => pb::WorkerState::Lost,
    }
}

/// Refuses `UNSPECIFIED` and values newer than this build.
pub fn worker_state_from_proto(raw: i32) -> Result<WorkerState, ContractError> {
    let unknown = ContractError::UnknownEnum {
        what: "worker state",
        value: raw,
    };
    Ok(
        match pb::WorkerState::try_from(raw).map_err(|_| unknown.clone())? {
            pb::WorkerState::Unspecified => return Err(unknown),
            pb::WorkerState::Provisioning => WorkerState::Provisioning,
            pb::WorkerState::Idle => WorkerState::Idle,
            pb::WorkerState::Busy => WorkerState::Busy,
            pb::WorkerState::Terminating => WorkerState::Terminating,
            pb::WorkerState::Terminated => WorkerState::Terminated,
            pb::WorkerState::Failed => WorkerState::Failed,
            pb::WorkerState::Lost => WorkerState::Lost,
        },
    )
}

/// The job in the BASIC view (`pb::JobView::Basic`): without its environment and attempt
/// history, for listings.
pub fn job_summary_to_proto(job: &Job) -> pb::Job {
    let mut message = job_to_proto(job, &[]);
    if let Some(spec) = message.spec.as_mut() {
        spec.env.clear();
    }
    message
}

/// The job in the FULL view: everything but its secrets' values, which are never returned.
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
        owner: job.owner.clone().unwrap_or_default(),
        secret_names: job.secret_names.clone(),
        cancel_requested: job.cancel_requested,
    }
}

pub fn worker_to_proto(worker: &Worker) -> pb::Worker {
    pb::Worker {
        id: worker.id.to_string(),
        provider: worker.provider.clone(),
        state: worker_state_to_proto(worker.state).into(),
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

pub fn api_token_to_proto(token: &ApiTokenInfo) -> pb::ApiToken {
    pb::ApiToken {
        id: token.id.to_string(),
        name: token.name.clone(),
        scopes: token
            .scopes
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        created_at: Some(timestamp(token.created_at)),
        created_by: token.created_by.clone(),
        expires_at: token.expires_at.map(timestamp),
        revoked_at: token.revoked_at.map(timestamp),
    }
}

/// What a worker's `JobFinished` means for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerReport {
    /// The attempt has a result: the job reaches this final state.
    Ended(TerminalOutcome),
    /// The worker's platform stopped it (SIGTERM) before the job ended on its own: not a result
    /// of the job, which runs again. `message` says what the worker knows.
    Interrupted { message: String },
}

/// What a resuming worker says it holds (`pb::Resume`), checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub job_id: JobId,
    pub attempt: u32,
    /// Its command's process group leader; 0 when it has not started.
    pub pid: u32,
    /// The sequence its next line gets.
    pub next_sequence: u64,
    /// The job's end, reported while disconnected or not yet recorded.
    pub finished: Option<pb::JobFinished>,
}

/// `None` for an idle worker; an error for a job id that is not one, or an end reported for
/// another job than the one held.
pub fn held_from_resume(resume: &pb::Resume) -> Result<Option<Held>, ContractError> {
    if resume.job_id.is_empty() {
        return Ok(None);
    }
    let job_id = parse_job_id(&resume.job_id)?;
    if let Some(finished) = &resume.finished
        && finished.job_id != resume.job_id
    {
        return Err(ContractError::InvalidAssignment(format!(
            "a resume holding job {} reports the end of job {}",
            resume.job_id, finished.job_id
        )));
    }
    Ok(Some(Held {
        job_id,
        attempt: resume.attempt,
        pid: resume.pid,
        next_sequence: resume.next_sequence,
        finished: resume.finished.clone(),
    }))
}

/// How a worker says its job ended. `cancel_reason` is the reason the server gave when it asked
/// for the cancel; it wins over the worker's message.
pub fn report_from_proto(finished: &pb::JobFinished, cancel_reason: Option<&str>) -> WorkerReport {
    let outcome = match pb::JobOutcome::try_from(finished.outcome) {
        Ok(pb::JobOutcome::Exited) => TerminalOutcome::Exited {
            exit_code: finished.exit_code.unwrap_or(-1),
        },
        Ok(pb::JobOutcome::Cancelled) => TerminalOutcome::Cancelled {
            exit_code: finished.exit_code,
            reason: cancel_reason.map_or_else(|| finished.message.clone(), str::to_owned),
        },
        Ok(pb::JobOutcome::TimedOut) => TerminalOutcome::TimedOut {
            exit_code: finished.exit_code,
        },
        Ok(pb::JobOutcome::SpawnFailed) => TerminalOutcome::SpawnFailed {
            message: finished.message.clone(),
        },
        Ok(pb::JobOutcome::Interrupted) => {
            return WorkerReport::Interrupted {
                message: finished.message.clone(),
            };
        }
        Ok(pb::JobOutcome::Unspecified) | Err(_) => TerminalOutcome::SpawnFailed {
            message: format!("worker reported an unknown outcome {}", finished.outcome),
        },
    };
    WorkerReport::Ended(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_spec_and_an_invalid_spec_are_refused_with_a_sentence() {
        let limits = JobSpecLimits::default();
        assert_eq!(
            spec_from_proto(None, &limits).unwrap_err().to_string(),
            "spec is required"
        );
        let err = spec_from_proto(
            Some(pb::JobSpec {
                command: " ".into(),
                ..Default::default()
            }),
            &limits,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("invalid job spec: command is empty"),
            "{err}"
        );
    }

    #[test]
    fn a_state_filter_with_unspecified_means_any_state_and_unknown_values_are_refused() {
        let unspecified = pb::JobState::Unspecified as i32;
        let running = pb::JobState::Running as i32;
        assert_eq!(job_state_filter_from_proto(&[]).unwrap(), vec![]);
        assert_eq!(job_state_filter_from_proto(&[unspecified]).unwrap(), vec![]);
        assert_eq!(
            job_state_filter_from_proto(&[unspecified, running]).unwrap(),
            vec![],
            "UNSPECIFIED next to a state still means any state"
        );
        assert_eq!(
            job_state_filter_from_proto(&[running]).unwrap(),
            vec![JobState::Running]
        );
        let err = job_state_filter_from_proto(&[unspecified, 99]).unwrap_err();
        assert!(err.to_string().contains("99"), "{err}");
        assert!(job_state_filter_from_proto(&[99]).is_err());
    }

    #[test]
    fn job_ids_must_be_uuids() {
        assert_eq!(
            parse_job_id("").unwrap_err().to_string(),
            "job_id is required"
        );
        assert!(
            parse_job_id("123")
                .unwrap_err()
                .to_string()
                .contains("invalid job id")
        );
    }

    #[test]
    fn every_state_round_trips_and_unknown_values_are_refused() {
        for state in JobState::ALL {
            let raw: i32 = job_state_to_proto(state).into();
            assert_eq!(job_state_from_proto(raw), Ok(state));
        }
        for state in WorkerState::ALL {
            let raw: i32 = worker_state_to_proto(state).into();
            assert_eq!(worker_state_from_proto(raw), Ok(state));
        }
        assert_eq!(
            job_state_from_proto(0).unwrap_err().to_string(),
            "unknown job state 0"
        );
        assert!(job_state_from_proto(99).is_err());
        assert!(worker_state_from_proto(0).is_err());
        assert!(worker_state_from_proto(99).is_err());
    }

    #[test]
    fn a_cancel_reason_given_by_the_server_wins_over_the_workers_message() {
        let finished = pb::JobFinished {
            job_id: JobId::new().to_string(),
            outcome: pb::JobOutcome::Cancelled.into(),
            exit_code: Some(143),
            signal: Some(15),
            message: "terminated".into(),
        };
        assert_eq!(
            report_from_proto(&finished, Some("by alice")),
            WorkerReport::Ended(TerminalOutcome::Cancelled {
                exit_code: Some(143),
                reason: "by alice".into()
            })
        );
        assert_eq!(
            report_from_proto(&finished, None),
            WorkerReport::Ended(TerminalOutcome::Cancelled {
                exit_code: Some(143),
                reason: "terminated".into()
            })
        );
        let unknown = pb::JobFinished {
            outcome: 42,
            ..finished
        };
        assert!(matches!(
            report_from_proto(&unknown, None),
            WorkerReport::Ended(outcome) if outcome.state() == JobState::Failed
        ));
    }

    #[test]
    fn an_interrupted_job_is_not_a_result_whatever_the_server_asked() {
        let finished = pb::JobFinished {
            job_id: JobId::new().to_string(),
            outcome: pb::JobOutcome::Interrupted.into(),
            exit_code: Some(143),
            signal: Some(15),
            message: "worker terminated by its platform (SIGTERM)".into(),
        };
        assert_eq!(
            report_from_proto(&finished, None),
            WorkerReport::Interrupted {
                message: "worker terminated by its platform (SIGTERM)".into()
            }
        );
    }
}

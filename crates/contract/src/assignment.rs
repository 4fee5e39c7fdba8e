//! What a worker is told to run: one attempt of one job, as the server sends it in `AssignJob`
//! and the worker reads it back.

use std::{collections::BTreeMap, time::Duration};

use hodei_domain::{Job, JobId, JobSecrets};
use hodei_proto::v1 as pb;

use crate::ContractError;

/// One attempt of one job, for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: JobId,
    pub attempt: u32,
    /// Run as `/bin/sh -c <command>`.
    pub command: String,
    pub env: BTreeMap<String, String>,
    /// Added to the environment like `env`; `Debug` shows only their names.
    pub secrets: JobSecrets,
    /// Always set and positive: every job has a timeout (the server's default when its spec
    /// gives none), so no job can hold its worker forever.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL of the job's process group when it is stopped.
    pub kill_grace: Duration,
    /// Sequence of the attempt's first output line (the worker numbers its lines from it, so a
    /// line re-sent after a reconnect is recognised). 0: the server numbers lines itself.
    pub first_sequence: u64,
}

impl Assignment {
    /// The current attempt of `job`, with its secrets.
    pub fn for_job(
        job: &Job,
        secrets: JobSecrets,
        kill_grace: Duration,
        first_sequence: u64,
    ) -> Self {
        Self {
            job_id: job.id,
            attempt: job.attempts,
            command: job.spec.command.clone(),
            env: job.spec.env.clone(),
            secrets,
            timeout: job.spec.timeout,
            kill_grace,
            first_sequence,
        }
    }

    /// What the job's command gets on top of the worker's documented variables: its `env` and
    /// its secrets (their names never overlap: the server refuses such a job).
    pub fn job_environment(&self) -> BTreeMap<String, String> {
        let mut environment = self.env.clone();
        environment.extend(
            self.secrets
                .expose()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        environment
    }

    pub fn to_wire(&self) -> pb::AssignJob {
        pb::AssignJob {
            job_id: self.job_id.to_string(),
            attempt: self.attempt,
            command: self.command.clone(),
            env: self.env.clone().into_iter().collect(),
            // A sub-second timeout is sent as one second rather than as "none".
            timeout_seconds: self.timeout.as_secs().max(1),
            kill_grace_ms: u32::try_from(self.kill_grace.as_millis()).unwrap_or(u32::MAX),
            secrets: self.secrets.expose().clone().into_iter().collect(),
            first_sequence: self.first_sequence,
        }
    }

    /// Refuses an assignment that breaks the contract (no job id, no timeout) instead of
    /// guessing what the server meant.
    pub fn from_wire(message: pb::AssignJob) -> Result<Self, ContractError> {
        if message.job_id.is_empty() {
            return Err(ContractError::Missing("job_id"));
        }
        let job_id: JobId = message.job_id.parse()?;
        if message.timeout_seconds == 0 {
            return Err(ContractError::InvalidAssignment(
                "timeout_seconds must be positive".into(),
            ));
        }
        Ok(Self {
            job_id,
            attempt: message.attempt,
            command: message.command,
            env: message.env.into_iter().collect(),
            secrets: JobSecrets::from_stored(message.secrets.into_iter().collect()),
            timeout: Duration::from_secs(message.timeout_seconds),
            kill_grace: Duration::from_millis(u64::from(message.kill_grace_ms)),
            first_sequence: message.first_sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment() -> Assignment {
        Assignment {
            job_id: JobId::new(),
            attempt: 2,
            command: "echo hi".into(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            secrets: JobSecrets::from_stored(BTreeMap::from([("TOKEN".into(), "s3cr3t".into())])),
            timeout: Duration::from_secs(30),
            kill_grace: Duration::from_millis(1500),
            first_sequence: 41,
        }
    }

    #[test]
    fn an_assignment_survives_the_wire_and_never_prints_a_secret() {
        let sent = assignment();
        assert!(!format!("{sent:?}").contains("s3cr3t"));
        assert_eq!(Assignment::from_wire(sent.to_wire()), Ok(sent));
    }

    #[test]
    fn an_assignment_without_a_timeout_or_a_job_id_is_refused() {
        let mut wire = assignment().to_wire();
        wire.timeout_seconds = 0;
        let err = Assignment::from_wire(wire).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid assignment: timeout_seconds must be positive"
        );
        let mut wire = assignment().to_wire();
        wire.job_id.clear();
        assert_eq!(
            Assignment::from_wire(wire),
            Err(ContractError::Missing("job_id"))
        );
    }

    #[test]
    fn a_sub_second_timeout_is_not_sent_as_none() {
        let mut short = assignment();
        short.timeout = Duration::from_millis(200);
        assert_eq!(short.to_wire().timeout_seconds, 1);
    }
}

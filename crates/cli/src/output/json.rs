//! The JSON shapes the CLI prints with `--output json`: snake_case fields, states as lowercase
//! words, timestamps as RFC 3339 strings, absent values as `null`.
//!
//! They are views of the wire messages rather than the messages themselves so that the output
//! stays stable and readable (`"state": "timed_out"`, not `"state": 7`), and so that what is
//! secret cannot slip in: a job shows its secrets' names, never their values.

use std::collections::BTreeMap;

use base64::Engine as _;
use hodei_proto::v1 as pb;
use serde::Serialize;

use chrono::Utc;

use super::{secret_names, time::rfc3339};
use crate::states::{job_state_name, token_state_name, worker_state_name};

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub state: &'static str,
    /// Who queued it (an API token's name, or `cert:<subject>`); `null` when the server ran
    /// without authentication.
    pub owner: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub attempts: u32,
    pub worker_id: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub spec: SpecView,
    /// Names of the job's secrets, sorted; their values are never shown.
    pub secret_names: Vec<String>,
    /// A cancel was requested; the job ends `cancelled` once its worker has stopped it.
    pub cancel_requested: bool,
    pub attempt_history: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
pub struct SpecView {
    pub command: String,
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: Option<i64>,
    pub cpu_millis: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub worker_id: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// `hodei tokens create --output json`: the token, and its secret (shown this once).
#[derive(Debug, Serialize)]
pub struct CreatedTokenView<'a> {
    pub secret: &'a str,
    pub token: TokenView,
}

#[derive(Debug, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub provider: String,
    pub state: &'static str,
    pub resource: Option<String>,
    pub current_job_id: Option<String>,
    pub jobs_run: u32,
    pub reason: Option<String>,
    pub created_at: Option<String>,
    pub registered_at: Option<String>,
    pub last_heartbeat_at: Option<String>,
}

/// One log line. `data` is always present (lossy UTF-8); `data_base64` carries the exact bytes
/// and is present only when they are not valid UTF-8, so most lines stay short and greppable.
#[derive(Debug, Serialize)]
pub struct LogLineView {
    pub sequence: u64,
    pub stream: &'static str,
    pub data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    pub emitted_at: Option<String>,
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

impl From<&pb::Job> for JobView {
    fn from(job: &pb::Job) -> Self {
        let spec = job.spec.clone().unwrap_or_default();
        let resources = spec.resources.unwrap_or_default();
        Self {
            id: job.id.clone(),
            state: job_state_name(job.state),
            owner: non_empty(&job.owner),
            exit_code: job.exit_code,
            reason: non_empty(&job.reason),
            attempts: job.attempts,
            worker_id: non_empty(&job.worker_id),
            created_at: rfc3339(job.created_at.as_ref()),
            started_at: rfc3339(job.started_at.as_ref()),
            finished_at: rfc3339(job.finished_at.as_ref()),
            spec: SpecView {
                command: spec.command,
                env: spec.env.into_iter().collect(),
                timeout_seconds: spec.timeout_seconds,
                cpu_millis: (resources.cpu_millis > 0).then_some(resources.cpu_millis),
                memory_bytes: (resources.memory_bytes > 0).then_some(resources.memory_bytes),
                max_attempts: spec.max_attempts,
            },
            secret_names: secret_names(job),
            cancel_requested: job.cancel_requested,
            attempt_history: job.attempt_history.iter().map(AttemptView::from).collect(),
        }
    }
}

impl From<&pb::JobAttempt> for AttemptView {
    fn from(attempt: &pb::JobAttempt) -> Self {
        Self {
            attempt: attempt.attempt,
            worker_id: non_empty(&attempt.worker_id),
            started_at: rfc3339(attempt.started_at.as_ref()),
            finished_at: rfc3339(attempt.finished_at.as_ref()),
            outcome: attempt.outcome.clone(),
            reason: non_empty(&attempt.reason),
        }
    }
}

impl From<&pb::ApiToken> for TokenView {
    fn from(token: &pb::ApiToken) -> Self {
        Self {
            id: token.id.clone(),
            name: token.name.clone(),
            scopes: token.scopes.clone(),
            state: token_state_name(token, Utc::now()),
            created_at: rfc3339(token.created_at.as_ref()),
            created_by: non_empty(&token.created_by),
            expires_at: rfc3339(token.expires_at.as_ref()),
            revoked_at: rfc3339(token.revoked_at.as_ref()),
        }
    }
}

impl From<&pb::Worker> for WorkerView {
    fn from(worker: &pb::Worker) -> Self {
        Self {
            id: worker.id.clone(),
            provider: worker.provider.clone(),
            state: worker_state_name(worker.state),
            resource: non_empty(&worker.resource),
            current_job_id: non_empty(&worker.current_job_id),
            jobs_run: worker.jobs_run,
            reason: non_empty(&worker.reason),
            created_at: rfc3339(worker.created_at.as_ref()),
            registered_at: rfc3339(worker.registered_at.as_ref()),
            last_heartbeat_at: rfc3339(worker.last_heartbeat_at.as_ref()),
        }
    }
}

impl From<&pb::LogLine> for LogLineView {
    fn from(line: &pb::LogLine) -> Self {
        let (data, data_base64) = match std::str::from_utf8(&line.data) {
            Ok(text) => (text.to_owned(), None),
            Err(_) => (
                String::from_utf8_lossy(&line.data).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(&line.data)),
            ),
        };
        Self {
            sequence: line.sequence,
            stream: stream_name(line.stream),
            data,
            data_base64,
            emitted_at: rfc3339(line.emitted_at.as_ref()),
        }
    }
}

/// `stdout` or `stderr`; an unknown stream is reported as `stdout`, where it is printed too.
pub fn stream_name(wire: i32) -> &'static str {
    match pb::LogStream::try_from(wire) {
        Ok(pb::LogStream::Stderr) => "stderr",
        _ => "stdout",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn to_json(value: &impl Serialize) -> Value {
        serde_json::to_value(value).expect("serializes")
    }

    #[test]
    fn a_job_has_snake_case_fields_and_a_lowercase_state() {
        let job = pb::Job {
            id: "j1".into(),
            state: pb::JobState::TimedOut as i32,
            spec: Some(pb::JobSpec {
                command: "sleep 9".into(),
                timeout_seconds: Some(1),
                ..Default::default()
            }),
            attempts: 1,
            created_at: Some(hodei_proto::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let value = to_json(&JobView::from(&job));
        assert_eq!(value["id"], "j1");
        assert_eq!(value["state"], "timed_out");
        assert_eq!(value["exit_code"], Value::Null);
        assert_eq!(value["worker_id"], Value::Null);
        assert_eq!(value["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(value["spec"]["command"], "sleep 9");
        assert_eq!(value["spec"]["timeout_seconds"], 1);
        assert_eq!(value["spec"]["memory_bytes"], Value::Null);
        assert_eq!(value["attempt_history"], json!([]));
        assert_eq!(value["owner"], Value::Null);
        assert_eq!(value["secret_names"], json!([]));
    }

    #[test]
    fn a_job_shows_its_owner_and_secret_names_but_never_a_secret_value() {
        let job = pb::Job {
            id: "j1".into(),
            owner: "alice".into(),
            secret_names: vec!["DB_PASSWORD".into()],
            spec: Some(pb::JobSpec {
                command: "./migrate".into(),
                // A server that sends values back by mistake: still only names are shown.
                secrets: [("API_KEY".to_owned(), "hunter22".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = to_json(&JobView::from(&job));
        assert_eq!(value["owner"], "alice");
        assert_eq!(value["secret_names"], json!(["API_KEY", "DB_PASSWORD"]));
        assert!(!value.to_string().contains("hunter22"), "{value}");
    }

    #[test]
    fn a_token_shows_its_scopes_and_state() {
        let token = pb::ApiToken {
            id: "t1".into(),
            name: "ci".into(),
            scopes: vec!["jobs:submit".into(), "jobs:read".into()],
            revoked_at: Some(hodei_proto::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let value = to_json(&TokenView::from(&token));
        assert_eq!(value["scopes"], json!(["jobs:submit", "jobs:read"]));
        assert_eq!(value["state"], "revoked");
        assert_eq!(value["revoked_at"], "1970-01-01T00:00:00Z");
        assert_eq!(value["expires_at"], Value::Null);
        assert_eq!(value["created_by"], Value::Null);
    }

    #[test]
    fn a_utf8_log_line_has_no_base64() {
        let line = pb::LogLine {
            sequence: 3,
            stream: pb::LogStream::Stderr as i32,
            data: b"caf\xc3\xa9".to_vec().into(),
            ..Default::default()
        };
        assert_eq!(
            to_json(&LogLineView::from(&line)),
            json!({"sequence": 3, "stream": "stderr", "data": "café", "emitted_at": null})
        );
    }

    #[test]
    fn a_non_utf8_log_line_keeps_its_exact_bytes_in_base64() {
        let line = pb::LogLine {
            sequence: 1,
            stream: pb::LogStream::Stdout as i32,
            data: b"a\xffb".to_vec().into(),
            ..Default::default()
        };
        let value = to_json(&LogLineView::from(&line));
        assert_eq!(value["data"], "a\u{fffd}b");
        assert_eq!(value["data_base64"], "Yf9i");
    }
}

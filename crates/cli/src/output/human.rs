//! Human-readable renderings of jobs, workers and API tokens: tables for lists, a key/value
//! block for one job (its secrets by name only).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use hodei_proto::v1 as pb;

use super::{
    secret_names,
    table::{Table, truncate},
    time::{age, instant, rfc3339_seconds},
};
use crate::{
    states::{job_state, job_state_name, token_state_name, worker_state_name},
    units::{format_memory, format_seconds},
};

/// Commands longer than this are cut in tables; `hodei jobs get` shows them whole.
const COMMAND_WIDTH: usize = 60;
const REASON_WIDTH: usize = 60;
const LIST_REASON_WIDTH: usize = 80;

pub fn jobs_table(jobs: &[pb::Job], now: DateTime<Utc>) -> String {
    let mut table = Table::new(vec![
        "ID", "STATE", "EXIT", "ATTEMPTS", "AGE", "COMMAND", "REASON",
    ]);
    for job in jobs {
        let command = job.spec.as_ref().map_or("", |spec| spec.command.as_str());
        table.push(vec![
            job.id.clone(),
            job_state_name(job.state).to_owned(),
            job.exit_code
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            job.attempts.to_string(),
            age_or_dash(now, job.created_at.as_ref()),
            truncate(command, COMMAND_WIDTH),
            truncate(short_reason(&job.reason), LIST_REASON_WIDTH),
        ]);
    }
    table.render()
}

/// A reason as a list shows it: its class and subject, without the platform's detail that the
/// server appends in parentheses (`hodei jobs get` shows the whole sentence). For example
/// `failed after 1 attempt(s): image not found: registry.invalid/w:1 (manifest unknown: …)`
/// lists as `failed after 1 attempt(s): image not found: registry.invalid/w:1`.
fn short_reason(reason: &str) -> &str {
    reason.split(" (").next().unwrap_or(reason).trim_end()
}

pub fn tokens_table(tokens: &[pb::ApiToken], now: DateTime<Utc>) -> String {
    let mut table = Table::new(vec![
        "ID",
        "NAME",
        "SCOPES",
        "STATE",
        "AGE",
        "EXPIRES",
        "CREATED BY",
    ]);
    for token in tokens {
        table.push(vec![
            token.id.clone(),
            token.name.clone(),
            token.scopes.join(","),
            token_state_name(token, now).to_owned(),
            age_or_dash(now, token.created_at.as_ref()),
            instant(token.expires_at.as_ref()).map_or_else(|| "never".to_owned(), rfc3339_seconds),
            dash_if_empty(&token.created_by),
        ]);
    }
    table.render()
}

pub fn workers_table(workers: &[pb::Worker], now: DateTime<Utc>) -> String {
    let mut table = Table::new(vec![
        "ID",
        "PROVIDER",
        "STATE",
        "JOB",
        "JOBS RUN",
        "AGE",
        "HEARTBEAT",
        "REASON",
    ]);
    for worker in workers {
        table.push(vec![
            worker.id.clone(),
            worker.provider.clone(),
            worker_state_name(worker.state).to_owned(),
            dash_if_empty(&worker.current_job_id),
            worker.jobs_run.to_string(),
            age_or_dash(now, worker.created_at.as_ref()),
            instant(worker.last_heartbeat_at.as_ref())
                .map_or_else(|| "-".to_owned(), |t| format!("{} ago", age(now, t))),
            truncate(&worker.reason, REASON_WIDTH),
        ]);
    }
    table.render()
}

/// A key/value block with everything known about one job, attempt history last.
pub fn job_details(job: &pb::Job, now: DateTime<Utc>) -> String {
    let spec = job.spec.clone().unwrap_or_default();
    let mut block = Block::default();
    block.field("ID", &job.id);
    let terminal = job_state(job.state).is_some_and(|state| state.is_terminal());
    if job.cancel_requested && !terminal {
        block.field(
            "State",
            &format!("{} (cancel requested)", job_state_name(job.state)),
        );
    } else {
        block.field("State", job_state_name(job.state));
    }
    if !job.owner.is_empty() {
        block.field("Owner", &job.owner);
    }
    if let Some(code) = job.exit_code {
        block.field("Exit code", &code.to_string());
    }
    if !job.reason.is_empty() {
        block.field("Reason", &job.reason);
    }
    block.field("Command", &spec.command);
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    if !env.is_empty() {
        block.field("Environment", &env.join("\n"));
    }
    let secrets = secret_names(job);
    if !secrets.is_empty() {
        block.field(
            "Secrets",
            &format!("{} (values never shown)", secrets.join(", ")),
        );
    }
    block.field(
        "Timeout",
        &spec.timeout_seconds.map_or_else(
            || "server default".to_owned(),
            |s| format_seconds(s.max(0).unsigned_abs()),
        ),
    );
    block.field("Resources", &resources(spec.resources.as_ref()));
    block.field(
        "Max attempts",
        &spec
            .max_attempts
            .map_or_else(|| "server default".to_owned(), |n| n.to_string()),
    );
    block.field("Attempts", &job.attempts.to_string());
    if !job.worker_id.is_empty() {
        block.field("Worker", &job.worker_id);
    }
    for (key, ts) in [
        ("Created", &job.created_at),
        ("Started", &job.started_at),
        ("Finished", &job.finished_at),
    ] {
        if let Some(t) = instant(ts.as_ref()) {
            block.field(
                key,
                &format!("{} ({} ago)", rfc3339_seconds(t), age(now, t)),
            );
        }
    }
    if let (Some(start), Some(end)) = (
        instant(job.started_at.as_ref()),
        instant(job.finished_at.as_ref()),
    ) {
        let seconds = (end - start).num_seconds().max(0).unsigned_abs();
        block.field("Duration", &format_seconds(seconds));
    }
    let mut out = block.0;
    if !job.attempt_history.is_empty() {
        out.push_str("Attempt history:\n");
        for attempt in &job.attempt_history {
            out.push_str(&attempt_line(attempt));
            out.push('\n');
        }
    }
    out
}

fn attempt_line(attempt: &pb::JobAttempt) -> String {
    let when = |ts: &Option<hodei_proto::Timestamp>| {
        instant(ts.as_ref()).map_or_else(|| "-".to_owned(), rfc3339_seconds)
    };
    let mut line = format!(
        "  #{}  worker {}  {} → {}  {}",
        attempt.attempt,
        dash_if_empty(&attempt.worker_id),
        when(&attempt.started_at),
        when(&attempt.finished_at),
        if attempt.outcome.is_empty() {
            "in progress"
        } else {
            &attempt.outcome
        },
    );
    if !attempt.reason.is_empty() {
        let _ = write!(line, ": {}", attempt.reason);
    }
    line
}

fn resources(resources: Option<&pb::Resources>) -> String {
    let resources = resources.cloned().unwrap_or_default();
    let cpu = match resources.cpu_millis {
        0 => "no limit".to_owned(),
        millis => format!("{millis}m"),
    };
    let memory = match resources.memory_bytes {
        0 => "no limit".to_owned(),
        bytes => format_memory(bytes),
    };
    format!("cpu {cpu}, memory {memory}")
}

fn age_or_dash(now: DateTime<Utc>, ts: Option<&hodei_proto::Timestamp>) -> String {
    instant(ts).map_or_else(|| "-".to_owned(), |t| age(now, t))
}

fn dash_if_empty(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// `Key:   value` lines with aligned values; continuation lines of a multi-line value are
/// indented to the value column.
#[derive(Default)]
struct Block(String);

impl Block {
    const KEY_WIDTH: usize = 14;

    fn field(&mut self, key: &str, value: &str) {
        let mut lines = value.split('\n');
        let first = lines.next().unwrap_or_default();
        let label = format!("{key}:");
        let _ = writeln!(self.0, "{label:<width$}{first}", width = Self::KEY_WIDTH);
        for line in lines {
            let _ = writeln!(self.0, "{:width$}{line}", "", width = Self::KEY_WIDTH);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn ts(t: DateTime<Utc>) -> Option<hodei_proto::Timestamp> {
        Some(hodei_proto::Timestamp {
            seconds: t.timestamp(),
            nanos: 0,
        })
    }

    #[test]
    fn the_jobs_table_shows_state_exit_age_and_a_truncated_command() {
        let now = Utc::now();
        let long = "x".repeat(100);
        let jobs = vec![
            pb::Job {
                id: "job-1".into(),
                state: pb::JobState::Failed as i32,
                exit_code: Some(3),
                attempts: 1,
                created_at: ts(now - TimeDelta::seconds(300)),
                spec: Some(pb::JobSpec {
                    command: long,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::Job {
                id: "job-22".into(),
                state: pb::JobState::Queued as i32,
                ..Default::default()
            },
            pb::Job {
                id: "job-3".into(),
                state: pb::JobState::Failed as i32,
                attempts: 1,
                reason: "failed after 1 attempt(s): image not found: registry.invalid/w:1 \
                         (failed to resolve reference: manifest unknown)"
                    .into(),
                spec: Some(pb::JobSpec {
                    command: "make".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let rendered = jobs_table(&jobs, now);
        let lines: Vec<&str> = rendered.lines().collect();
        let wide = " ".repeat(53);
        assert_eq!(
            lines[0],
            format!("ID      STATE   EXIT  ATTEMPTS  AGE  COMMAND{wide}  REASON")
        );
        assert_eq!(
            lines[1],
            format!("job-1   failed  3     1         5m   {}…", "x".repeat(59))
        );
        assert_eq!(lines[2], "job-22  queued  -     0         -");
        assert_eq!(
            lines[3],
            format!(
                "job-3   failed  -     1         -    make{}  \
                 failed after 1 attempt(s): image not found: registry.invalid/w:1",
                " ".repeat(56)
            ),
            "the list shows the failure's class and subject, not the platform's detail"
        );
    }

    #[test]
    fn job_details_show_the_owner_and_secret_names_never_their_values() {
        let job = pb::Job {
            id: "job-1".into(),
            owner: "alice".into(),
            secret_names: vec!["DB_PASSWORD".into(), "API_KEY".into()],
            spec: Some(pb::JobSpec {
                command: "./migrate".into(),
                secrets: [("API_KEY".to_owned(), "hunter22".to_owned())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = job_details(&job, Utc::now());
        assert!(text.contains("Owner:        alice\n"), "{text}");
        assert!(
            text.contains("Secrets:      API_KEY, DB_PASSWORD (values never shown)\n"),
            "{text}"
        );
        assert!(!text.contains("hunter22"), "{text}");
    }

    #[test]
    fn the_tokens_table_shows_scopes_state_and_expiry() {
        let now = Utc::now();
        let tokens = vec![
            pb::ApiToken {
                id: "t-1".into(),
                name: "ci".into(),
                scopes: vec!["jobs:submit".into(), "jobs:read".into()],
                created_at: ts(now - TimeDelta::seconds(7_200)),
                created_by: "admin".into(),
                ..Default::default()
            },
            pb::ApiToken {
                id: "t-2".into(),
                name: "old".into(),
                scopes: vec!["workers:read".into()],
                expires_at: Some(hodei_proto::Timestamp {
                    seconds: 1_714_564_800,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ];
        let rendered = tokens_table(&tokens, now);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(
            lines[0],
            "ID   NAME  SCOPES                 STATE    AGE  EXPIRES               CREATED BY"
        );
        assert_eq!(
            lines[1],
            "t-1  ci    jobs:submit,jobs:read  active   2h   never                 admin"
        );
        assert_eq!(
            lines[2],
            "t-2  old   workers:read           expired  -    2024-05-01T12:00:00Z  -"
        );
    }

    #[test]
    fn a_running_job_whose_cancel_was_requested_says_so_until_it_ends() {
        let mut job = pb::Job {
            id: "job-1".into(),
            state: pb::JobState::Running as i32,
            cancel_requested: true,
            ..Default::default()
        };
        let text = job_details(&job, Utc::now());
        assert!(
            text.contains("State:        running (cancel requested)\n"),
            "{text}"
        );
        job.state = pb::JobState::Cancelled as i32;
        let text = job_details(&job, Utc::now());
        assert!(text.contains("State:        cancelled\n"), "{text}");
    }

    #[test]
    fn job_details_include_reason_resources_and_attempt_history() {
        let now = Utc::now();
        let job = pb::Job {
            id: "job-1".into(),
            state: pb::JobState::TimedOut as i32,
            reason: "timed out after 1s".into(),
            attempts: 2,
            spec: Some(pb::JobSpec {
                command: "sleep 9\necho done".into(),
                timeout_seconds: Some(1),
                resources: Some(pb::Resources {
                    cpu_millis: 500,
                    memory_bytes: 512 << 20,
                }),
                env: [
                    ("B".to_owned(), "2".to_owned()),
                    ("A".to_owned(), "1".to_owned()),
                ]
                .into(),
                ..Default::default()
            }),
            attempt_history: vec![pb::JobAttempt {
                attempt: 1,
                worker_id: "w-1".into(),
                outcome: "requeued".into(),
                reason: "worker lost: no heartbeat for 15s".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = job_details(&job, now);
        assert!(text.contains("State:        timed_out\n"), "{text}");
        assert!(
            text.contains("Reason:       timed out after 1s\n"),
            "{text}"
        );
        assert!(
            text.contains("Command:      sleep 9\n              echo done\n"),
            "{text}"
        );
        assert!(
            text.contains("Environment:  A=1\n              B=2\n"),
            "{text}"
        );
        assert!(text.contains("Timeout:      1s\n"), "{text}");
        assert!(
            text.contains("Resources:    cpu 500m, memory 512Mi\n"),
            "{text}"
        );
        assert!(text.contains("Max attempts: server default\n"), "{text}");
        assert!(
            text.ends_with(
                "Attempt history:\n  #1  worker w-1  - → -  requeued: worker lost: no heartbeat \
                 for 15s\n"
            ),
            "{text}"
        );
    }
}

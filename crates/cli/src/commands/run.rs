//! `hodei run`: queue a job, print its output live, exit with its exit code.

use std::collections::HashMap;

use hodei_domain::JobState;
use hodei_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::{
    args::{OutputFormat, RunArgs},
    connection::Clients,
    error::CliError,
    follow::LogFollower,
    output::{self, json::JobView, log_writer::LogWriter},
    quote::command_line,
    states::{job_state, job_state_name},
};

/// As coreutils `timeout` reports a command it had to stop.
pub const EXIT_TIMED_OUT: u8 = 124;
/// As shells report a command ended by Ctrl-C (128 + SIGINT).
pub const EXIT_CANCELLED: u8 = 130;
const EXIT_FAILED: u8 = 1;

/// The job's reason once cancelled (its state already says "cancelled").
const CANCEL_REASON: &str = "Ctrl-C in the hodei CLI";

/// Queues the job with `secrets` (already read from their sources), then follows it unless
/// detached.
pub async fn run(
    mut clients: Clients,
    format: OutputFormat,
    args: RunArgs,
    secrets: HashMap<String, String>,
) -> Result<u8, CliError> {
    let detach = args.detach;
    let request = pb::QueueJobRequest {
        spec: Some(job_spec(args, secrets)),
    };
    let job = clients
        .jobs
        .queue_job(request)
        .await
        .map_err(|status| clients.error(status))?
        .into_inner();
    if detach {
        match format {
            OutputFormat::Human => output::print(&format!("{}\n", job.id))?,
            OutputFormat::Json => output::print_json(&JobView::from(&job))?,
        }
        return Ok(0);
    }
    follow_to_the_end(clients, format, job.id).await
}

fn job_spec(args: RunArgs, secrets: HashMap<String, String>) -> pb::JobSpec {
    let resources = (args.cpu.is_some() || args.memory.is_some()).then(|| pb::Resources {
        cpu_millis: args.cpu.unwrap_or(0),
        memory_bytes: args.memory.unwrap_or(0),
    });
    pb::JobSpec {
        command: command_line(&args.command),
        env: args.env.into_iter().collect(),
        // parse_seconds caps the value at i64::MAX.
        timeout_seconds: args.timeout.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        resources,
        max_attempts: args.max_attempts,
        secrets,
    }
}

/// Prints the job's lines until it ends, handling Ctrl-C, then turns its outcome into an exit
/// code.
async fn follow_to_the_end(
    mut clients: Clients,
    format: OutputFormat,
    job_id: String,
) -> Result<u8, CliError> {
    let mut interrupts = interrupts();
    let mut follower = LogFollower::new(clients.clone(), job_id.clone(), 1, true);
    let mut writer = LogWriter::new(format);
    let mut cancel_requested = false;
    loop {
        tokio::select! {
            // Ctrl-C first, so a flood of output cannot delay it.
            biased;
            Some(()) = interrupts.recv() => {
                if cancel_requested {
                    output::notice(&format!(
                        "stopped waiting; job {job_id} may still be stopping (see `hodei jobs get \
                         {job_id}`)"
                    ));
                    return Ok(EXIT_CANCELLED);
                }
                cancel_requested = true;
                output::notice(&format!(
                    "cancelling job {job_id}; press Ctrl-C again to stop waiting"
                ));
                request_cancel(clients.clone(), job_id.clone());
            }
            line = follower.next() => match line? {
                Some(line) => writer.write(&line)?,
                None => break,
            },
        }
    }
    let job = match follower.take_finished_job() {
        Some(job) => job,
        None => clients
            .jobs
            .get_job(pb::GetJobRequest {
                job_id: job_id.clone(),
                view: pb::JobView::Full as i32,
            })
            .await
            .map_err(|status| clients.error(status))?
            .into_inner(),
    };
    if format == OutputFormat::Json {
        output::print_json_line(&JobView::from(&job))?;
    }
    let (code, message) = outcome(&job);
    if let Some(message) = message {
        output::notice(&message);
    }
    Ok(code)
}

/// Exit code for a finished job, and what to tell the user when the code alone does not say it.
fn outcome(job: &pb::Job) -> (u8, Option<String>) {
    let reason = if job.reason.is_empty() {
        String::new()
    } else {
        format!(": {}", job.reason)
    };
    let id = &job.id;
    match (job_state(job.state), job.exit_code) {
        (Some(JobState::Succeeded | JobState::Failed), Some(code)) => match u8::try_from(code) {
            Ok(code) => (code, None),
            Err(_) => (
                EXIT_FAILED,
                Some(format!("job {id} exited with code {code}{reason}")),
            ),
        },
        (Some(JobState::TimedOut), _) => {
            (EXIT_TIMED_OUT, Some(format!("job {id} timed out{reason}")))
        }
        (Some(JobState::Cancelled), _) => (
            EXIT_CANCELLED,
            Some(format!("job {id} was cancelled{reason}")),
        ),
        (Some(JobState::Failed), None) => (EXIT_FAILED, Some(format!("job {id} failed{reason}"))),
        _ => (
            EXIT_FAILED,
            Some(format!(
                "job {id} ended in state {}{reason}",
                job_state_name(job.state)
            )),
        ),
    }
}

/// Ctrl-C presses, as messages. Installing the handler replaces the default "die on SIGINT",
/// which is what lets the first press cancel the job instead of abandoning it. The handler is
/// registered before this returns, not when the task first runs, so that a press right after
/// the first line of output is not lost.
fn interrupts() -> mpsc::UnboundedReceiver<()> {
    let (sender, receiver) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::interrupt()) {
            Ok(mut sigint) => {
                tokio::spawn(async move {
                    while sigint.recv().await.is_some() {
                        if sender.send(()).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(err) => output::notice(&format!("Ctrl-C will not cancel the job: {err}")),
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if sender.send(()).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Sends `CancelJob` in the background so that output keeps flowing while the server answers.
fn request_cancel(mut clients: Clients, job_id: String) {
    tokio::spawn(async move {
        let request = pb::CancelJobRequest {
            job_id: job_id.clone(),
            reason: CANCEL_REASON.to_owned(),
        };
        if let Err(status) = clients.jobs.cancel_job(request).await {
            let error = clients.error(status);
            output::notice(&format!("could not cancel job {job_id}: {error}"));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(state: pb::JobState, exit_code: Option<i32>, reason: &str) -> pb::Job {
        pb::Job {
            id: "j".into(),
            state: state as i32,
            exit_code,
            reason: reason.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_that_exited_gives_its_own_code_silently() {
        assert_eq!(
            outcome(&finished(pb::JobState::Succeeded, Some(0), "")),
            (0, None)
        );
        assert_eq!(
            outcome(&finished(pb::JobState::Failed, Some(3), "exit 3")),
            (3, None)
        );
    }

    #[test]
    fn timeouts_and_cancellations_use_the_conventional_codes_and_say_why() {
        let (code, message) = outcome(&finished(pb::JobState::TimedOut, None, "after 1s"));
        assert_eq!(code, 124);
        assert_eq!(message.as_deref(), Some("job j timed out: after 1s"));
        let (code, _) = outcome(&finished(pb::JobState::Cancelled, Some(143), ""));
        assert_eq!(code, 130);
    }

    #[test]
    fn a_failure_without_exit_code_or_an_odd_code_is_one() {
        let (code, message) = outcome(&finished(pb::JobState::Failed, None, "image pull failed"));
        assert_eq!(code, 1);
        assert_eq!(message.as_deref(), Some("job j failed: image pull failed"));
        assert_eq!(outcome(&finished(pb::JobState::Failed, Some(-1), "")).0, 1);
        assert_eq!(outcome(&finished(pb::JobState::Failed, Some(256), "")).0, 1);
        assert_eq!(outcome(&finished(pb::JobState::Running, None, "")).0, 1);
    }

    #[test]
    fn resources_are_sent_only_when_asked_for() {
        let args = |cpu, memory| RunArgs {
            timeout: Some(5),
            env: vec![("A".into(), "1".into())],
            cpu,
            memory,
            max_attempts: None,
            detach: false,
            secrets: Vec::new(),
            command: vec!["echo".into(), "a b".into()],
        };
        let secrets: HashMap<String, String> = [("PW".to_owned(), "hunter22".to_owned())].into();
        let spec = job_spec(args(None, None), secrets.clone());
        assert_eq!(spec.secrets, secrets);
        assert!(!spec.env.contains_key("PW"));
        assert_eq!(spec.command, "echo 'a b'");
        assert_eq!(spec.timeout_seconds, Some(5));
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.resources, None);
        let spec = job_spec(args(None, Some(1 << 30)), HashMap::new());
        assert_eq!(
            spec.resources,
            Some(pb::Resources {
                cpu_millis: 0,
                memory_bytes: 1 << 30
            })
        );
    }
}

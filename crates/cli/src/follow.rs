//! Following a job's log stream across broken connections.
//!
//! `SubscribeLogs` may end early: the connection drops, the server restarts, a proxy times the
//! stream out. Every line carries its sequence number, so the follower resubscribes from the
//! sequence after the last line it handed out, and skips anything older the server sends again:
//! no line twice, none missing. It gives up after a few consecutive failures without progress.

use std::time::Duration;

use hodei_proto::v1 as pb;
use tonic::{Code, Streaming};

use crate::{connection::Clients, error::CliError, states::job_state};

/// Consecutive failed attempts (no line received in between) before giving up.
const MAX_CONSECUTIVE_FAILURES: u32 = 5;
/// First pause before resubscribing; doubled on each consecutive failure (0.2 s … 3.2 s, about
/// six seconds in all, enough for a server restart).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// A job's log lines in sequence order, resuming after interruptions.
pub struct LogFollower {
    clients: Clients,
    job_id: String,
    follow: bool,
    next_sequence: u64,
    stream: Option<Streaming<pb::LogLine>>,
    failures: u32,
    finished_job: Option<pb::Job>,
    done: bool,
}

impl LogFollower {
    /// Lines from `from_sequence` (0 and 1 both mean the first); with `follow`, until the job
    /// has ended, otherwise until the end of what is stored.
    pub fn new(clients: Clients, job_id: String, from_sequence: u64, follow: bool) -> Self {
        Self {
            clients,
            job_id,
            follow,
            next_sequence: from_sequence.max(1),
            stream: None,
            failures: 0,
            finished_job: None,
            done: false,
        }
    }

    /// The next line, or `None` once there are no more. Cancel-safe: dropping the future (for
    /// Ctrl-C in a `select!`) loses no line, the next call carries on.
    pub async fn next(&mut self) -> Result<Option<pb::LogLine>, CliError> {
        while !self.done {
            let stream = match self.stream.as_mut() {
                Some(stream) => stream,
                None => match self.subscribe().await {
                    Ok(stream) => self.stream.insert(stream),
                    Err(status) => {
                        self.failed(status)?;
                        continue;
                    }
                },
            };
            match stream.message().await {
                Ok(Some(line)) => {
                    if line.sequence < self.next_sequence {
                        continue; // sent again after a resubscription
                    }
                    self.next_sequence = line.sequence + 1;
                    self.failures = 0;
                    return Ok(Some(line));
                }
                Ok(None) => {
                    self.stream = None;
                    self.stream_ended().await?;
                }
                Err(status) => {
                    self.stream = None;
                    self.failed(status)?;
                }
            }
        }
        Ok(None)
    }

    /// The job as it was when its stream ended, if the follower has checked (with `follow`).
    pub fn take_finished_job(&mut self) -> Option<pb::Job> {
        self.finished_job.take()
    }

    async fn subscribe(&mut self) -> Result<Streaming<pb::LogLine>, tonic::Status> {
        if self.failures > 0 {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(self.failures - 1)).await;
        }
        let request = pb::SubscribeLogsRequest {
            job_id: self.job_id.clone(),
            from_sequence: self.next_sequence,
            follow: self.follow,
        };
        Ok(self
            .clients
            .logs
            .subscribe_logs(request)
            .await?
            .into_inner())
    }

    /// A followed stream ends when the job has ended; if it has not, the stream was cut short.
    async fn stream_ended(&mut self) -> Result<(), CliError> {
        if !self.follow {
            self.done = true;
            return Ok(());
        }
        let request = pb::GetJobRequest {
            job_id: self.job_id.clone(),
            // `hodei run` prints this job at the end, whole.
            view: pb::JobView::Full as i32,
        };
        match self.clients.jobs.get_job(request).await {
            Ok(response) => {
                let job = response.into_inner();
                if job_state(job.state).is_some_and(|state| state.is_terminal()) {
                    self.finished_job = Some(job);
                    self.done = true;
                    Ok(())
                } else {
                    self.failed(tonic::Status::unavailable(
                        "the server ended the log stream before the job finished",
                    ))
                }
            }
            Err(status) => self.failed(status),
        }
    }

    /// Counts a failure that may be retried, or turns it into the error to report.
    fn failed(&mut self, status: tonic::Status) -> Result<(), CliError> {
        if !is_retryable(status.code()) {
            return Err(self.clients.error(status));
        }
        self.failures += 1;
        if self.failures <= MAX_CONSECUTIVE_FAILURES {
            return Ok(());
        }
        let cause = match self.clients.error(status) {
            CliError::Unreachable { cause, .. } => format!("the server is unreachable: {cause}"),
            other => other.to_string(),
        };
        Err(CliError::StreamLost {
            job_id: self.job_id.clone(),
            next_sequence: self.next_sequence,
            cause,
        })
    }
}

/// Codes a broken connection or a restarting server produce, as opposed to answers about the
/// request itself (unknown job, bad argument, permission).
fn is_retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

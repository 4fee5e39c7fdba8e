//! The worker's session with the server: one loop that reacts to the server's messages, the end
//! of the running job, the heartbeat and the worker's own termination signal.
//!
//! The session owns the queue of messages to the server. It ends in one of three ways:
//! - the server says `Shutdown` (or the worker gets SIGTERM/SIGINT): the running job is
//!   finished or stopped, reported, the stream is closed, and the worker exits 0. A signal comes
//!   from the worker's platform (Pod deleted or evicted, `docker stop`), not from the job's
//!   owner: the job is reported `INTERRUPTED`, never `CANCELLED`, so the server runs it again;
//! - the stream ends or fails: the running job is killed and the worker exits 1; there is no
//!   reconnection, because the server treats a dropped stream as a lost worker.

use std::{future::Future, pin::Pin, time::Duration};

use hodei_contract::Assignment;
use hodei_proto::v1::{
    AssignJob, JobFinished, JobOutcome, ServerMessage, WorkerMessage, server_message,
    worker_message::Msg,
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::{Status, Streaming};

use crate::{
    connection::SessionStreams,
    error::WorkerError,
    heartbeat,
    job::{RunningJob, Stop},
    process,
};

/// How long the worker waits, after closing its side of the stream, for the server to close its
/// side; the last messages are only known to be delivered once it has.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a killed job may take to be reaped when the connection is lost.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the worker is leaving, once it has decided to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leaving {
    /// The server's `Shutdown`.
    Shutdown(String),
    /// SIGTERM or SIGINT (its name).
    Terminated(&'static str),
}

/// What the session does after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Close the stream and exit cleanly.
    Close,
    /// The connection is gone, for this reason.
    Lost(String),
}

const STREAM_CLOSED: &str = "the stream to the server closed";

enum Event {
    Server(Result<Option<ServerMessage>, Status>),
    JobFinished(JobFinished),
    Heartbeat,
    Terminate(&'static str),
}

pub struct Session {
    out: mpsc::Sender<WorkerMessage>,
    inbound: Streaming<ServerMessage>,
    heartbeat_interval: Duration,
    job: Option<RunningJob>,
    leaving: Option<Leaving>,
}

impl Session {
    pub fn new(streams: SessionStreams, heartbeat_interval: Duration) -> Self {
        Self {
            out: streams.outbound,
            inbound: streams.inbound,
            heartbeat_interval,
            job: None,
            leaving: None,
        }
    }

    /// Serves the server until it lets the worker go (`Ok`) or the connection is lost.
    /// `terminate` resolves when the worker is asked to stop by a signal.
    pub async fn run(
        mut self,
        mut terminate: Pin<&mut impl Future<Output = &'static str>>,
    ) -> Result<(), WorkerError> {
        let mut heartbeat = heartbeat::ticker(self.heartbeat_interval);
        let mut terminate_pending = true;
        loop {
            let event = tokio::select! {
                message = self.inbound.message() => Event::Server(message),
                finished = finished(&mut self.job) => Event::JobFinished(finished),
                _ = heartbeat.tick() => Event::Heartbeat,
                signal = &mut terminate, if terminate_pending => {
                    terminate_pending = false;
                    Event::Terminate(signal)
                }
            };
            let flow = match event {
                Event::Server(Ok(Some(message))) => self.on_message(message).await,
                Event::Server(Ok(None)) => Flow::Lost("the server ended the session".into()),
                Event::Server(Err(status)) => Flow::Lost(describe(&status)),
                Event::JobFinished(report) => {
                    self.job = None;
                    process::reap_orphans();
                    match self.send(Msg::JobFinished(report)).await {
                        Flow::Continue if self.leaving.is_some() => Flow::Close,
                        flow => flow,
                    }
                }
                Event::Heartbeat => {
                    if self.job.is_none() {
                        process::reap_orphans();
                    }
                    self.beat()
                }
                Event::Terminate(signal) => {
                    self.leaving = Some(Leaving::Terminated(signal));
                    match &self.job {
                        Some(job) => {
                            // Not a cancel: nobody who owns the job asked for it to end.
                            job.stop(Stop::Interrupt(platform_stop(signal)));
                            Flow::Continue
                        }
                        None => Flow::Close,
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => return self.close().await,
                Flow::Lost(cause) => return self.lost(cause).await,
            }
        }
    }

    async fn on_message(&mut self, message: ServerMessage) -> Flow {
        let Some(message) = message.msg else {
            tracing::debug!("empty message from the server ignored");
            return Flow::Continue;
        };
        match message {
            server_message::Msg::Assign(assign) => return self.on_assign(assign).await,
            server_message::Msg::Cancel(cancel) => match &self.job {
                Some(job) if job.job_id().to_string() == cancel.job_id => {
                    job.stop(Stop::Cancel(cancel.reason));
                }
                _ => tracing::warn!(
                    job = cancel.job_id,
                    "cancel for a job this worker is not running; ignored"
                ),
            },
            server_message::Msg::Shutdown(shutdown) => {
                tracing::info!(
                    reason = shutdown.reason,
                    now = shutdown.now,
                    "shutdown requested"
                );
                self.leaving
                    .get_or_insert_with(|| Leaving::Shutdown(shutdown.reason.clone()));
                match &self.job {
                    None => return Flow::Close,
                    Some(job) if shutdown.now => job.stop(Stop::Cancel(shutdown.reason)),
                    Some(job) => tracing::info!(
                        job = %job.job_id(),
                        "finishing the running job before exiting"
                    ),
                }
            }
        }
        Flow::Continue
    }

    /// Starts the assigned job, or answers `SPAWN_FAILED` saying why not: the worker is busy or
    /// leaving, or the assignment breaks the contract (no valid job id, no timeout).
    async fn on_assign(&mut self, assign: AssignJob) -> Flow {
        let job_id = assign.job_id.clone();
        let refusal = match (&self.job, &self.leaving) {
            (Some(running), _) => Err(format!(
                "worker is already running job {}",
                running.job_id()
            )),
            // The job did not fail: it met a worker on its way out, and must run elsewhere.
            (None, Some(Leaving::Terminated(signal))) => {
                return self
                    .send(Msg::JobFinished(JobFinished {
                        job_id,
                        outcome: JobOutcome::Interrupted as i32,
                        exit_code: None,
                        signal: None,
                        message: platform_stop(signal),
                    }))
                    .await;
            }
            (None, Some(Leaving::Shutdown(_))) => Err("worker is shutting down".to_string()),
            (None, None) => Assignment::from_wire(assign).map_err(|err| err.to_string()),
        };
        match refusal {
            Ok(assignment) => {
                tracing::info!(
                    job = %assignment.job_id,
                    attempt = assignment.attempt,
                    "job assigned"
                );
                self.job = Some(RunningJob::start(assignment, self.out.clone()));
                Flow::Continue
            }
            Err(message) => {
                tracing::warn!(job = job_id, message, "assignment refused");
                self.send(Msg::JobFinished(JobFinished {
                    job_id,
                    outcome: JobOutcome::SpawnFailed as i32,
                    exit_code: None,
                    signal: None,
                    message,
                }))
                .await
            }
        }
    }

    /// Queues a message for the server; failing means the stream is gone.
    async fn send(&self, message: Msg) -> Flow {
        match self.out.send(WorkerMessage { msg: Some(message) }).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Lost(STREAM_CLOSED.into()),
        }
    }

    /// A heartbeat is skipped when the queue is full: the queued output shows the server that
    /// the worker is alive just as well.
    fn beat(&self) -> Flow {
        let running = self.job.as_ref().map(RunningJob::job_id);
        match self.out.try_send(heartbeat::beat(running)) {
            Ok(()) | Err(TrySendError::Full(_)) => Flow::Continue,
            Err(TrySendError::Closed(_)) => Flow::Lost(STREAM_CLOSED.into()),
        }
    }

    /// Closes the worker's side of the stream and waits (briefly) for the server to close its
    /// side, which tells that everything sent has been received.
    async fn close(self) -> Result<(), WorkerError> {
        let Session {
            out,
            mut inbound,
            leaving,
            ..
        } = self;
        drop(out);
        let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Ok(Some(message)) = inbound.message().await {
                tracing::debug!(?message, "message from the server after closing; ignored");
            }
        })
        .await;
        if closed.is_err() {
            tracing::warn!("the server did not close the session in time; exiting anyway");
        }
        tracing::info!(?leaving, "session closed; exiting");
        Ok(())
    }

    /// The stream ended or failed: kill the job and give up, unless the worker was leaving
    /// because of a signal anyway.
    async fn lost(mut self, cause: String) -> Result<(), WorkerError> {
        if let Some(mut job) = self.job.take() {
            tracing::warn!(
                job = %job.job_id(),
                "connection lost; killing the running job"
            );
            job.stop(Stop::Kill);
            if tokio::time::timeout(KILL_TIMEOUT, job.finished())
                .await
                .is_err()
            {
                tracing::error!(job = %job.job_id(), "the killed job did not end in time");
            }
        }
        if matches!(self.leaving, Some(Leaving::Terminated(_))) {
            tracing::info!(cause, "connection lost while terminating");
            return Ok(());
        }
        Err(WorkerError::LostConnection(cause))
    }
}

/// What the worker says of a job its platform's signal stopped.
fn platform_stop(signal: &str) -> String {
    format!("worker terminated by its platform ({signal})")
}

/// The running job's report, or never when no job runs.
async fn finished(job: &mut Option<RunningJob>) -> JobFinished {
    match job {
        Some(job) => job.finished().await,
        None => std::future::pending().await,
    }
}

fn describe(status: &Status) -> String {
    let message = match std::error::Error::source(status) {
        Some(source) => crate::error::root_cause(source),
        None => status.message().to_string(),
    };
    if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{message} ({:?})", status.code())
    }
}

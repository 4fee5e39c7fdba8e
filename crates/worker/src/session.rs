//! The worker's session with the server: one loop that reacts to the server's messages, the end
//! of the running job, the heartbeat, the worker's own termination signal, and the job's
//! journal of output still to send.
//!
//! The session ends in one of these ways:
//! - the server says `Shutdown` (or the worker gets SIGTERM/SIGINT): the running job is
//!   finished or stopped, reported, the stream is closed, and the worker exits 0. A signal comes
//!   from the worker's platform (Pod deleted or evicted, `docker stop`), not from the job's
//!   owner: the job is reported `INTERRUPTED`, never `CANCELLED`, so the server runs it again;
//! - the stream ends or fails (the server died, restarted, or told the worker to `Move`): the
//!   job keeps running and the worker re-connects with `Resume`, re-sending the output the
//!   server has not stored and the job's end until the server confirms it (`JobRecorded`). If
//!   no server can be reached for the reconnect grace, the job's process group is stopped
//!   (SIGTERM, SIGKILL after the job's kill grace) and the worker exits 1;
//! - the server refuses the worker's credential on a reconnect (it declared the worker lost or
//!   retired it meanwhile): the job is killed at once and the worker exits 1.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use hodei_contract::Assignment;
use hodei_domain::SessionCredential;
use hodei_proto::v1::{
    AssignJob, JobFinished, JobOutcome, JobStarted, LogBatch, Resume, ServerMessage, WorkerMessage,
    server_message, worker_message::Msg,
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tonic::{Status, Streaming};

use crate::{
    connection::{self, SessionStreams},
    error::WorkerError,
    heartbeat,
    job::{RunningJob, Stop},
    journal::{Journal, Unsent},
    process,
    servers::Servers,
};

/// How long the worker waits, after closing its side of the stream, for the server to close its
/// side; the last messages are only known to be delivered once it has.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a killed job may take to be reaped.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Beyond the job's kill grace, how long a job stopped for lack of a server may take to end.
const STOP_SLACK: Duration = Duration::from_secs(5);

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
    /// The stream is gone, for this reason: re-connect.
    Disconnected(String),
}

const STREAM_CLOSED: &str = "the stream to the server closed";

enum Event {
    Server(Result<Option<ServerMessage>, Status>),
    Reconnected(Result<(SessionStreams, String), WorkerError>),
    JobFinished(JobFinished),
    Unsent(Option<Unsent>),
    Heartbeat,
    Terminate(&'static str),
}

/// How to reach the server again.
pub struct Link {
    /// The servers it may re-connect to.
    pub servers: Servers,
    pub credential: SessionCredential,
    /// How long the worker keeps its job while no server can be reached.
    pub reconnect_grace: Duration,
    /// Bound of the output kept until the server acknowledges it.
    pub journal_capacity: usize,
}

/// The re-opened streams and the address of the server that answered.
type Reconnecting =
    Pin<Box<dyn Future<Output = Result<(SessionStreams, String), WorkerError>> + Send>>;

pub struct Session {
    link: Link,
    /// The current stream's queue towards the server; `None` while disconnected.
    out: Option<mpsc::Sender<WorkerMessage>>,
    inbound: Option<Streaming<ServerMessage>>,
    reconnecting: Option<Reconnecting>,
    /// The server that told the worker to move: tried last when re-connecting.
    moved_from: Option<String>,
    /// When the stream was lost (the grace counts from here).
    disconnected_at: Option<Instant>,
    /// The current server stores output idempotently and acknowledges it (`SessionInfo`).
    acknowledged: bool,
    /// A re-opened stream whose `SessionInfo` has not arrived: nothing is sent until it says
    /// where the stored output ends, or lines would arrive out of order.
    awaiting_info: bool,
    heartbeat_interval: Duration,
    job: Option<RunningJob>,
    /// The journal of the job held: running, or ended without its end recorded.
    journal: Option<Arc<Journal>>,
    /// The held job's end, until the server confirms it is stored.
    report: Option<JobFinished>,
    /// `report` was sent on the current stream.
    report_sent: bool,
    jobs_run: u32,
    leaving: Option<Leaving>,
}

impl Session {
    pub fn new(streams: SessionStreams, heartbeat_interval: Duration, link: Link) -> Self {
        Self {
            link,
            out: Some(streams.outbound),
            inbound: Some(streams.inbound),
            reconnecting: None,
            moved_from: None,
            disconnected_at: None,
            acknowledged: false,
            awaiting_info: false,
            heartbeat_interval,
            job: None,
            journal: None,
            report: None,
            report_sent: false,
            jobs_run: 0,
            leaving: None,
        }
    }

    /// Serves the server until it lets the worker go (`Ok`), or no server can be reached for
    /// the grace, or the server refuses the worker. `terminate` resolves when the worker is
    /// asked to stop by a signal.
    pub async fn run(
        mut self,
        mut terminate: Pin<&mut impl Future<Output = &'static str>>,
    ) -> Result<(), WorkerError> {
        let mut heartbeat = heartbeat::ticker(self.heartbeat_interval);
        let mut terminate_pending = true;
        loop {
            // The journal is pumped while connected and until everything in it went out.
            let pump = self.out.is_some()
                && !self.awaiting_info
                && self.journal.as_ref().is_some_and(|j| !j.all_sent());
            let event = tokio::select! {
                message = receive(&mut self.inbound) => Event::Server(message),
                reconnected = reconnected(&mut self.reconnecting) => Event::Reconnected(reconnected),
                finished = finished(&mut self.job) => Event::JobFinished(finished),
                unsent = next_unsent(&self.journal), if pump => Event::Unsent(unsent),
                _ = heartbeat.tick() => Event::Heartbeat,
                signal = &mut terminate, if terminate_pending => {
                    terminate_pending = false;
                    Event::Terminate(signal)
                }
            };
            let flow = match event {
                Event::Server(Ok(Some(message))) => self.on_message(message).await,
                Event::Server(Ok(None)) => {
                    Flow::Disconnected("the server ended the session".into())
                }
                Event::Server(Err(status)) => Flow::Disconnected(describe(&status)),
                Event::Reconnected(Ok((streams, address))) => {
                    self.link.servers.connected_to(address);
                    tracing::info!(
                        after_ms = self
                            .disconnected_at
                            .map_or(0, |at| at.elapsed().as_millis() as u64),
                        "reconnected; resuming"
                    );
                    self.reconnecting = None;
                    self.disconnected_at = None;
                    self.out = Some(streams.outbound);
                    self.inbound = Some(streams.inbound);
                    self.acknowledged = false;
                    self.report_sent = false;
                    // Until the new server says what it stored, nothing is re-sent; a server
                    // that never says so (it predates resuming) refused the `resume` anyway.
                    self.awaiting_info = true;
                    Flow::Continue
                }
                Event::Reconnected(Err(err)) => return self.give_up(err).await,
                Event::JobFinished(report) => {
                    self.job = None;
                    self.jobs_run += 1;
                    process::reap_orphans();
                    if matches!(self.leaving, Some(Leaving::Terminated(_))) && self.out.is_none() {
                        // Stopped by its platform while no server was reachable: nobody to
                        // report to, and the platform wants it gone.
                        tracing::info!("job stopped while disconnected; exiting");
                        return Ok(());
                    }
                    self.report = Some(report);
                    self.report_sent = false;
                    self.flush_end().await
                }
                Event::Unsent(Some(unsent)) => match self.send_unsent(unsent).await {
                    Flow::Continue => self.flush_end().await,
                    other => other,
                },
                Event::Unsent(None) => self.flush_end().await,
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
                        None if self.report.is_some() && self.out.is_some() => Flow::Continue,
                        None => Flow::Close,
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => return self.close().await,
                Flow::Disconnected(cause) => {
                    if let Some(done) = self.disconnected(cause).await {
                        return done;
                    }
                }
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
            server_message::Msg::Info(info) => {
                tracing::info!(
                    server = info.server_id,
                    persisted = info.persisted_sequence,
                    "session info"
                );
                self.acknowledged = true;
                self.link.servers.learn(&info.worker_addresses);
                if let Some(journal) = &self.journal
                    && self.awaiting_info
                {
                    journal.set_acknowledged(true);
                    journal.rewind(info.persisted_sequence);
                }
                self.awaiting_info = false;
                return self.flush_end().await;
            }
            server_message::Msg::LogAck(ack) => match &self.journal {
                Some(journal) if journal.job_id() == ack.job_id => {
                    journal.ack(ack.persisted_sequence);
                }
                _ => tracing::debug!(job = ack.job_id, "acknowledgement for another job"),
            },
            server_message::Msg::JobRecorded(recorded) => {
                let held = self.journal.as_ref().map(|j| j.job_id().to_string());
                if held.as_deref() == Some(recorded.job_id.as_str()) && self.job.is_none() {
                    return self.forget_job();
                }
                tracing::debug!(job = recorded.job_id, "recorded end of a job not held");
            }
            server_message::Msg::Move(moved) => {
                self.link.servers.learn(&moved.worker_addresses);
                if !moved.exclude.is_empty() {
                    self.moved_from = Some(moved.exclude);
                }
                return Flow::Disconnected(format!("the server moved us: {}", moved.reason));
            }
        }
        Flow::Continue
    }

    /// Starts the assigned job, or answers `SPAWN_FAILED` saying why not: the worker is busy or
    /// leaving, or the assignment breaks the contract (no valid job id, no timeout).
    async fn on_assign(&mut self, assign: AssignJob) -> Flow {
        let job_id = assign.job_id.clone();
        let held = self.journal.as_ref().map(|j| j.job_id().to_string());
        let refusal = match (&held, &self.leaving) {
            // The same attempt again (its first AssignJob may have been lost): ignored.
            (Some(held), _) if *held == job_id && self.job.is_some() => return Flow::Continue,
            (Some(held), _) => Err(format!("worker is already running job {held}")),
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
                    first_sequence = assignment.first_sequence,
                    "job assigned"
                );
                let journal = Journal::new(
                    assignment.job_id.to_string(),
                    assignment.attempt,
                    assignment.first_sequence,
                    self.link.journal_capacity,
                );
                journal.set_acknowledged(self.acknowledged);
                self.journal = Some(journal.clone());
                self.report = None;
                self.report_sent = false;
                self.job = Some(RunningJob::start(assignment, journal));
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

    /// Sends what the journal had not sent on this stream.
    async fn send_unsent(&mut self, unsent: Unsent) -> Flow {
        let Some(journal) = &self.journal else {
            return Flow::Continue;
        };
        let message = match unsent {
            Unsent::Started(pid) => Msg::JobStarted(JobStarted {
                job_id: journal.job_id().to_string(),
                attempt: journal.attempt(),
                pid,
            }),
            Unsent::Lines { first, chunks } => Msg::Logs(LogBatch {
                job_id: journal.job_id().to_string(),
                lines: chunks,
                first_sequence: first,
            }),
        };
        self.send(message).await
    }

    /// Sends the held job's end once everything before it went out on this stream. A server
    /// that does not confirm ends (it predates resuming) is trusted at once, as before.
    async fn flush_end(&mut self) -> Flow {
        let ready = self.out.is_some()
            && !self.awaiting_info
            && !self.report_sent
            && self.job.is_none()
            && self.journal.as_ref().is_none_or(|j| j.all_sent());
        let Some(report) = self.report.clone().filter(|_| ready) else {
            return Flow::Continue;
        };
        match self.send(Msg::JobFinished(report)).await {
            Flow::Continue => {}
            other => return other,
        }
        self.report_sent = true;
        // A server that confirms ends is waited for, unless the worker is leaving anyway: the
        // end travels ahead of the close on the same stream, as it always did.
        if self.acknowledged && self.leaving.is_none() {
            Flow::Continue
        } else {
            self.forget_job()
        }
    }

    /// The held job's end is stored: the worker is idle (or leaves, if it was leaving).
    fn forget_job(&mut self) -> Flow {
        self.journal = None;
        self.report = None;
        self.report_sent = false;
        if self.leaving.is_some() {
            Flow::Close
        } else {
            Flow::Continue
        }
    }

    /// Queues a message for the server; failing means the stream is gone.
    async fn send(&mut self, message: Msg) -> Flow {
        let Some(out) = &self.out else {
            return Flow::Continue;
        };
        match out.send(WorkerMessage { msg: Some(message) }).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Disconnected(STREAM_CLOSED.into()),
        }
    }

    /// A heartbeat is skipped when the queue is full: the queued output shows the server that
    /// the worker is alive just as well.
    fn beat(&self) -> Flow {
        let Some(out) = &self.out else {
            return Flow::Continue;
        };
        let running = self.job.as_ref().map(RunningJob::job_id);
        match out.try_send(heartbeat::beat(running)) {
            Ok(()) | Err(TrySendError::Full(_)) => Flow::Continue,
            Err(TrySendError::Closed(_)) => Flow::Disconnected(STREAM_CLOSED.into()),
        }
    }

    /// The stream broke: keep the job, and re-connect until the grace runs out. `Some` ends the
    /// session (a worker terminated by its platform does not wait for a server).
    async fn disconnected(&mut self, cause: String) -> Option<Result<(), WorkerError>> {
        self.out = None;
        self.inbound = None;
        if matches!(self.leaving, Some(Leaving::Terminated(_))) {
            tracing::info!(cause, "connection lost while terminating");
            if let Some(mut job) = self.job.take() {
                job.stop(Stop::Kill);
                let _ = tokio::time::timeout(KILL_TIMEOUT, job.finished()).await;
            }
            return Some(Ok(()));
        }
        let since = *self.disconnected_at.get_or_insert_with(Instant::now);
        let deadline = since + self.link.reconnect_grace;
        tracing::warn!(
            cause,
            job = ?self.journal.as_ref().map(|j| j.job_id().to_string()),
            grace_s = self.link.reconnect_grace.as_secs_f64(),
            "connection to the server lost; the job keeps running while the worker re-connects"
        );
        let first = WorkerMessage {
            msg: Some(Msg::Resume(self.resume(cause))),
        };
        let lost = self
            .moved_from
            .take()
            .unwrap_or_else(|| self.link.servers.connected().to_string());
        let targets = self.link.servers.reconnect_targets(&lost);
        let credential = self.link.credential.clone();
        self.reconnecting = Some(Box::pin(async move {
            let (streams, index) =
                connection::reopen_session(&targets, &credential, first, deadline).await?;
            let address = targets
                .get(index)
                .map(|t| t.address.clone())
                .unwrap_or_default();
            Ok((streams, address))
        }));
        None
    }

    /// What the worker holds, for the server that takes it over.
    fn resume(&self, previous_end: String) -> Resume {
        let journal = self.journal.as_ref();
        Resume {
            job_id: journal.map(|j| j.job_id().to_string()).unwrap_or_default(),
            attempt: journal.map_or(0, |j| j.attempt()),
            pid: journal.and_then(|j| j.pid()).unwrap_or(0),
            next_sequence: journal.map_or(0, |j| j.next_sequence()),
            finished: self.report.clone(),
            jobs_run: self.jobs_run,
            previous_end,
        }
    }

    /// No server could be reached for the grace (the job is stopped, as if cancelled), or the
    /// server refused the worker (the job is killed at once). Either way the worker exits 1.
    async fn give_up(mut self, err: WorkerError) -> Result<(), WorkerError> {
        let refused = matches!(err, WorkerError::Refused { .. });
        if let Some(mut job) = self.job.take() {
            if refused {
                tracing::warn!(job = %job.job_id(), error = %err, "the server refused this worker; killing the job");
                job.stop(Stop::Kill);
                let _ = tokio::time::timeout(KILL_TIMEOUT, job.finished()).await;
            } else {
                tracing::error!(
                    job = %job.job_id(),
                    grace_s = self.link.reconnect_grace.as_secs_f64(),
                    "no server reachable within the reconnect grace; stopping the job"
                );
                job.stop(Stop::Cancel(format!(
                    "no server reachable for {}s",
                    self.link.reconnect_grace.as_secs()
                )));
                let bound = job.kill_grace() + STOP_SLACK;
                if tokio::time::timeout(bound, job.finished()).await.is_err() {
                    tracing::error!(job = %job.job_id(), "the stopped job did not end in time; killing it");
                    job.stop(Stop::Kill);
                    let _ = tokio::time::timeout(KILL_TIMEOUT, job.finished()).await;
                }
            }
        }
        Err(match err {
            WorkerError::Refused { message, .. } => {
                WorkerError::LostConnection(format!("the server refused the session: {message}"))
            }
            other => other,
        })
    }

    /// Closes the worker's side of the stream and waits (briefly) for the server to close its
    /// side, which tells that everything sent has been received.
    async fn close(self) -> Result<(), WorkerError> {
        let Session {
            out,
            inbound,
            leaving,
            ..
        } = self;
        drop(out);
        if let Some(mut inbound) = inbound {
            let closed = tokio::time::timeout(CLOSE_TIMEOUT, async {
                while let Ok(Some(message)) = inbound.message().await {
                    tracing::debug!(?message, "message from the server after closing; ignored");
                }
            })
            .await;
            if closed.is_err() {
                tracing::warn!("the server did not close the session in time; exiting anyway");
            }
        }
        tracing::info!(?leaving, "session closed; exiting");
        Ok(())
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

/// The server's next message, or never while disconnected.
async fn receive(
    inbound: &mut Option<Streaming<ServerMessage>>,
) -> Result<Option<ServerMessage>, Status> {
    match inbound {
        Some(inbound) => inbound.message().await,
        None => std::future::pending().await,
    }
}

/// The re-opened session, or never while connected.
async fn reconnected(
    reconnecting: &mut Option<Reconnecting>,
) -> Result<(SessionStreams, String), WorkerError> {
    match reconnecting {
        Some(reconnecting) => reconnecting.await,
        None => std::future::pending().await,
    }
}

/// The journal's next unsent item (`None`: everything went out), or never without a journal.
async fn next_unsent(journal: &Option<Arc<Journal>>) -> Option<Unsent> {
    match journal {
        Some(journal) => journal.next_unsent().await,
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

//! One task per connected worker: the only code that talks to that worker's stream.
//!
//! It owns the worker's current job (sequence numbering of its output, cancel and timeout
//! back-stops) and reacts to three sources: messages from the worker, commands from the rest
//! of the server (assign, cancel, retire), and its own timers (heartbeat, idle, back-stops).
//! When it ends, the worker is either retired (it was told to go) or lost, and a held job is
//! re-queued.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use futures::FutureExt;
use hodei_domain::{Job, JobId, JobState, LogLine, WorkerId, WorkerState};
use hodei_proto::v1::{self as pb, server_message, worker_message};
use hodei_store::NewLogLine;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use hodei_contract::{
    Assignment,
    convert::{datetime, outcome_from_proto, stream_from_proto},
};

use crate::core::Core;

/// What the rest of the server asks of a session.
#[derive(Debug)]
pub enum SessionCommand {
    Assign(Box<Job>),
    Cancel {
        job: JobId,
        reason: String,
    },
    /// Ask the worker to exit; with `now`, its running job is killed.
    Retire {
        reason: String,
        now: bool,
    },
}

pub type Outbound = mpsc::Sender<Result<pb::ServerMessage, Status>>;

/// Grace on top of the job's own timeout and kill grace before the server stops trusting the
/// worker to end the job itself.
const BACKSTOP_SLACK: Duration = Duration::from_secs(10);
/// How long a send to the worker may block before the worker is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Most lines one `LogBatch` may carry. The agent sends at most 1000; a message packed with
/// tiny lines is refused before it costs a huge insert and a huge fan-out.
pub const MAX_LINES_PER_BATCH: usize = 10_000;
/// Output stored by one INSERT at most: batches the worker has already sent are merged up to
/// these, so inserts grow when the database is the bottleneck and stay small when it is not.
const COALESCE_LINES: usize = 5_000;
const COALESCE_BYTES: usize = 1 << 20;

struct CurrentJob {
    job: Job,
    next_sequence: u64,
    cancel_reason: Option<String>,
    /// When the server gives up waiting for the worker to report.
    backstop: Option<Instant>,
}

pub struct Session {
    core: Arc<Core>,
    worker: WorkerId,
    out: Outbound,
    current: Option<CurrentJob>,
    jobs_run: u32,
    retiring: Option<(String, Instant)>,
    idle_since: Option<Instant>,
    last_seen: Instant,
    last_heartbeat_write: Instant,
    /// A message read while merging output batches, handled next.
    read_ahead: Option<Result<Option<pb::WorkerMessage>, Status>>,
}

enum End {
    Retired(String),
    Lost(String),
    /// The server is being killed: leave everything as it is.
    Killed,
}

/// A batch over [`MAX_LINES_PER_BATCH`] is a protocol violation.
fn check_batch(batch: &pb::LogBatch) -> Result<(), End> {
    if batch.lines.len() > MAX_LINES_PER_BATCH {
        return Err(End::Lost(format!(
            "protocol violation: a batch of {} lines (at most {MAX_LINES_PER_BATCH})",
            batch.lines.len()
        )));
    }
    Ok(())
}

impl Session {
    pub fn new(core: Arc<Core>, worker: WorkerId, out: Outbound) -> Self {
        let now = Instant::now();
        Self {
            core,
            worker,
            out,
            current: None,
            jobs_run: 0,
            retiring: None,
            idle_since: Some(now),
            last_seen: now,
            last_heartbeat_write: now,
            read_ahead: None,
        }
    }

    /// Runs the session to its end. `bound_job` is the job the worker was provisioned for.
    pub async fn run(
        mut self,
        mut inbound: Streaming<pb::WorkerMessage>,
        mut commands: mpsc::UnboundedReceiver<SessionCommand>,
        bound_job: Option<JobId>,
    ) {
        let end = match self.expect_ready(&mut inbound).await {
            Err(end) => {
                if let (Some(job), End::Lost(reason)) = (bound_job, &end) {
                    let reason = format!("worker lost: {reason}");
                    self.core.requeue_or_fail(job, self.worker, &reason).await;
                }
                end
            }
            Ok(()) => {
                let assigned = match bound_job {
                    Some(job) => self.assign_bound(job).await,
                    None => {
                        self.core.wake_dispatcher();
                        Ok(())
                    }
                };
                match assigned {
                    Ok(()) => self.event_loop(&mut inbound, &mut commands).await,
                    Err(end) => end,
                }
            }
        };
        self.finish(end, commands).await;
    }

    async fn expect_ready(
        &mut self,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        let first = tokio::time::timeout(self.core.settings.heartbeat_timeout, inbound.message());
        match first.await {
            Ok(Ok(Some(pb::WorkerMessage {
                msg: Some(worker_message::Msg::Ready(_)),
            }))) => Ok(()),
            Ok(Ok(Some(_))) => {
                let _ = self
                    .out
                    .send(Err(Status::invalid_argument(
                        "the first message on a worker session must be `ready`",
                    )))
                    .await;
                Err(End::Lost(
                    "protocol violation: first message was not `ready`".into(),
                ))
            }
            Ok(Ok(None)) => Err(End::Lost("stream closed before `ready`".into())),
            Ok(Err(status)) => Err(End::Lost(format!("stream error before `ready`: {status}"))),
            Err(_) => Err(End::Lost("no `ready` message in time".into())),
        }
    }

    async fn event_loop(
        &mut self,
        inbound: &mut Streaming<pb::WorkerMessage>,
        commands: &mut mpsc::UnboundedReceiver<SessionCommand>,
    ) -> End {
        let kill = self.core.kill.clone();
        loop {
            if let Some(message) = self.read_ahead.take() {
                if let Err(end) = self.on_inbound(message, inbound).await {
                    return end;
                }
                continue;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = kill.cancelled() => return End::Killed,
                message = inbound.message() => {
                    if let Err(end) = self.on_inbound(message, inbound).await {
                        return end;
                    }
                }
                Some(command) = commands.recv() => {
                    let handled = self.on_command(command).await;
                    self.excuse_stall();
                    if let Err(end) = handled {
                        return end;
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let Err(end) = self.on_timer().await {
                        return end;
                    }
                }
            }
        }
    }

    /// One message from the worker's stream, or its end.
    async fn on_inbound(
        &mut self,
        message: Result<Option<pb::WorkerMessage>, Status>,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        match message {
            Ok(Some(message)) => {
                self.last_seen = Instant::now();
                let handled = self.on_message(message, inbound).await;
                self.excuse_stall();
                handled
            }
            Ok(None) => Err(self.stream_ended("worker closed its stream")),
            Err(status) => Err(self.stream_ended(&format!("stream error: {}", status.message()))),
        }
    }

    /// The worker cannot be blamed for silence while the session was not listening: after a
    /// handler that took longer than a heartbeat interval (a database outage waited out), the
    /// silence is counted from now, so the messages queued meanwhile are read before the
    /// heartbeat deadline can strike.
    fn excuse_stall(&mut self) {
        if self.last_seen.elapsed() > self.core.settings.heartbeat_interval {
            self.last_seen = self.last_seen.max(Instant::now());
        }
    }

    fn stream_ended(&self, what: &str) -> End {
        match &self.retiring {
            Some((reason, _)) => End::Retired(reason.clone()),
            None => End::Lost(what.to_string()),
        }
    }

    fn next_deadline(&self) -> Instant {
        let settings = &self.core.settings;
        let mut deadline = self.last_seen + settings.heartbeat_timeout;
        if let Some(idle) = self.idle_since
            && self.retiring.is_none()
        {
            deadline = deadline.min(idle + settings.idle_timeout);
        }
        if let Some(backstop) = self.current.as_ref().and_then(|c| c.backstop) {
            deadline = deadline.min(backstop);
        }
        if let Some((_, until)) = &self.retiring {
            deadline = deadline.min(*until);
        }
        deadline
    }

    async fn on_timer(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let settings = &self.core.settings;
        if now >= self.last_seen + settings.heartbeat_timeout {
            return Err(End::Lost(format!(
                "no heartbeat for {}s",
                settings.heartbeat_timeout.as_secs()
            )));
        }
        if let Some((reason, until)) = &self.retiring
            && now >= *until
        {
            return Err(End::Retired(format!(
                "{reason} (worker did not exit in time)"
            )));
        }
        if let Some(current) = &self.current
            && current.backstop.is_some_and(|b| now >= b)
        {
            let (state, reason) = match &current.cancel_reason {
                Some(reason) => (
                    JobState::Cancelled,
                    format!("cancelled: {reason} (the worker did not confirm; worker destroyed)"),
                ),
                None => (
                    JobState::TimedOut,
                    format!(
                        "timed out after {}s (the worker did not stop the job; worker destroyed)",
                        current.job.spec.timeout.as_secs()
                    ),
                ),
            };
            let job = current.job.id;
            self.finish_current(state, None, &reason).await;
            return Err(End::Retired(format!("job {job} not ended by the worker")));
        }
        if self.retiring.is_none()
            && self
                .idle_since
                .is_some_and(|idle| now >= idle + settings.idle_timeout)
        {
            self.retire("idle timeout", false).await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, command: SessionCommand) -> Result<(), End> {
        match command {
            // The dispatcher's claim already recorded the worker as busy.
            SessionCommand::Assign(job) => self.assign(*job, true).await,
            SessionCommand::Cancel { job, reason } => {
                let Some(current) = self.current.as_mut().filter(|c| c.job.id == job) else {
                    return Ok(());
                };
                if current.cancel_reason.is_some() {
                    return Ok(());
                }
                current.cancel_reason = Some(reason.clone());
                current.backstop =
                    Some(Instant::now() + self.core.settings.kill_grace + BACKSTOP_SLACK);
                self.send(server_message::Msg::Cancel(pb::CancelJob {
                    job_id: job.to_string(),
                    reason,
                }))
                .await
            }
            SessionCommand::Retire { reason, now } => self.retire(&reason, now).await,
        }
    }

    async fn retire(&mut self, reason: &str, now: bool) -> Result<(), End> {
        if self.retiring.is_some() {
            return Ok(());
        }
        let grace = self.core.settings.kill_grace + BACKSTOP_SLACK;
        self.retiring = Some((reason.to_string(), Instant::now() + grace));
        self.core.registry.mark_retiring(self.worker);
        self.send(server_message::Msg::Shutdown(pb::Shutdown {
            reason: reason.to_string(),
            now,
        }))
        .await
    }

    /// Sends the job the worker was provisioned for (already claimed for it in the database).
    async fn assign_bound(&mut self, job: JobId) -> Result<(), End> {
        let found = self
            .core
            .retry_db("reading an assigned job", || self.core.store.get_job(job))
            .await;
        match found {
            Ok(Some(job))
                if job.state == JobState::Assigned && job.worker_id == Some(self.worker) =>
            {
                self.assign(job, false).await
            }
            // Cancelled (or otherwise taken) while the worker was starting.
            Ok(_) => {
                self.core.registry.mark_idle(self.worker);
                self.core.wake_dispatcher();
                Ok(())
            }
            Err(e) => {
                let reason = format!("database error: {e}");
                self.core.requeue_or_fail(job, self.worker, &reason).await;
                self.core.registry.mark_idle(self.worker);
                Ok(())
            }
        }
    }

    /// Sends `job` to the worker; `recorded_busy` when the claim already recorded the worker
    /// as busy with it.
    async fn assign(&mut self, job: Job, recorded_busy: bool) -> Result<(), End> {
        if let Some(current) = &self.current {
            tracing::error!(worker = %self.worker, current = %current.job.id, new = %job.id,
                "refusing to assign a second job to a busy worker");
            self.core
                .requeue_or_fail(job.id, self.worker, "internal: worker was busy")
                .await;
            return Ok(());
        }
        let core = &self.core;
        // Output is only stored by the session holding the job's current attempt, so a first
        // attempt starts at 1 without asking; a retry continues after the earlier attempts.
        let last = match job.attempts {
            0 | 1 => Ok(0),
            _ => {
                core.retry_db("reading a job's last output line", || {
                    core.store.last_log_sequence(job.id)
                })
                .await
            }
        };
        let next_sequence = match last {
            Ok(last) => last + 1,
            Err(e) => {
                self.core
                    .requeue_or_fail(job.id, self.worker, &format!("database error: {e}"))
                    .await;
                self.core.registry.mark_idle(self.worker);
                return Ok(());
            }
        };
        let worker = self.worker;
        if !recorded_busy {
            let busy = core
                .retry_db("recording a worker as busy", || {
                    core.store.mark_worker_busy(worker, job.id)
                })
                .await;
            if let Err(e) = busy {
                tracing::warn!(worker = %self.worker, error = %e, "cannot record worker as busy");
            }
        }
        let message = Assignment::for_job(&job, self.core.settings.kill_grace).to_wire();
        self.idle_since = None;
        // Until the worker reports the start, the back-stop covers a worker that never does.
        let backstop =
            Instant::now() + job.spec.timeout + self.core.settings.kill_grace + BACKSTOP_SLACK;
        tracing::info!(worker = %self.worker, job = %job.id, attempt = job.attempts, "job assigned");
        self.current = Some(CurrentJob {
            job,
            next_sequence,
            cancel_reason: None,
            backstop: Some(backstop),
        });
        self.send(server_message::Msg::Assign(message)).await
    }

    async fn on_message(
        &mut self,
        message: pb::WorkerMessage,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        let Some(message) = message.msg else {
            return Ok(());
        };
        match message {
            worker_message::Msg::Ready(_) => Ok(()),
            worker_message::Msg::Heartbeat(_) => {
                let interval = self.core.settings.heartbeat_interval;
                if self.last_heartbeat_write.elapsed() >= interval {
                    self.last_heartbeat_write = Instant::now();
                    if let Err(e) = self.core.store.record_heartbeat(self.worker).await {
                        tracing::warn!(worker = %self.worker, error = %e, "cannot record heartbeat");
                    }
                }
                Ok(())
            }
            worker_message::Msg::JobStarted(started) => self.on_started(started).await,
            worker_message::Msg::Logs(batch) => self.on_logs(batch, inbound).await,
            worker_message::Msg::JobFinished(finished) => self.on_finished(finished).await,
        }
    }

    fn current_for(&mut self, job_id: &str) -> Option<&mut CurrentJob> {
        self.current
            .as_mut()
            .filter(|c| c.job.id.to_string() == job_id)
    }

    async fn on_started(&mut self, started: pb::JobStarted) -> Result<(), End> {
        let worker = self.worker;
        let kill_grace = self.core.settings.kill_grace;
        let Some(current) = self.current_for(&started.job_id) else {
            tracing::warn!(%worker, job = started.job_id, "start reported for a job the worker does not hold");
            return Ok(());
        };
        let job = current.job.id;
        let created = current.job.created_at;
        if current.cancel_reason.is_none() {
            current.backstop =
                Some(Instant::now() + current.job.spec.timeout + kill_grace + BACKSTOP_SLACK);
        }
        let core = &self.core;
        let running = core
            .retry_db("recording a job's start", || {
                core.store.mark_job_running(job, worker)
            })
            .await;
        match running {
            Ok(true) => {
                let waited = (Utc::now() - created).to_std().unwrap_or_default();
                self.core
                    .metrics
                    .dispatch_seconds
                    .observe(waited.as_secs_f64());
                tracing::info!(%worker, %job, pid = started.pid, "job started");
            }
            Ok(false) => {
                tracing::warn!(%worker, %job, "job was no longer assigned when it started")
            }
            Err(e) => tracing::error!(%worker, %job, error = %e, "cannot record job start"),
        }
        Ok(())
    }

    /// Stores and publishes a batch of output, merged with the batches of the same job that
    /// have already arrived behind it (never waiting for more).
    async fn on_logs(
        &mut self,
        batch: pb::LogBatch,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        let worker = self.worker;
        if self.current_for(&batch.job_id).is_none() {
            tracing::warn!(%worker, job = batch.job_id, "output for a job the worker does not hold; dropped");
            return Ok(());
        }
        check_batch(&batch)?;
        let pb::LogBatch {
            job_id,
            lines: mut chunks,
        } = batch;
        let mut bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        while chunks.len() < COALESCE_LINES && bytes < COALESCE_BYTES {
            let Some(next) = inbound.message().now_or_never() else {
                break;
            };
            match next {
                Ok(Some(pb::WorkerMessage {
                    msg: Some(worker_message::Msg::Logs(more)),
                })) if more.job_id == job_id => {
                    check_batch(&more)?;
                    self.last_seen = Instant::now();
                    bytes += more.lines.iter().map(|c| c.data.len()).sum::<usize>();
                    chunks.extend(more.lines);
                }
                other => {
                    self.read_ahead = Some(other);
                    break;
                }
            }
        }
        if chunks.is_empty() {
            return Ok(());
        }
        let Some(current) = self.current_for(&job_id) else {
            return Ok(());
        };
        let job = current.job.id;
        let now = Utc::now();
        let first = current.next_sequence;
        let lines: Vec<NewLogLine> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| NewLogLine {
                sequence: first + i as u64,
                stream: stream_from_proto(chunk.stream),
                data: chunk.data,
                emitted_at: datetime(chunk.emitted_at.as_ref()).unwrap_or(now),
            })
            .collect();
        current.next_sequence += lines.len() as u64;
        let core = &self.core;
        let stored = core
            .retry_db("storing output", || core.store.append_logs(job, &lines))
            .await;
        if let Err(e) = stored {
            // Losing output silently would be worse than losing the attempt: re-queue it.
            return Err(End::Lost(format!(
                "cannot persist output of job {job}: {e}"
            )));
        }
        self.core.metrics.log_lines.inc_by(lines.len() as u64);
        let published: Arc<[LogLine]> = lines
            .into_iter()
            .map(|line| LogLine {
                job_id: job,
                sequence: line.sequence,
                stream: line.stream,
                data: line.data,
                emitted_at: line.emitted_at,
            })
            .collect();
        self.core.hub.publish(job, published);
        Ok(())
    }

    async fn on_finished(&mut self, finished: pb::JobFinished) -> Result<(), End> {
        let worker = self.worker;
        let Some(current) = self.current_for(&finished.job_id) else {
            tracing::warn!(%worker, job = finished.job_id, "finish reported for a job the worker does not hold");
            return Ok(());
        };
        let outcome = outcome_from_proto(&finished, current.cancel_reason.as_deref());
        let reason = outcome.reason(current.job.spec.timeout);
        let recorded_idle = self
            .finish_current(outcome.state(), outcome.exit_code(), &reason)
            .await;
        self.after_job(recorded_idle).await
    }

    /// Records the current job's final state and forgets it.
    /// Returns whether the worker was recorded idle with it (it is when the job's end was).
    async fn finish_current(
        &mut self,
        state: JobState,
        exit_code: Option<i32>,
        reason: &str,
    ) -> bool {
        let Some(current) = self.current.take() else {
            return false;
        };
        let job = current.job.id;
        let (core, worker) = (&self.core, self.worker);
        let finished = core
            .retry_db("recording a job's end", || {
                core.store.finish_job(job, worker, state, exit_code, reason)
            })
            .await;
        self.jobs_run += 1;
        match finished {
            Ok(Some(job)) => {
                tracing::info!(worker = %self.worker, job = %job.id, state = %job.state, ?exit_code, "job finished");
                self.core.job_finished(&job);
                true
            }
            Ok(None) => {
                tracing::info!(worker = %self.worker, %job, "job already ended elsewhere");
                false
            }
            Err(e) => {
                tracing::error!(worker = %self.worker, %job, error = %e, "cannot record job end");
                false
            }
        }
    }

    /// `recorded_idle`: recording the job's end already recorded the worker idle.
    async fn after_job(&mut self, recorded_idle: bool) -> Result<(), End> {
        if !recorded_idle {
            let (core, worker) = (&self.core, self.worker);
            let idle = core
                .retry_db("recording a worker as idle", || {
                    core.store.mark_worker_idle(worker)
                })
                .await;
            if let Err(e) = idle {
                tracing::warn!(worker = %self.worker, error = %e, "cannot record worker as idle");
            }
        }
        if self.jobs_run >= self.core.settings.max_jobs_per_worker {
            return self.retire("ran its maximum number of jobs", false).await;
        }
        if self.core.is_draining() {
            return self.retire("server shutting down", false).await;
        }
        self.idle_since = Some(Instant::now());
        self.core.registry.mark_idle(self.worker);
        self.core.wake_dispatcher();
        Ok(())
    }

    async fn send(&self, message: server_message::Msg) -> Result<(), End> {
        let message = pb::ServerMessage { msg: Some(message) };
        match tokio::time::timeout(SEND_TIMEOUT, self.out.send(Ok(message))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Lost("worker stream closed".into())),
            Err(_) => Err(End::Lost("worker does not read its stream".into())),
        }
    }

    async fn finish(mut self, end: End, mut commands: mpsc::UnboundedReceiver<SessionCommand>) {
        let worker = self.worker;
        let (state, reason) = match end {
            End::Killed => return,
            End::Retired(reason) => (WorkerState::Terminated, reason),
            End::Lost(reason) => (WorkerState::Lost, format!("worker lost: {reason}")),
        };
        if state == WorkerState::Lost {
            tracing::warn!(%worker, reason, "worker lost");
        } else {
            tracing::info!(%worker, reason, "worker retired");
        }
        // A job the user cancelled ends `cancelled` here too: the cancel was recorded in the
        // database before the worker was told, and the re-queue statement honours it.
        if let Some(current) = self.current.take() {
            self.core
                .requeue_or_fail(current.job.id, worker, &reason)
                .await;
        }
        // Jobs the dispatcher handed to this session after it stopped reading its commands
        // were claimed but never sent: they go back to the queue as they were.
        commands.close();
        while let Ok(command) = commands.try_recv() {
            if let SessionCommand::Assign(job) = command {
                self.core
                    .release_unsent(job.id, worker, "worker went away before the job was sent")
                    .await;
            }
        }
        self.core.retire_worker(worker, state, reason);
    }
}

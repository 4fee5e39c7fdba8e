//! One task per connected worker: the only code that talks to that worker's stream.
//!
//! A session is the per-worker state machine of the agent protocol: it holds the worker's
//! current job (the numbering of its output, the cancel and timeout back-stops) and reacts to
//! three sources — messages from the worker, commands from the rest of the server (assign,
//! cancel, retire), and its own timers (heartbeat, idle, back-stops). Every state change it
//! causes goes through the lifecycle; output ingestion is `output.rs`. When it ends, the worker
//! is either retired (it was told to go) or lost, and a held job is re-queued.

mod masking;
mod output;

use std::time::{Duration, Instant};

use hodei_contract::{
    Assignment,
    convert::{WorkerReport, report_from_proto},
};
use hodei_domain::{Job, JobId, JobSecrets, JobState, WorkerId, WorkerState};
use hodei_proto::v1::{self as pb, server_message, worker_message};
use tonic::{Status, Streaming};

use self::masking::Masker;
use crate::{
    commands::{CommandInbox, Outbound, SessionCommand},
    lifecycle::{AfterJob, Lifecycle},
};

/// Grace on top of the job's own timeout and kill grace before the server stops trusting the
/// worker to end the job itself.
const BACKSTOP_SLACK: Duration = Duration::from_secs(10);
/// How long a send to the worker may block before the worker is considered stuck.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

struct CurrentJob {
    job: Job,
    /// Its secret values, replaced in its output.
    masker: Masker,
    next_sequence: u64,
    cancel_reason: Option<String>,
    /// When the server gives up waiting for the worker to report.
    backstop: Option<Instant>,
}

pub struct Session {
    lifecycle: Lifecycle,
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

/// How a session ends.
enum End {
    /// The worker was told to go.
    Retired(String),
    Lost(String),
    /// The worker's platform stopped it (SIGTERM) while it held a job, with the worker's words:
    /// an infrastructure failure, so the job is re-queued, not ended.
    Interrupted(String),
    /// The server is being killed: leave everything as it is.
    Killed,
}

impl Session {
    pub fn new(lifecycle: Lifecycle, worker: WorkerId, out: Outbound) -> Self {
        let now = Instant::now();
        Self {
            lifecycle,
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

    fn settings(&self) -> &crate::Settings {
        &self.lifecycle.core().settings
    }

    /// Runs the session to its end. `bound_job` is the job the worker was provisioned for.
    pub async fn run(
        mut self,
        mut inbound: Streaming<pb::WorkerMessage>,
        mut commands: CommandInbox,
        bound_job: Option<JobId>,
    ) {
        let end = match self.expect_ready(&mut inbound).await {
            // The job it was provisioned for was never handed over: it is held all the same.
            Err(end) => return self.finish(end, bound_job, commands).await,
            Ok(()) => match bound_job {
                Some(job) => self.assign_bound(job).await,
                None => {
                    self.lifecycle.core().wake_dispatcher();
                    Ok(())
                }
            },
        };
        let end = match end {
            Ok(()) => self.event_loop(&mut inbound, &mut commands).await,
            Err(end) => end,
        };
        let held = self.current.take().map(|c| c.job.id);
        self.finish(end, held, commands).await;
    }

    async fn expect_ready(
        &mut self,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        let first = tokio::time::timeout(self.settings().heartbeat_timeout, inbound.message());
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
        commands: &mut CommandInbox,
    ) -> End {
        let kill = self.lifecycle.core().kill.clone();
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
        if self.last_seen.elapsed() > self.settings().heartbeat_interval {
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
        let settings = self.settings();
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
        let settings = self.settings();
        if now >= self.last_seen + settings.heartbeat_timeout {
            return Err(End::Lost(format!(
                "no heartbeat for {}s",
                settings.heartbeat_timeout.as_secs()
            )));
        }
        let idle_timeout = settings.idle_timeout;
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
                    format!("{reason} (the worker did not confirm; worker destroyed)"),
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
            self.end_current(state, None, &reason).await;
            return Err(End::Retired(format!("job {job} not ended by the worker")));
        }
        if self.retiring.is_none()
            && self
                .idle_since
                .is_some_and(|idle| now >= idle + idle_timeout)
        {
            self.retire("idle timeout", false).await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, command: SessionCommand) -> Result<(), End> {
        match command {
            // The dispatcher's claim already recorded the worker as busy.
            SessionCommand::Assign(job) => self.assign(*job).await,
            SessionCommand::Cancel { job, reason } => {
                let kill_grace = self.settings().kill_grace;
                let Some(current) = self.current.as_mut().filter(|c| c.job.id == job) else {
                    return Ok(());
                };
                if current.cancel_reason.is_some() {
                    return Ok(());
                }
                current.cancel_reason = Some(reason.clone());
                current.backstop = Some(Instant::now() + kill_grace + BACKSTOP_SLACK);
                self.send(server_message::Msg::Cancel(pb::CancelJob {
                    job_id: job.to_string(),
                    reason,
                }))
                .await
            }
            SessionCommand::Retire { reason, now } => self.retire(&reason, now).await,
        }
    }

    /// Tells the worker to exit (`now`: killing its job); it gets until the kill grace to do so.
    async fn retire(&mut self, reason: &str, now: bool) -> Result<(), End> {
        if self.retiring.is_some() {
            return Ok(());
        }
        let grace = self.settings().kill_grace + BACKSTOP_SLACK;
        self.retiring = Some((reason.to_string(), Instant::now() + grace));
        self.lifecycle.retiring(self.worker);
        self.send(server_message::Msg::Shutdown(pb::Shutdown {
            reason: reason.to_string(),
            now,
        }))
        .await
    }

    /// Sends the job the worker was provisioned for (already claimed for it in the database).
    async fn assign_bound(&mut self, job: JobId) -> Result<(), End> {
        match self.lifecycle.take_bound_job(self.worker, job).await {
            Some(job) => self.assign(job).await,
            None => Ok(()),
        }
    }

    /// Sends `job` (claimed for this worker, which is recorded busy with it) to the worker.
    async fn assign(&mut self, job: Job) -> Result<(), End> {
        let worker = self.worker;
        if let Some(current) = &self.current {
            tracing::error!(%worker, current = %current.job.id, new = %job.id,
                "refusing to assign a second job to a busy worker");
            self.lifecycle
                .requeue(job.id, worker, "internal: worker was busy")
                .await;
            return Ok(());
        }
        let core = self.lifecycle.core();
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
                let reason = format!("cannot read the job's output position: {e}");
                self.lifecycle.abandon(job.id, worker, &reason).await;
                return Ok(());
            }
        };
        // Only jobs that have secrets pay for reading them.
        let secrets = if job.secret_names.is_empty() {
            Ok(JobSecrets::default())
        } else {
            core.retry_db("reading a job's secrets", || core.store.job_secrets(job.id))
                .await
        };
        let secrets = match secrets {
            Ok(secrets) => secrets,
            Err(e) => {
                let reason = format!("cannot read the job's secrets: {e}");
                self.lifecycle.abandon(job.id, worker, &reason).await;
                return Ok(());
            }
        };
        let masker = Masker::new(secrets.expose().values().map(String::as_str));
        let settings = self.settings();
        let message = Assignment::for_job(&job, secrets, settings.kill_grace).to_wire();
        // Until the worker reports the start, the back-stop covers a worker that never does.
        let backstop = Instant::now() + job.spec.timeout + settings.kill_grace + BACKSTOP_SLACK;
        self.idle_since = None;
        tracing::info!(%worker, job = %job.id, attempt = job.attempts, "job assigned");
        self.current = Some(CurrentJob {
            job,
            masker,
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
                self.on_heartbeat().await;
                Ok(())
            }
            worker_message::Msg::JobStarted(started) => self.on_started(started).await,
            worker_message::Msg::Logs(batch) => self.on_logs(batch, inbound).await,
            worker_message::Msg::JobFinished(finished) => self.on_finished(finished).await,
        }
    }

    /// Heartbeats are recorded at most once per interval (the deadline is in memory).
    async fn on_heartbeat(&mut self) {
        let core = self.lifecycle.core();
        if self.last_heartbeat_write.elapsed() >= core.settings.heartbeat_interval {
            self.last_heartbeat_write = Instant::now();
            if let Err(e) = core.store.record_heartbeat(self.worker).await {
                tracing::warn!(worker = %self.worker, error = %e, "cannot record heartbeat");
            }
        }
    }

    fn current_for(&mut self, job_id: &str) -> Option<&mut CurrentJob> {
        self.current
            .as_mut()
            .filter(|c| c.job.id.to_string() == job_id)
    }

    async fn on_started(&mut self, started: pb::JobStarted) -> Result<(), End> {
        let worker = self.worker;
        let settings = self.settings();
        let kill_grace = settings.kill_grace;
        let inject_panic = settings.faults.take_session_panic();
        let Some(current) = self.current_for(&started.job_id) else {
            tracing::warn!(%worker, job = started.job_id, "start reported for a job the worker does not hold");
            return Ok(());
        };
        if inject_panic {
            panic!(
                "injected fault: session of worker {worker} panics at the start of job {}",
                current.job.id
            );
        }
        if current.cancel_reason.is_none() {
            current.backstop =
                Some(Instant::now() + current.job.spec.timeout + kill_grace + BACKSTOP_SLACK);
        }
        let job = current.job.clone();
        self.lifecycle.job_started(&job, worker, started.pid).await;
        Ok(())
    }

    async fn on_finished(&mut self, finished: pb::JobFinished) -> Result<(), End> {
        let worker = self.worker;
        let Some(current) = self.current_for(&finished.job_id) else {
            tracing::warn!(%worker, job = finished.job_id, "finish reported for a job the worker does not hold");
            return Ok(());
        };
        let outcome = match report_from_proto(&finished, current.cancel_reason.as_deref()) {
            WorkerReport::Ended(outcome) => outcome,
            // The job is still `current`, so the session ends holding it: re-queued, or
            // `cancelled` if its owner had asked for that meanwhile.
            WorkerReport::Interrupted { message } => return Err(End::Interrupted(message)),
        };
        let reason = outcome.reason(current.job.spec.timeout);
        let recorded_idle = self
            .end_current(outcome.state(), outcome.exit_code(), &reason)
            .await;
        match self
            .lifecycle
            .after_job(worker, self.jobs_run, recorded_idle)
            .await
        {
            AfterJob::Idle => {
                self.idle_since = Some(Instant::now());
                Ok(())
            }
            AfterJob::Retire(reason) => self.retire(reason, false).await,
        }
    }

    /// Records the current job's final state and forgets it. Returns whether the worker was
    /// recorded idle with it.
    async fn end_current(&mut self, state: JobState, exit_code: Option<i32>, reason: &str) -> bool {
        let Some(current) = self.current.take() else {
            return false;
        };
        self.jobs_run += 1;
        self.lifecycle
            .job_ended(current.job.id, self.worker, state, exit_code, reason)
            .await
    }

    async fn send(&self, message: server_message::Msg) -> Result<(), End> {
        let message = pb::ServerMessage { msg: Some(message) };
        match tokio::time::timeout(SEND_TIMEOUT, self.out.send(Ok(message))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Lost("worker stream closed".into())),
            Err(_) => Err(End::Lost("worker does not read its stream".into())),
        }
    }

    /// Hands the worker and what it held back to the lifecycle. Jobs the dispatcher handed to
    /// this session after it stopped reading its commands were claimed but never sent.
    async fn finish(self, end: End, held: Option<JobId>, mut commands: CommandInbox) {
        let (state, reason) = match end {
            End::Killed => return,
            End::Retired(reason) => (WorkerState::Terminated, reason),
            End::Lost(reason) => (WorkerState::Lost, format!("worker lost: {reason}")),
            End::Interrupted(message) => (
                WorkerState::Terminated,
                self.lifecycle
                    .platform_stop_reason(self.worker, message)
                    .await,
            ),
        };
        commands.close();
        let mut unsent = Vec::new();
        while let Ok(command) = commands.try_recv() {
            if let SessionCommand::Assign(job) = command {
                unsent.push(job.id);
            }
        }
        self.lifecycle
            .session_ended(self.worker, state, reason, held, unsent)
            .await;
    }
}

//! One task per connected worker: the only code that talks to that worker's stream.
//!
//! A session is the per-worker state machine of the agent protocol: it holds the worker's
//! current job (the numbering of its output, the cancel and timeout back-stops) and reacts to
//! three sources — messages from the worker, commands from the rest of the server (assign,
//! cancel, retire), and its own timers (heartbeat, idle, back-stops). Every state change it
//! causes goes through the lifecycle; output ingestion is `output.rs`.
//!
//! A session starts with the worker's `Ready` (a fresh worker) or `Resume` (a worker whose
//! previous stream broke — on this server process or on one that died — and that kept its job
//! running). It answers `SessionInfo` first, with the stored position of the held job's output,
//! and reconciles what the worker says it holds with what the database says (`open`).
//!
//! When it ends, the worker is retired (it was told to go), lost (it broke the protocol, or
//! its session panicked: its job is re-queued), or — when only the stream broke — detached: the
//! job keeps running and the worker is expected back; its lease in the database decides when it
//! is lost instead.

mod masking;
mod output;

use std::time::{Duration, Instant};

use hodei_contract::{
    Assignment,
    convert::{Held, WorkerReport, held_from_resume, report_from_proto},
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
    /// The sequence the next line stored gets.
    next_sequence: u64,
    /// The attempt's first sequence, when this session assigned it (a worker numbering its own
    /// lines never goes below it).
    first_sequence: Option<u64>,
    cancel_reason: Option<String>,
    /// When the server gives up waiting for the worker to report.
    backstop: Option<Instant>,
}

pub struct Session {
    lifecycle: Lifecycle,
    worker: WorkerId,
    /// This session's epoch (`workers.session_epoch`): what it records about the worker is
    /// fenced by it, so a session replaced by a newer one changes nothing.
    epoch: i64,
    /// A worker this process did not provision (it re-connected): it waits in the registry as
    /// `Resuming` until `open` knows what it holds.
    adopted: bool,
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
    /// Only the stream ended (it broke, the worker went silent, the server is moving it): the
    /// worker keeps its job and is expected to re-connect; its lease decides otherwise.
    Detached(String),
    /// The server is being killed: leave everything as it is.
    Killed,
}

/// The first message of a session.
enum First {
    Ready,
    Resume(pb::Resume),
}

impl Session {
    /// `jobs_run` is the database's count (a worker that moved keeps its budget); `adopted`:
    /// a worker this process did not provision.
    pub fn new(
        lifecycle: Lifecycle,
        worker: WorkerId,
        out: Outbound,
        epoch: i64,
        jobs_run: u32,
        adopted: bool,
    ) -> Self {
        let now = Instant::now();
        Self {
            lifecycle,
            worker,
            epoch,
            adopted,
            out,
            current: None,
            jobs_run,
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
        let end = match self.first_message(&mut inbound).await {
            // The job it was provisioned for was never handed over: it is held all the same
            // (re-queued if the worker is lost; still bound to it if it only went away).
            Err(end) => return self.finish(end, bound_job, commands).await,
            Ok(first) => self.open(first, bound_job).await,
        };
        let end = match end {
            Ok(()) => self.event_loop(&mut inbound, &mut commands).await,
            Err(end) => end,
        };
        let held = self.current.take().map(|c| c.job.id);
        self.finish(end, held, commands).await;
    }

    async fn first_message(
        &mut self,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<First, End> {
        let first = tokio::time::timeout(self.settings().heartbeat_timeout, inbound.message());
        match first.await {
            Ok(Ok(Some(pb::WorkerMessage {
                msg: Some(worker_message::Msg::Ready(_)),
            }))) => Ok(First::Ready),
            Ok(Ok(Some(pb::WorkerMessage {
                msg: Some(worker_message::Msg::Resume(resume)),
            }))) => Ok(First::Resume(resume)),
            Ok(Ok(Some(_))) => {
                let _ = self
                    .out
                    .send(Err(Status::invalid_argument(
                        "the first message on a worker session must be `ready` or `resume`",
                    )))
                    .await;
                Err(End::Lost(
                    "protocol violation: first message was neither `ready` nor `resume`".into(),
                ))
            }
            Ok(Ok(None)) => Err(End::Detached(
                "stream closed before its first message".into(),
            )),
            Ok(Err(status)) => Err(End::Detached(format!(
                "stream error before its first message: {}",
                status.message()
            ))),
            Err(_) => Err(End::Detached("no first message in time".into())),
        }
    }

    /// Answers the first message: `SessionInfo`, then what the worker should do. A fresh
    /// worker provisioned by this process gets the job it was provisioned for, as before
    /// resuming existed. Otherwise what the worker holds is reconciled with the database:
    /// - the job it still holds in the same attempt: the session takes it over where the
    ///   output stored so far ends;
    /// - a job assigned to it that it never got: sent (again), no attempt spent;
    /// - an end the database already recorded: `JobRecorded`;
    /// - a job the database no longer gives it: it is told to stop (`Shutdown{now}`);
    /// - a job the database says it runs, but that it does not hold: re-queued.
    async fn open(&mut self, first: First, bound_job: Option<JobId>) -> Result<(), End> {
        let worker = self.worker;
        let resume = match first {
            First::Ready if !self.adopted => {
                self.send_info(0).await?;
                return match bound_job {
                    Some(job) => self.assign_bound(job).await,
                    None => {
                        self.lifecycle.core().wake_dispatcher();
                        Ok(())
                    }
                };
            }
            First::Ready => None,
            First::Resume(resume) => {
                tracing::info!(%worker, job = resume.job_id, attempt = resume.attempt,
                    next_sequence = resume.next_sequence, finished = resume.finished.is_some(),
                    previous_end = resume.previous_end, "worker session resumed");
                Some(resume)
            }
        };
        let claim = match resume.as_ref().map(held_from_resume).transpose() {
            Ok(claim) => claim.flatten(),
            Err(e) => {
                let _ = self
                    .out
                    .send(Err(Status::invalid_argument(format!("bad `resume`: {e}"))))
                    .await;
                return Err(End::Lost(format!("protocol violation: bad `resume`: {e}")));
            }
        };
        let core = self.lifecycle.core().clone();
        let held = core
            .retry_db("reading the job a worker holds", || {
                core.store.job_held_by(worker)
            })
            .await
            .map_err(|e| End::Detached(format!("cannot read the worker's job: {e}")))?;
        match (held, claim) {
            (Some(job), Some(claim)) if claim.job_id == job.id && claim.attempt == job.attempts => {
                self.take_over(job, claim).await
            }
            (Some(job), None) if job.state == JobState::Assigned => {
                self.send_info(0).await?;
                self.lifecycle
                    .resumed(worker, std::mem::take(&mut self.adopted), Some(job.id));
                self.assign_bound(job.id).await
            }
            (Some(job), claim) => {
                self.send_info(0).await?;
                self.lifecycle
                    .requeue(job.id, worker, "worker lost: it came back without the job")
                    .await;
                self.lifecycle
                    .resumed(worker, std::mem::take(&mut self.adopted), None);
                match claim {
                    Some(claim) => self.not_held(claim).await,
                    None => Ok(()),
                }
            }
            (None, Some(claim)) => {
                self.send_info(0).await?;
                self.lifecycle
                    .resumed(worker, std::mem::take(&mut self.adopted), None);
                self.not_held(claim).await
            }
            (None, None) => {
                self.send_info(0).await?;
                self.lifecycle
                    .resumed(worker, std::mem::take(&mut self.adopted), None);
                Ok(())
            }
        }
    }

    /// The worker holds a job the database does not give it: if it only re-sends an end that is
    /// already recorded, it is told so; otherwise its job must stop and the worker go.
    async fn not_held(&mut self, claim: Held) -> Result<(), End> {
        if claim.finished.is_some() && self.lifecycle.end_recorded(claim.job_id, self.worker).await
        {
            return self
                .send(server_message::Msg::JobRecorded(pb::JobRecorded {
                    job_id: claim.job_id.to_string(),
                }))
                .await;
        }
        let reason = format!("job {} is no longer held by this worker", claim.job_id);
        tracing::warn!(worker = %self.worker, reason, "telling a resumed worker to stop");
        self.retire(&reason, true).await
    }

    /// Continues the worker's current attempt of `job` after a reconnect: the worker re-sends
    /// the output after what is stored, then its end if it has one.
    async fn take_over(&mut self, job: Job, claim: Held) -> Result<(), End> {
        let worker = self.worker;
        let core = self.lifecycle.core().clone();
        let stored = core
            .retry_db("reading a job's last output line", || {
                core.store.last_log_sequence(job.id)
            })
            .await
            .map_err(|e| End::Detached(format!("cannot read the job's output position: {e}")))?;
        let secrets = if job.secret_names.is_empty() {
            Ok(JobSecrets::default())
        } else {
            core.retry_db("reading a job's secrets", || core.store.job_secrets(job.id))
                .await
        }
        .map_err(|e| End::Detached(format!("cannot read the job's secrets: {e}")))?;
        let cancel = core
            .retry_db("reading a job's cancel request", || {
                core.store.cancel_request_of(job.id)
            })
            .await
            .map_err(|e| End::Detached(format!("cannot read the job's cancel request: {e}")))?;
        self.send_info(stored).await?;
        if job.state == JobState::Assigned && claim.pid != 0 {
            // Its JobStarted was lost with the previous stream.
            self.lifecycle.job_started(&job, worker, claim.pid).await;
        }
        let settings = self.settings();
        let backstop = Instant::now() + job.spec.timeout + settings.kill_grace + BACKSTOP_SLACK;
        let id = job.id;
        self.idle_since = None;
        self.current = Some(CurrentJob {
            masker: Masker::new(secrets.expose().values().map(String::as_str)),
            next_sequence: stored + 1,
            first_sequence: None,
            cancel_reason: None,
            backstop: Some(backstop),
            job,
        });
        self.lifecycle
            .resumed(worker, std::mem::take(&mut self.adopted), Some(id));
        tracing::info!(%worker, job = %id, stored, "running job taken over");
        match cancel {
            Some(reason) => {
                self.on_command(SessionCommand::Cancel { job: id, reason })
                    .await
            }
            None => Ok(()),
        }
    }

    async fn send_info(&self, persisted_sequence: u64) -> Result<(), End> {
        let core = self.lifecycle.core();
        self.send(server_message::Msg::Info(pb::SessionInfo {
            server_id: core.server_id.to_string(),
            worker_addresses: crate::peers::worker_addresses(core).await,
            persisted_sequence,
        }))
        .await
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
            // A message the server could not take (over the size limit, undecodable) is what
            // the worker sent, not a broken connection: it broke the protocol.
            Err(status)
                if self.retiring.is_none()
                    && matches!(
                        status.code(),
                        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
                    ) =>
            {
                Err(End::Lost(format!(
                    "protocol violation: {}",
                    status.message()
                )))
            }
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
            None => End::Detached(what.to_string()),
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
            return Err(End::Detached(format!(
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
            SessionCommand::Move { reason } => {
                if self.retiring.is_some() {
                    return Ok(());
                }
                let core = self.lifecycle.core();
                self.send(server_message::Msg::Move(pb::Move {
                    reason: reason.clone(),
                    worker_addresses: crate::peers::worker_addresses(core).await,
                    exclude: core.worker_address.clone(),
                }))
                .await?;
                Err(End::Detached(format!("told to move: {reason}")))
            }
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
        let message =
            Assignment::for_job(&job, secrets, settings.kill_grace, next_sequence).to_wire();
        // Until the worker reports the start, the back-stop covers a worker that never does.
        let backstop = Instant::now() + job.spec.timeout + settings.kill_grace + BACKSTOP_SLACK;
        self.idle_since = None;
        tracing::info!(%worker, job = %job.id, attempt = job.attempts, "job assigned");
        self.current = Some(CurrentJob {
            job,
            masker,
            next_sequence,
            first_sequence: Some(next_sequence),
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
            worker_message::Msg::Ready(_) | worker_message::Msg::Resume(_) => Ok(()),
            worker_message::Msg::Heartbeat(_) => self.on_heartbeat().await,
            worker_message::Msg::JobStarted(started) => self.on_started(started).await,
            worker_message::Msg::Logs(batch) => self.on_logs(batch, inbound).await,
            worker_message::Msg::JobFinished(finished) => self.on_finished(finished).await,
        }
    }

    /// Heartbeats renew the worker's lease, at most once per interval (the deadline is in
    /// memory). A lease this session can no longer renew belongs to a newer session.
    async fn on_heartbeat(&mut self) -> Result<(), End> {
        let core = self.lifecycle.core();
        if self.last_heartbeat_write.elapsed() >= core.settings.heartbeat_interval {
            self.last_heartbeat_write = Instant::now();
            let ttl = core.settings.worker_lease_ttl();
            match core
                .store
                .renew_worker_lease(self.worker, self.epoch, ttl)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    return Err(End::Detached(
                        "a newer session holds the worker (or it is no longer alive)".into(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(worker = %self.worker, error = %e, "cannot renew the worker's lease")
                }
            }
        }
        Ok(())
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
            // A worker re-sending an end recorded before its stream broke is told so.
            if let Ok(job) = finished.job_id.parse::<JobId>()
                && self.lifecycle.end_recorded(job, worker).await
            {
                return self
                    .send(server_message::Msg::JobRecorded(pb::JobRecorded {
                        job_id: finished.job_id,
                    }))
                    .await;
            }
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
        self.send(server_message::Msg::JobRecorded(pb::JobRecorded {
            job_id: finished.job_id,
        }))
        .await?;
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
            Ok(Err(_)) => Err(End::Detached("worker stream closed".into())),
            Err(_) => Err(End::Detached("worker does not read its stream".into())),
        }
    }

    /// Hands the worker and what it held back to the lifecycle. Jobs the dispatcher handed to
    /// this session after it stopped reading its commands were claimed but never sent.
    async fn finish(self, end: End, held: Option<JobId>, mut commands: CommandInbox) {
        let (state, reason) = match end {
            End::Killed => return,
            End::Detached(why) => {
                let unsent = unsent_assignments(&mut commands);
                self.lifecycle
                    .session_detached(self.worker, self.epoch, why, unsent)
                    .await;
                return;
            }
            End::Retired(reason) => (WorkerState::Terminated, reason),
            End::Lost(reason) => (WorkerState::Lost, format!("worker lost: {reason}")),
            End::Interrupted(message) => (
                WorkerState::Terminated,
                self.lifecycle
                    .platform_stop_reason(self.worker, message)
                    .await,
            ),
        };
        let unsent = unsent_assignments(&mut commands);
        self.lifecycle
            .session_ended(self.worker, state, reason, held, unsent)
            .await;
    }
}

/// Closes a finished session's inbox and takes the jobs still waiting in it: claimed for this
/// worker, never sent to it.
fn unsent_assignments(commands: &mut CommandInbox) -> Vec<JobId> {
    commands.close();
    let mut unsent = Vec::new();
    while let Ok(command) = commands.try_recv() {
        if let SessionCommand::Assign(job) = command {
            unsent.push(job.id);
        }
    }
    unsent
}

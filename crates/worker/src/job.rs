//! Running one job from start to report: spawn, stream its output, enforce its timeout, obey a
//! cancel, and make sure none of its processes survive it.
//!
//! The runner is a task of its own. It records the start and the output in the job's journal
//! (which the session sends from, see `journal.rs`) and returns the `JobFinished`, which the
//! session sends once everything in the journal has been sent: the server always sees the
//! output of a job before its end.

use std::time::Duration;

use hodei_contract::Assignment;
use hodei_domain::JobId;
use std::sync::Arc;

use hodei_proto::v1::{JobFinished, JobOutcome, LogStream};
use tokio::{
    process::Child,
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, sleep_until, timeout_at},
};

use crate::{
    batch::{self, line_channel},
    journal::Journal,
    output::read_lines,
    process::{self, ProcessGroup},
};

/// How long the output pipes may stay open after the shell has exited (a background process
/// may hold them) before the rest of the group is killed.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long to wait for the pipes to close once the group has been killed.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

/// A request to end the job early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after the grace; reported as `CANCELLED` with this message.
    Cancel(String),
    /// The same stop, asked by the worker's platform rather than the server: reported as
    /// `INTERRUPTED` with this message, so the server runs the job again instead of ending it.
    Interrupt(String),
    /// SIGKILL now (the server refused the worker; nobody will read the report).
    Kill,
}

/// A job being run by its task.
#[derive(Debug)]
pub struct RunningJob {
    job_id: JobId,
    kill_grace: Duration,
    stop: mpsc::UnboundedSender<Stop>,
    task: JoinHandle<JobFinished>,
}

impl RunningJob {
    /// Starts running `assignment`, recording its start and output in `journal`.
    pub fn start(assignment: Assignment, journal: Arc<Journal>) -> Self {
        let (stop, stops) = mpsc::unbounded_channel();
        let job_id = assignment.job_id;
        let kill_grace = assignment.kill_grace;
        let task = tokio::spawn(run(assignment, stops, journal));
        Self {
            job_id,
            kill_grace,
            stop,
            task,
        }
    }

    pub fn job_id(&self) -> JobId {
        self.job_id
    }

    /// Between SIGTERM and SIGKILL when it is stopped.
    pub fn kill_grace(&self) -> Duration {
        self.kill_grace
    }

    pub fn stop(&self, request: Stop) {
        // The task only ends after its result is ready, so a failed send means it already has one.
        let _ = self.stop.send(request);
    }

    /// Waits for the job's report. Cancel-safe: it can be polled again after being dropped.
    pub async fn finished(&mut self) -> JobFinished {
        match (&mut self.task).await {
            Ok(finished) => finished,
            Err(err) => finished(
                &self.job_id.to_string(),
                JobOutcome::SpawnFailed,
                (None, None),
                format!("the worker's job runner failed: {err}"),
            ),
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        // Dropping the runner drops its process group, which kills the job: a session that
        // ends abruptly leaves nothing running. A no-op once the job has finished.
        self.task.abort();
    }
}

/// How the job came to an end, as far as the runner knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Exited,
    Cancelled(String),
    Interrupted(String),
    TimedOut(Duration),
}

/// Runs the job to its end and returns its report. Records its start and output in `journal`
/// (closed before the report is returned, also when the command could not start).
pub async fn run(
    assignment: Assignment,
    mut stops: mpsc::UnboundedReceiver<Stop>,
    journal: Arc<Journal>,
) -> JobFinished {
    let report = run_command(assignment, &mut stops, journal.clone()).await;
    journal.close();
    report
}

async fn run_command(
    assignment: Assignment,
    stops: &mut mpsc::UnboundedReceiver<Stop>,
    journal: Arc<Journal>,
) -> JobFinished {
    let job_id = assignment.job_id.to_string();
    let mut child = match process::spawn_shell(
        &assignment.command,
        &assignment.job_environment(),
        &job_id,
        assignment.attempt,
    ) {
        Ok(child) => child,
        Err(err) => {
            tracing::warn!(job = job_id, error = %err, "cannot start the job");
            return finished(
                &job_id,
                JobOutcome::SpawnFailed,
                (None, None),
                format!("cannot start {}: {err}", process::SHELL),
            );
        }
    };
    let Some(pid) = child.id() else {
        return finished(
            &job_id,
            JobOutcome::SpawnFailed,
            (None, None),
            "the job's shell vanished as it started".into(),
        );
    };
    let group = ProcessGroup::led_by(pid);
    tracing::info!(
        job = job_id,
        attempt = assignment.attempt,
        pid,
        "job started"
    );
    journal.started(pid);

    let (lines, queued) = line_channel();
    let mut readers = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(
            stdout,
            LogStream::Stdout,
            lines.clone(),
        )));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(
            stderr,
            LogStream::Stderr,
            lines.clone(),
        )));
    }
    drop(lines);
    let sender = tokio::spawn(batch::journal_batches(queued, journal));

    let supervised = supervise(&mut child, &group, &assignment, stops).await;

    // The shell is gone; its background processes may still hold the pipes. Read on for a
    // while (never past the kill deadline of a stop in progress), then kill what is left.
    let drain_until = supervised
        .kill_at
        .map_or(Instant::now() + DRAIN_AFTER_EXIT, |kill_at| {
            kill_at.min(Instant::now() + DRAIN_AFTER_EXIT)
        });
    if timeout_at(drain_until, join_all(&mut readers))
        .await
        .is_err()
    {
        tracing::info!(
            job = job_id,
            "output still open after the shell exited; killing the job's processes"
        );
    }
    group.kill_and_release();
    if timeout_at(Instant::now() + DRAIN_AFTER_KILL, join_all(&mut readers))
        .await
        .is_err()
    {
        // A process that left the group (setsid) holds the pipes: stop reading them.
        tracing::warn!(
            job = job_id,
            "output still open after killing the job's process group; closing it"
        );
        readers.iter().for_each(JoinHandle::abort);
    }
    let lines_sent = sender.await.unwrap_or_default();

    let (outcome, message) = match &supervised.ending {
        Ending::Exited => (JobOutcome::Exited, String::new()),
        Ending::Cancelled(reason) => (JobOutcome::Cancelled, reason.clone()),
        Ending::Interrupted(reason) => (JobOutcome::Interrupted, reason.clone()),
        Ending::TimedOut(limit) => (
            JobOutcome::TimedOut,
            format!("timed out after {}s", limit.as_secs()),
        ),
    };
    let (status, message) = match supervised.status {
        Ok(status) => (process::exit_code_and_signal(status), message),
        Err(err) => (
            (None, None),
            format!("cannot learn how the job's shell ended: {err}"),
        ),
    };
    tracing::info!(job = job_id, ?outcome, exit_code = ?status.0, signal = ?status.1, lines_sent, "job finished");
    finished(&job_id, outcome, status, message)
}

struct Supervised {
    status: std::io::Result<std::process::ExitStatus>,
    ending: Ending,
    /// When a stop in progress escalates to SIGKILL, if it has not yet.
    kill_at: Option<Instant>,
}

/// Waits for the shell to exit, applying the timeout and stop requests on the way.
async fn supervise(
    child: &mut Child,
    group: &ProcessGroup,
    assignment: &Assignment,
    stops: &mut mpsc::UnboundedReceiver<Stop>,
) -> Supervised {
    let job = assignment.job_id;
    let deadline = Instant::now() + assignment.timeout;
    let mut ending = Ending::Exited;
    let mut kill_at: Option<Instant> = None;
    let mut stops_open = true;
    loop {
        let stopping = ending != Ending::Exited;
        tokio::select! {
            status = child.wait() => return Supervised { status, ending, kill_at },
            () = sleep_until(deadline), if !stopping => {
                let limit = assignment.timeout;
                tracing::info!(%job, limit_secs = limit.as_secs(), "job timed out; stopping it");
                ending = Ending::TimedOut(limit);
                group.terminate();
                kill_at = Some(Instant::now() + assignment.kill_grace);
            }
            stop = stops.recv(), if stops_open => match stop {
                None => stops_open = false,
                Some(Stop::Cancel(reason)) => {
                    if !stopping {
                        tracing::info!(%job, reason, "cancelling the job");
                        ending = Ending::Cancelled(reason);
                        group.terminate();
                        kill_at = Some(Instant::now() + assignment.kill_grace);
                    }
                }
                Some(Stop::Interrupt(reason)) => {
                    if !stopping {
                        tracing::info!(%job, reason, "interrupting the job");
                        ending = Ending::Interrupted(reason);
                        group.terminate();
                        kill_at = Some(Instant::now() + assignment.kill_grace);
                    }
                }
                Some(Stop::Kill) => {
                    tracing::info!(%job, "killing the job");
                    if !stopping {
                        ending = Ending::Cancelled("the server refused the worker".into());
                    }
                    group.kill();
                    kill_at = None;
                }
            },
            () = sleep_until_some(kill_at) => {
                tracing::info!(%job, "the job outlived its grace period; killing it");
                group.kill();
                kill_at = None;
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn join_all(handles: &mut [JoinHandle<()>]) {
    for handle in handles.iter_mut() {
        if !handle.is_finished() {
            let _ = handle.await;
        }
    }
}

fn finished(
    job_id: &str,
    outcome: JobOutcome,
    (exit_code, signal): (Option<i32>, Option<i32>),
    message: String,
) -> JobFinished {
    JobFinished {
        job_id: job_id.to_string(),
        outcome: outcome as i32,
        exit_code,
        signal,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use hodei_proto::v1::{JobStarted, LogBatch, LogChunk, WorkerMessage, worker_message::Msg};
    use hodei_testkit::process::live_processes_in_group;

    use super::*;
    use crate::journal::Unsent;

    const JOB_ID: &str = "0192f0c4-8a51-7c3e-9f6e-2d8b1c7a5e40";

    /// `command` as the first attempt of job [`JOB_ID`], with a timeout no test reaches.
    fn assignment(command: &str) -> Assignment {
        Assignment {
            job_id: JOB_ID.parse().expect("a job id"),
            attempt: 1,
            command: command.into(),
            env: BTreeMap::new(),
            secrets: Default::default(),
            timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(5),
            first_sequence: 1,
        }
    }

    /// What a session would send of the job's journal, as messages, acknowledging everything.
    fn collect(journal: Arc<Journal>) -> mpsc::Receiver<WorkerMessage> {
        let (out, sent) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(unsent) = journal.next_unsent().await {
                let msg = match unsent {
                    Unsent::Started(pid) => Msg::JobStarted(JobStarted {
                        job_id: journal.job_id().to_string(),
                        attempt: journal.attempt(),
                        pid,
                    }),
                    Unsent::Lines { first, chunks } => {
                        journal.ack(first + chunks.len() as u64 - 1);
                        Msg::Logs(LogBatch {
                            job_id: journal.job_id().to_string(),
                            lines: chunks,
                            first_sequence: first,
                        })
                    }
                };
                if out.send(WorkerMessage { msg: Some(msg) }).await.is_err() {
                    return;
                }
            }
        });
        sent
    }

    fn start(assignment: Assignment) -> (RunningJob, mpsc::Receiver<WorkerMessage>) {
        let journal = Journal::new(
            assignment.job_id.to_string(),
            assignment.attempt,
            assignment.first_sequence,
            crate::journal::DEFAULT_CAPACITY,
        );
        let sent = collect(journal.clone());
        (RunningJob::start(assignment, journal), sent)
    }

    /// Runs a job to its end, returning what it sent (in order) and its report.
    async fn run_to_end(
        assignment: Assignment,
        stop: Option<(Duration, Stop)>,
    ) -> (Vec<Msg>, JobFinished) {
        let (mut job, mut sent) = start(assignment);
        let collector = tokio::spawn(async move {
            let mut messages = Vec::new();
            while let Some(message) = sent.recv().await {
                messages.push(message.msg.expect("a message"));
            }
            messages
        });
        if let Some((after, request)) = stop {
            tokio::time::sleep(after).await;
            job.stop(request);
        }
        let report = job.finished().await;
        drop(job);
        (collector.await.unwrap(), report)
    }

    fn started_pid(messages: &[Msg]) -> u32 {
        match messages.first() {
            Some(Msg::JobStarted(started)) => started.pid,
            other => panic!("the first message is not JobStarted: {other:?}"),
        }
    }

    fn lines(messages: &[Msg], stream: LogStream) -> Vec<String> {
        messages
            .iter()
            .filter_map(|message| match message {
                Msg::Logs(batch) => Some(batch.lines.iter()),
                _ => None,
            })
            .flatten()
            .filter(|chunk: &&LogChunk| chunk.stream == stream as i32)
            .map(|chunk| String::from_utf8_lossy(&chunk.data).into_owned())
            .collect()
    }

    /// Processes of the group that are alive (not zombies), waiting up to a second for
    /// signalled ones to die.
    async fn survivors_of_group(pgid: u32) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let alive = live_processes_in_group(pgid);
            if alive.is_empty() || Instant::now() >= deadline {
                return alive;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn outcome(report: &JobFinished) -> JobOutcome {
        JobOutcome::try_from(report.outcome).unwrap()
    }

    #[tokio::test]
    async fn a_job_reports_its_start_its_output_per_stream_and_its_exit_code() {
        let (messages, report) = run_to_end(
            assignment("echo out1; echo err1 >&2; echo out2; exit 3"),
            None,
        )
        .await;

        assert!(started_pid(&messages) > 0);
        assert_eq!(lines(&messages, LogStream::Stdout), vec!["out1", "out2"]);
        assert_eq!(lines(&messages, LogStream::Stderr), vec!["err1"]);
        assert_eq!(outcome(&report), JobOutcome::Exited);
        assert_eq!((report.exit_code, report.signal), (Some(3), None));
        assert_eq!(report.job_id, JOB_ID);
    }

    #[tokio::test]
    async fn a_shell_killed_by_a_signal_reports_128_plus_the_signal() {
        let (_, report) = run_to_end(assignment("kill -KILL $$"), None).await;

        assert_eq!(outcome(&report), JobOutcome::Exited);
        assert_eq!((report.exit_code, report.signal), (Some(137), Some(9)));
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_started_is_reported_as_spawn_failed() {
        let mut assignment = assignment("true");
        // A NUL byte cannot be passed to exec, so the spawn itself fails.
        assignment.env.insert("BROKEN".into(), "a\0b".into());

        let (messages, report) = run_to_end(assignment, None).await;

        assert!(messages.is_empty(), "{messages:?}");
        assert_eq!(outcome(&report), JobOutcome::SpawnFailed);
        assert!(
            report.message.starts_with("cannot start /bin/sh"),
            "{}",
            report.message
        );
    }

    #[tokio::test]
    async fn output_reaches_the_session_while_the_job_is_still_running() {
        let (mut job, mut sent) = start(assignment("echo first; sleep 30; echo never"));

        let first_lines = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match sent.recv().await.and_then(|m| m.msg) {
                    Some(Msg::Logs(batch)) => return batch.lines,
                    Some(_) => continue,
                    None => panic!("the session queue closed"),
                }
            }
        })
        .await
        .expect("the first line arrives without waiting for the job to end");

        assert_eq!(first_lines.len(), 1);
        assert_eq!(first_lines[0].data, "first");
        job.stop(Stop::Cancel("done looking".into()));
        assert_eq!(outcome(&job.finished().await), JobOutcome::Cancelled);
    }

    #[tokio::test]
    async fn many_lines_arrive_complete_and_in_order_before_the_report() {
        let (messages, report) = run_to_end(
            assignment("i=0; while [ $i -lt 5000 ]; do echo line$i; i=$((i+1)); done"),
            None,
        )
        .await;

        let expected: Vec<String> = (0..5000).map(|i| format!("line{i}")).collect();
        assert_eq!(lines(&messages, LogStream::Stdout), expected);
        assert_eq!(report.exit_code, Some(0));
    }

    #[tokio::test]
    async fn a_cancelled_job_and_its_background_children_all_die() {
        let (messages, report) = run_to_end(
            assignment("sleep 300 & sleep 300"),
            Some((
                Duration::from_millis(300),
                Stop::Cancel("user asked".into()),
            )),
        )
        .await;

        assert_eq!(outcome(&report), JobOutcome::Cancelled);
        assert_eq!(report.message, "user asked");
        assert_eq!((report.exit_code, report.signal), (Some(143), Some(15)));
        assert_eq!(
            survivors_of_group(started_pid(&messages)).await,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn a_job_over_its_timeout_is_stopped_with_its_children_and_reported_timed_out() {
        let mut assignment = assignment("sleep 300 & sleep 300");
        assignment.timeout = Duration::from_secs(1);
        let started = Instant::now();

        let (messages, report) = run_to_end(assignment, None).await;

        assert_eq!(outcome(&report), JobOutcome::TimedOut);
        assert_eq!(report.message, "timed out after 1s");
        assert_eq!(report.exit_code, Some(143));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            survivors_of_group(started_pid(&messages)).await,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn a_job_ignoring_sigterm_is_killed_when_the_grace_runs_out() {
        let mut assignment = assignment("trap '' TERM; sleep 300 & sleep 300");
        assignment.kill_grace = Duration::from_millis(700);
        let cancelled_at = Duration::from_millis(300);
        let started = Instant::now();

        let (messages, report) = run_to_end(
            assignment,
            Some((cancelled_at, Stop::Cancel("stop".into()))),
        )
        .await;

        let took = started.elapsed();
        assert_eq!(outcome(&report), JobOutcome::Cancelled);
        assert_eq!((report.exit_code, report.signal), (Some(137), Some(9)));
        assert!(
            took >= Duration::from_millis(1000),
            "killed before the grace: {took:?}"
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert_eq!(
            survivors_of_group(started_pid(&messages)).await,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipes_is_killed_shortly_after_the_shell_exits() {
        let started = Instant::now();

        let (messages, report) = run_to_end(assignment("echo bye; sleep 300 &"), None).await;

        let took = started.elapsed();
        assert_eq!(outcome(&report), JobOutcome::Exited);
        assert_eq!(report.exit_code, Some(0));
        assert_eq!(lines(&messages, LogStream::Stdout), vec!["bye"]);
        assert!(
            took >= DRAIN_AFTER_EXIT,
            "did not wait for the pipes: {took:?}"
        );
        assert!(took < DRAIN_AFTER_EXIT + Duration::from_secs(2), "{took:?}");
        assert_eq!(
            survivors_of_group(started_pid(&messages)).await,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn a_kill_request_ends_the_job_at_once() {
        let started = Instant::now();

        let (messages, report) = run_to_end(
            assignment("trap '' TERM; sleep 300"),
            Some((Duration::from_millis(200), Stop::Kill)),
        )
        .await;

        assert_eq!(report.signal, Some(9));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            survivors_of_group(started_pid(&messages)).await,
            Vec::<u32>::new()
        );
    }

    #[tokio::test]
    async fn dropping_a_running_job_kills_its_whole_process_group() {
        let (job, mut sent) = start(assignment("sleep 300 & sleep 300"));
        let Some(Msg::JobStarted(started)) = sent.recv().await.and_then(|m| m.msg) else {
            panic!("expected JobStarted");
        };
        assert!(!live_processes_in_group(started.pid).is_empty());

        drop(job);

        assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
    }
}

//! The worker's session against a fake server, in-process: registration, jobs, cancel,
//! shutdown, termination and a lost connection.

mod support;

use std::time::{Duration, Instant};

use hodei_proto::v1::{JobOutcome, LogStream, worker_message::Msg};
use hodei_worker::{Config, WorkerError, config::Token, token_file::TokenSource};
use support::{DEADLINE, FIRST, FakeServer, JOB_1, SECOND, TOKEN, WORKER_ID, survivors_of_group};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

fn config(url: &str, token: &str) -> Config {
    Config {
        server: url.to_string(),
        worker_id: WORKER_ID.to_string(),
        token: Token::new(token),
        token_source: TokenSource::Variable,
        tls_ca: None,
        register_timeout: Duration::from_secs(10),
        reconnect_grace: Duration::from_secs(10),
        resume_buffer_bytes: hodei_worker::journal::DEFAULT_CAPACITY,
    }
}

/// A worker running in this process; `terminate` stands in for SIGTERM.
struct Worker {
    task: JoinHandle<Result<(), WorkerError>>,
    terminate: Option<oneshot::Sender<()>>,
}

impl Worker {
    fn start(config: Config) -> Self {
        let (terminate, signal) = oneshot::channel::<()>();
        let signal = async move {
            if signal.await.is_err() {
                std::future::pending::<()>().await;
            }
            "SIGTERM"
        };
        Self {
            task: tokio::spawn(hodei_worker::run(config, signal)),
            terminate: Some(terminate),
        }
    }

    fn terminate(&mut self) {
        let _ = self.terminate.take().expect("not yet terminated").send(());
    }

    async fn result(self) -> Result<(), WorkerError> {
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the worker ends in time")
            .expect("the worker task does not panic")
    }
}

#[tokio::test]
async fn given_a_valid_token_when_the_worker_starts_then_it_registers_and_says_ready_first() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));

    let mut session = fake.session().await;

    let registrations = fake.registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0].worker_id, WORKER_ID);
    assert_eq!(registrations[0].token, TOKEN);
    assert_eq!(registrations[0].agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!registrations[0].hostname.is_empty());
    // Idle, it heartbeats without a job.
    match session.recv().await {
        Some(Msg::Heartbeat(beat)) => assert_eq!(beat.running_job_id, ""),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    session.shutdown("test over", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_an_assigned_job_when_it_runs_then_its_start_output_and_exit_are_reported_in_order() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session
        .assign(
            JOB_1,
            "echo hello; echo $JOB_VAR $HODEI_JOB_ID >&2; sleep 0.5; exit 7",
        )
        .await;
    let job = session.job_until_finished().await;

    assert_eq!(job.started.as_ref().expect("started").job_id, JOB_1);
    assert_eq!(job.stdout(), vec!["hello"]);
    assert_eq!(job.stderr(), vec![format!("from-the-job {JOB_1}")]);
    assert_eq!(job.outcome(), JobOutcome::Exited);
    assert_eq!(job.finished().exit_code, Some(7));
    assert_eq!(job.finished().job_id, JOB_1);
    assert!(
        job.heartbeats.iter().any(|running| running == JOB_1),
        "heartbeats while running: {:?}",
        job.heartbeats
    );
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_one_job_done_when_another_is_assigned_then_the_worker_runs_it_too() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    for job_id in [FIRST, SECOND] {
        session.assign(job_id, "echo $HODEI_JOB_ID").await;
        let job = session.job_until_finished().await;
        assert_eq!(job.stdout(), vec![job_id]);
        assert_eq!(job.finished().exit_code, Some(0));
    }
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_running_job_when_the_server_cancels_it_then_it_dies_with_its_children_and_is_reported_cancelled()
 {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session
        .assign(JOB_1, "echo started; sleep 300 & sleep 300")
        .await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    let Some(Msg::Logs(_)) = session.recv_skipping_heartbeats().await else {
        panic!("expected the first line");
    };
    session.cancel(JOB_1, "user asked").await;
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::Cancelled);
    assert_eq!(job.finished().message, "user asked");
    assert_eq!(job.finished().exit_code, Some(143));
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_running_job_when_a_second_is_assigned_then_it_is_refused_and_the_first_goes_on() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session.assign(FIRST, "sleep 1; echo first done").await;
    let Some(Msg::JobStarted(_)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    session.assign(SECOND, "echo never").await;
    let Some(Msg::JobFinished(refused)) = session.recv_skipping_heartbeats().await else {
        panic!("expected the refusal");
    };
    let first = session.job_until_finished().await;

    assert_eq!(refused.job_id, SECOND);
    assert_eq!(refused.outcome, JobOutcome::SpawnFailed as i32);
    assert_eq!(
        refused.message,
        format!("worker is already running job {FIRST}")
    );
    assert_eq!(first.stdout(), vec!["first done"]);
    assert_eq!(first.finished().job_id, FIRST);
    assert_eq!(first.outcome(), JobOutcome::Exited);
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_an_assignment_without_a_timeout_or_a_valid_job_id_then_it_is_refused_with_the_contracts_reason_and_nothing_runs()
 {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    // Zero is not "no limit": every job has a timeout.
    session.assign_with(FIRST, "echo never", 0, 1000).await;
    let Some(Msg::JobFinished(no_timeout)) = session.recv_skipping_heartbeats().await else {
        panic!("expected the refusal of the assignment without a timeout");
    };
    session.assign("job-1", "echo never").await;
    let Some(Msg::JobFinished(bad_id)) = session.recv_skipping_heartbeats().await else {
        panic!("expected the refusal of the assignment with a bad job id");
    };

    assert_eq!(no_timeout.job_id, FIRST);
    assert_eq!(no_timeout.outcome, JobOutcome::SpawnFailed as i32);
    assert_eq!(
        no_timeout.message,
        "invalid assignment: timeout_seconds must be positive"
    );
    assert_eq!(bad_id.job_id, "job-1");
    assert_eq!(bad_id.outcome, JobOutcome::SpawnFailed as i32);
    assert!(
        bad_id.message.starts_with("invalid job id \"job-1\""),
        "{}",
        bad_id.message
    );
    // Neither started anything: the next valid assignment runs as usual.
    session.assign(SECOND, "echo $HODEI_JOB_ID").await;
    let job = session.job_until_finished().await;
    assert_eq!(job.stdout(), vec![SECOND]);
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_running_job_when_the_server_says_shutdown_then_the_job_finishes_is_reported_and_the_worker_exits_0()
 {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 0.5; echo finished").await;
    session.shutdown("server draining", false).await;
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::Exited);
    assert_eq!(job.stdout(), vec!["finished"]);
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_running_job_when_the_server_says_shutdown_now_then_the_job_is_cancelled_with_the_reason()
 {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 300").await;
    let Some(Msg::JobStarted(_)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    session.shutdown("worker retired", true).await;
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::Cancelled);
    assert_eq!(job.finished().message, "worker retired");
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_no_job_when_the_server_says_shutdown_then_the_worker_exits_0_at_once() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;
    let asked = Instant::now();

    session.shutdown("idle timeout", false).await;
    session.expect_close().await;

    worker.result().await.expect("clean exit");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}

/// The lines of a batch with their sequences.
fn numbered(batch: &hodei_proto::v1::LogBatch) -> Vec<(u64, String)> {
    batch
        .lines
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            (
                batch.first_sequence + i as u64,
                String::from_utf8_lossy(&chunk.data).into_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn given_a_running_job_when_the_server_drops_the_stream_then_the_worker_resumes_and_resends_what_was_not_stored()
 {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;
    session.info(0).await;

    session
        .assign_numbered(
            JOB_1,
            "echo one; echo two; sleep 1; echo three; sleep 300",
            7,
        )
        .await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match session.recv_skipping_heartbeats().await {
            Some(Msg::Logs(batch)) => seen.extend(numbered(&batch)),
            other => panic!("expected output, got {other:?}"),
        }
    }
    assert_eq!(seen, [(7, "one".to_string()), (8, "two".to_string())]);
    // Only the first line is acknowledged before the stream breaks.
    session.ack(JOB_1, 7).await;
    session.end_stream();

    let mut resumed = fake.raw_session().await;
    let Some(Msg::Resume(resume)) = resumed.recv().await else {
        panic!("expected Resume first on the new stream");
    };
    assert_eq!(resume.job_id, JOB_1);
    assert_eq!(resume.attempt, 1);
    assert_eq!(resume.pid, started.pid, "the same process runs on");
    assert!(resume.finished.is_none());
    // The new server says it stored up to 7: the worker re-sends from 8.
    resumed.info(7).await;
    let mut again = Vec::new();
    while again.len() < 2 {
        match resumed.recv_skipping_heartbeats().await {
            Some(Msg::Logs(batch)) => again.extend(numbered(&batch)),
            other => panic!("expected output, got {other:?}"),
        }
    }
    assert_eq!(again, [(8, "two".to_string()), (9, "three".to_string())]);
    assert!(
        !survivors_of_group(started.pid).await.is_empty(),
        "the job kept running"
    );

    resumed.shutdown("test over", true).await;
    let record = resumed.job_until_finished().await;
    assert_eq!(record.outcome(), JobOutcome::Cancelled);
    resumed.expect_close().await;
    worker.result().await.expect("clean exit");
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_a_job_that_ends_while_disconnected_then_its_end_is_resent_until_recorded() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;
    session.info(0).await;
    session
        .assign_numbered(JOB_1, "echo a; sleep 1; echo b", 1)
        .await;
    let Some(Msg::JobStarted(_)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    session.end_stream();

    // Re-connected, but told nothing until the job has ended: nothing is sent meanwhile.
    let mut second = fake.raw_session().await;
    assert!(matches!(second.recv().await, Some(Msg::Resume(_))));
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.info(0).await;
    let mut lines = Vec::new();
    let finished = loop {
        match second.recv_skipping_heartbeats().await {
            Some(Msg::Logs(batch)) => lines.extend(numbered(&batch)),
            Some(Msg::JobFinished(finished)) => break finished,
            other => panic!("expected output then the end, got {other:?}"),
        }
    };
    assert_eq!(lines, [(1, "a".to_string()), (2, "b".to_string())]);
    assert_eq!(finished.exit_code, Some(0));
    // The stream breaks before the end is confirmed: it is sent again, and only it.
    second.end_stream();
    let mut third = fake.raw_session().await;
    let Some(Msg::Resume(resume)) = third.recv().await else {
        panic!("expected Resume");
    };
    assert_eq!(resume.job_id, JOB_1);
    assert_eq!(resume.finished.as_ref().map(|f| f.exit_code), Some(Some(0)));
    third.info(2).await;
    match third.recv_skipping_heartbeats().await {
        Some(Msg::JobFinished(again)) => assert_eq!(again, finished),
        other => panic!("expected the end again, got {other:?}"),
    }
    third.recorded(JOB_1).await;
    // Idle now: a new job is taken.
    third.assign_numbered(SECOND, "echo next", 1).await;
    assert!(matches!(
        third.recv_skipping_heartbeats().await,
        Some(Msg::JobStarted(_))
    ));
    third.shutdown("test over", false).await;
    let record = third.job_until_finished().await;
    assert_eq!(record.stdout(), ["next"]);
    third.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_an_idle_worker_when_the_stream_fails_with_an_error_then_it_reconnects_idle() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session
        .fail_stream(tonic::Status::unavailable("server restarting"))
        .await;

    let mut resumed = fake.raw_session().await;
    let Some(Msg::Resume(resume)) = resumed.recv().await else {
        panic!("expected Resume first on the new stream");
    };
    assert_eq!(resume.job_id, "", "an idle worker holds nothing");
    assert!(
        resume.previous_end.contains("server restarting"),
        "{}",
        resume.previous_end
    );
    resumed.shutdown("test over", false).await;
    resumed.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_no_server_for_the_reconnect_grace_then_the_job_is_stopped_and_the_worker_exits_1() {
    let mut fake = FakeServer::start().await;
    let mut config = config(&fake.url, TOKEN);
    config.reconnect_grace = Duration::from_secs(1);
    let worker = Worker::start(config);
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 300 & sleep 300").await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    let lost = Instant::now();
    session.end_stream();
    drop(session);
    drop(fake);

    let err = worker.result().await.expect_err("the worker fails");
    assert!(matches!(err, WorkerError::Unreachable { .. }), "{err}");
    assert_eq!(err.exit_code(), 1);
    assert!(
        lost.elapsed() >= Duration::from_secs(1),
        "gave up before the grace: {:?}",
        lost.elapsed()
    );
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_a_running_job_when_the_server_refuses_the_reconnect_then_the_job_is_killed_at_once()
{
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session
        .assign(JOB_1, "trap '' TERM; sleep 300 & sleep 300")
        .await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    // Meanwhile the server declared the worker lost: its credential no longer resolves.
    fake.refuse_sessions();
    let lost = Instant::now();
    session.end_stream();

    let err = worker.result().await.expect_err("the worker fails");
    assert!(matches!(err, WorkerError::LostConnection(_)), "{err}");
    assert!(
        err.to_string().contains("unknown or expired session"),
        "{err}"
    );
    assert!(
        lost.elapsed() < Duration::from_secs(5),
        "not at once: {:?}",
        lost.elapsed()
    );
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_a_running_job_when_the_worker_is_terminated_then_the_job_is_reported_interrupted_not_cancelled_and_the_exit_is_clean()
 {
    let mut fake = FakeServer::start().await;
    let mut worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 300 & sleep 300").await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    worker.terminate();
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::Interrupted);
    assert_eq!(
        job.finished().message,
        "worker terminated by its platform (SIGTERM)"
    );
    session.expect_close().await;
    worker.result().await.expect("clean exit");
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_a_job_over_its_timeout_then_it_is_reported_timed_out() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session.assign_with(JOB_1, "sleep 300", 1, 500).await;
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::TimedOut);
    assert_eq!(job.finished().exit_code, Some(143));
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_flood_of_output_then_every_line_arrives_in_order_in_few_batches() {
    let mut fake = FakeServer::start().await;
    let worker = Worker::start(config(&fake.url, TOKEN));
    let mut session = fake.session().await;

    session
        .assign(JOB_1, "seq 1 50000; printf 'no newline'")
        .await;
    let job = session.job_until_finished().await;

    let mut expected: Vec<String> = (1..=50000).map(|i| i.to_string()).collect();
    expected.push("no newline".into());
    assert_eq!(job.stdout(), expected);
    assert!(
        job.batches < 50000 / 10,
        "{} batches for 50001 lines: lines were not coalesced",
        job.batches
    );
    assert!(
        job.lines
            .iter()
            .all(|(s, _)| *s == LogStream::Stdout as i32)
    );
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_a_token_the_server_rejects_then_the_worker_fails_at_once_without_retrying() {
    let fake = FakeServer::start().await;
    let started = Instant::now();

    let err = Worker::start(config(&fake.url, "replayed-token"))
        .result()
        .await
        .expect_err("refused");

    assert!(
        matches!(
            &err,
            WorkerError::Refused {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the server refused the registration: token already used (Unauthenticated)"
    );
    assert_eq!(fake.registrations().len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn given_a_server_that_appears_late_when_the_worker_starts_then_it_keeps_trying_and_registers()
 {
    // Reserve a port, free it, and start the fake on it a little later.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let worker = Worker::start(config(&format!("http://127.0.0.1:{port}"), TOKEN));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the reserved port");
    let mut fake = FakeServer::serve(listener, None).await;

    let mut session = fake.session().await;

    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

#[tokio::test]
async fn given_no_server_when_the_register_timeout_passes_then_the_worker_gives_up_saying_so() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut config = config(&url, TOKEN);
    config.register_timeout = Duration::from_secs(2);
    let started = Instant::now();

    let err = Worker::start(config).result().await.expect_err("gives up");

    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach the server at {url} (tried for ")),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
}

#[tokio::test]
async fn given_a_tls_server_and_its_ca_when_the_worker_starts_then_it_registers_over_tls() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = certified.cert.pem();
    let key = certified.signing_key.serialize_pem();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut fake = FakeServer::serve(listener, Some((cert.clone(), key))).await;
    let mut config = config(&fake.url, TOKEN);
    config.tls_ca = Some(hodei_worker::config::TlsCa {
        pem: cert.into_bytes(),
        source: "test".into(),
    });
    let worker = Worker::start(config);

    let mut session = fake.session().await;
    session.assign(JOB_1, "echo over tls").await;
    let job = session.job_until_finished().await;

    assert_eq!(job.stdout(), vec!["over tls"]);
    session.shutdown("done", false).await;
    session.expect_close().await;
    worker.result().await.expect("clean exit");
}

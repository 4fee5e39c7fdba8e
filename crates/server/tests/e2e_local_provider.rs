//! End to end with workers as local processes: a real `hodei-server` (in process), real
//! `hodei-worker` processes, real gRPC over loopback, a real PostgreSQL per test.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context;
use common::TestServer;
use hodei_domain::{OneTimeToken, WorkerId};
use hodei_proto::v1 as pb;
use hodei_testkit::{
    Probe,
    jobs::{assert_state, describe, is_final, spec, state_of},
    log_lines::{assert_contiguous, texts},
    probe_value,
    process::{Signal, is_running, send_signal},
    wait_for,
};
use tonic::Code;

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// The pid of a local worker, from the resource the provider recorded (`pid/<n>`).
async fn worker_pid(server: &TestServer, worker_id: &str) -> anyhow::Result<u32> {
    let (resource,): (Option<String>,) =
        sqlx::query_as("SELECT resource FROM workers WHERE id = $1::uuid")
            .bind(worker_id)
            .fetch_one(server.store.pool())
            .await?;
    let resource = resource.ok_or_else(|| anyhow::anyhow!("worker {worker_id} has no resource"))?;
    Ok(resource.trim_start_matches("pid/").parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_queued_job_when_a_worker_registers_then_the_job_runs_and_its_logs_arrive_in_order()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server.queue("echo one; echo two; echo three").await?;

    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_eq!(texts(&lines), ["one", "two", "three"]);
    assert_contiguous(&lines);
    assert!(
        lines
            .iter()
            .all(|l| l.stream == pb::LogStream::Stdout as i32)
    );

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    // What PostgreSQL holds, not only what the API says.
    let (state, exit_code, worker): (String, Option<i32>, uuid::Uuid) =
        sqlx::query_as("SELECT state, exit_code, worker_id FROM jobs WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!((state.as_str(), exit_code), ("succeeded", Some(0)));
    // The worker registered with its token: the token is consumed, the worker recorded it.
    let (consumed,): (bool,) =
        sqlx::query_as("SELECT consumed_at IS NOT NULL FROM worker_tokens WHERE worker_id = $1")
            .bind(worker)
            .fetch_one(server.store.pool())
            .await?;
    assert!(consumed, "the worker's token was not consumed");

    // Ephemeral: the worker is gone afterwards.
    server.wait_no_workers(Duration::from_secs(20)).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].1, "terminated");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_fails_the_job_with_that_code_and_keeps_stderr_marked_as_stderr()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("echo to-stdout; echo oops >&2; exit 3")
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Failed);
    assert_eq!(job.exit_code, Some(3));
    assert_eq!(job.attempts, 1, "a non-zero exit must not be retried");
    assert!(job.reason.contains("exited with code 3"), "{}", job.reason);

    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    let stderr: Vec<_> = lines
        .iter()
        .filter(|l| l.stream == pb::LogStream::Stderr as i32)
        .collect();
    assert_eq!(stderr.len(), 1, "{lines:?}");
    assert_eq!(stderr[0].data.as_ref(), b"oops");
    let (stored_stream,): (i16,) =
        sqlx::query_as("SELECT stream FROM job_logs WHERE job_id = $1::uuid AND data = 'oops'")
            .bind(&id)
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!(stored_stream, 2, "stderr is stored as stream 2");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_the_first_line_before_the_job_ends() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; sleep 0.2; done")
        .await?;
    let mut stream = server.subscribe(&id, 1).await?;
    let first = tokio::time::timeout(JOB_TIMEOUT, stream.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("stream ended without a line"))?;
    let first_arrived = Instant::now();
    assert_eq!(first.data.as_ref(), b"line-1");
    // Live: the job is still running when its first line arrives.
    let job = server.get_job(&id).await?;
    assert_state(&job, pb::JobState::Running);

    let mut rest = Vec::new();
    while let Some(line) = stream.message().await? {
        rest.push(line);
    }
    assert_eq!(rest.len(), 9);
    let finished = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_eq!(state_of(&finished), pb::JobState::Succeeded);
    assert!(
        first_arrived.elapsed() >= Duration::from_millis(1000),
        "the job (about 2 s) ended too soon after the first line: the line was not live"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_joining_mid_job_gets_history_then_live_lines_without_gap_or_duplicate()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("i=1; while [ $i -le 60 ]; do echo n-$i; i=$((i+1)); sleep 0.05; done")
        .await?;
    // Join once some output exists.
    wait_for("the first 10 lines to be stored", JOB_TIMEOUT, || async {
        let n = server.store.last_log_sequence(id.parse()?).await?;
        Ok(if n >= 10 {
            Probe::Ready(())
        } else {
            Probe::Pending(format!("{n} lines"))
        })
    })
    .await?;
    let job = server.get_job(&id).await?;
    assert_eq!(
        state_of(&job),
        pb::JobState::Running,
        "joined too late to prove anything"
    );

    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_contiguous(&lines);
    let expected: Vec<String> = (1..=60).map(|i| format!("n-{i}")).collect();
    assert_eq!(texts(&lines), expected);

    // Resuming from a sequence gives exactly the rest.
    let mut resumed = server.subscribe(&id, 58).await?;
    let mut tail = Vec::new();
    while let Some(line) = resumed.message().await? {
        tail.push(line.sequence);
    }
    assert_eq!(tail, [58, 59, 60]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_job_kills_it_and_its_children_and_ends_cancelled()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("child.pid");
    let id = server
        .queue(&format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pid_file.display()
        ))
        .await?;
    let mut stream = server.subscribe(&id, 1).await?;
    let first = tokio::time::timeout(JOB_TIMEOUT, stream.message()).await??;
    assert_eq!(first.map(|l| l.data), Some("started".into()));
    let child: u32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    assert!(is_running(child));

    let response = server.cancel(&id, "test says stop").await?;
    assert_eq!(response.id, id);
    let job = server.wait_finished(&id, Duration::from_secs(20)).await?;
    assert_state(&job, pb::JobState::Cancelled);
    assert!(job.reason.contains("test says stop"), "{}", job.reason);
    wait_for(
        "the job's child process to die",
        Duration::from_secs(10),
        || async {
            Ok(if is_running(child) {
                Probe::Pending(format!("pid {child} still running"))
            } else {
                Probe::Ready(())
            })
        },
    )
    .await?;

    // Cancelling again is refused with the reason.
    let again = server.cancel(&id, "").await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(
        again.message().contains("already ended (cancelled)"),
        "{}",
        again.message()
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_job_ends_it_at_once_without_a_worker() -> anyhow::Result<()> {
    // No worker may start: the only slot is taken by a long job.
    let server = TestServer::local(|s| s.max_workers = 1).await?;
    let blocker = server.queue("sleep 30").await?;
    server.wait_running(&blocker).await?;
    let queued = server.queue("echo never").await?;
    let job = server.cancel(&queued, "").await?;
    assert_eq!(state_of(&job), pb::JobState::Cancelled);
    assert_eq!(job.attempts, 0);
    server.cancel(&blocker, "").await?;
    server.wait_finished(&blocker, JOB_TIMEOUT).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_past_its_timeout_ends_timed_out() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let started = Instant::now();
    let id = server
        .queue_spec(pb::JobSpec {
            command: "echo begin; sleep 60".into(),
            timeout_seconds: Some(1),
            ..Default::default()
        })
        .await?;
    let job = server.wait_finished(&id, Duration::from_secs(30)).await?;
    assert_state(&job, pb::JobState::TimedOut);
    assert!(job.reason.contains("timed out after 1s"), "{}", job.reason);
    assert!(started.elapsed() < Duration::from_secs(30));
    server.shutdown().await
}

/// Registers like a worker would, returning the gRPC status on refusal.
async fn register(server: &TestServer, worker_id: &str, token: &str) -> Result<(), tonic::Status> {
    let mut agent = server
        .agent()
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    agent
        .register(pb::RegisterRequest {
            worker_id: worker_id.into(),
            token: token.into(),
            agent_version: "test".into(),
            hostname: "test".into(),
        })
        .await
        .map(|_| ())
}

/// Everything registration could change, as text.
async fn registration_state(server: &TestServer) -> anyhow::Result<String> {
    let tokens: Vec<(uuid::Uuid, bool)> = sqlx::query_as(
        "SELECT worker_id, consumed_at IS NOT NULL FROM worker_tokens ORDER BY worker_id",
    )
    .fetch_all(server.store.pool())
    .await?;
    let workers: Vec<(uuid::Uuid, String, bool)> =
        sqlx::query_as("SELECT id, state, session_hash IS NOT NULL FROM workers ORDER BY id")
            .fetch_all(server.store.pool())
            .await?;
    Ok(format!("{tokens:?} {workers:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registration_tokens_are_unauthenticated_with_distinct_messages_and_change_nothing()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    // Workers recorded directly, as the dispatcher would.
    let store = &hodei_store::Transitions::new(&server.store);
    let instance = &server.settings.instance;
    let soon = chrono::Utc::now() + chrono::Duration::seconds(60);

    let (fresh, fresh_token) = (WorkerId::new(), OneTimeToken::generate());
    store
        .insert_worker(&hodei_store::NewWorkerRow {
            id: fresh,
            instance,
            provider: "local",
            server: Some(server.server().server_id()),
            token: fresh_token.hash(),
            token_expires_at: soon,
        })
        .await?;
    let (other, _) = (WorkerId::new(), OneTimeToken::generate());
    store
        .insert_worker(&hodei_store::NewWorkerRow {
            id: other,
            instance,
            provider: "local",
            server: Some(server.server().server_id()),
            token: OneTimeToken::generate().hash(),
            token_expires_at: soon,
        })
        .await?;
    let (expired, expired_token) = (WorkerId::new(), OneTimeToken::generate());
    store
        .insert_worker(&hodei_store::NewWorkerRow {
            id: expired,
            instance,
            provider: "local",
            server: Some(server.server().server_id()),
            token: expired_token.hash(),
            token_expires_at: chrono::Utc::now() - chrono::Duration::seconds(1),
        })
        .await?;

    let mut messages = HashSet::new();
    let before = registration_state(&server).await?;
    for (case, worker, token) in [
        ("missing", fresh.to_string(), String::new()),
        ("malformed", fresh.to_string(), "not-a-token".to_string()),
        (
            "unknown",
            fresh.to_string(),
            OneTimeToken::generate().expose().to_string(),
        ),
        (
            "other worker",
            other.to_string(),
            fresh_token.expose().to_string(),
        ),
        (
            "expired",
            expired.to_string(),
            expired_token.expose().to_string(),
        ),
        (
            "bad worker id",
            "nope".to_string(),
            fresh_token.expose().to_string(),
        ),
    ] {
        let status = register(&server, &worker, &token).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert!(
            !status.message().contains(fresh_token.expose()),
            "{case}: the token leaked into the error"
        );
        assert!(
            messages.insert(status.message().to_string()),
            "{case}: message not distinct: {}",
            status.message()
        );
    }
    assert_eq!(
        registration_state(&server).await?,
        before,
        "a refused registration changed the database"
    );
    assert!(
        messages.iter().any(|m| m.contains("expired")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("different worker")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("missing")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("malformed token")),
        "{messages:?}"
    );

    // The genuine token works once; its replay is refused with its own message.
    register(&server, &fresh.to_string(), fresh_token.expose()).await?;
    let after_success = registration_state(&server).await?;
    let replay = register(&server, &fresh.to_string(), fresh_token.expose())
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::Unauthenticated);
    assert!(
        replay.message().contains("already been used"),
        "{}",
        replay.message()
    );
    assert!(messages.insert(replay.message().to_string()));
    assert_eq!(registration_state(&server).await?, after_success);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_a_valid_credential_is_refused() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let mut agent = server.agent().await?;
    let ready = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Ready(pb::Ready {})),
    };
    let status = agent
        .connect(tokio_stream::iter(vec![ready.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(tokio_stream::iter(vec![ready]));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", OneTimeToken::generate().expose()).parse()?,
    );
    let status = agent.connect(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("unknown or expired session"));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_with_at_most_four_workers_all_succeed_exactly_once() -> anyhow::Result<()> {
    let server = TestServer::local(|s| s.max_workers = 4).await?;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(server.queue(&format!("echo job-{i}; sleep 0.1")).await?);
    }
    // Watch the worker processes while the jobs run.
    let instance = server.settings.instance.clone();
    let provider = server.provider.clone();
    let watcher = tokio::spawn(async move {
        let mut most = 0;
        for _ in 0..2000 {
            let n = provider
                .list_managed(&instance)
                .await
                .map(|v| v.len())
                .unwrap_or(0);
            most = most.max(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        most
    });
    let mut most_in_server = 0;
    let server_ref = &server;
    for id in &ids {
        wait_for(&format!("job {id} to end"), JOB_TIMEOUT, || {
            most_in_server = most_in_server.max(server_ref.server().alive_workers());
            async move {
                let job = server_ref.get_job(id).await?;
                Ok(if is_final(job.state) {
                    Probe::Ready(())
                } else {
                    Probe::Pending(describe(&job))
                })
            }
        })
        .await?;
    }
    for (i, id) in ids.iter().enumerate() {
        let job = server.get_job(id).await?;
        assert_state(&job, pb::JobState::Succeeded);
        assert_eq!(job.attempts, 1, "job {i} ran more than once");
        let lines = server.follow_logs(id, JOB_TIMEOUT).await?;
        assert_eq!(texts(&lines), [format!("job-{i}")], "job {i} output");
    }
    watcher.abort();
    let most_processes = watcher.await.unwrap_or(0);
    assert!(
        most_in_server <= 4,
        "the server had {most_in_server} workers alive"
    );
    assert!(
        most_processes <= 4,
        "{most_processes} worker processes were alive at once"
    );
    let (workers,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM workers WHERE state = 'terminated'")
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!(workers, 20, "one ephemeral worker per job");
    server.wait_no_workers(Duration::from_secs(20)).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_has_its_job_requeued_and_completed_by_another_worker()
-> anyhow::Result<()> {
    let backoff = Duration::from_secs(2);
    let server = TestServer::local(|s| {
        s.retry_backoff = hodei_server::RetryBackoff {
            first: backoff,
            max: backoff,
        }
    })
    .await?;
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; sleep 2; echo done")
        .await?;
    let running = server.wait_running(&id).await?;
    let first_worker = running.worker_id.clone();
    let pid = worker_pid(&server, &first_worker).await?;
    send_signal(pid, Signal::SIGKILL)?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2);
    assert_ne!(job.worker_id, first_worker);
    assert_eq!(job.attempt_history.len(), 2);
    assert_eq!(job.attempt_history[0].outcome, "requeued");
    assert_eq!(job.attempt_history[0].worker_id, first_worker);
    assert!(
        job.attempt_history[0].reason.contains("worker lost"),
        "{:?}",
        job.attempt_history[0]
    );
    assert_eq!(job.attempt_history[1].outcome, "succeeded");
    // The second attempt waited out the retry backoff (both instants are PostgreSQL's).
    let first_end = timestamp(&job.attempt_history[0].finished_at)?;
    let second_start = timestamp(&job.attempt_history[1].started_at)?;
    assert!(
        second_start - first_end >= backoff,
        "attempt 2 started {:?} after attempt 1 ended; the backoff is {backoff:?}",
        second_start - first_end
    );

    let lines = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    assert!(lines.contains(&"attempt-2".to_string()), "{lines:?}");
    let rows = server.worker_rows().await?;
    assert!(
        rows.iter()
            .any(|(w, state, _)| *w == first_worker && state == "lost"),
        "{rows:?}"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_by_its_platform_mid_job_has_its_job_requeued_not_cancelled_and_it_succeeds_in_attempt_2()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; [ $HODEI_JOB_ATTEMPT = 1 ] && sleep 60; echo done")
        .await?;
    let running = server.wait_running(&id).await?;
    let first_worker = running.worker_id.clone();
    // What a platform does to a worker it wants gone: SIGTERM (a Pod deleted, `docker stop`).
    send_signal(worker_pid(&server, &first_worker).await?, Signal::SIGTERM)?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2, "{}", describe(&job));
    assert_eq!(job.attempt_history[0].outcome, "requeued");
    assert_eq!(job.attempt_history[0].worker_id, first_worker);
    assert_eq!(
        job.attempt_history[0].reason, "worker terminated by its platform (SIGTERM)",
        "{:?}",
        job.attempt_history[0]
    );
    assert_eq!(job.attempt_history[1].outcome, "succeeded");
    let lines = texts(&server.follow_logs(&id, JOB_TIMEOUT).await?);
    assert!(lines.contains(&"attempt-2".to_string()), "{lines:?}");
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    // It said why it left: retired, not lost.
    let rows = server.worker_rows().await?;
    assert!(
        rows.iter()
            .any(|(w, state, _)| *w == first_worker && state == "terminated"),
        "{rows:?}"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_output_lines_are_paged_by_size_so_every_page_fits_in_a_message() -> anyhow::Result<()>
{
    let server = TestServer::local(|_| {}).await?;
    // 200 lines of 60,000 bytes: 12 MB, three times the 4 MiB message limit of a client.
    let id = server
        .queue("i=0; while [ $i -lt 200 ]; do i=$((i+1)); printf \"%060000d\\n\" $i; done")
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);

    let mut logs = server.logs().await?;
    let (mut from, mut lines, mut pages) = (1, Vec::new(), 0);
    loop {
        let page = logs
            .get_logs(pb::GetLogsRequest {
                job_id: id.clone(),
                from_sequence: from,
                limit: 0,
            })
            .await
            .map_err(|s| anyhow::anyhow!("GetLogs from {from}: {s}"))?
            .into_inner();
        if page.lines.is_empty() {
            break;
        }
        pages += 1;
        from = page.next_sequence;
        lines.extend(page.lines);
    }
    assert_eq!(lines.len(), 200);
    assert_contiguous(&lines);
    assert!(lines.iter().all(|l| l.data.len() == 60_000));
    assert!(pages >= 3, "12 MB in {pages} page(s)");

    // A follower catching up on the same history gets every line too.
    let followed = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_eq!(followed.len(), 200);
    assert_contiguous(&followed);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_still_running_when_the_server_shuts_down_is_not_run_again()
-> anyhow::Result<()> {
    let mut server = TestServer::local(|s| s.shutdown_grace = Duration::from_secs(1)).await?;
    let id = server.queue("sleep 30").await?;
    let running = server.wait_running(&id).await?;
    let pid = worker_pid(&server, &running.worker_id).await?;
    // Frozen, the worker cannot confirm the cancel.
    send_signal(pid, Signal::SIGSTOP)?;
    server
        .cancel(&id, "no longer needed")
        .await
        .map_err(|s| anyhow::anyhow!("cancel: {s}"))?;
    server.restart().await?;

    // The frozen worker cannot move to the restarted server: once its lease has passed it is
    // destroyed and its attempt ends — cancelled, since a cancel was on record, rather than
    // waiting in the queue for the next worker to run it.
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Cancelled);
    assert!(job.reason.contains("no longer needed"), "{}", job.reason);
    assert_eq!(job.attempts, 1);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_ends_when_its_job_ends_even_if_this_server_was_not_the_one_to_end_it()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server.queue("echo before; sleep 60").await?;
    server.wait_running(&id).await?;
    let mut follower = server.subscribe(&id, 1).await?;
    let mut lines = Vec::new();
    // Following live: the first line has arrived, so the follower is subscribed.
    let first = tokio::time::timeout(Duration::from_secs(30), follower.message())
        .await
        .context("no line from the running job within 30 s")??;
    lines.extend(first);
    // Another instance (or a reply this one lost) ends the job: this server's log hub is not
    // told, only the database knows.
    let updated = sqlx::query(
        "UPDATE jobs SET state = 'cancelled', reason = 'ended elsewhere', \
         finished_at = now() WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(server.store.pool())
    .await?;
    let rest = async {
        while let Some(line) = follower.message().await? {
            lines.push(line);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(30), rest)
        .await
        .context("the follower did not end within 30 s of its job's end")??;
    assert_eq!(updated.rows_affected(), 1);
    assert_eq!(texts(&lines), ["before"]);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_claimed_for_a_worker_the_server_does_not_know_is_requeued_and_runs()
-> anyhow::Result<()> {
    // One worker slot, taken by a running job, so the dispatcher leaves the next job queued.
    let server = TestServer::local(|s| s.max_workers = 1).await?;
    let blocker = server.queue("sleep 2").await?;
    server.wait_running(&blocker).await?;
    let id = server.queue("echo reconciled").await?;

    // A claim whose reply was lost (a database outage at the wrong moment): committed in the
    // database for a worker the server never heard of.
    let ghost = WorkerId::new();
    let claimed = hodei_store::Transitions::new(&server.store)
        .claim_job_for_new_worker(
            &hodei_store::NewWorkerRow {
                id: ghost,
                instance: &server.settings.instance,
                provider: "local",
                // This server's own claim, whose reply it lost.
                server: Some(server.server().server_id()),
                token: OneTimeToken::generate().hash(),
                token_expires_at: chrono::Utc::now() + chrono::Duration::minutes(2),
            },
            None,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("nothing was left to claim"))?;
    assert_eq!(claimed.id.to_string(), id);

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.attempts, 2, "{}", describe(&job));
    assert_eq!(job.attempt_history[0].worker_id, ghost.to_string());
    assert!(
        job.attempt_history[0].reason.contains("no longer tracked"),
        "{:?}",
        job.attempt_history[0]
    );
    let rows = server.worker_rows().await?;
    assert!(
        rows.iter()
            .any(|(w, state, _)| *w == ghost.to_string() && state == "lost"),
        "{rows:?}"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_whose_worker_dies_before_confirming_ends_cancelled_and_never_runs_again()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("echo attempt-$HODEI_JOB_ATTEMPT; sleep 30")
        .await?;
    let running = server.wait_running(&id).await?;
    let pid = worker_pid(&server, &running.worker_id).await?;
    // Frozen, the worker cannot confirm the cancel; then it dies.
    send_signal(pid, Signal::SIGSTOP)?;
    server
        .cancel(&id, "no longer needed")
        .await
        .map_err(|s| anyhow::anyhow!("cancel: {s}"))?;
    // Ordering only: the cancel is on record before the worker dies.
    wait_for(
        "the cancel to be recorded on the job",
        JOB_TIMEOUT,
        || async {
            let (requested,): (Option<String>,) =
                sqlx::query_as("SELECT cancel_requested FROM jobs WHERE id = $1::uuid")
                    .bind(&id)
                    .fetch_one(server.store.pool())
                    .await?;
            Ok(probe_value(requested, Option::is_some))
        },
    )
    .await?;
    send_signal(pid, Signal::SIGKILL)?;

    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Cancelled);
    assert!(
        job.reason.contains("no longer needed") && job.reason.contains("before confirming"),
        "{}",
        job.reason
    );
    assert_eq!(job.attempts, 1, "a cancelled job must not run again");
    assert_eq!(job.attempt_history.len(), 1, "{:?}", job.attempt_history);
    server.wait_no_workers(Duration::from_secs(20)).await?;
    let again = server.get_job(&id).await?;
    assert_eq!(again.attempts, 1, "{}", describe(&again));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_heartbeating_is_declared_lost_and_its_job_requeued()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server
        .queue("if [ \"$HODEI_JOB_ATTEMPT\" = 1 ]; then sleep 60; fi; echo finished")
        .await?;
    let running = server.wait_running(&id).await?;
    let pid = worker_pid(&server, &running.worker_id).await?;
    let stopped = Instant::now();
    // SIGSTOP freezes the worker: its connection stays open, but silent.
    send_signal(pid, Signal::SIGSTOP)?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    let lost_after = stopped.elapsed();
    assert_state(&job, pb::JobState::Succeeded);
    assert!(
        job.attempt_history[0].reason.contains("no heartbeat"),
        "{:?}",
        job.attempt_history[0]
    );
    // heartbeat_timeout is 3 s in the test settings.
    assert!(
        lost_after >= Duration::from_secs(3),
        "declared lost after only {lost_after:?}"
    );
    // The frozen worker is destroyed (SIGKILL reaches stopped processes).
    wait_for(
        "the frozen worker to be destroyed",
        Duration::from_secs(20),
        || async {
            Ok(if is_running(pid) {
                Probe::Pending(format!("pid {pid} alive"))
            } else {
                Probe::Ready(())
            })
        },
    )
    .await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_server_gracefully_loses_no_job() -> anyhow::Result<()> {
    let mut server = TestServer::local(|s| {
        s.max_workers = 2;
        s.shutdown_grace = Duration::from_millis(200);
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(server.queue(&format!("sleep 1; echo ok-{i}")).await?);
    }
    server.wait_running(&ids[0]).await?;
    server.restart().await?;
    for id in &ids {
        let job = server.wait_finished(id, JOB_TIMEOUT).await?;
        assert_state(&job, pb::JobState::Succeeded);
    }
    // The job running at the restart moved to the restarted server with its worker: one attempt.
    let moved = server.get_job(&ids[0]).await?;
    assert_eq!(moved.attempts, 1, "{}", describe(&moved));
    server.wait_no_workers(Duration::from_secs(20)).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_with_jobs_queued_and_running_loses_no_job_and_running_jobs_resume_on_the_restarted_server()
-> anyhow::Result<()> {
    let mut server = TestServer::local(|s| s.max_workers = 2).await?;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.queue(&format!("sleep 1; echo ok-{i}")).await?);
    }
    server.wait_running(&ids[0]).await?;
    server.crash_and_restart().await?;
    for id in &ids {
        let job = server.wait_finished(id, JOB_TIMEOUT).await?;
        assert_state(&job, pb::JobState::Succeeded);
    }
    // Its worker kept it running and re-connected: not run again.
    let interrupted = server.get_job(&ids[0]).await?;
    assert_eq!(interrupted.attempts, 1, "{}", describe(&interrupted));
    assert!(
        !interrupted
            .attempt_history
            .iter()
            .any(|a| a.reason.contains("server restarted")),
        "{:?}",
        interrupted.attempt_history
    );
    server.wait_no_workers(Duration::from_secs(30)).await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_grpc_error_and_the_server_stays_up() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let mut jobs = server.jobs().await?;

    let submitter = jobs.clone();
    let queue = |spec: pb::JobSpec| {
        let mut jobs = submitter.clone();
        async move {
            jobs.queue_job(pb::QueueJobRequest { spec: Some(spec) })
                .await
        }
    };
    let cases = [
        ("empty command", spec(""), "command is empty"),
        (
            "zero timeout",
            pb::JobSpec {
                timeout_seconds: Some(0),
                ..spec("true")
            },
            "timeout_seconds must be greater than zero, got 0",
        ),
        (
            "negative timeout",
            pb::JobSpec {
                timeout_seconds: Some(-5),
                ..spec("true")
            },
            "got -5",
        ),
        (
            "1 MiB env value",
            pb::JobSpec {
                env: BTreeMap::from([("BIG".to_string(), "x".repeat(1 << 20))])
                    .into_iter()
                    .collect(),
                ..spec("true")
            },
            "BIG is 1048576 bytes",
        ),
        (
            "bad env name",
            pb::JobSpec {
                env: [("1X".to_string(), "v".to_string())].into_iter().collect(),
                ..spec("true")
            },
            "name \"1X\" is invalid",
        ),
    ];
    for (case, spec, expected) in cases {
        let status = queue(spec).await.expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{case}: {}",
            status.message()
        );
    }
    let status = jobs
        .queue_job(pb::QueueJobRequest { spec: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Unknown and malformed job ids.
    let unknown = hodei_domain::JobId::new().to_string();
    let status = jobs
        .get_job(pb::GetJobRequest {
            job_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));
    let status = jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: unknown.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = jobs
        .get_job(pb::GetJobRequest {
            job_id: "12; DROP TABLE jobs".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("invalid job id"));
    let status = server
        .logs()
        .await?
        .subscribe_logs(pb::SubscribeLogsRequest {
            job_id: unknown,
            from_sequence: 0,
            follow: true,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = jobs
        .list_jobs(pb::ListJobsRequest {
            states: vec![42],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // A message over the size limit is refused by the transport, not by a crash.
    let status = queue(spec(&"x".repeat(5 << 20))).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Non-UTF-8 output is stored and returned byte for byte.
    let id = server
        .queue("printf 'caf\\351\\n\\377\\376 raw\\n'")
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_eq!(lines[0].data.as_ref(), b"caf\xe9");
    assert_eq!(lines[1].data.as_ref(), b"\xff\xfe raw");

    // Nothing stored was lost, and the server still answers.
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_limit_no_worker_can_run_in_is_refused_at_queue_time_naming_the_field_and_the_floor()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let mut jobs = server.jobs().await?;
    // Accepted before: the Pod's sandbox never started and the job failed six minutes later.
    let cases = [
        (1, 0, "resources.memory_bytes is 1 bytes", "at least 16 MiB"),
        (
            512,
            0,
            "resources.memory_bytes is 512 bytes",
            "at least 16 MiB",
        ),
        (0, 1, "resources.cpu_millis is 1", "at least 100"),
    ];
    for (memory_bytes, cpu_millis, field, floor) in cases {
        let started = Instant::now();
        let status = jobs
            .queue_job(pb::QueueJobRequest {
                spec: Some(pb::JobSpec {
                    resources: Some(pb::Resources {
                        cpu_millis,
                        memory_bytes,
                    }),
                    ..spec("true")
                }),
            })
            .await
            .expect_err("an impossible limit must be refused");
        let answered_in = started.elapsed();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{}", status.message());
        assert!(status.message().contains(floor), "{}", status.message());
        // What BENCHMARKS.md records as "after": the answer, not a final state minutes later.
        println!(
            "memory_bytes={memory_bytes} cpu_millis={cpu_millis}: INVALID_ARGUMENT in {answered_in:?}"
        );
    }
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing queued: {:?}", listed.jobs);
    assert!(
        server.worker_rows().await?.is_empty(),
        "no worker provisioned"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_reused_while_jobs_wait_and_retired_after_their_job_budget()
-> anyhow::Result<()> {
    let server = TestServer::local(|s| {
        s.max_workers = 1;
        s.max_jobs_per_worker = 3;
        s.idle_timeout = Duration::from_secs(1);
    })
    .await?;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(server.queue(&format!("echo {i}")).await?);
    }
    let mut workers = Vec::new();
    for id in &ids {
        let job = server.wait_finished(id, JOB_TIMEOUT).await?;
        assert_eq!(state_of(&job), pb::JobState::Succeeded);
        workers.push(job.worker_id);
    }
    assert_eq!(workers[0], workers[1]);
    assert_eq!(workers[1], workers[2]);
    assert_ne!(
        workers[2], workers[3],
        "the fourth job needs a fresh worker"
    );
    // The second worker runs one job, then idles out.
    server.wait_no_workers(Duration::from_secs(20)).await?;
    let rows = server.worker_rows().await?;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .any(|(_, _, reason)| reason.contains("idle timeout")),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(_, _, reason)| reason.contains("maximum number of jobs")),
        "{rows:?}"
    );
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_worker_process_of_this_instance_is_reaped() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    // A process labelled as one of our workers that the database does not know.
    let mut orphan = std::process::Command::new("sleep")
        .arg("120")
        .env("HODEI_MANAGED_BY", "hodei")
        .env("HODEI_INSTANCE", &server.settings.instance)
        .env("HODEI_WORKER_ID", WorkerId::new().to_string())
        .spawn()?;
    // And one of another instance, which must be left alone.
    let mut foreign = std::process::Command::new("sleep")
        .arg("120")
        .env("HODEI_MANAGED_BY", "hodei")
        .env("HODEI_INSTANCE", "someone-else")
        .env("HODEI_WORKER_ID", WorkerId::new().to_string())
        .spawn()?;
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = orphan.try_wait()? {
                return anyhow::Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = orphan.kill();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await??;
    assert!(status.is_some(), "the orphan was not reaped within 20 s");
    assert!(
        foreign.try_wait()?.is_none(),
        "another instance's worker was killed"
    );
    foreign.kill()?;
    foreign.wait()?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_are_served() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server.queue("echo measured").await?;
    server.wait_finished(&id, JOB_TIMEOUT).await?;

    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await?);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "hodei.v1.JobService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = server.metrics().await?;
    for expected in [
        "hodei_jobs{state=\"succeeded\"} 1",
        "hodei_queue_depth 0",
        "hodei_workers{state=\"terminated\"}",
        "hodei_worker_provisioning_seconds_count 1",
        "hodei_job_dispatch_seconds_count 1",
        "hodei_jobs_finished_total{outcome=\"succeeded\"} 1",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected:?} in:\n{metrics}"
        );
    }
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_over_tls_with_the_worker_trusting_the_configured_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hodei test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = rcgen::KeyPair::generate()?;
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer)?;
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, server_cert.pem())?;
    std::fs::write(&key_path, server_key.serialize_pem())?;

    let mut server = TestServer::local(|s| {
        s.tls = Some(hodei_server::TlsFiles {
            cert: cert_path.clone(),
            key: key_path.clone(),
        });
        s.worker_ca_pem = Some(ca.pem());
        s.worker_server_host = "localhost".into();
    })
    .await?;
    assert!(
        server
            .server()
            .worker_address()
            .starts_with("https://localhost:")
    );
    server.use_client_tls(&ca.pem(), "localhost");
    let id = server.queue("echo over-tls").await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(
        texts(&server.follow_logs(&id, JOB_TIMEOUT).await?),
        ["over-tls"]
    );

    // A plaintext client cannot talk to it.
    let plain = tonic::transport::Channel::from_shared(server.url().replace("https", "http"))?
        .connect()
        .await;
    if let Ok(channel) = plain {
        let result = hodei_proto::v1::job_service_client::JobServiceClient::new(channel)
            .list_jobs(pb::ListJobsRequest::default())
            .await;
        assert!(
            result.is_err(),
            "plaintext request to a TLS server succeeded"
        );
    }
    server.shutdown().await
}

/// A protobuf timestamp as a duration since the epoch, for differences between two of them.
fn timestamp(ts: &Option<prost_types::Timestamp>) -> anyhow::Result<Duration> {
    let ts = ts.as_ref().ok_or_else(|| anyhow::anyhow!("no timestamp"))?;
    Ok(Duration::new(
        u64::try_from(ts.seconds)?,
        u32::try_from(ts.nanos)?,
    ))
}

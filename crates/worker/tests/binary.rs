//! The real `hodei-worker` binary: configuration errors, a full run against the fake server,
//! exit codes, signals, and what a job can see of the worker's environment.

mod support;

use std::{process::Stdio, time::Duration};

use hodei_proto::v1::{JobOutcome, worker_message::Msg};
use hodei_testkit::process::{
    Signal, die_with_parent, is_running, send_signal, send_signal_to_group,
};
use support::{DEADLINE, FakeServer, JOB_1, TOKEN, WORKER_ID, survivors_of_group};
use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
};

/// A PEM-looking CA that must not leak into jobs (the fake speaks plain HTTP, so it is unused).
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nTUlJQ-not-really\n-----END CERTIFICATE-----\n";

/// The worker binary with a clean environment: only what the test sets.
fn worker(vars: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // A test run killed outright leaves no worker behind either.
    die_with_parent(command.as_std_mut());
    command
}

fn worker_for(fake: &FakeServer) -> Command {
    worker(&[
        ("HODEI_TOKEN", TOKEN),
        ("HODEI_SERVER", &fake.url),
        ("HODEI_WORKER_ID", WORKER_ID),
        ("HODEI_TLS_CA_PEM", CA_PEM),
    ])
}

struct Exit {
    code: Option<i32>,
    stderr: String,
}

async fn wait(mut child: Child) -> Exit {
    let mut stderr = child.stderr.take().expect("stderr piped");
    let mut text = String::new();
    let read = async {
        stderr.read_to_string(&mut text).await.expect("read stderr");
        child.wait().await.expect("wait")
    };
    let status = tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the worker exits in time");
    Exit {
        code: status.code(),
        stderr: text,
    }
}

#[tokio::test]
async fn given_no_hodei_token_when_started_then_it_exits_2_with_one_sentence_naming_it() {
    let exit = wait(
        worker(&[
            ("HODEI_SERVER", "http://127.0.0.1:1"),
            ("HODEI_WORKER_ID", WORKER_ID),
        ])
        .spawn()
        .expect("spawn"),
    )
    .await;

    assert_eq!(exit.code, Some(2));
    assert_eq!(exit.stderr.lines().count(), 1, "{}", exit.stderr);
    assert!(
        exit.stderr
            .starts_with("hodei-worker: HODEI_TOKEN is not set"),
        "{}",
        exit.stderr
    );
}

#[tokio::test]
async fn given_an_invalid_server_address_when_started_then_it_exits_2_naming_the_variable_but_not_the_token()
 {
    let exit = wait(
        worker(&[
            ("HODEI_TOKEN", TOKEN),
            ("HODEI_SERVER", "10.0.0.1:50051"),
            ("HODEI_WORKER_ID", WORKER_ID),
        ])
        .spawn()
        .expect("spawn"),
    )
    .await;

    assert_eq!(exit.code, Some(2));
    assert!(
        exit.stderr
            .starts_with("hodei-worker: HODEI_SERVER=\"10.0.0.1:50051\""),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains(TOKEN), "{}", exit.stderr);
}

#[tokio::test]
async fn given_a_fake_server_when_the_binary_runs_a_job_then_it_reports_it_hides_its_secrets_and_exits_0_on_shutdown()
 {
    let mut fake = FakeServer::start().await;
    let child = worker_for(&fake).spawn().expect("spawn");
    let mut session = fake.session().await;

    session
        .assign(
            JOB_1,
            r#"echo "token=${HODEI_TOKEN-unset} ca=${HODEI_TLS_CA_PEM-unset} worker=$HODEI_WORKER_ID job=$HODEI_JOB_ID attempt=$HODEI_JOB_ATTEMPT var=$JOB_VAR"; printf '\377\376raw'"#,
        )
        .await;
    let job = session.job_until_finished().await;
    session.shutdown("test over", false).await;
    session.expect_close().await;
    let exit = wait(child).await;

    assert_eq!(
        job.stdout()[0],
        format!("token=unset ca=unset worker={WORKER_ID} job={JOB_1} attempt=1 var=from-the-job")
    );
    assert_eq!(
        job.lines[1].1, b"\xff\xferaw",
        "non-UTF-8 output is passed unchanged"
    );
    assert_eq!(job.outcome(), JobOutcome::Exited);
    assert_eq!(job.finished().exit_code, Some(0));
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
    assert!(
        !exit.stderr.contains(TOKEN),
        "the token was logged: {}",
        exit.stderr
    );
    assert!(
        !exit.stderr.contains("TUlJQ"),
        "the CA was logged: {}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains(&format!("server={}", fake.url)),
        "the configuration is printed at start-up: {}",
        exit.stderr
    );
}

#[tokio::test]
async fn given_a_token_file_when_the_binary_starts_then_it_registers_with_it_removes_it_and_its_job_sees_no_trace_of_it()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write the token file");
    let mut fake = FakeServer::start().await;
    let child = worker(&[
        ("HODEI_TOKEN_FILE", file.to_str().expect("a UTF-8 path")),
        ("HODEI_SERVER", &fake.url),
        ("HODEI_WORKER_ID", WORKER_ID),
    ])
    .spawn()
    .expect("spawn");
    let mut session = fake.session().await;

    session
        .assign(
            JOB_1,
            r#"echo "file=${HODEI_TOKEN_FILE-unset} token=${HODEI_TOKEN-unset}""#,
        )
        .await;
    let job = session.job_until_finished().await;
    session.shutdown("test over", false).await;
    session.expect_close().await;
    let exit = wait(child).await;

    assert_eq!(fake.registrations()[0].token, TOKEN);
    assert!(!file.exists(), "the token file is still there");
    assert_eq!(job.stdout(), vec!["file=unset token=unset"]);
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
    assert!(
        exit.stderr.contains(&format!(
            "from HODEI_TOKEN_FILE={} (removed)",
            file.display()
        )),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains(TOKEN), "{}", exit.stderr);
}

#[tokio::test]
async fn given_a_running_job_when_no_server_is_reachable_the_binary_keeps_the_job_for_the_grace_then_stops_it_and_exits_1()
 {
    let mut fake = FakeServer::start().await;
    let child = worker_for(&fake)
        .env("HODEI_RECONNECT_GRACE", "2s")
        .spawn()
        .expect("spawn");
    let mut session = fake.session().await;

    // The job ignores SIGTERM: only the SIGKILL after its kill grace (1 s) ends it.
    session
        .assign(JOB_1, "trap '' TERM; sleep 300 & sleep 300")
        .await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    let lost = std::time::Instant::now();
    session.end_stream();
    drop(session);
    drop(fake);

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !support::survivors_of_group(started.pid).await.is_empty(),
        "the job must keep running within the grace"
    );
    let exit = wait(child).await;
    let took = lost.elapsed();

    assert_eq!(exit.code, Some(1), "stderr: {}", exit.stderr);
    let last = exit.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hodei-worker: cannot reach the server at "),
        "{}",
        exit.stderr
    );
    assert!(
        took >= Duration::from_secs(3),
        "exited after {took:?}: before grace + kill grace"
    );
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_nobody_reads_its_log_any_more_the_binary_keeps_working() {
    // A local worker's log goes to its server; a server that dies closes the pipe's other end.
    let mut fake = FakeServer::start().await;
    let mut child = worker_for(&fake).spawn().expect("spawn");
    drop(child.stderr.take());
    drop(child.stdout.take());
    let mut session = fake.session().await;

    session.assign(JOB_1, "echo still-here").await;
    let job = session.job_until_finished().await;
    assert_eq!(job.stdout(), ["still-here"]);
    session.shutdown("test over", false).await;
    session.expect_close().await;
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("the worker exits in time")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a broken log must not end the worker"
    );
}

#[tokio::test]
async fn given_a_running_job_when_the_binary_gets_sigterm_then_it_reports_the_job_interrupted_and_exits_0()
 {
    let mut fake = FakeServer::start().await;
    let child = worker_for(&fake).spawn().expect("spawn");
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 300 & sleep 300").await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    signal(&child, Signal::SIGTERM);
    let job = session.job_until_finished().await;
    session.expect_close().await;
    let exit = wait(child).await;

    assert_eq!(job.outcome(), JobOutcome::Interrupted);
    assert_eq!(
        job.finished().message,
        "worker terminated by its platform (SIGTERM)"
    );
    assert_eq!(exit.code, Some(0), "stderr: {}", exit.stderr);
    assert_eq!(survivors_of_group(started.pid).await, Vec::<u32>::new());
}

#[tokio::test]
async fn given_a_running_job_when_the_worker_is_killed_outright_then_the_jobs_shell_dies_with_it() {
    let mut fake = FakeServer::start().await;
    let child = worker_for(&fake).spawn().expect("spawn");
    let mut session = fake.session().await;

    session.assign(JOB_1, "sleep 300; echo never").await;
    let Some(Msg::JobStarted(started)) = session.recv_skipping_heartbeats().await else {
        panic!("expected JobStarted");
    };
    // Its `sleep` is not covered by the parent-death signal: kill the group whatever happens.
    let _group = KillGroupOnDrop(started.pid);
    assert!(is_running(started.pid));
    signal(&child, Signal::SIGKILL);
    let exit = wait(child).await;

    assert_eq!(exit.code, None, "killed by a signal");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while is_running(started.pid) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !is_running(started.pid),
        "the job's shell {} outlived the worker",
        started.pid
    );
}

#[tokio::test]
#[ignore = "needs root and unshare(1) to run the worker as PID 1 of a new PID namespace; run with --ignored"]
async fn given_the_worker_is_pid_1_when_a_jobs_orphans_die_then_they_are_reaped() {
    let mut fake = FakeServer::start().await;
    let worker_command = worker_for(&fake);
    // `unshare` stays outside as the parent; its child, the worker, is PID 1 inside.
    let mut command = {
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--pid", "--fork", "--kill-child"])
            .arg(worker_command.as_std().get_program());
        wrapped
            .env_clear()
            .envs(
                worker_command
                    .as_std()
                    .get_envs()
                    .filter_map(|(name, value)| Some((name, value?))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        wrapped
    };
    let child = command.spawn().expect("spawn unshare");
    let mut session = fake.session().await;
    let worker = children_of(child.id().expect("running"))
        .into_iter()
        .next()
        .expect("the worker inside the namespace");

    // The background `sleep` is orphaned when the shell exits, so it becomes the worker's
    // child; the runner then kills it and the worker must collect it.
    session.assign(JOB_1, "sleep 300 & echo started").await;
    let job = session.job_until_finished().await;
    assert_eq!(job.stdout(), vec!["started"]);
    for _ in 0..2 {
        let _ = session.recv().await;
    }

    let zombies: Vec<u32> = children_of(worker)
        .into_iter()
        .filter(|pid| !is_running(*pid))
        .collect();
    assert_eq!(
        zombies,
        Vec::<u32>::new(),
        "unreaped children of the worker"
    );
    session.shutdown("done", false).await;
    session.expect_close().await;
    assert_eq!(wait(child).await.code, Some(0));
}

/// Direct children of `pid`, from `/proc/<pid>/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

struct KillGroupOnDrop(u32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        let _ = send_signal_to_group(self.0, Signal::SIGKILL);
    }
}

#[tokio::test]
async fn given_a_token_the_server_rejects_when_the_binary_starts_then_it_exits_1_saying_why() {
    let fake = FakeServer::start().await;
    let child = worker(&[
        ("HODEI_TOKEN", "replayed-token"),
        ("HODEI_SERVER", &fake.url),
        ("HODEI_WORKER_ID", WORKER_ID),
    ])
    .spawn()
    .expect("spawn");

    let exit = wait(child).await;

    assert_eq!(exit.code, Some(1));
    assert_eq!(
        exit.stderr.lines().last(),
        Some(
            "hodei-worker: the server refused the registration: token already used (Unauthenticated)"
        ),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains("replayed-token"), "{}", exit.stderr);
}

fn signal(child: &Child, signal: Signal) {
    send_signal(child.id().expect("running"), signal).expect("signal the worker");
}

//! What a local-provider job gets of the server that started it: a real `hodei-server` process
//! whose environment holds its database URL and an unrelated secret, the local provider, a real
//! `hodei-worker` and a job that prints its environment.
//!
//! The server's environment is what is under test, so the test re-runs itself in a child
//! process whose environment holds those variables (the server it starts inherits them),
//! instead of changing its own, which is not safe with other threads running.

use std::{collections::BTreeSet, ffi::OsString, time::Duration};

use anyhow::Context;
use hodei_proto::v1 as pb;
use hodei_testkit::{
    Probe, TestDatabase,
    jobs::{assert_state, describe, is_final, spec},
    server_process::{ServerCommand, ServerProcess},
    wait_for,
};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
/// Set in the child process that plays the server's environment.
const IN_A_SERVER_ENVIRONMENT: &str = "HODEI_TEST_IN_A_SERVER_ENVIRONMENT";
const SOME_SECRET: &str = "s3cr3t-of-the-server-not-of-its-jobs";
const TEST: &str = "given_a_server_whose_environment_holds_its_database_url_and_a_secret_when_a_local_job_prints_its_environment_then_it_shows_neither";

/// Every variable a local job may see: the few of the server's that the local provider lets
/// through, the worker's non-secret variables, the job's ids and the spec's variable, and what
/// the shell itself sets.
const DOCUMENTED: [&str; 17] = [
    // The server's, passed on by the local provider (`worker_command::INHERITED_FROM_SERVER`).
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    // The worker's, none of them a secret.
    "HODEI_SERVER",
    "HODEI_WORKER_ID",
    "HODEI_MANAGED_BY",
    "HODEI_INSTANCE",
    // The job's.
    "HODEI_JOB_ID",
    "HODEI_JOB_ATTEMPT",
    "JOB_VAR",
    // The shell's.
    "PWD",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_server_whose_environment_holds_its_database_url_and_a_secret_when_a_local_job_prints_its_environment_then_it_shows_neither()
-> anyhow::Result<()> {
    if std::env::var_os(IN_A_SERVER_ENVIRONMENT).is_none() {
        return rerun_in_a_server_environment().await;
    }
    let database_url =
        std::env::var("HODEI_DATABASE_URL").context("the parent test sets HODEI_DATABASE_URL")?;
    let dir = tempfile::tempdir()?;
    let instance = format!("env-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    // No --database-url: the server reads HODEI_DATABASE_URL from its environment, as a
    // deployment would give it.
    let args: Vec<OsString> = [
        "--instance".into(),
        instance.into(),
        "--provider".into(),
        "local".into(),
        "--worker-binary".into(),
        hodei_testkit::worker_binary()?.into_os_string(),
    ]
    .into();
    let server = ServerProcess::start(ServerCommand {
        binary: env!("CARGO_BIN_EXE_hodei-server").into(),
        args,
        log_filter: "info".into(),
        log: dir.path().join("server.log"),
    })
    .await?;

    let mut job_spec = spec("env");
    job_spec.env.insert("JOB_VAR".into(), "of-the-job".into());
    let id = server
        .jobs()
        .await?
        .queue_job(pb::QueueJobRequest {
            spec: Some(job_spec),
        })
        .await?
        .into_inner()
        .id;
    let job = wait_finished(&server, &id).await?;
    assert_state(&job, pb::JobState::Succeeded);
    let env = output(&server, &id).await?;

    for line in &env {
        assert!(
            !line.contains(&database_url) && !line.contains(SOME_SECRET),
            "a secret of the server reached the job: {line}"
        );
    }
    let names: BTreeSet<&str> = env
        .iter()
        .filter_map(|line| Some(line.split_once('=')?.0))
        .collect();
    assert!(names.contains("JOB_VAR"), "{env:#?}");
    let undocumented: Vec<&str> = names
        .difference(&DOCUMENTED.into_iter().collect())
        .copied()
        .collect();
    assert_eq!(
        undocumented,
        Vec::<&str>::new(),
        "undocumented variables in the job's environment: {env:#?}"
    );
    Ok(())
}

/// Runs [`TEST`] again in a child process whose environment holds a database URL (of a fresh
/// test database) and `SOME_SECRET`, and fails unless it ran and passed there.
async fn rerun_in_a_server_environment() -> anyhow::Result<()> {
    let db = TestDatabase::create().await?;
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([TEST, "--exact", "--nocapture"])
        .env(IN_A_SERVER_ENVIRONMENT, "1")
        .env("HODEI_DATABASE_URL", db.url())
        .env("SOME_SECRET", SOME_SECRET)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    anyhow::ensure!(
        output.status.success() && stdout.contains("1 passed"),
        "in a server's environment, {TEST} failed or did not run:\n{stdout}\n{stderr}"
    );
    Ok(())
}

async fn wait_finished(server: &ServerProcess, id: &str) -> anyhow::Result<pb::Job> {
    wait_for(&format!("job {id} to end"), JOB_TIMEOUT, || async move {
        let job = server
            .jobs()
            .await?
            .get_job(pb::GetJobRequest {
                job_id: id.into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(if is_final(job.state) {
            Probe::Ready(job)
        } else {
            Probe::Pending(describe(&job))
        })
    })
    .await
    .with_context(|| server.log_tail())
}

/// The job's whole output, as text lines.
async fn output(server: &ServerProcess, id: &str) -> anyhow::Result<Vec<String>> {
    let page = server
        .logs()
        .await?
        .get_logs(pb::GetLogsRequest {
            job_id: id.into(),
            from_sequence: 1,
            limit: 0,
        })
        .await?
        .into_inner();
    Ok(hodei_testkit::log_lines::texts(&page.lines))
}

/// The server's own process is the other place a local job could find the database URL: it
/// runs as the same user, and /proc lets a user read the environment and memory of its own
/// dumpable processes. The server makes itself non-dumpable before it reads its configuration.
///
/// The server is started as `nobody` when the test runs as root (root reads every process
/// anyway), and as the test's own user otherwise; the reader runs as the same user. The
/// "database" is a socket that accepts and never answers, so the server is caught mid start-up,
/// holding the URL, for as long as its connect timeout.
#[test]
fn a_process_of_the_servers_own_user_cannot_read_the_servers_environment() -> anyhow::Result<()> {
    use std::{
        io::Read,
        os::unix::process::CommandExt,
        process::{Command, Stdio},
    };

    let silent_database = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent_database.local_addr()?.port();
    let (connected, first_connection) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent_database.incoming().flatten() {
            held.push(stream);
            let _ = connected.send(());
        }
    });

    let (uid, gid) = if nix::unistd::geteuid().is_root() {
        (65534, 65534)
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    let database_url = format!("postgres://hodei:{SOME_SECRET}@127.0.0.1:{port}/hodei");
    let mut server = Command::new(env!("CARGO_BIN_EXE_hodei-server"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
        .args(["--database-connect-timeout", "60s"])
        .env("HODEI_DATABASE_URL", &database_url)
        .env("SOME_SECRET", SOME_SECRET)
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("start hodei-server (as root: it must be executable by uid 65534)")?;
    let pid = server.id();
    let outcome = (|| -> anyhow::Result<()> {
        first_connection
            .recv_timeout(Duration::from_secs(30))
            .context("waiting for hodei-server to dial its database")?;
        // The reader is the server's user: same uid, no capability.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let server_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            .context("no Uid line in /proc/<server>/status")?;
        assert_eq!(server_uid, uid.to_string(), "the server runs as uid {uid}");
        for file in ["environ", "mem"] {
            let read = Command::new("cat")
                .arg(format!("/proc/{pid}/{file}"))
                .uid(uid)
                .gid(gid)
                .output()?;
            let stdout = String::from_utf8_lossy(&read.stdout);
            let stderr = String::from_utf8_lossy(&read.stderr);
            assert!(
                !read.status.success() && stderr.contains("Permission denied"),
                "/proc/<server>/{file} was readable by its own user: {} {stderr}",
                read.status
            );
            assert!(
                !stdout.contains(SOME_SECRET),
                "/proc/<server>/{file} leaked the secret"
            );
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    if outcome.is_err() {
        let mut stderr = String::new();
        if let Some(mut pipe) = server.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        eprintln!("hodei-server's stderr:\n{stderr}");
    }
    outcome
}

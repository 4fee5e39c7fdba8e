//! What a job can reach of its worker. A job runs as its worker's user, so only the worker
//! being non-dumpable keeps the job out of `/proc/<worker>/environ`, `maps` and `mem`, and so
//! away from the session credential in the worker's memory and the token in its environment.
//!
//! Run as root, the test starts the worker as `nobody` (65534): root may read any process, and
//! the question is what a job of an ordinary user can do to a worker of the same user.

mod support;

use std::{os::unix::process::CommandExt, process::Stdio};

use hodei_proto::v1::JobOutcome;
use hodei_testkit::process::die_with_parent;
use support::{FakeServer, JOB_1, SESSION_TOKEN, TOKEN, WORKER_ID};
use tokio::{io::AsyncWriteExt, process::Command};

const NOBODY: u32 = 65534;

/// How the worker gets its one-time token, as the providers hand it over.
#[derive(Clone, Copy)]
enum Handover {
    /// `HODEI_TOKEN`, as the Kubernetes provider sets it from the worker's Secret.
    Variable,
    /// `HODEI_TOKEN_FILE=/proc/self/fd/0` and the token on standard input, as the local
    /// provider does: the non-dumpable worker must still be able to read it.
    StandardInput,
}

/// The worker binary, as an unprivileged user when the test runs as root, given its token by
/// `handover`.
fn unprivileged_worker(fake: &FakeServer, handover: Handover) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei-worker"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HODEI_SERVER", &fake.url)
        .env("HODEI_WORKER_ID", WORKER_ID)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match handover {
        Handover::Variable => command.env("HODEI_TOKEN", TOKEN).stdin(Stdio::null()),
        Handover::StandardInput => command
            .env("HODEI_TOKEN_FILE", "/proc/self/fd/0")
            .stdin(Stdio::piped()),
    };
    if nix::unistd::geteuid().is_root() {
        command.as_std_mut().uid(NOBODY).gid(NOBODY);
    }
    die_with_parent(command.as_std_mut());
    command
}

/// A job's attempt to read its worker's proc files, and the memory the worker's `maps` would
/// point it to, looking for the session credential. Prints `name:ok` or `name:refused` per
/// file and how many times it found the credential.
fn snooping_job(worker_pid: u32) -> String {
    format!(
        r#"w={worker_pid}
try() {{ if "$@" >/dev/null 2>&1; then echo ok; else echo refused; fi; }}
echo "environ:$(try cat /proc/$w/environ)"
echo "maps:$(try cat /proc/$w/maps)"
echo "mem:$(try dd if=/proc/$w/mem of=/dev/null bs=1 count=0)"
echo "cmdline:$(try cat /proc/$w/cmdline)"
echo "own-environ:$(try cat /proc/$$/environ)"
echo "own-mem:$(try dd if=/proc/$$/mem of=/dev/null bs=1 count=0)"
found=$(grep ' rw' /proc/$w/maps 2>/dev/null | while read range rest; do
  start=${{range%-*}}; end=${{range#*-}}
  dd if=/proc/$w/mem bs=65536 iflag=skip_bytes,count_bytes skip=$((0x$start)) count=$((0x$end - 0x$start)) 2>/dev/null
done | grep -a -c -F {SESSION_TOKEN})
echo "credential-found:$found"
tr '\0' '\n' < /proc/$w/environ 2>/dev/null | grep -c -F {TOKEN} | sed 's/^/token-found:/'
"#
    )
}

#[tokio::test]
async fn given_a_token_in_the_environment_when_a_job_of_the_workers_user_snoops_on_its_worker_then_it_finds_neither_the_session_credential_nor_the_token()
 {
    snoop_on_a_worker(Handover::Variable).await;
}

#[tokio::test]
async fn given_a_token_on_standard_input_when_a_job_of_the_workers_user_snoops_on_its_worker_then_it_finds_neither_the_session_credential_nor_the_token()
 {
    snoop_on_a_worker(Handover::StandardInput).await;
}

async fn snoop_on_a_worker(handover: Handover) {
    let mut fake = FakeServer::start().await;
    let mut worker = unprivileged_worker(&fake, handover)
        .spawn()
        .expect("spawn the worker (as root: it must be executable by uid 65534)");
    if let Some(mut stdin) = worker.stdin.take() {
        stdin
            .write_all(format!("{TOKEN}\n").as_bytes())
            .await
            .expect("write the token");
    }
    let worker_pid = worker.id().expect("running");
    let mut session = fake.session().await;
    assert_eq!(fake.registrations()[0].token, TOKEN);

    session.assign(JOB_1, &snooping_job(worker_pid)).await;
    let job = session.job_until_finished().await;
    session.shutdown("test over", false).await;
    session.expect_close().await;

    assert_eq!(job.outcome(), JobOutcome::Exited, "{:?}", job.stderr());
    assert_eq!(
        job.stdout(),
        vec![
            "environ:refused",
            "maps:refused",
            "mem:refused",
            // Not secret, and what the local provider finds its workers by.
            "cmdline:ok",
            // The job itself is an ordinary process: execve made it dumpable again.
            "own-environ:ok",
            "own-mem:ok",
            "credential-found:0",
            "token-found:0",
        ]
    );
    let status = worker.wait().await.expect("the worker exits");
    assert!(status.success(), "{status:?}");
}

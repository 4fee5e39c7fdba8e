//! The worker's memory footprint while it waits for work: it shares its Pod with the job.

mod support;

use std::{process::Stdio, time::Duration};

use hodei_proto::v1::worker_message::Msg;
use hodei_testkit::process::die_with_parent;
use support::{FakeServer, FakeSession, JOB_1, TOKEN, WORKER_ID};
use tokio::process::{Child, Command};

/// The target for a release build. A debug build (the default binary of `cargo test`) carries
/// far more code and gets a looser bound that still catches gross regressions.
const RELEASE_IDLE_RSS_LIMIT_KIB: u64 = 10 * 1024;
const DEBUG_IDLE_RSS_LIMIT_KIB: u64 = 16 * 1024;
/// Peak memory allowed while a job floods output the server does not read for a while:
/// the queues are bounded (about 1 MiB of lines, 4 batches), the output is ~80 MiB.
const FLOOD_PEAK_RSS_LIMIT_KIB: u64 = 32 * 1024;

/// The binary under test and its idle limit: `HODEI_WORKER_BINARY` (meant for a release build:
/// `cargo build --release -p hodei-worker`), or the one cargo built for this test.
fn binary_and_idle_limit() -> (String, u64) {
    match std::env::var("HODEI_WORKER_BINARY") {
        Ok(binary) => (binary, RELEASE_IDLE_RSS_LIMIT_KIB),
        Err(_) if cfg!(debug_assertions) => (
            env!("CARGO_BIN_EXE_hodei-worker").to_string(),
            DEBUG_IDLE_RSS_LIMIT_KIB,
        ),
        Err(_) => (
            env!("CARGO_BIN_EXE_hodei-worker").to_string(),
            RELEASE_IDLE_RSS_LIMIT_KIB,
        ),
    }
}

/// A memory figure of `pid` in KiB from `/proc/<pid>/status`: "VmRSS" now, "VmHWM" at peak.
fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} line"))
}

fn spawn_worker(binary: &str, fake: &FakeServer) -> Child {
    let mut command = Command::new(binary);
    // A test run killed outright leaves no worker behind either.
    die_with_parent(command.as_std_mut());
    command
        .env_clear()
        .env("HODEI_TOKEN", TOKEN)
        .env("HODEI_SERVER", &fake.url)
        .env("HODEI_WORKER_ID", WORKER_ID)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the worker")
}

async fn shut_down(mut session: FakeSession, mut child: Child) {
    session.shutdown("measured", false).await;
    session.expect_close().await;
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success());
}

#[tokio::test]
async fn an_idle_worker_stays_within_its_memory_budget() {
    let (binary, limit) = binary_and_idle_limit();
    let mut fake = FakeServer::start().await;
    let child = spawn_worker(&binary, &fake);
    let mut session = fake.session().await;
    // A few heartbeats: the session is fully set up and the worker is idle.
    for _ in 0..5 {
        assert!(matches!(session.recv().await, Some(Msg::Heartbeat(_))));
    }

    let rss = memory_kib(child.id().expect("running"), "VmRSS");

    println!("idle VmRSS of {binary}: {rss} KiB");
    assert!(rss <= limit, "idle VmRSS {rss} KiB exceeds {limit} KiB");
    shut_down(session, child).await;
}

#[tokio::test]
async fn a_flood_of_output_the_server_reads_slowly_does_not_grow_the_workers_memory() {
    let (binary, _) = binary_and_idle_limit();
    let mut fake = FakeServer::start().await;
    let child = spawn_worker(&binary, &fake);
    let mut session = fake.session().await;

    // ~80 MiB of output, plus lines far beyond the maximum length, while the server stalls.
    session
        .assign(
            JOB_1,
            "yes 0123456789012345678901234567890123456789 | head -n 2000000; \
             head -c 4000000 /dev/zero | tr '\\0' x",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = session.job_until_finished().await;
    let peak = memory_kib(child.id().expect("running"), "VmHWM");

    println!("peak VmRSS of {binary} during the flood: {peak} KiB");
    assert_eq!(job.finished().exit_code, Some(0));
    assert_eq!(
        job.lines.len(),
        2_000_000 + 4_000_000_usize.div_ceil(64 * 1024)
    );
    assert!(
        peak <= FLOOD_PEAK_RSS_LIMIT_KIB,
        "peak VmRSS {peak} KiB exceeds {FLOOD_PEAK_RSS_LIMIT_KIB} KiB"
    );
    shut_down(session, child).await;
}

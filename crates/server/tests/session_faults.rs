//! What happens when code of the server that should never fail does: a worker's session task
//! panics. Faults are injected through `Settings::faults` (test-only).

mod common;

use std::{sync::atomic::Ordering, time::Duration};

use common::TestServer;
use hodei_proto::v1 as pb;
use hodei_testkit::jobs::{describe, state_of};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_panics_loses_its_worker_requeues_its_job_and_frees_its_slot()
-> anyhow::Result<()> {
    // One worker slot: if the panicking session kept it, nothing else could ever run.
    let server = TestServer::local(|s| {
        s.max_workers = 1;
        s.retry_backoff = hodei_server::RetryBackoff::NONE;
        s.faults.session_panics.store(1, Ordering::SeqCst);
    })
    .await?;

    let id = server.queue("echo survived").await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_eq!(
        state_of(&job),
        pb::JobState::Succeeded,
        "{}",
        describe(&job)
    );
    assert_eq!(job.attempts, 2, "{}", describe(&job));
    let first = &job.attempt_history[0];
    assert_eq!(first.outcome, "requeued", "{}", describe(&job));
    assert!(
        first.reason.contains("panicked"),
        "the first attempt names the panic: {}",
        describe(&job)
    );

    // The slot is free again: another job runs on the only slot there is.
    let next = server.queue("echo next").await?;
    let next = server.wait_finished(&next, JOB_TIMEOUT).await?;
    assert_eq!(
        state_of(&next),
        pb::JobState::Succeeded,
        "{}",
        describe(&next)
    );
    server.wait_no_workers(Duration::from_secs(20)).await?;
    let rows = server.worker_rows().await?;
    assert!(
        rows.iter()
            .any(|(_, state, reason)| state == "lost" && reason.contains("panicked")),
        "the panicking session's worker is recorded lost: {rows:?}"
    );
    server.shutdown().await
}

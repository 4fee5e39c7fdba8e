//! The store's SQL against a real PostgreSQL (a private server per test; see hodei-testkit).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use chrono::Utc;
use hodei_domain::{
    JobSecrets, JobSpec, JobSpecLimits, JobState, LogStreamKind, OneTimeToken, Resources,
    SessionCredential, WorkerId, WorkerState,
};
use hodei_store::{
    Appended, NewLogLine, RequeueOutcome, RetryBackoff, Store, TokenRejection, Transitions,
};
use hodei_testkit::TestDatabase;

/// A database, its store (reads) and its transitions (state changes).
async fn store() -> (TestDatabase, Store, Transitions) {
    let db = TestDatabase::create().await.expect("test database");
    let store = Store::connect(db.url(), 10, Duration::from_secs(10))
        .await
        .expect("connect and migrate");
    let tx = Transitions::new(&store);
    (db, store, tx)
}

fn spec(command: &str, max_attempts: u32) -> JobSpec {
    JobSpec::new(
        command.into(),
        BTreeMap::from([("A".to_string(), "1".to_string())]),
        Some(60),
        Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
        },
        Some(max_attempts),
        &JobSpecLimits::default(),
    )
    .unwrap()
}

async fn worker(tx: &Transitions) -> (WorkerId, OneTimeToken) {
    let id = WorkerId::new();
    let token = OneTimeToken::generate();
    tx.insert_worker(&hodei_store::NewWorkerRow {
        id,
        instance: "test",
        provider: "local",
        server: None,
        token: token.hash(),
        token_expires_at: Utc::now() + chrono::Duration::seconds(60),
    })
    .await
    .unwrap();
    (id, token)
}

#[tokio::test]
async fn a_job_round_trips_with_its_spec() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("echo hi", 3), &JobSecrets::default(), None)
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Queued);
    let loaded = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(loaded, job);
    assert_eq!(loaded.spec.env["A"], "1");
    assert_eq!(loaded.spec.resources.memory_bytes, 64 << 20);
}

#[tokio::test]
async fn concurrent_claims_never_hand_out_the_same_job() {
    let (_db, _store, tx) = store().await;
    for i in 0..20 {
        tx.insert_job(&spec(&format!("echo {i}"), 1), &JobSecrets::default(), None)
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let (worker, _) = worker(&tx).await;
            let mut claimed = Vec::new();
            while let Some(job) = tx.claim_next_job(worker).await.unwrap() {
                assert_eq!(job.state, JobState::Assigned);
                assert_eq!(job.attempts, 1);
                claimed.push(job.id);
            }
            claimed
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 20);
    assert_eq!(unique.len(), 20);
}

#[tokio::test]
async fn jobs_are_claimed_oldest_first() {
    let (_db, _store, tx) = store().await;
    let first = tx
        .insert_job(&spec("echo 1", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let _second = tx
        .insert_job(&spec("echo 2", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w, _) = worker(&tx).await;
    assert_eq!(tx.claim_next_job(w).await.unwrap().unwrap().id, first.id);
}

#[tokio::test]
async fn an_infrastructure_failure_requeues_until_attempts_run_out() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("true", 2), &JobSecrets::default(), None)
        .await
        .unwrap();

    let (w1, _) = worker(&tx).await;
    tx.claim_next_job(w1).await.unwrap().unwrap();
    assert_eq!(
        tx.requeue_or_fail(job.id, w1, "worker lost", RetryBackoff::NONE)
            .await
            .unwrap(),
        RequeueOutcome::Requeued {
            retry_in: Duration::ZERO
        }
    );
    let requeued = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(requeued.state, JobState::Queued);
    assert!(
        requeued.reason.contains("worker lost"),
        "{}",
        requeued.reason
    );
    // A stale worker cannot touch it any more.
    assert_eq!(
        tx.requeue_or_fail(job.id, w1, "again", RetryBackoff::NONE)
            .await
            .unwrap(),
        RequeueOutcome::NotHeld
    );

    let (w2, _) = worker(&tx).await;
    let claimed = tx.claim_next_job(w2).await.unwrap().unwrap();
    assert_eq!(claimed.attempts, 2);
    assert_eq!(
        tx.requeue_or_fail(job.id, w2, "worker lost", RetryBackoff::NONE)
            .await
            .unwrap(),
        RequeueOutcome::Failed
    );
    let failed = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.finished_at.is_some());
    assert!(
        failed.reason.starts_with("failed after 2 attempt(s)"),
        "{}",
        failed.reason
    );

    let attempts = store.job_attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].outcome, "requeued");
    assert_eq!(attempts[0].worker_id, w1);
    assert_eq!(attempts[1].outcome, "failed");
}

#[tokio::test]
async fn a_requeued_job_waits_out_its_backoff_before_another_worker_can_claim_it() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("true", 3), &JobSecrets::default(), None)
        .await
        .unwrap();
    let backoff = RetryBackoff {
        first: Duration::from_millis(600),
        max: Duration::from_secs(60),
    };

    let (w1, _) = worker(&tx).await;
    tx.claim_next_job(w1).await.unwrap().unwrap();
    let requeued_at = std::time::Instant::now();
    assert_eq!(
        tx.requeue_or_fail(job.id, w1, "image not found", backoff)
            .await
            .unwrap(),
        RequeueOutcome::Requeued {
            retry_in: Duration::from_millis(600)
        }
    );
    let (w2, _) = worker(&tx).await;
    assert!(
        tx.claim_next_job(w2).await.unwrap().is_none(),
        "claimed before its backoff ended"
    );
    assert_eq!(store.count_queued().await.unwrap(), 1, "it is still queued");
    assert!(
        !store.has_claimable_job().await.unwrap(),
        "but not claimable yet"
    );
    // A job queued later is not held up by it.
    let later = tx
        .insert_job(&spec("echo later", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    assert_eq!(tx.claim_next_job(w2).await.unwrap().unwrap().id, later.id);

    assert_eq!(
        tx.release_due_retries().await.unwrap(),
        0,
        "released before its wait ended"
    );
    let released = hodei_testkit::wait_for(
        "the re-queued job's 600 ms wait to end",
        Duration::from_secs(10),
        || async {
            Ok(hodei_testkit::probe_value(
                tx.release_due_retries().await?,
                |n| *n > 0,
            ))
        },
    )
    .await
    .unwrap();
    assert_eq!(released, 1);
    assert!(
        requeued_at.elapsed() >= Duration::from_millis(600),
        "released after {:?}, before its wait ended",
        requeued_at.elapsed()
    );
    assert!(store.has_claimable_job().await.unwrap());
    let (w3, _) = worker(&tx).await;
    let again = tx.claim_next_job(w3).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (job.id, 2));
    // The wait doubles with each attempt.
    assert_eq!(
        tx.requeue_or_fail(job.id, w3, "image not found", backoff)
            .await
            .unwrap(),
        RequeueOutcome::Requeued {
            retry_in: Duration::from_millis(1200)
        }
    );
}

#[tokio::test]
async fn a_claim_never_sent_to_its_worker_is_undone_without_spending_an_attempt() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("true", 2), &JobSecrets::default(), None)
        .await
        .unwrap();

    // First claim, never sent: back to queued with no attempt and no worker.
    let (w1, _) = worker(&tx).await;
    tx.claim_next_job(w1).await.unwrap().unwrap();
    assert!(tx.release_unsent_job(job.id, w1).await.unwrap());
    let released = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (released.state, released.attempts, released.worker_id),
        (JobState::Queued, 0, None)
    );
    assert!(store.job_attempts(job.id).await.unwrap().is_empty());
    assert!(
        !tx.release_unsent_job(job.id, w1).await.unwrap(),
        "only a job still assigned to that worker is released"
    );

    // A real first attempt, re-queued; the second claim is released: attempt 1 and its
    // worker are what remain.
    let (w2, _) = worker(&tx).await;
    tx.claim_next_job(w2).await.unwrap().unwrap();
    tx.requeue_or_fail(job.id, w2, "worker lost", RetryBackoff::NONE)
        .await
        .unwrap();
    let (w3, _) = worker(&tx).await;
    assert_eq!(tx.claim_next_job(w3).await.unwrap().unwrap().attempts, 2);
    assert!(tx.release_unsent_job(job.id, w3).await.unwrap());
    let released = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(
        (released.state, released.attempts, released.worker_id),
        (JobState::Queued, 1, Some(w2))
    );
    let attempts = store.job_attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].worker_id, attempts[0].outcome.as_str()),
        (w2, "requeued")
    );

    // Both attempts are still there to be spent.
    let (w4, _) = worker(&tx).await;
    assert_eq!(tx.claim_next_job(w4).await.unwrap().unwrap().attempts, 2);
}

#[tokio::test]
async fn a_job_whose_cancel_was_requested_ends_cancelled_instead_of_being_requeued() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("sleep 60", 3), &JobSecrets::default(), None)
        .await
        .unwrap();
    assert!(
        !tx.request_cancel(job.id, "too late").await.unwrap(),
        "a queued job is cancelled directly, not by request"
    );
    let (w, _) = worker(&tx).await;
    tx.claim_next_job(w).await.unwrap().unwrap();
    assert!(tx.request_cancel(job.id, "no longer needed").await.unwrap());

    assert_eq!(
        tx.requeue_or_fail(job.id, w, "worker lost", RetryBackoff::default())
            .await
            .unwrap(),
        RequeueOutcome::Cancelled
    );
    let ended = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(ended.state, JobState::Cancelled);
    assert!(ended.finished_at.is_some());
    assert!(
        ended
            .reason
            .starts_with("no longer needed (the attempt ended before confirming")
            && ended.reason.contains("worker lost"),
        "{}",
        ended.reason
    );
    let attempts = store.job_attempts(job.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "cancelled");
}

#[tokio::test]
async fn a_finished_job_is_final_and_its_attempt_closed() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("exit 3", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w, _) = worker(&tx).await;
    tx.claim_next_job(w).await.unwrap().unwrap();
    assert!(tx.mark_job_running(job.id, w).await.unwrap());
    let done = tx
        .finish_job(
            job.id,
            w,
            JobState::Failed,
            Some(3),
            "command exited with code 3",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.exit_code, Some(3));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    // Second report, cancel and requeue all lose.
    assert!(
        tx.finish_job(job.id, w, JobState::Succeeded, Some(0), "")
            .await
            .unwrap()
            .is_none()
    );
    assert!(tx.cancel_queued_job(job.id, "x").await.unwrap().is_none());
    assert_eq!(
        tx.requeue_or_fail(job.id, w, "x", RetryBackoff::NONE)
            .await
            .unwrap(),
        RequeueOutcome::NotHeld
    );
    let attempts = store.job_attempts(job.id).await.unwrap();
    assert_eq!(attempts[0].outcome, "failed");
}

#[tokio::test]
async fn a_token_is_consumed_once_and_each_rejection_is_distinct() {
    let (_db, store, tx) = store().await;
    let (w, token) = worker(&tx).await;
    let (other, _) = worker(&tx).await;
    let session = OneTimeToken::generate();

    // Wrong worker, unknown token: refused, and the token is still usable afterwards.
    assert_eq!(
        tx.register_worker(other, token.hash(), session.hash(), Duration::from_secs(60))
            .await
            .unwrap(),
        Err(TokenRejection::WrongWorker)
    );
    assert_eq!(
        tx.register_worker(
            w,
            OneTimeToken::generate().hash(),
            session.hash(),
            Duration::from_secs(60)
        )
        .await
        .unwrap(),
        Err(TokenRejection::Unknown)
    );
    assert_eq!(
        tx.register_worker(w, token.hash(), session.hash(), Duration::from_secs(60))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        store.worker_for_session(session.hash()).await.unwrap(),
        Some(w)
    );
    assert_eq!(
        store.get_worker(w).await.unwrap().unwrap().state,
        WorkerState::Idle
    );
    // Replay.
    assert_eq!(
        tx.register_worker(
            w,
            token.hash(),
            OneTimeToken::generate().hash(),
            Duration::from_secs(60)
        )
        .await
        .unwrap(),
        Err(TokenRejection::AlreadyUsed)
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    let (_db, store, tx) = store().await;
    let id = WorkerId::new();
    let token = OneTimeToken::generate();
    tx.insert_worker(&hodei_store::NewWorkerRow {
        id,
        instance: "test",
        provider: "local",
        server: None,
        token: token.hash(),
        token_expires_at: Utc::now() - chrono::Duration::seconds(1),
    })
    .await
    .unwrap();
    assert_eq!(
        tx.register_worker(
            id,
            token.hash(),
            OneTimeToken::generate().hash(),
            Duration::from_secs(60)
        )
        .await
        .unwrap(),
        Err(TokenRejection::Expired)
    );
    assert_eq!(
        store.get_worker(id).await.unwrap().unwrap().state,
        WorkerState::Provisioning
    );
}

#[tokio::test]
async fn a_failed_worker_cannot_register_and_keeps_its_token() {
    let (_db, store, tx) = store().await;
    let (w, token) = worker(&tx).await;
    tx.set_worker_state(w, WorkerState::Failed, "did not register within 60s")
        .await
        .unwrap();
    assert!(matches!(
        tx.register_worker(
            w,
            token.hash(),
            OneTimeToken::generate().hash(),
            Duration::from_secs(60)
        )
        .await
        .unwrap(),
        Err(TokenRejection::WorkerNotExpected { .. })
    ));
    // The failed registration rolled back: the token was not consumed.
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM worker_tokens WHERE consumed_at IS NOT NULL")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn logs_come_back_in_sequence_order_as_raw_bytes() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("echo", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let line = |sequence: u64, stream, data: &'static [u8]| NewLogLine {
        sequence,
        stream,
        data: Bytes::from_static(data),
        emitted_at: Utc::now(),
    };
    store
        .append_logs(
            job.id,
            &[
                line(1, LogStreamKind::Stdout, b"one"),
                line(2, LogStreamKind::Stderr, b"\xff\xfe not utf-8"),
            ],
        )
        .await
        .unwrap();
    store
        .append_logs(job.id, &[line(3, LogStreamKind::Stdout, b"")])
        .await
        .unwrap();
    // A duplicate sequence is refused rather than silently doubled.
    assert!(
        store
            .append_logs(job.id, &[line(3, LogStreamKind::Stdout, b"dup")])
            .await
            .is_err()
    );

    let all = store.logs(job.id, 1, 100, usize::MAX).await.unwrap();
    assert_eq!(
        all.iter().map(|l| l.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(all[1].stream, LogStreamKind::Stderr);
    assert_eq!(all[1].data.as_ref(), b"\xff\xfe not utf-8");
    assert_eq!(
        store.logs(job.id, 2, 1, usize::MAX).await.unwrap()[0].sequence,
        2
    );
    assert_eq!(store.last_log_sequence(job.id).await.unwrap(), 3);
}

#[tokio::test]
async fn a_page_of_logs_stops_at_its_byte_budget_but_never_comes_back_empty() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("echo", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let lines: Vec<NewLogLine> = (1..=5)
        .map(|sequence| NewLogLine {
            sequence,
            stream: LogStreamKind::Stdout,
            data: Bytes::from(vec![b'x'; 100]),
            emitted_at: Utc::now(),
        })
        .collect();
    store.append_logs(job.id, &lines).await.unwrap();
    let sequences = |page: Vec<hodei_domain::LogLine>| -> Vec<u64> {
        page.iter().map(|l| l.sequence).collect()
    };

    // 0, 100 and 200 bytes come before lines 1-3: under 250; line 4 would start at 300.
    assert_eq!(
        sequences(store.logs(job.id, 1, 100, 250).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(
        sequences(store.logs(job.id, 4, 100, 250).await.unwrap()),
        [4, 5]
    );
    assert_eq!(sequences(store.logs(job.id, 1, 100, 1).await.unwrap()), [1]);
    assert_eq!(
        sequences(store.logs(job.id, 1, 2, 10_000).await.unwrap()),
        [1, 2]
    );
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters_by_state() {
    let (_db, store, tx) = store().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            tx.insert_job(&spec(&format!("echo {i}"), 1), &JobSecrets::default(), None)
                .await
                .unwrap()
                .id,
        );
    }
    tx.cancel_queued_job(ids[0], "no").await.unwrap().unwrap();
    let page1 = store.list_jobs(&[], 2, None, None).await.unwrap();
    assert_eq!(
        page1.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let page2 = store.list_jobs(&[], 2, Some(ids[3]), None).await.unwrap();
    assert_eq!(
        page2.iter().map(|j| j.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
    let cancelled = store
        .list_jobs(&[JobState::Cancelled], 10, None, None)
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(store.count_queued().await.unwrap(), 4);
}

#[tokio::test]
async fn an_attempt_reads_assigned_until_its_command_starts_then_running_then_its_outcome() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("true", 2), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w, _) = worker(&tx).await;
    tx.claim_next_job(w).await.unwrap().unwrap();
    let outcomes = |attempts: Vec<hodei_domain::JobAttempt>| {
        attempts.into_iter().map(|a| a.outcome).collect::<Vec<_>>()
    };
    assert_eq!(
        outcomes(store.job_attempts(job.id).await.unwrap()),
        ["assigned"],
        "bound to a worker, the command not started: not `running`"
    );
    // Its worker never came up: the attempt ends without having run anything.
    tx.requeue_or_fail(job.id, w, "worker never registered", RetryBackoff::NONE)
        .await
        .unwrap();
    let (w2, _) = worker(&tx).await;
    tx.claim_next_job(w2).await.unwrap().unwrap();
    assert_eq!(
        outcomes(store.job_attempts(job.id).await.unwrap()),
        ["requeued", "assigned"]
    );
    assert!(tx.mark_job_running(job.id, w2).await.unwrap());
    assert_eq!(
        outcomes(store.job_attempts(job.id).await.unwrap()),
        ["requeued", "running"]
    );
    tx.finish_job(job.id, w2, JobState::Succeeded, Some(0), "")
        .await
        .unwrap();
    let by_job = store.attempts_of_jobs(&[job.id]).await.unwrap();
    assert_eq!(outcomes(by_job[&job.id].clone()), ["requeued", "succeeded"]);
}

#[tokio::test]
async fn a_requested_cancel_shows_on_the_job_until_it_ends() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("sleep 60", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    assert!(!job.cancel_requested);
    let (w, _) = worker(&tx).await;
    tx.claim_next_job(w).await.unwrap().unwrap();
    assert!(tx.mark_job_running(job.id, w).await.unwrap());
    assert!(
        tx.request_cancel(job.id, "requested by alice")
            .await
            .unwrap()
    );
    let running = store.get_job(job.id).await.unwrap().unwrap();
    assert_eq!(running.state, JobState::Running);
    assert!(running.cancel_requested);
    let ended = tx
        .finish_job(
            job.id,
            w,
            JobState::Cancelled,
            Some(143),
            "requested by alice",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended.reason, "requested by alice");
}

#[tokio::test]
async fn workers_are_listed_newest_first_in_pages() {
    let (_db, store, tx) = store().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(worker(&tx).await.0);
    }
    ids.reverse();
    let first = store.list_workers(true, 2, None).await.unwrap();
    assert_eq!(first.iter().map(|w| w.id).collect::<Vec<_>>(), ids[..2]);
    let second = store.list_workers(true, 2, Some(ids[1])).await.unwrap();
    assert_eq!(second.iter().map(|w| w.id).collect::<Vec<_>>(), ids[2..4]);
    let last = store.list_workers(true, 2, Some(ids[3])).await.unwrap();
    assert_eq!(last.iter().map(|w| w.id).collect::<Vec<_>>(), ids[4..]);
}

#[tokio::test]
async fn a_new_worker_is_recorded_only_together_with_the_job_it_claims() {
    let (_db, store, tx) = store().await;
    let soon = Utc::now() + chrono::Duration::seconds(60);
    let empty = tx
        .claim_job_for_new_worker(
            &hodei_store::NewWorkerRow {
                id: WorkerId::new(),
                instance: "test",
                provider: "local",
                server: None,
                token: OneTimeToken::generate().hash(),
                token_expires_at: soon,
            },
            None,
        )
        .await
        .unwrap();
    assert!(empty.is_none());
    assert!(
        store.list_workers(true, 10, None).await.unwrap().is_empty(),
        "no job, no worker row"
    );

    let job = tx
        .insert_job(&spec("true", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let worker = WorkerId::new();
    let claimed = tx
        .claim_job_for_new_worker(
            &hodei_store::NewWorkerRow {
                id: worker,
                instance: "test",
                provider: "local",
                server: None,
                token: OneTimeToken::generate().hash(),
                token_expires_at: soon,
            },
            None,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
    assert_eq!(claimed.worker_id, Some(worker));
    let recorded = store.get_worker(worker).await.unwrap().unwrap();
    assert_eq!(recorded.state, WorkerState::Provisioning);
    assert_eq!(
        store.jobs_held_by_instance("test").await.unwrap(),
        vec![(job.id, worker)]
    );
}

#[tokio::test]
async fn a_connected_worker_is_recorded_busy_with_the_job_it_claims_and_idle_once_it_ends() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("true", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w, token) = worker(&tx).await;
    tx.register_worker(
        w,
        token.hash(),
        OneTimeToken::generate().hash(),
        Duration::from_secs(60),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        store.get_worker(w).await.unwrap().unwrap().state,
        WorkerState::Idle
    );

    let claimed = tx.claim_next_job(w).await.unwrap().unwrap();
    assert_eq!(claimed.id, job.id);
    let busy = store.get_worker(w).await.unwrap().unwrap();
    assert_eq!(busy.state, WorkerState::Busy);
    assert_eq!(busy.current_job_id, Some(job.id));
    // Nothing left to claim: the worker stays busy with the job it has.
    assert!(tx.claim_next_job(w).await.unwrap().is_none());
    assert_eq!(
        store.get_worker(w).await.unwrap().unwrap().current_job_id,
        Some(job.id)
    );

    tx.finish_job(
        job.id,
        w,
        JobState::Succeeded,
        Some(0),
        "exited with code 0",
    )
    .await
    .unwrap()
    .unwrap();
    let idle = store.get_worker(w).await.unwrap().unwrap();
    assert_eq!(idle.state, WorkerState::Idle);
    assert_eq!(idle.current_job_id, None);
    assert_eq!(idle.jobs_run, 1);
}

fn log_line(sequence: u64, data: &'static [u8]) -> NewLogLine {
    NewLogLine {
        sequence,
        stream: LogStreamKind::Stdout,
        data: Bytes::from_static(data),
        emitted_at: Utc::now(),
    }
}

#[tokio::test]
async fn output_re_sent_after_a_reconnect_is_stored_once() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("echo", 1), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w, _) = worker(&tx).await;
    tx.claim_next_job(w).await.unwrap().unwrap();

    let first = store
        .append_logs_held(
            job.id,
            w,
            1,
            &[
                log_line(1, b"one"),
                log_line(2, b"two"),
                log_line(3, b"three"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        first,
        Appended {
            held: true,
            inserted: 3
        }
    );
    // The worker's stream broke before the acknowledgement: it re-sends 2 and 3 with 4.
    let again = store
        .append_logs_held(
            job.id,
            w,
            1,
            &[
                log_line(2, b"two"),
                log_line(3, b"three"),
                log_line(4, b"four"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        Appended {
            held: true,
            inserted: 1
        }
    );

    let stored: Vec<(u64, Bytes)> = store
        .logs(job.id, 1, 100, 1 << 20)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.sequence, l.data))
        .collect();
    assert_eq!(
        stored,
        [
            (1, Bytes::from_static(b"one")),
            (2, Bytes::from_static(b"two")),
            (3, Bytes::from_static(b"three")),
            (4, Bytes::from_static(b"four")),
        ]
    );
}

#[tokio::test]
async fn output_of_an_attempt_that_no_longer_holds_its_job_is_refused() {
    let (_db, store, tx) = store().await;
    let job = tx
        .insert_job(&spec("echo", 3), &JobSecrets::default(), None)
        .await
        .unwrap();
    let (w1, _) = worker(&tx).await;
    tx.claim_next_job(w1).await.unwrap().unwrap();
    store
        .append_logs_held(job.id, w1, 1, &[log_line(1, b"attempt 1")])
        .await
        .unwrap();
    tx.requeue_or_fail(job.id, w1, "worker lost", RetryBackoff::NONE)
        .await
        .unwrap();
    let (w2, _) = worker(&tx).await;
    assert_eq!(tx.claim_next_job(w2).await.unwrap().unwrap().attempts, 2);

    // A late insert of attempt 1 (its session did not know yet) stores nothing …
    let stale = store
        .append_logs_held(job.id, w1, 1, &[log_line(2, b"stale")])
        .await
        .unwrap();
    assert_eq!(
        stale,
        Appended {
            held: false,
            inserted: 0
        }
    );
    // … nor does the right worker with the wrong attempt.
    let wrong_attempt = store
        .append_logs_held(job.id, w2, 1, &[log_line(2, b"stale")])
        .await
        .unwrap();
    assert!(!wrong_attempt.held);
    assert_eq!(store.last_log_sequence(job.id).await.unwrap(), 1);
    let current = store
        .append_logs_held(job.id, w2, 2, &[log_line(2, b"attempt 2")])
        .await
        .unwrap();
    assert_eq!(
        current,
        Appended {
            held: true,
            inserted: 1
        }
    );
}

#[tokio::test]
async fn a_detached_worker_is_lost_only_at_its_epoch_and_once_its_lease_has_passed() {
    let (_db, store, tx) = store().await;
    let (w, token) = worker(&tx).await;
    let session = SessionCredential::generate();
    tx.register_worker(w, token.hash(), session.hash(), Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let server = uuid::Uuid::now_v7();
    let hour = Duration::from_secs(3600);

    let first = tx.attach_session(w, server, hour).await.unwrap().unwrap();
    let second = tx.attach_session(w, server, hour).await.unwrap().unwrap();
    assert_eq!((first.epoch, second.epoch), (1, 2));
    // The first session's statements are fenced off.
    assert!(
        !tx.detach_session(w, first.epoch, "old stream")
            .await
            .unwrap()
    );
    assert!(
        !store
            .renew_worker_lease(w, first.epoch, hour)
            .await
            .unwrap()
    );
    assert!(
        !tx.lose_worker_at_epoch(w, first.epoch, "stale", false)
            .await
            .unwrap()
    );
    // Detached with a valid lease: not expired, not lost by the expiry.
    assert!(
        tx.detach_session(w, second.epoch, "stream broke")
            .await
            .unwrap()
    );
    assert!(
        store
            .expired_worker_leases("test")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        !tx.lose_worker_at_epoch(w, second.epoch, "expired", true)
            .await
            .unwrap()
    );

    // Re-attached with a lease that has already run out, then away.
    let third = tx
        .attach_session(w, server, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    assert!(
        tx.detach_session(w, third.epoch, "no heartbeat for 3s")
            .await
            .unwrap()
    );
    let expired = store.expired_worker_leases("test").await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!((expired[0].worker, expired[0].epoch), (w, third.epoch));
    assert_eq!(
        expired[0].last_disconnect.as_deref(),
        Some("no heartbeat for 3s")
    );
    assert!(
        tx.lose_worker_at_epoch(w, third.epoch, "lease expired", true)
            .await
            .unwrap()
    );

    // Lost for good: its credential no longer resolves, and it cannot attach again.
    assert_eq!(
        store.worker_for_session(session.hash()).await.unwrap(),
        None
    );
    assert_eq!(tx.attach_session(w, server, hour).await.unwrap(), None);
    let lost = store.get_worker(w).await.unwrap().unwrap();
    assert_eq!(lost.state, WorkerState::Lost);
}

/// Several servers claiming new workers at once, each believing it has room: the database's
/// count under the per-instance lock lets exactly `max_workers` through.
#[tokio::test]
async fn claims_for_new_workers_from_many_servers_never_exceed_max_workers() {
    let (_db, store, tx) = store().await;
    for _ in 0..12 {
        tx.insert_job(&spec("true", 1), &JobSecrets::default(), None)
            .await
            .unwrap();
    }
    let claims = (0..12).map(|_| {
        let tx = tx.clone();
        async move {
            tx.claim_job_for_new_worker(
                &hodei_store::NewWorkerRow {
                    id: WorkerId::new(),
                    instance: "test",
                    provider: "local",
                    server: Some(uuid::Uuid::now_v7()),
                    token: OneTimeToken::generate().hash(),
                    token_expires_at: Utc::now() + chrono::Duration::seconds(60),
                },
                Some(3),
            )
            .await
            .unwrap()
        }
    });
    let claimed = futures::future::join_all(claims).await;
    assert_eq!(claimed.iter().flatten().count(), 3, "{claimed:?}");
    assert_eq!(store.alive_workers("test").await.unwrap().len(), 3);
    // Another instance has its own limit.
    let other = tx
        .claim_job_for_new_worker(
            &hodei_store::NewWorkerRow {
                id: WorkerId::new(),
                instance: "other",
                provider: "local",
                server: None,
                token: OneTimeToken::generate().hash(),
                token_expires_at: Utc::now() + chrono::Duration::seconds(60),
            },
            Some(3),
        )
        .await
        .unwrap();
    assert!(other.is_some(), "the limit is per instance");
}

/// One maintenance lock per instance: a second server is refused while the first holds it,
/// and gets it once the first's connection is gone (a dead process).
#[tokio::test]
async fn the_maintenance_lock_is_held_by_one_server_at_a_time() {
    let (_db, store, _tx) = store().await;
    let mut first = store
        .try_maintenance_lock("a")
        .await
        .unwrap()
        .expect("free at first");
    assert!(first.still_held().await);
    assert!(
        store.try_maintenance_lock("a").await.unwrap().is_none(),
        "a second holder while the first lives"
    );
    let other_instance = store.try_maintenance_lock("b").await.unwrap();
    assert!(other_instance.is_some(), "each instance has its own lock");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if store.try_maintenance_lock("a").await.unwrap().is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lock was not released within 10 s of its holder's connection closing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Workers a dead server was provisioning are stranded; a live server's are not, nor are the
/// asking server's own.
#[tokio::test]
async fn workers_of_a_server_whose_lease_passed_are_stranded() {
    let (_db, store, tx) = store().await;
    let (live, dead, me) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    store
        .renew_server_lease(live, "test", "http://live", Duration::from_secs(60))
        .await
        .unwrap();
    store
        .renew_server_lease(dead, "test", "http://dead", Duration::ZERO)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for server in [live, dead, me] {
        let job = tx
            .insert_job(&spec("true", 1), &JobSecrets::default(), None)
            .await
            .unwrap();
        let id = WorkerId::new();
        tx.claim_job_for_new_worker(
            &hodei_store::NewWorkerRow {
                id,
                instance: "test",
                provider: "local",
                server: Some(server),
                token: OneTimeToken::generate().hash(),
                token_expires_at: Utc::now() + chrono::Duration::seconds(60),
            },
            Some(10),
        )
        .await
        .unwrap()
        .unwrap();
        ids.push((id, job.id));
    }
    let stranded = store.stranded_workers("test", me).await.unwrap();
    assert_eq!(
        stranded,
        vec![hodei_store::Stranded {
            worker: ids[1].0,
            job: Some(ids[1].1)
        }]
    );
    let peers = store.peer_servers("test").await.unwrap();
    assert_eq!(
        peers.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![live],
        "only live servers are offered to workers"
    );
    assert_eq!(
        store
            .forget_dead_servers("test", Duration::ZERO)
            .await
            .unwrap(),
        1
    );
}

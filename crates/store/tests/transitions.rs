//! The SQL guards of `hodei_store::Transitions` against the transition tables of
//! `hodei_domain` (`JOB_TRANSITIONS`, `WORKER_TRANSITIONS`), on a real PostgreSQL: every step
//! is tried from every state. Where the table has the move, the statement must make it; where
//! it has not, the statement must change nothing.

use std::{collections::BTreeMap, time::Duration};

use chrono::Utc;
use hodei_domain::{
    JOB_TRANSITIONS, JobId, JobSecrets, JobSpec, JobSpecLimits, JobState, JobStep, OneTimeToken,
    Resources, SessionCredential, WORKER_TRANSITIONS, WorkerId, WorkerState, WorkerStep,
};
use hodei_store::{RetryBackoff, Store, Transitions};
use hodei_testkit::TestDatabase;

struct Db {
    _db: TestDatabase,
    store: Store,
    tx: Transitions,
}

async fn db() -> Db {
    let db = TestDatabase::create().await.expect("test database");
    let store = Store::connect(db.url(), 4, Duration::from_secs(10))
        .await
        .expect("connect and migrate");
    let tx = Transitions::new(&store);
    Db { _db: db, store, tx }
}

fn spec(max_attempts: u32) -> JobSpec {
    JobSpec::new(
        "true".into(),
        BTreeMap::new(),
        Some(60),
        Resources::default(),
        Some(max_attempts),
        &JobSpecLimits::default(),
    )
    .expect("valid spec")
}

impl Db {
    /// A recorded worker with a valid token, in `state`.
    async fn worker_in(&self, state: WorkerState) -> (WorkerId, OneTimeToken) {
        let (id, token) = (WorkerId::new(), OneTimeToken::generate());
        let expires = Utc::now() + chrono::Duration::seconds(60);
        self.tx
            .insert_worker(&hodei_store::NewWorkerRow {
                id,
                instance: "guards",
                provider: "local",
                server: None,
                token: token.hash(),
                token_expires_at: expires,
            })
            .await
            .expect("insert worker");
        sqlx::query("UPDATE workers SET state = $2 WHERE id = $1")
            .bind(id.as_uuid())
            .bind(state.as_str())
            .execute(self.store.pool())
            .await
            .expect("force worker state");
        (id, token)
    }

    /// A job in `state`, held by `worker` (its first attempt) where a state needs a worker.
    async fn job_in(&self, state: JobState, worker: WorkerId, max_attempts: u32) -> JobId {
        let job = self
            .tx
            .insert_job(&spec(max_attempts), &JobSecrets::default(), None)
            .await
            .expect("insert job");
        if state != JobState::Queued {
            sqlx::query(
                "WITH a AS (INSERT INTO job_attempts (job_id, attempt, worker_id) VALUES ($1, 1, $3))
                 UPDATE jobs SET state = $2, worker_id = $3, attempts = 1,
                     finished_at = CASE WHEN $4 THEN now() END
                 WHERE id = $1",
            )
            .bind(job.id.as_uuid())
            .bind(state.as_str())
            .bind(worker.as_uuid())
            .bind(state.is_terminal())
            .execute(self.store.pool())
            .await
            .expect("force job state");
        }
        job.id
    }

    async fn job_state(&self, job: JobId) -> JobState {
        self.store
            .get_job(job)
            .await
            .expect("read")
            .expect("job")
            .state
    }

    async fn worker_state(&self, worker: WorkerId) -> WorkerState {
        self.store
            .get_worker(worker)
            .await
            .expect("read")
            .expect("worker")
            .state
    }

    /// Makes sure no other queued job can be claimed instead of the one under test.
    async fn empty_queue(&self) {
        sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = now() WHERE state = 'queued'",
        )
        .execute(self.store.pool())
        .await
        .expect("empty the queue");
    }
}

/// What the statements did, and what they should have: every move of the table must be made
/// by some statement, and no statement may make a move the table lacks.
struct Walk<S, T> {
    seen: Vec<(S, T, T)>,
    failures: Vec<String>,
}

impl<S, T> Walk<S, T> {
    fn new() -> Self {
        Self {
            seen: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// Checks the move `from --step--> after` against the table.
fn check_job(step: JobStep, from: JobState, after: JobState, walk: &mut Walk<JobStep, JobState>) {
    let allowed: Vec<JobState> = step.targets(from).collect();
    let ok = if allowed.is_empty() {
        after == from
    } else {
        allowed.contains(&after)
    };
    if ok && !allowed.is_empty() {
        walk.seen.push((step, from, after));
    }
    let failures = &mut walk.failures;
    if !ok {
        failures.push(format!(
            "{step:?} from {from}: the statement left the job {after}; the table allows {allowed:?} (nothing else changes it)"
        ));
    }
}

#[tokio::test]
async fn every_job_statement_moves_exactly_as_the_domain_table_says() {
    let db = db().await;
    let (worker, _) = db.worker_in(WorkerState::Busy).await;
    let mut walk = Walk::new();
    for from in JobState::ALL {
        // Claim, by a connected worker and by a worker created for the job.
        for new_worker in [false, true] {
            db.empty_queue().await;
            let job = db.job_in(from, worker, 3).await;
            let (claimer, _) = db.worker_in(WorkerState::Idle).await;
            if new_worker {
                let _ = db
                    .tx
                    .claim_job_for_new_worker(
                        &hodei_store::NewWorkerRow {
                            id: WorkerId::new(),
                            instance: "guards",
                            provider: "local",
                            server: None,
                            token: OneTimeToken::generate().hash(),
                            token_expires_at: Utc::now() + chrono::Duration::seconds(60),
                        },
                        None,
                    )
                    .await
                    .expect("claim");
            } else {
                let _ = db.tx.claim_next_job(claimer).await.expect("claim");
            }
            check_job(JobStep::Claim, from, db.job_state(job).await, &mut walk);
        }

        let job = db.job_in(from, worker, 3).await;
        db.tx.mark_job_running(job, worker).await.expect("start");
        check_job(JobStep::Start, from, db.job_state(job).await, &mut walk);

        for end in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            let job = db.job_in(from, worker, 3).await;
            db.tx
                .finish_job(job, worker, end, Some(0), "guard test")
                .await
                .expect("finish");
            let after = db.job_state(job).await;
            check_job(JobStep::Finish, from, after, &mut walk);
            if after != from && after != end {
                walk.failures
                    .push(format!("Finish({end}) from {from} left the job {after}"));
            }
        }

        // Re-queue: with attempts left, out of attempts, and with a cancel requested.
        for (max_attempts, cancel) in [(3, false), (1, false), (3, true)] {
            let job = db.job_in(from, worker, max_attempts).await;
            if cancel {
                let _ = db
                    .tx
                    .request_cancel(job, "by the guard test")
                    .await
                    .expect("cancel");
            }
            db.tx
                .requeue_or_fail(job, worker, "guard test", RetryBackoff::NONE)
                .await
                .expect("requeue");
            check_job(JobStep::Requeue, from, db.job_state(job).await, &mut walk);
        }

        let job = db.job_in(from, worker, 3).await;
        db.tx
            .release_unsent_job(job, worker)
            .await
            .expect("give back");
        check_job(JobStep::GiveBack, from, db.job_state(job).await, &mut walk);

        let job = db.job_in(from, worker, 3).await;
        db.tx
            .cancel_queued_job(job, "guard test")
            .await
            .expect("cancel queued");
        check_job(
            JobStep::CancelQueued,
            from,
            db.job_state(job).await,
            &mut walk,
        );

        // Asking for a cancel is not a move of its own.
        let job = db.job_in(from, worker, 3).await;
        let _ = db
            .tx
            .request_cancel(job, "guard test")
            .await
            .expect("request cancel");
        if db.job_state(job).await != from {
            walk.failures
                .push(format!("request_cancel moved a job in {from}"));
        }
    }
    for t in JOB_TRANSITIONS {
        if !walk.seen.contains(&(t.step, t.from, t.to)) {
            walk.failures
                .push(format!("no statement makes the table's move {t:?}"));
        }
    }
    assert!(walk.failures.is_empty(), "{}", walk.failures.join("\n"));
}

fn check_worker(
    step: WorkerStep,
    from: WorkerState,
    after: WorkerState,
    walk: &mut Walk<WorkerStep, WorkerState>,
) {
    let allowed: Vec<WorkerState> = step.targets(from).collect();
    let ok = if allowed.is_empty() {
        after == from
    } else {
        allowed.contains(&after)
    };
    if ok && !allowed.is_empty() {
        walk.seen.push((step, from, after));
    }
    let failures = &mut walk.failures;
    if !ok {
        failures.push(format!(
            "{step:?} from {from}: the statement left the worker {after}; the table allows {allowed:?} (nothing else changes it)"
        ));
    }
}

#[tokio::test]
async fn every_worker_statement_moves_exactly_as_the_domain_table_says() {
    let db = db().await;
    let mut walk = Walk::new();
    for from in WorkerState::ALL {
        let (worker, token) = db.worker_in(from).await;
        // A refusal is an answer too: only the state it leaves matters here.
        let _refused = db
            .tx
            .register_worker(
                worker,
                token.hash(),
                SessionCredential::generate().hash(),
                Duration::from_secs(60),
            )
            .await
            .expect("register");
        check_worker(
            WorkerStep::Register,
            from,
            db.worker_state(worker).await,
            &mut walk,
        );

        // Taking a job: by the hand-over of a bound job, and by the claim of an idle worker.
        let (worker, _) = db.worker_in(from).await;
        db.tx
            .mark_worker_busy(worker, JobId::new())
            .await
            .expect("busy");
        check_worker(
            WorkerStep::TakeJob,
            from,
            db.worker_state(worker).await,
            &mut walk,
        );
        db.empty_queue().await;
        let (worker, _) = db.worker_in(from).await;
        let queued = db
            .tx
            .insert_job(&spec(3), &JobSecrets::default(), None)
            .await
            .expect("insert job");
        let _ = db.tx.claim_next_job(worker).await.expect("claim");
        check_worker(
            WorkerStep::TakeJob,
            from,
            db.worker_state(worker).await,
            &mut walk,
        );
        db.tx
            .cancel_queued_job(queued.id, "clean up")
            .await
            .expect("clean up");

        // A job's end: recorded idle on its own, and together with the job's end.
        let (worker, _) = db.worker_in(from).await;
        db.tx.mark_worker_idle(worker).await.expect("idle");
        check_worker(
            WorkerStep::FinishJob,
            from,
            db.worker_state(worker).await,
            &mut walk,
        );
        let (worker, _) = db.worker_in(from).await;
        let (holder, _) = db.worker_in(WorkerState::Busy).await;
        let job = db.job_in(JobState::Running, holder, 3).await;
        sqlx::query("UPDATE jobs SET worker_id = $2 WHERE id = $1")
            .bind(job.as_uuid())
            .bind(worker.as_uuid())
            .execute(db.store.pool())
            .await
            .expect("hand the job to the worker");
        sqlx::query("UPDATE workers SET current_job_id = $2 WHERE id = $1")
            .bind(worker.as_uuid())
            .bind(job.as_uuid())
            .execute(db.store.pool())
            .await
            .expect("record the worker busy with it");
        db.tx
            .finish_job(job, worker, JobState::Succeeded, Some(0), "guard test")
            .await
            .expect("finish");
        check_worker(
            WorkerStep::FinishJob,
            from,
            db.worker_state(worker).await,
            &mut walk,
        );

        for (step, to) in [
            (WorkerStep::Retire, WorkerState::Terminating),
            (WorkerStep::End, WorkerState::Terminated),
            (WorkerStep::Fail, WorkerState::Failed),
            (WorkerStep::Lose, WorkerState::Lost),
        ] {
            let (worker, _) = db.worker_in(from).await;
            db.tx
                .set_worker_state(worker, to, "guard test")
                .await
                .expect("set state");
            check_worker(step, from, db.worker_state(worker).await, &mut walk);
        }

        // A session attaching, detaching and the loss of a detached worker (issue 14): the
        // first two change no state; the loss is a `Lose`, fenced by the epoch it saw.
        let server = uuid::Uuid::now_v7();
        let (worker, _) = db.worker_in(from).await;
        let attached = db
            .tx
            .attach_session(worker, server, std::time::Duration::ZERO)
            .await
            .expect("attach");
        let _ = db
            .tx
            .detach_session(worker, attached.map_or(0, |a| a.epoch), "guard test")
            .await
            .expect("detach");
        let after = db.worker_state(worker).await;
        if after != from {
            walk.failures.push(format!(
                "attaching and detaching a session moved the worker from {from} to {after}"
            ));
        }
        let epoch = attached.map_or(0, |a| a.epoch);
        let _ = db
            .tx
            .lose_worker_at_epoch(worker, epoch, "guard test", true)
            .await
            .expect("lose");
        // Narrower than the table's `Lose` (only a connected worker, idle or busy, has a
        // session to lose): it may leave the worker as it was, never make another move.
        let after = db.worker_state(worker).await;
        if after != from {
            check_worker(WorkerStep::Lose, from, after, &mut walk);
        } else if matches!(from, WorkerState::Idle | WorkerState::Busy) {
            walk.failures.push(format!(
                "losing a detached {from} worker whose lease passed left it {after}"
            ));
        }
        // A stale epoch changes nothing.
        let (worker, _) = db.worker_in(from).await;
        let _ = db
            .tx
            .lose_worker_at_epoch(worker, 41, "guard test", false)
            .await
            .expect("lose");
        let after = db.worker_state(worker).await;
        if after != from {
            walk.failures.push(format!(
                "losing a worker at an epoch it never had moved it from {from} to {after}"
            ));
        }
    }
    for t in WORKER_TRANSITIONS {
        if !walk.seen.contains(&(t.step, t.from, t.to)) {
            walk.failures
                .push(format!("no statement makes the table's move {t:?}"));
        }
    }
    assert!(walk.failures.is_empty(), "{}", walk.failures.join("\n"));
}

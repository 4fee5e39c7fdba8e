//! `hodei jobs ...` and `hodei workers list` against a fake server over real gRPC.

mod support;

use std::time::Duration;

use hodei_proto::v1 as pb;
use hodei_testkit::jobs::is_final;
use support::{FakeServer, Step, exits, finish};

fn timed_out() -> Step {
    Step::Finish {
        state: pb::JobState::TimedOut,
        exit_code: None,
        reason: "timed out after 1s",
    }
}

/// Three finished jobs, newest last: job-1 succeeded, job-2 failed with 3, job-3 timed out.
async fn fake_with_three_jobs() -> FakeServer {
    let fake = FakeServer::start(vec![]).await;
    let ids = [
        fake.add_job("true", vec![exits(0)]),
        fake.add_job("exit 3", vec![exits(3)]),
        fake.add_job("sleep 10", vec![timed_out()]),
    ];
    for id in ids {
        fake.wait_until_job(&id, "to finish", |job, _| is_final(job.state))
            .await;
    }
    fake
}

#[tokio::test]
async fn given_jobs_when_listed_as_json_then_an_array_with_the_documented_fields_is_printed() {
    let fake = fake_with_three_jobs().await;

    let outcome = finish(fake.hodei(&["jobs", "list", "--output", "json"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let jobs: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("JSON");
    let jobs = jobs.as_array().expect("an array");
    let ids: Vec<&str> = jobs.iter().map(|j| j["id"].as_str().expect("id")).collect();
    assert_eq!(
        ids,
        ["job-3", "job-2", "job-1"],
        "newest first, across pages"
    );
    let failed = &jobs[1];
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["exit_code"], 3);
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["worker_id"], "worker-1");
    assert_eq!(failed["spec"]["command"], "exit 3");
    assert!(
        failed["created_at"]
            .as_str()
            .expect("created_at")
            .ends_with('Z')
    );
    assert!(failed["finished_at"].is_string());
    assert_eq!(jobs[0]["state"], "timed_out");
    assert_eq!(jobs[0]["reason"], "timed out after 1s");
    assert_eq!(jobs[0]["exit_code"], serde_json::Value::Null);
}

#[tokio::test]
async fn given_more_jobs_than_the_limit_when_listed_then_pages_are_followed_only_up_to_the_limit() {
    let fake = fake_with_three_jobs().await; // the fake serves pages of two

    let outcome = finish(fake.hodei(&["-o", "json", "jobs", "list", "--limit", "3"])).await;
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(jobs.len(), 3);
    let outcome = finish(fake.hodei(&["-o", "json", "jobs", "list", "--limit", "2"])).await;
    let jobs: Vec<serde_json::Value> = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(jobs.len(), 2);

    let requests: Vec<(u32, String)> = fake
        .list_requests()
        .into_iter()
        .map(|r| (r.limit, r.page_token))
        .collect();
    assert_eq!(
        requests,
        [(3, String::new()), (1, "2".to_owned()), (2, String::new())],
        "the second page asks only for what is missing; --limit 2 needs one page"
    );
}

#[tokio::test]
async fn given_state_filters_when_listed_then_they_are_sent_and_the_table_shows_the_matches() {
    let fake = fake_with_three_jobs().await;

    let outcome =
        finish(fake.hodei(&["jobs", "list", "--state", "failed", "--state", "timed-out"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let states = &fake.list_requests()[0].states;
    assert_eq!(
        states,
        &[pb::JobState::Failed as i32, pb::JobState::TimedOut as i32]
    );
    let stdout = outcome.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("ID     STATE      EXIT  ATTEMPTS  AGE  COMMAND"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("job-3  timed_out  -     1         0s   sleep 10"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("job-2  failed     3     1         0s   exit 3"),
        "{stdout}"
    );
}

#[tokio::test]
async fn given_an_unknown_state_when_listed_then_it_is_a_usage_error_naming_the_states() {
    let fake = FakeServer::start(vec![]).await;

    let outcome = finish(fake.hodei(&["jobs", "list", "--state", "done"])).await;

    assert_eq!(outcome.code, Some(2));
    assert!(outcome.stderr.contains("timed_out"), "{}", outcome.stderr);
}

#[tokio::test]
async fn given_a_job_when_got_then_a_key_value_block_with_reason_is_printed() {
    let fake = fake_with_three_jobs().await;

    let outcome = finish(fake.hodei(&["jobs", "get", "job-3"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let stdout = outcome.stdout();
    assert!(stdout.starts_with("ID:           job-3\n"), "{stdout}");
    assert!(stdout.contains("State:        timed_out\n"), "{stdout}");
    assert!(
        stdout.contains("Reason:       timed out after 1s\n"),
        "{stdout}"
    );
    assert!(stdout.contains("Command:      sleep 10\n"), "{stdout}");
    assert!(stdout.contains("Worker:       worker-1\n"), "{stdout}");
    assert!(stdout.contains("Created:      20"), "{stdout}");
}

#[tokio::test]
async fn given_a_job_when_got_as_json_then_it_is_one_object() {
    let fake = fake_with_three_jobs().await;

    let outcome = finish(fake.hodei(&["jobs", "get", "job-1", "--output", "json"])).await;

    let job: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(job["id"], "job-1");
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["exit_code"], 0);
}

#[tokio::test]
async fn given_an_unknown_job_when_got_then_the_servers_message_is_printed_and_exit_is_1() {
    let fake = FakeServer::start(vec![]).await;

    let outcome = finish(fake.hodei(&["jobs", "get", "nope"])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(outcome.stderr, "error: job nope not found\n");
    assert_eq!(outcome.stdout, b"");
}

#[tokio::test]
async fn given_a_running_job_when_cancelled_then_the_request_carries_the_reason() {
    let fake = FakeServer::start(vec![]).await;
    let id = fake.add_job("sleep 100", vec![Step::WaitForCancel, exits(143)]);

    let outcome = finish(fake.hodei(&["jobs", "cancel", &id, "--reason", "not needed"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert!(
        outcome
            .stdout()
            .starts_with("cancellation requested: job job-1 is running"),
        "{}",
        outcome.stdout()
    );
    let cancels = fake.cancels();
    assert_eq!(cancels.len(), 1);
    assert_eq!(cancels[0].reason, "not needed");
}

#[tokio::test]
async fn given_a_finished_job_when_cancelled_then_the_servers_refusal_is_exit_1() {
    let fake = fake_with_three_jobs().await;

    let outcome = finish(fake.hodei(&["jobs", "cancel", "job-1"])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(outcome.stderr, "error: job job-1 has already finished\n");
}

#[tokio::test]
async fn given_a_running_job_when_logs_are_followed_then_new_lines_arrive_until_it_ends() {
    let fake = FakeServer::start(vec![]).await;
    let id = fake.add_job(
        "x",
        vec![
            Step::Out(b"a"),
            Step::Sleep(Duration::from_millis(200)),
            Step::Err(b"b"),
            Step::Sleep(Duration::from_millis(200)),
            Step::Out(b"c"),
            exits(5),
        ],
    );

    let outcome = finish(fake.hodei(&["jobs", "logs", "-f", &id])).await;

    assert_eq!(
        outcome.code,
        Some(0),
        "logs succeed whatever the job's exit code"
    );
    assert_eq!(outcome.stdout(), "a\nc\n");
    assert_eq!(outcome.stderr, "b\n");
    assert_eq!(fake.subscriptions().len(), 1);
    assert!(fake.subscriptions()[0].follow);
}

#[tokio::test]
async fn given_a_running_job_when_logs_are_read_without_follow_then_only_stored_lines_print() {
    let fake = FakeServer::start(vec![]).await;
    let id = fake.add_job(
        "x",
        vec![
            Step::Out(b"a"),
            Step::Out(b"b"),
            Step::WaitForRelease,
            exits(0),
        ],
    );
    fake.wait_until_job(&id, "to have printed two lines", |_, lines| {
        lines.len() == 2
    })
    .await;

    let outcome = finish(fake.hodei(&["jobs", "logs", &id, "--from", "2"])).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stdout(), "b\n");
    let subscription = &fake.subscriptions()[0];
    assert_eq!(
        (subscription.from_sequence, subscription.follow),
        (2, false)
    );
    fake.release();
}

#[tokio::test]
async fn given_workers_when_listed_then_all_asks_for_finished_ones_and_json_has_the_fields() {
    let fake = FakeServer::start(vec![]).await;
    fake.set_workers(vec![
        pb::Worker {
            id: "w-1".into(),
            provider: "local".into(),
            state: pb::WorkerState::Busy as i32,
            resource: "pid 42".into(),
            current_job_id: "job-1".into(),
            jobs_run: 1,
            ..Default::default()
        },
        pb::Worker {
            id: "w-2".into(),
            provider: "kubernetes".into(),
            state: pb::WorkerState::Failed as i32,
            reason: "image pull failed: hodei-worker:e2e-test".into(),
            ..Default::default()
        },
    ]);

    let outcome = finish(fake.hodei(&["workers", "list"])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let stdout = outcome.stdout();
    assert!(
        stdout.starts_with("ID   PROVIDER  STATE  JOB    JOBS RUN"),
        "{stdout}"
    );
    assert!(
        stdout.contains("w-1  local     busy   job-1  1"),
        "{stdout}"
    );
    assert!(!stdout.contains("w-2"), "{stdout}");

    let outcome = finish(fake.hodei(&["workers", "list", "--all", "-o", "json"])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[1]["state"], "failed");
    assert_eq!(
        workers[1]["reason"],
        "image pull failed: hodei-worker:e2e-test"
    );
    assert_eq!(workers[1]["current_job_id"], serde_json::Value::Null);
    assert_eq!(workers[0]["jobs_run"], 1);
    let include_finished: Vec<bool> = fake
        .worker_requests()
        .iter()
        .map(|r| r.include_finished)
        .collect();
    assert_eq!(include_finished, [false, true]);
}

#[tokio::test]
async fn given_more_workers_than_a_page_when_listed_then_pages_are_followed_up_to_the_limit() {
    let fake = FakeServer::start(vec![]).await; // the fake serves pages of two
    fake.set_workers(
        (1..=5)
            .map(|i| pb::Worker {
                id: format!("w-{i}"),
                provider: "local".into(),
                state: pb::WorkerState::Idle as i32,
                ..Default::default()
            })
            .collect(),
    );

    let outcome = finish(fake.hodei(&["-o", "json", "workers", "list"])).await;
    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&outcome.stdout).expect("JSON");
    let ids: Vec<&str> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["w-1", "w-2", "w-3", "w-4", "w-5"],
        "every page, in order"
    );
    let outcome = finish(fake.hodei(&["-o", "json", "workers", "list", "--limit", "3"])).await;
    let workers: Vec<serde_json::Value> = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(workers.len(), 3);

    let requests: Vec<(u32, String)> = fake
        .worker_requests()
        .into_iter()
        .map(|r| (r.limit, r.page_token))
        .collect();
    assert_eq!(
        requests,
        [
            (100, String::new()),
            (98, "2".to_owned()),
            (96, "4".to_owned()),
            (3, String::new()),
            (1, "2".to_owned()),
        ],
        "each page asks only for what is missing and continues from the previous token"
    );
}

#[tokio::test]
async fn given_a_closed_stdout_when_logs_are_followed_then_it_stops_quietly_instead_of_following() {
    let fake = FakeServer::start(vec![]).await;
    let id = fake.add_job("x", vec![Step::Out(b"a"), Step::WaitForRelease, exits(0)]);
    let mut child = fake
        .hodei(&["jobs", "logs", "-f", &id])
        .spawn()
        .expect("spawn");
    drop(child.stdout.take()); // as `| head -0` does

    let outcome = support::wait(child).await;

    assert_eq!(outcome.code, Some(0));
    assert_eq!(outcome.stderr, "", "no panic, no complaint");
    fake.release();
}

#[tokio::test]
async fn given_a_closed_stdout_when_jobs_are_listed_then_there_is_no_panic() {
    let fake = fake_with_three_jobs().await;
    let mut child = fake.hodei(&["jobs", "list"]).spawn().expect("spawn");
    drop(child.stdout.take());

    let outcome = support::wait(child).await;

    assert_eq!(outcome.code, Some(0));
    assert_eq!(outcome.stderr, "");
}

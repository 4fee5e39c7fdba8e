//! The client API reads as one design (issue 13, item 7): every method that answers one job
//! answers the `Job` itself; a reason never repeats the state; cancelling a running job is
//! visibly asynchronous; listings are paged and leave out what only one job's page needs; an
//! unset state filter means any state; and a plaintext client on a TLS port is told to use TLS.

mod common;

use std::{collections::HashSet, time::Duration};

use common::TestServer;
use hodei_proto::v1::{self as pb, job_service_client::JobServiceClient};
use hodei_testkit::auth::Authed;
use hodei_testkit::jobs::{assert_state, spec};
use tonic::Code;

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

fn spec_with_env(command: &str) -> pb::JobSpec {
    let mut spec = spec(command);
    spec.env.insert("GREETING".into(), "hello".into());
    spec.secrets.insert("API_KEY".into(), "s3cr3t".into());
    spec
}

async fn jobs_as(server: &TestServer, name: &str) -> anyhow::Result<JobServiceClient<Authed>> {
    let token = server.token(name, "jobs:submit,jobs:read").await?;
    Ok(JobServiceClient::new(
        server.channel_as(Some(&token)).await?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_get_and_cancel_answer_the_job_itself_and_a_cancelled_reason_does_not_repeat_the_state()
-> anyhow::Result<()> {
    let server = TestServer::local(|s| s.max_workers = 1).await?;
    let mut alice = jobs_as(&server, "alice").await?;

    // QueueJob answers the Job, in the full view, like GetJob.
    let running = alice
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec_with_env("sleep 60")),
        })
        .await?
        .into_inner();
    assert_state(&running, pb::JobState::Queued);
    let queued_spec = running.spec.clone().unwrap_or_default();
    assert_eq!(
        queued_spec.env.get("GREETING").map(String::as_str),
        Some("hello")
    );
    assert_eq!(running.secret_names, ["API_KEY"]);
    assert!(!running.cancel_requested);
    server.wait_running(&running.id).await?;

    // With the only worker slot taken, the next job stays queued: its cancel is immediate.
    let waiting = alice
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec("true")),
        })
        .await?
        .into_inner();
    let cancelled = alice
        .cancel_job(pb::CancelJobRequest {
            job_id: waiting.id.clone(),
            reason: "no longer needed".into(),
        })
        .await?
        .into_inner();
    assert_state(&cancelled, pb::JobState::Cancelled);
    assert_eq!(cancelled.reason, "no longer needed");

    // A running job: the answer says the cancel is under way; the job ends cancelled soon
    // after, its reason the cancel's own — by default who asked — said once.
    let answer = alice
        .cancel_job(pb::CancelJobRequest {
            job_id: running.id.clone(),
            reason: String::new(),
        })
        .await?
        .into_inner();
    assert!(
        answer.cancel_requested,
        "CancelJob must say a cancel is under way: {answer:?}"
    );
    assert!(
        answer.state == pb::JobState::Running as i32
            || answer.state == pb::JobState::Cancelled as i32,
        "{answer:?}"
    );
    let ended = server.wait_finished(&running.id, JOB_TIMEOUT).await?;
    assert_state(&ended, pb::JobState::Cancelled);
    assert_eq!(ended.reason, "requested by alice");
    assert!(ended.cancel_requested);
    let attempt = ended.attempt_history.first().cloned().unwrap_or_default();
    assert_eq!(
        (attempt.outcome.as_str(), attempt.reason.as_str()),
        ("cancelled", "requested by alice")
    );
    let full = alice
        .get_job(pb::GetJobRequest {
            job_id: running.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(full, ended, "GetJob and the wait see the same job");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_leaves_out_environment_and_attempts_unless_the_full_view_is_asked()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server.queue_spec(spec_with_env("echo hi")).await?;
    assert_state(
        &server.wait_finished(&id, JOB_TIMEOUT).await?,
        pb::JobState::Succeeded,
    );
    let mut jobs = server.jobs().await?;
    let list = |view: pb::JobView| pb::ListJobsRequest {
        view: view as i32,
        ..Default::default()
    };

    let basic = jobs
        .list_jobs(list(pb::JobView::Unspecified))
        .await?
        .into_inner();
    let listed = basic.jobs.first().cloned().unwrap_or_default();
    assert_eq!(listed.id, id);
    let listed_spec = listed.spec.clone().unwrap_or_default();
    assert_eq!(listed_spec.command, "echo hi");
    assert!(listed_spec.env.is_empty(), "{listed:?}");
    assert!(listed.attempt_history.is_empty(), "{listed:?}");
    assert_eq!(listed.secret_names, ["API_KEY"]);
    assert_state(&listed, pb::JobState::Succeeded);

    let full = jobs.list_jobs(list(pb::JobView::Full)).await?.into_inner();
    let listed = full.jobs.first().cloned().unwrap_or_default();
    let listed_spec = listed.spec.clone().unwrap_or_default();
    assert_eq!(
        listed_spec.env.get("GREETING").map(String::as_str),
        Some("hello")
    );
    assert_eq!(listed.attempt_history.len(), 1);
    assert_eq!(listed.attempt_history[0].outcome, "succeeded");
    assert!(
        listed_spec.secrets.is_empty(),
        "secret values are never returned"
    );

    let one_basic = jobs
        .get_job(pb::GetJobRequest {
            job_id: id.clone(),
            view: pb::JobView::Basic as i32,
        })
        .await?
        .into_inner();
    assert!(one_basic.spec.unwrap_or_default().env.is_empty());
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_filter_of_unspecified_lists_every_state_and_an_unknown_state_is_refused()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let done = server.queue("true").await?;
    server.wait_finished(&done, JOB_TIMEOUT).await?;
    let mut jobs = server.jobs().await?;

    let any = jobs
        .list_jobs(pb::ListJobsRequest {
            states: vec![pb::JobState::Unspecified as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        any.jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [done.as_str()]
    );
    let refused = jobs
        .list_jobs(pb::ListJobsRequest {
            states: vec![99],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("99"), "{refused:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_listed_in_pages_newest_first() -> anyhow::Result<()> {
    let server = TestServer::local(|s| s.max_jobs_per_worker = 1).await?;
    for _ in 0..3 {
        let id = server.queue("true").await?;
        server.wait_finished(&id, JOB_TIMEOUT).await?;
    }
    let mut workers = server.workers().await?;
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page = workers
            .list_workers(pb::ListWorkersRequest {
                include_finished: true,
                limit: 1,
                page_token: std::mem::take(&mut page_token),
            })
            .await?
            .into_inner();
        assert!(page.workers.len() <= 1, "{page:?}");
        seen.extend(page.workers.into_iter().map(|w| w.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 3, "one worker per job, each once: {seen:?}");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 3);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest (highest time-ordered id) first");

    let refused = workers
        .list_workers(pb::ListWorkersRequest {
            page_token: "not-a-token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_on_the_tls_port_is_told_to_use_tls() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert_pem = certified.cert.pem();
    std::fs::write(dir.path().join("server.pem"), &cert_pem)?;
    std::fs::write(
        dir.path().join("server.key"),
        certified.signing_key.serialize_pem(),
    )?;
    let mut server = TestServer::local(|s| {
        s.tls = Some(hodei_server::TlsFiles {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
        });
        s.worker_ca_pem = Some(cert_pem.clone());
        s.worker_server_host = "localhost".into();
    })
    .await?;
    let port = server.server().addr().port();

    // gRPC over plaintext HTTP/2, as `grpcurl -plaintext` or an http:// URL would.
    let plaintext = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await?;
    let refused = JobServiceClient::new(plaintext)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("requires TLS") && refused.message().contains("https://"),
        "{refused:?}"
    );

    // A browser or curl on http://.
    let answer = http1_get(port).await?;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("requires TLS"), "{answer}");

    // TLS clients are served as before, jobs run.
    server.use_client_tls(&cert_pem, "localhost");
    let id = server.queue("echo over-tls").await?;
    assert_state(
        &server.wait_finished(&id, JOB_TIMEOUT).await?,
        pb::JobState::Succeeded,
    );
    server.shutdown().await
}

async fn http1_get(port: u16) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

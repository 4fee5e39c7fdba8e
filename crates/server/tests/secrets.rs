//! A job's secrets: the job gets them, nobody gets them back. Checked where a value could
//! leak: the API's answers (as bytes), the stored output, the secrets table once the job has
//! ended, and the server's own log (a real `hodei-server` process at debug level).

mod common;

use std::{collections::HashMap, ffi::OsString, time::Duration};

use common::TestServer;
use hodei_proto::v1::{self as pb, job_service_client::JobServiceClient};
use hodei_testkit::{
    TestDatabase,
    jobs::{assert_state, spec},
    log_lines::texts,
    server_process::{ServerCommand, ServerProcess},
    wait_for,
};
use prost::Message;
use tonic::Code;

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
const SECRET: &str = "hunter22-xyz";

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A job that uses its secret, prints it whole, in two writes on one line, and on stderr.
fn leaky_job() -> pb::JobSpec {
    pb::JobSpec {
        secrets: HashMap::from([("DB_PASSWORD".to_string(), SECRET.to_string())]),
        ..spec(
            // The command never holds the whole value: it is stored and shown as it is.
            "[ \"${DB_PASSWORD%-xyz}\" = hunter22 ] && echo the-job-has-its-secret; \
             echo \"pw=$DB_PASSWORD\"; printf 'hunter'; printf '22-xyz and more\\n'; \
             echo \"$DB_PASSWORD\" >&2",
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_its_job_is_masked_in_output_and_never_comes_back() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let id = server.queue_spec(leaky_job()).await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_state(&job, pb::JobState::Succeeded);
    assert_eq!(job.secret_names, ["DB_PASSWORD"]);

    let lines = server.follow_logs(&id, JOB_TIMEOUT).await?;
    assert_eq!(
        texts(&lines),
        ["the-job-has-its-secret", "pw=***", "*** and more", "***"],
        "the job saw its secret, and its output shows it masked, even written in two pieces"
    );

    // Nothing the API returns holds the value.
    let mut jobs = server.jobs().await?;
    let got = jobs
        .get_job(pb::GetJobRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let listed = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner();
    let logs = server
        .logs()
        .await?
        .get_logs(pb::GetLogsRequest {
            job_id: id.clone(),
            from_sequence: 1,
            limit: 100,
        })
        .await?
        .into_inner();
    for (what, bytes) in [
        ("GetJob", got.encode_to_vec()),
        ("ListJobs", listed.encode_to_vec()),
        ("GetLogs", logs.encode_to_vec()),
    ] {
        assert!(!contains(&bytes, SECRET), "{what} returned the secret");
    }
    assert!(got.spec.is_some_and(|s| s.secrets.is_empty()));

    // Nor does the database, now that the job has ended.
    let (stored_lines, secret_rows): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM job_logs WHERE position($1::bytea in data) > 0),
                (SELECT count(*) FROM job_secrets)",
    )
    .bind(SECRET.as_bytes())
    .fetch_one(server.store.pool())
    .await?;
    assert_eq!(stored_lines, 0, "an output line was stored with the secret");
    assert_eq!(secret_rows, 0, "the secret outlived its job");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_that_cannot_be_kept_are_refused_without_echoing_them() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let mut jobs = server.jobs().await?;
    for (secrets, env) in [
        // Too short to be masked without hiding ordinary text.
        (vec![("PIN", "123")], vec![]),
        // Given twice.
        (vec![("TOKEN", "s3cr3t-value")], vec![("TOKEN", "plain")]),
        // Over two lines, which line-by-line masking could never find.
        (vec![("KEY", "two\nlines-x")], vec![]),
        (vec![("1BAD", "s3cr3t-value")], vec![]),
    ] {
        let refused = jobs
            .queue_job(pb::QueueJobRequest {
                spec: Some(pb::JobSpec {
                    secrets: secrets
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    env: env
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..spec("true")
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        for (_, value) in &secrets {
            assert!(!refused.message().contains(value), "{refused:?}");
        }
    }
    let (jobs_stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(server.store.pool())
        .await?;
    assert_eq!(jobs_stored, 0);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_own_log_never_holds_a_secret_even_at_debug_level() -> anyhow::Result<()> {
    hodei_testkit::init_tracing();
    let db = TestDatabase::create().await?;
    let dir = tempfile::Builder::new()
        .prefix("hodei-secrets-")
        .tempdir()?;
    let log = dir.path().join("server.log");
    let args: Vec<OsString> = [
        "--database-url",
        db.url(),
        "--provider",
        "local",
        "--worker-binary",
    ]
    .iter()
    .map(OsString::from)
    .chain([hodei_testkit::worker_binary()?.into_os_string()])
    .collect();
    let server = ServerProcess::start(ServerCommand {
        binary: env!("CARGO_BIN_EXE_hodei-server").into(),
        args,
        log_filter: "debug".into(),
        log: log.clone(),
    })
    .await?;
    let mut jobs: JobServiceClient<_> = server.jobs().await?;
    let id = jobs
        .queue_job(pb::QueueJobRequest {
            spec: Some(leaky_job()),
        })
        .await?
        .into_inner()
        .id;
    let done = wait_for("the job to end", JOB_TIMEOUT, || {
        let mut jobs = jobs.clone();
        let id = id.clone();
        async move {
            let job = jobs
                .get_job(pb::GetJobRequest {
                    job_id: id,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok(hodei_testkit::probe_value(job, |j| {
                hodei_testkit::jobs::is_final(j.state)
            }))
        }
    })
    .await?;
    assert_state(&done, pb::JobState::Succeeded);
    let text = std::fs::read(&log)?;
    assert!(
        contains(&text, "job finished"),
        "the log is the server's, at debug level:\n{}",
        String::from_utf8_lossy(&text)
    );
    assert!(
        !contains(&text, SECRET),
        "the server's log holds the secret:\n{}",
        String::from_utf8_lossy(&text)
    );
    assert!(
        !contains(&text, server.token()),
        "the server's log holds an API token"
    );
    Ok(())
}

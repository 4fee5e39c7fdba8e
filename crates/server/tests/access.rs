//! Who may call what: every RPC of the client API without a token, with a token lacking the
//! scope, and with another principal's token — refused, and nothing in the database changed.
//! The table of calls must name every method the API defines, so a new RPC without an entry
//! here fails `every_client_rpc_refuses_callers_without_the_right_token`.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::TestServer;
use hodei_domain::ApiToken;
use hodei_proto::v1::{
    self as pb, FILE_DESCRIPTOR_SET, job_service_client::JobServiceClient,
    log_stream_service_client::LogStreamServiceClient, token_service_client::TokenServiceClient,
    worker_query_service_client::WorkerQueryServiceClient,
};
use hodei_testkit::jobs::{assert_state, spec};
use prost::Message;
use tonic::{Code, Status};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Every client method: `/hodei.v1.Service/Method`. The agent service authenticates workers
/// with their own credentials and is tested in `e2e_local_provider`.
fn client_methods() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptors");
    set.file
        .iter()
        .filter(|file| file.package() == "hodei.v1")
        .flat_map(|file| {
            file.service
                .iter()
                .filter(|service| service.name() != "WorkerAgentService")
                .flat_map(move |service| {
                    service.method.iter().map(move |method| {
                        format!("/hodei.v1.{}/{}", service.name(), method.name())
                    })
                })
        })
        .collect()
}

/// What a call is about: the job it targets and the token it may revoke.
struct Targets {
    job: String,
    token_id: String,
}

/// Calls `method` with `token` (or none); the status if refused.
async fn call(
    server: &TestServer,
    method: &str,
    token: Option<&ApiToken>,
    targets: &Targets,
) -> anyhow::Result<Result<(), Status>> {
    let channel = server.channel_as(token).await?;
    let job_id = targets.job.clone();
    Ok(match method {
        "/hodei.v1.JobService/QueueJob" => done(
            JobServiceClient::new(channel)
                .queue_job(pb::QueueJobRequest {
                    spec: Some(spec("echo not-allowed")),
                })
                .await,
        ),
        "/hodei.v1.JobService/GetJob" => done(
            JobServiceClient::new(channel)
                .get_job(pb::GetJobRequest {
                    job_id,
                    ..Default::default()
                })
                .await,
        ),
        "/hodei.v1.JobService/ListJobs" => {
            // A listing is not refused to a reader; it shows only the reader's own jobs.
            let listed = JobServiceClient::new(channel)
                .list_jobs(pb::ListJobsRequest::default())
                .await
                .map(tonic::Response::into_inner);
            match listed {
                Ok(list) if list.jobs.iter().any(|j| j.id == targets.job) => Ok(()),
                Ok(_) => Err(Status::not_found("the job is not in the listing")),
                Err(status) => Err(status),
            }
        }
        "/hodei.v1.JobService/CancelJob" => done(
            JobServiceClient::new(channel)
                .cancel_job(pb::CancelJobRequest {
                    job_id,
                    reason: "not allowed".into(),
                })
                .await,
        ),
        "/hodei.v1.LogStreamService/SubscribeLogs" => {
            let stream = LogStreamServiceClient::new(channel)
                .subscribe_logs(pb::SubscribeLogsRequest {
                    job_id,
                    from_sequence: 1,
                    follow: false,
                })
                .await;
            match stream {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => {}
                            Ok(None) => break Ok(()),
                            Err(status) => break Err(status),
                        }
                    }
                }
                Err(status) => Err(status),
            }
        }
        "/hodei.v1.LogStreamService/GetLogs" => done(
            LogStreamServiceClient::new(channel)
                .get_logs(pb::GetLogsRequest {
                    job_id,
                    from_sequence: 1,
                    limit: 10,
                })
                .await,
        ),
        "/hodei.v1.WorkerQueryService/ListWorkers" => done(
            WorkerQueryServiceClient::new(channel)
                .list_workers(pb::ListWorkersRequest::default())
                .await,
        ),
        "/hodei.v1.TokenService/CreateToken" => done(
            TokenServiceClient::new(channel)
                .create_token(pb::CreateTokenRequest {
                    name: "intruder".into(),
                    scopes: vec!["tokens:admin".into()],
                    ttl_seconds: None,
                })
                .await,
        ),
        "/hodei.v1.TokenService/ListTokens" => done(
            TokenServiceClient::new(channel)
                .list_tokens(pb::ListTokensRequest {})
                .await,
        ),
        "/hodei.v1.TokenService/RevokeToken" => done(
            TokenServiceClient::new(channel)
                .revoke_token(pb::RevokeTokenRequest {
                    id: targets.token_id.clone(),
                })
                .await,
        ),
        other => anyhow::bail!("no call in this test's table for {other}: add one"),
    })
}

fn done<T>(answer: Result<T, Status>) -> Result<(), Status> {
    answer.map(drop)
}

/// Whether `method` is about one job, which a principal may only reach if it is its own.
fn is_about_a_job(method: &str) -> bool {
    method.starts_with("/hodei.v1.JobService/") && !method.ends_with("/QueueJob")
        || method.starts_with("/hodei.v1.LogStreamService/")
}

/// A scope set that does not include what `method` needs.
fn wrong_scopes(method: &str) -> &'static str {
    if method.starts_with("/hodei.v1.WorkerQueryService/")
        || method.starts_with("/hodei.v1.TokenService/")
    {
        "jobs:submit,jobs:read"
    } else if method.ends_with("/CancelJob") || method.ends_with("/QueueJob") {
        "jobs:read,workers:read"
    } else {
        "workers:read,metrics:read"
    }
}

/// Everything a refused call could have changed.
async fn snapshot(server: &TestServer) -> anyhow::Result<String> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT concat_ws('|', 'job', id, state, reason, cancel_requested) FROM jobs
         UNION ALL SELECT concat_ws('|', 'token', id, name, revoked_at) FROM api_tokens
         UNION ALL SELECT concat_ws('|', 'logs', job_id, count(*)) FROM job_logs GROUP BY job_id
         ORDER BY 1",
    )
    .fetch_all(server.store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_rpc_refuses_callers_without_the_right_token() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let alice = server.token("alice", "jobs:submit,jobs:read").await?;
    let bob = server.token("bob", "jobs:submit,jobs:read").await?;
    // Alice's job, running, so a cancel would have something to change.
    let job = {
        let mut jobs = JobServiceClient::new(server.channel_as(Some(&alice)).await?);
        jobs.queue_job(pb::QueueJobRequest {
            spec: Some(spec("echo started; sleep 60")),
        })
        .await?
        .into_inner()
        .id
    };
    server.wait_running(&job).await?;
    let token_id: (uuid::Uuid,) = sqlx::query_as("SELECT id FROM api_tokens WHERE name = 'alice'")
        .fetch_one(server.store.pool())
        .await?;
    let targets = Targets {
        job: job.clone(),
        token_id: token_id.0.to_string(),
    };

    let methods = client_methods();
    assert!(methods.len() >= 10, "{methods:?}");
    let before = snapshot(&server).await?;
    let mut failures = Vec::new();
    for method in &methods {
        let no_token = call(&server, method, None, &targets).await?;
        if !matches!(&no_token, Err(s) if s.code() == Code::Unauthenticated) {
            failures.push(format!("{method} without a token: {no_token:?}"));
        }
        let garbage = ApiToken::parse(&format!("hodei_{}", "0".repeat(64)))?;
        let unknown = call(&server, method, Some(&garbage), &targets).await?;
        if !matches!(&unknown, Err(s) if s.code() == Code::Unauthenticated) {
            failures.push(format!("{method} with an unknown token: {unknown:?}"));
        }
        let wrong = server
            .token(&format!("wrong-{}", method.len()), wrong_scopes(method))
            .await?;
        let refused = call(&server, method, Some(&wrong), &targets).await?;
        let allowed_but_blind =
            is_about_a_job(method) && matches!(&refused, Err(s) if s.code() == Code::NotFound);
        if !(matches!(&refused, Err(s) if s.code() == Code::PermissionDenied) || allowed_but_blind)
        {
            failures.push(format!(
                "{method} with scopes {}: {refused:?}",
                wrong_scopes(method)
            ));
        }
        if is_about_a_job(method) {
            // Bob may call the method, but the job is Alice's: it does not exist for him.
            let other = call(&server, method, Some(&bob), &targets).await?;
            if !matches!(&other, Err(s) if s.code() == Code::NotFound) {
                failures.push(format!("{method} on someone else's job: {other:?}"));
            }
            if method.ends_with("/CancelJob") {
                continue; // alice's own cancel would end the job; it is tested below
            }
            let owner = call(&server, method, Some(&alice), &targets).await;
            if !matches!(owner, Ok(Ok(()))) {
                failures.push(format!("{method} by the job's owner: {owner:?}"));
            }
        }
    }
    let after = snapshot(&server).await?;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The wrong-scope tokens were created by the test itself; nothing else may differ.
    let changed: Vec<&str> = after
        .lines()
        .filter(|line| !before.lines().any(|b| b == *line))
        .filter(|line| !line.contains("|wrong-"))
        .collect();
    assert!(
        changed.is_empty(),
        "refused calls changed the database: {changed:?}"
    );
    assert_state(&server.get_job(&job).await?, pb::JobState::Running);

    // The owner may cancel; an administrator may see every job.
    let cancelled = JobServiceClient::new(server.channel_as(Some(&alice)).await?)
        .cancel_job(pb::CancelJobRequest {
            job_id: job.clone(),
            reason: "by its owner".into(),
        })
        .await;
    assert!(cancelled.is_ok(), "{cancelled:?}");
    let ended = server.wait_finished(&job, JOB_TIMEOUT).await?;
    assert_state(&ended, pb::JobState::Cancelled);
    assert_eq!(ended.owner, "alice");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_within_a_second_and_its_log_stream_ends() -> anyhow::Result<()>
{
    let server = TestServer::local(|_| {}).await?;
    let reader = server.token("reader", "jobs:submit,jobs:read").await?;
    let mut jobs = JobServiceClient::new(server.channel_as(Some(&reader)).await?);
    let job = jobs
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec("while true; do echo tick; sleep 0.2; done")),
        })
        .await?
        .into_inner()
        .id;
    let mut stream = LogStreamServiceClient::new(server.channel_as(Some(&reader)).await?)
        .subscribe_logs(pb::SubscribeLogsRequest {
            job_id: job.clone(),
            from_sequence: 1,
            follow: true,
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(JOB_TIMEOUT, stream.message()).await??;
    assert!(first.is_some(), "the follower saw the job's first line");

    let (id,): (uuid::Uuid,) = sqlx::query_as("SELECT id FROM api_tokens WHERE name = 'reader'")
        .fetch_one(server.store.pool())
        .await?;
    TokenServiceClient::new(server.channel().await?)
        .revoke_token(pb::RevokeTokenRequest { id: id.to_string() })
        .await?;
    let revoked_at = tokio::time::Instant::now();

    // The next call is refused within a second.
    let refused = loop {
        match jobs
            .get_job(pb::GetJobRequest {
                job_id: job.clone(),
                ..Default::default()
            })
            .await
        {
            Err(status) => break status,
            Ok(_) if revoked_at.elapsed() < Duration::from_secs(1) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(_) => panic!("a revoked token was still accepted after a second"),
        }
    };
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");

    // The stream it had opened ends with the refusal instead of following on.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await?;
    assert!(
        matches!(&ended, Err(s) if s.code() == Code::Unauthenticated),
        "{ended:?}"
    );
    server.cancel(&job, "test over").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_as_expired() -> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let token = ApiToken::generate();
    server
        .store
        .insert_api_token(
            "temp",
            hodei_domain::Scopes::all(),
            token.hash(),
            Some(chrono::Utc::now() - chrono::Duration::seconds(1)),
            "test",
        )
        .await?;
    let refused = JobServiceClient::new(server.channel_as(Some(&token)).await?)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("expired"), "{refused:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_made_through_the_api_works_once_shown_and_is_never_listed_with_its_secret()
-> anyhow::Result<()> {
    let server = TestServer::local(|_| {}).await?;
    let mut tokens = TokenServiceClient::new(server.channel().await?);
    let created = tokens
        .create_token(pb::CreateTokenRequest {
            name: "ci".into(),
            scopes: vec!["jobs:submit".into(), "jobs:read".into()],
            ttl_seconds: Some(3600),
        })
        .await?
        .into_inner();
    let secret = ApiToken::parse(&created.secret)?;
    let info = created
        .token
        .ok_or_else(|| anyhow::anyhow!("no token info"))?;
    assert_eq!(info.scopes, ["jobs:submit", "jobs:read"]);
    assert!(info.expires_at.is_some());
    assert_eq!(info.created_by, "admin");

    let mut ci = JobServiceClient::new(server.channel_as(Some(&secret)).await?);
    let job = ci
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec("echo from-ci")),
        })
        .await?
        .into_inner();
    assert_eq!(job.owner, "ci");

    let listed = tokens
        .list_tokens(pb::ListTokensRequest {})
        .await?
        .into_inner();
    let encoded = listed.encode_to_vec();
    assert!(
        memchr_find(&encoded, created.secret.as_bytes()).is_none(),
        "the listing carries a token's secret"
    );
    let (stored,): (Vec<u8>,) =
        sqlx::query_as("SELECT token_hash FROM api_tokens WHERE name = 'ci'")
            .fetch_one(server.store.pool())
            .await?;
    assert_eq!(stored.len(), 32, "only the hash is stored");
    assert!(memchr_find(&stored, created.secret.as_bytes()).is_none());

    for bad in [
        pb::CreateTokenRequest {
            name: String::new(),
            scopes: vec!["jobs:read".into()],
            ttl_seconds: None,
        },
        pb::CreateTokenRequest {
            name: "x".into(),
            scopes: vec!["jobs:write".into()],
            ttl_seconds: None,
        },
        pb::CreateTokenRequest {
            name: "x".into(),
            scopes: vec![],
            ttl_seconds: None,
        },
        pb::CreateTokenRequest {
            name: "x".into(),
            scopes: vec!["jobs:read".into()],
            ttl_seconds: Some(-5),
        },
    ] {
        let refused = tokens.create_token(bad).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }
    server.shutdown().await
}

fn memchr_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A CA and a certificate it signs for `name` (a DNS name for servers, a common name for
/// clients).
struct TestPki {
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
}

impl TestPki {
    fn new(name: &str) -> anyhow::Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca_pem = ca_params.self_signed(&ca_key)?.pem();
        Ok(Self {
            ca_params,
            ca_key,
            ca_pem,
        })
    }

    /// (certificate PEM, key PEM) for a server named `dns` or a client called `common_name`.
    fn issue(&self, dns: &[&str], common_name: &str) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| d.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        Ok((params.signed_by(&key, &issuer)?.pem(), key.serialize_pem()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_signed_by_the_configured_ca_authenticates_its_common_name()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let servers = TestPki::new("server CA")?;
    let clients = TestPki::new("client CA")?;
    let strangers = TestPki::new("somebody else's CA")?;
    let (server_cert, server_key) = servers.issue(&["localhost"], "localhost")?;
    let paths = |name: &str| dir.path().join(name);
    std::fs::write(paths("server.pem"), &server_cert)?;
    std::fs::write(paths("server.key"), &server_key)?;
    std::fs::write(paths("clients.pem"), &clients.ca_pem)?;

    let mut server = TestServer::local(|s| {
        s.tls = Some(hodei_server::TlsFiles {
            cert: paths("server.pem"),
            key: paths("server.key"),
        });
        s.client_ca = Some(paths("clients.pem"));
        s.worker_ca_pem = Some(servers.ca_pem.clone());
        s.worker_server_host = "localhost".into();
    })
    .await?;

    // A certificate from the client CA: its common name is the principal, with the
    // configured scopes (jobs:submit, jobs:read), and workers still connect without one.
    let (bot_cert, bot_key) = clients.issue(&[], "build-bot")?;
    server.use_client_identity(Some((&bot_cert, &bot_key)), &servers.ca_pem, "localhost");
    let mut jobs = JobServiceClient::new(server.channel_as(None).await?);
    let job = jobs
        .queue_job(pb::QueueJobRequest {
            spec: Some(spec("echo via-certificate")),
        })
        .await?
        .into_inner();
    assert_eq!(job.owner, "cert:build-bot");
    let finished = server.wait_finished(&job.id, JOB_TIMEOUT).await?;
    assert_state(&finished, pb::JobState::Succeeded);
    let denied = WorkerQueryServiceClient::new(server.channel_as(None).await?)
        .list_workers(pb::ListWorkersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A certificate from another CA does not get through the handshake.
    let (stranger_cert, stranger_key) = strangers.issue(&[], "build-bot")?;
    server.use_client_identity(
        Some((&stranger_cert, &stranger_key)),
        &servers.ca_pem,
        "localhost",
    );
    let refused = match server.channel_as(None).await {
        Err(_) => true,
        Ok(channel) => JobServiceClient::new(channel)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from an unknown CA was accepted");

    // No certificate and no token: unauthenticated.
    server.use_client_identity(None, &servers.ca_pem, "localhost");
    let anonymous = JobServiceClient::new(server.channel_as(None).await?)
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_use_the_api_from_inside_its_worker() -> anyhow::Result<()> {
    let server = TestServer::local(|s| s.max_workers = 2).await?;
    let victim = server.queue("echo victim; sleep 60").await?;
    server.wait_running(&victim).await?;
    // The job knows the server's address and has the CLI: it still has no credential.
    let cli = hodei_testkit::cli_binary()?;
    let attack = format!(
        "env | grep -c -e HODEI_TOKEN -e HODEI_API_TOKEN -e HODEI_DATABASE_URL || true; \
         err=$(mktemp); \
         for call in 'jobs cancel {victim}' 'jobs get {victim}' 'jobs logs {victim}' \
                     'run -- echo smuggled'; do \
           if {cli} --server {url} $call >/dev/null 2>\"$err\"; then echo \"ALLOWED: $call\"; \
           else echo \"refused: $call: $(grep -o -i -e unauthenticated -e token \"$err\" | head -n 1)\"; fi; \
         done; rm -f \"$err\"",
        cli = cli.display(),
        url = server.url(),
    );
    let attacker = server.queue(&attack).await?;
    let finished = server.wait_finished(&attacker, JOB_TIMEOUT).await?;
    assert_state(&finished, pb::JobState::Succeeded);
    let lines = hodei_testkit::log_lines::texts(&server.follow_logs(&attacker, JOB_TIMEOUT).await?);
    assert_eq!(
        lines.first().map(String::as_str),
        Some("0"),
        "credentials in the job's environment: {lines:?}"
    );
    assert_eq!(lines.len(), 5, "{lines:?}");
    for line in &lines[1..] {
        assert!(line.starts_with("refused: "), "{lines:?}");
    }
    assert_state(&server.get_job(&victim).await?, pb::JobState::Running);
    let (jobs,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs")
        .fetch_one(server.store.pool())
        .await?;
    assert_eq!(jobs, 2, "the job queued another job");
    server.cancel(&victim, "test over").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_a_reachable_address_need_a_token_with_metrics_read() -> anyhow::Result<()> {
    let server = TestServer::local(|s| {
        s.metrics_listen = Some("0.0.0.0:0".parse().expect("static address"));
    })
    .await?;
    let port = server
        .server()
        .metrics_addr()
        .ok_or_else(|| anyhow::anyhow!("no metrics endpoint"))?
        .port();
    let scraper = server.token("prometheus", "metrics:read").await?;
    let reader = server.token("reader", "jobs:read").await?;
    let get = |token: Option<&ApiToken>| {
        let authorization = token
            .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
            .unwrap_or_default();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{authorization}Connection: close\r\n\r\n");
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await?;
            anyhow::Ok(answer.lines().next().unwrap_or_default().to_string())
        }
    };
    assert!(get(None).await?.contains(" 401 "), "no token");
    assert!(
        get(Some(&reader)).await?.contains(" 403 "),
        "no metrics:read"
    );
    assert!(get(Some(&scraper)).await?.contains(" 200 "), "metrics:read");
    server.shutdown().await
}

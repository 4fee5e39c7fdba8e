//! The local provider starting this worker the way the server does: what a job sees of the
//! server's environment, and what is left of the worker's token.
//!
//! The server's environment is what is under test, so the test re-runs itself in a child
//! process whose environment looks like a server's (a database URL with its password, a cloud
//! secret) instead of changing its own, which would not be safe with other threads running.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use hodei_domain::{OneTimeToken, Resources, WorkerId};
use hodei_proto::v1::JobOutcome;
use hodei_providers::{
    ManagedWorker, WorkerProvider, WorkerSpec,
    local::{LocalProvider, LocalProviderConfig, worker_command::INHERITED_FROM_SERVER},
};
use support::{FakeServer, JOB_1, TOKEN};

/// Set in the child process that plays the server.
const IN_A_SERVER_LIKE_ENVIRONMENT: &str = "HODEI_TEST_IN_A_SERVER_LIKE_ENVIRONMENT";
const DATABASE_URL: &str = "postgres://u:pw@h/db";
const SOME_SECRET: &str = "s3cr3t-of-the-server";

/// Every variable a local job may see: the server's that the provider lets through, the
/// worker's log filter, the worker's non-secret variables, the job's ids, its spec's variable
/// (the fake server assigns `JOB_VAR`), and the working directory the shell exports.
fn documented_job_variables() -> BTreeSet<&'static str> {
    INHERITED_FROM_SERVER
        .into_iter()
        .chain([
            "RUST_LOG",
            "HODEI_SERVER",
            "HODEI_WORKER_ID",
            "HODEI_MANAGED_BY",
            "HODEI_INSTANCE",
            "HODEI_JOB_ID",
            "HODEI_JOB_ATTEMPT",
            "JOB_VAR",
            "PWD",
        ])
        .collect()
}

const SERVER_SECRETS_TEST: &str = "given_a_server_environment_holding_secrets_when_a_local_worker_runs_a_job_then_the_job_sees_none_of_it";

#[tokio::test]
async fn given_a_server_environment_holding_secrets_when_a_local_worker_runs_a_job_then_the_job_sees_none_of_it()
 {
    if std::env::var_os(IN_A_SERVER_LIKE_ENVIRONMENT).is_none() {
        return rerun_in_a_server_like_environment(SERVER_SECRETS_TEST);
    }
    let mut fake = FakeServer::start().await;
    let provider = LocalProvider::new(LocalProviderConfig::new(env!("CARGO_BIN_EXE_hodei-worker")))
        .expect("the worker binary exists");
    let instance = format!("local-env-{}", &WorkerId::new().to_string()[..8]);
    let spec = WorkerSpec {
        worker_id: WorkerId::new(),
        token: OneTimeToken::parse(TOKEN).expect("a token"),
        server_address: fake.url.clone(),
        instance: instance.clone(),
        resources: Resources::default(),
        lifetime: None,
        extra_env: BTreeMap::new(),
    };
    let handle = provider.create_worker(&spec).await.expect("create");
    let mut session = fake.session().await;

    session.assign(JOB_1, "env").await;
    let job = session.job_until_finished().await;

    assert_eq!(job.outcome(), JobOutcome::Exited);
    let env = job.stdout();
    for line in &env {
        assert!(
            !line.contains(DATABASE_URL) && !line.contains(SOME_SECRET) && !line.contains(TOKEN),
            "a secret reached the job: {line}"
        );
    }
    let names: BTreeSet<&str> = env
        .iter()
        .filter_map(|line| Some(line.split_once('=')?.0))
        .collect();
    let undocumented: Vec<&str> = names
        .difference(&documented_job_variables())
        .copied()
        .collect();
    assert_eq!(
        undocumented,
        Vec::<&str>::new(),
        "the job's environment: {env:#?}"
    );
    assert_eq!(
        fake.registrations()[0].token,
        TOKEN,
        "the token went in through stdin"
    );

    // Neither is the token in the worker's own environment. (Read here as root; an ordinary
    // user, the server's own, cannot read a non-dumpable worker's environment at all.)
    let pid = handle.resource.trim_start_matches("pid/");
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(environ) => assert!(
            !String::from_utf8_lossy(&environ).contains(TOKEN),
            "the token is in the worker's environment"
        ),
        Err(err) => assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied),
    }
    // The provider finds it again by the labels on its command line, which stay readable.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains(&format!("--label=HODEI_INSTANCE={instance}"))
    );
    assert_eq!(
        provider.list_managed(&instance).await.expect("list"),
        vec![ManagedWorker {
            worker_id: Some(spec.worker_id),
            resource: handle.resource.clone(),
            uid: pid.to_string(),
        }]
    );

    session.shutdown("test over", false).await;
    session.expect_close().await;
    provider
        .destroy_worker(&spec.worker_id)
        .await
        .expect("destroy");
}

/// Runs `test` of this executable again, in a child process whose environment holds a
/// server's secrets, and fails unless it ran and passed there.
fn rerun_in_a_server_like_environment(test: &str) {
    let output = std::process::Command::new(std::env::current_exe().expect("test executable"))
        .args([test, "--exact", "--nocapture"])
        .env(IN_A_SERVER_LIKE_ENVIRONMENT, "1")
        .env("HODEI_DATABASE_URL", DATABASE_URL)
        .env("SOME_SECRET", SOME_SECRET)
        .output()
        .expect("re-run the test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "in a server-like environment, {test} failed or did not run:\n{stdout}\n{stderr}"
    );
}

//! Reaching the server: errors worded for people, exit codes, TLS with a private CA.

mod support;

use std::time::{Duration, Instant};

use support::{FakeServer, exits, finish, hodei, isolated};

#[tokio::test]
async fn given_an_empty_command_when_run_then_the_servers_message_is_printed_and_exit_is_1() {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let outcome = finish(fake.hodei(&["run", "--", ""])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(
        outcome.stderr,
        "error: invalid job spec: command is empty; give the shell command to run\n"
    );
}

#[tokio::test]
async fn given_no_server_listening_when_any_command_runs_then_it_says_so_quickly_and_exits_1() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{closed}");

    for args in [&["jobs", "list"][..], &["run", "--", "true"][..]] {
        let started = Instant::now();
        let outcome = finish(hodei(&url, args)).await;

        assert_eq!(outcome.code, Some(1), "{args:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        let prefix = format!("error: cannot reach the Hodei server at {url}: ");
        assert!(outcome.stderr.starts_with(&prefix), "{}", outcome.stderr);
        assert!(
            outcome
                .stderr
                .ends_with(" (is hodei-server running? set --server or HODEI_SERVER)\n"),
            "{}",
            outcome.stderr
        );
        assert!(outcome.stderr.contains("refused"), "{}", outcome.stderr);
    }
}

#[tokio::test]
async fn given_the_server_in_the_environment_when_no_flag_is_given_then_it_is_used() {
    let fake = FakeServer::start(vec![]).await;
    let mut command = isolated();
    command
        .env("HODEI_SERVER", &fake.url)
        .args(["jobs", "list"]);

    let outcome = finish(command).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stderr, "hodei: no jobs\n");
}

#[tokio::test]
async fn given_a_url_without_scheme_when_any_command_runs_then_it_is_a_usage_error() {
    let outcome = finish(hodei("127.0.0.1:50051", &["jobs", "list"])).await;

    assert_eq!(outcome.code, Some(2));
    assert!(
        outcome.stderr.contains("must start with http://"),
        "{}",
        outcome.stderr
    );
}

#[tokio::test]
async fn given_an_https_server_with_a_private_ca_when_the_ca_is_given_then_it_connects() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = certified.cert.pem();
    let key = certified.signing_key.serialize_pem();
    let fake = FakeServer::start_with(vec![], Some((cert.clone(), key))).await;
    fake.add_job("true", vec![exits(0)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert).expect("write CA");
    let ca = ca.to_str().expect("utf-8 path");

    let trusted = finish(fake.hodei(&["--tls-ca", ca, "jobs", "list"])).await;
    assert_eq!(trusted.code, Some(0), "stderr: {}", trusted.stderr);
    assert!(trusted.stdout().contains("job-1"), "{}", trusted.stdout());

    // Without the CA the system roots do not know the certificate.
    let untrusted = finish(fake.hodei(&["jobs", "list"])).await;
    assert_eq!(untrusted.code, Some(1));
    assert!(
        untrusted
            .stderr
            .starts_with("error: cannot reach the Hodei server at https://localhost:"),
        "{}",
        untrusted.stderr
    );
}

#[tokio::test]
async fn given_help_when_asked_then_usage_is_printed_and_exit_is_0() {
    let outcome = finish(hodei("http://127.0.0.1:1", &["run", "--help"])).await;

    assert_eq!(outcome.code, Some(0));
    assert!(
        outcome
            .stdout()
            .contains("Usage: hodei run [OPTIONS] [--] <CMD>..."),
        "{}",
        outcome.stdout()
    );
}

//! `hodei-server` as a person starts it: what it says when the command line or the environment
//! is wrong, and how the first API token is made.

use std::process::{Command, Output};

fn hodei_server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hodei-server"))
        .env_clear()
        .args(args)
        .output()
        .expect("run hodei-server")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn given_a_duration_too_long_to_represent_when_started_then_it_exits_2_naming_the_flag_without_panicking()
 {
    let output = hodei_server(&[
        "--database-url",
        "postgres://hodei@127.0.0.1:1/hodei",
        "--idle-timeout",
        "99999999999999999h",
    ]);

    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let sentence = stderr.lines().next().unwrap_or_default();
    assert!(sentence.contains("--idle-timeout"), "{stderr}");
    assert!(sentence.contains("99999999999999999h"), "{stderr}");
    assert!(sentence.contains("too long"), "{stderr}");
}

#[test]
fn given_an_unreachable_database_when_started_then_the_error_says_each_cause_once() {
    let output = hodei_server(&[
        "--database-url",
        "postgres://hodei@127.0.0.1:1/hodei",
        "--database-connect-timeout",
        "1s",
        "--metrics-listen",
        "off",
        "--listen",
        "127.0.0.1:0",
    ]);

    let stderr = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let sentence = stderr
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(
        sentence.starts_with("cannot use the database: "),
        "{sentence}"
    );
    // Each part of the chain is said once, down to the real cause (not the pool's time-out).
    assert!(sentence.contains("Connection refused"), "{sentence}");
    let parts: Vec<&str> = sentence.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} is said twice in {sentence:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_api_token_when_started_on_a_reachable_address_then_it_refuses_until_one_is_created()
-> anyhow::Result<()> {
    let db = hodei_testkit::TestDatabase::create().await?;
    let url = db.url().to_owned();
    let run = move |args: &'static [&'static str]| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["--database-url", &url, "--metrics-listen", "off"];
            all.extend_from_slice(args);
            Command::new(env!("CARGO_BIN_EXE_hodei-server"))
                .env_clear()
                .env("RUST_LOG", "warn")
                .args(&all)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run hodei-server")
        })
    };

    let refused = run(&["--listen", "0.0.0.0:0"]).await?;
    let text = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    let sentence = text
        .lines()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error line in {text}"));
    assert!(sentence.contains("no API token exists"), "{sentence}");
    assert!(
        sentence.contains("hodei-server tokens create"),
        "{sentence}"
    );
    assert!(sentence.contains("--insecure-no-auth"), "{sentence}");

    // The bootstrap: the token alone on stdout, the rest on stderr.
    let created = run(&["tokens", "create", "--name", "admin", "--scopes", "all"]).await?;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stderr(&created).contains("printed below, this once"));
    let token = String::from_utf8(created.stdout)?;
    let token = hodei_domain::ApiToken::parse(token.trim())?;
    let listed = run(&["tokens", "list"]).await?;
    let listing = String::from_utf8(listed.stdout)?;
    assert!(
        listing.contains("admin") && listing.contains("tokens:admin"),
        "{listing}"
    );
    assert!(
        !listing.contains(token.expose()),
        "the listing shows the secret"
    );
    Ok(())
}

//! `hodei run --secret` from the environment, a file, stdin or the argument, and job output
//! that shows secret names and never values, even when the server sends the values back.

mod support;

use std::process::Stdio;

use support::{FakeServer, exits, finish, sorted, wait};
use tokio::io::AsyncWriteExt as _;

const FROM_ENV: &str = "env-value-0451";
const FROM_FILE: &str = "file-value-9127";
const FROM_STDIN: &str = "stdin-value-3318";
const INLINE: &str = "inline-value-7702";

#[tokio::test]
async fn given_secrets_from_env_file_stdin_and_argument_when_run_then_the_spec_carries_them_and_not_env()
 {
    let fake = FakeServer::start(vec![exits(0)]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("api-key");
    std::fs::write(&file, format!("{FROM_FILE}\n")).expect("write");
    let file_arg = format!("API_KEY@{}", file.display());
    let inline_arg = format!("PIN={INLINE}");

    let mut command = fake.hodei(&[
        "run",
        "--secret",
        "DB_PASSWORD",
        "--secret",
        &file_arg,
        "--secret",
        "SSH_KEY@-",
        "--secret",
        &inline_arg,
        "-e",
        "MODE=test",
        "--",
        "./deploy.sh",
    ]);
    command.env("DB_PASSWORD", FROM_ENV).stdin(Stdio::piped());
    let mut child = command.spawn().expect("spawn hodei");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{FROM_STDIN}\n").as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let outcome = wait(child).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let specs = fake.queued_specs();
    assert_eq!(specs.len(), 1);
    let secrets = sorted(&specs[0].secrets);
    assert_eq!(
        secrets.into_iter().collect::<Vec<_>>(),
        [
            ("API_KEY".to_owned(), FROM_FILE.to_owned()),
            ("DB_PASSWORD".to_owned(), FROM_ENV.to_owned()),
            ("PIN".to_owned(), INLINE.to_owned()),
            ("SSH_KEY".to_owned(), FROM_STDIN.to_owned()),
        ]
    );
    assert_eq!(
        sorted(&specs[0].env).into_iter().collect::<Vec<_>>(),
        [("MODE".to_owned(), "test".to_owned())]
    );
}

#[tokio::test]
async fn given_a_secret_whose_source_is_missing_when_run_then_nothing_is_queued_and_the_source_is_named()
 {
    let fake = FakeServer::start(vec![exits(0)]).await;

    let unset = finish(fake.hodei(&["run", "--secret", "NOT_SET_ANYWHERE", "--", "true"])).await;
    let no_file =
        finish(fake.hodei(&["run", "--secret", "KEY@/nonexistent/key", "--", "true"])).await;

    assert_eq!(unset.code, Some(1));
    assert_eq!(
        unset.stderr,
        "error: --secret NOT_SET_ANYWHERE takes its value from the environment variable \
         NOT_SET_ANYWHERE, which is not set; set it (e.g. `export NOT_SET_ANYWHERE`), or use \
         NOT_SET_ANYWHERE@FILE\n"
    );
    assert_eq!(no_file.code, Some(1));
    assert!(
        no_file
            .stderr
            .starts_with("error: cannot read secret KEY from /nonexistent/key: "),
        "{}",
        no_file.stderr
    );
    assert!(fake.queued_specs().is_empty());
    assert!(
        fake.authorizations().is_empty(),
        "the server was not called"
    );
}

#[tokio::test]
async fn given_a_malformed_secret_argument_when_parsed_then_the_usage_error_does_not_repeat_the_value()
 {
    let outcome = finish(support::hodei(
        "http://127.0.0.1:1",
        &["run", "--secret", "9PW=hunter22-value", "--", "true"],
    ))
    .await;

    assert_eq!(outcome.code, Some(2));
    assert!(
        outcome
            .stderr
            .contains("invalid --secret: \"9PW\" is not a valid secret name"),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("hunter22"), "{}", outcome.stderr);
}

#[tokio::test]
async fn given_a_job_with_secrets_when_shown_then_human_and_json_output_name_them_and_never_show_a_value()
 {
    let fake = FakeServer::start(vec![exits(0)]).await;
    let token = hodei_domain::ApiToken::generate();
    fake.require_token(token.expose());
    let inline_arg = format!("PIN={INLINE}");

    let mut queue = fake.hodei(&[
        "run",
        "--detach",
        "--secret",
        "DB_PASSWORD",
        "--secret",
        &inline_arg,
        "--",
        "./migrate.sh",
    ]);
    queue
        .env("DB_PASSWORD", FROM_ENV)
        .env("HODEI_API_TOKEN", token.expose());
    let queued = finish(queue).await;
    assert_eq!(queued.code, Some(0), "stderr: {}", queued.stderr);
    let id = queued.stdout().trim().to_owned();
    // The fake sends the values back in `spec.secrets`, as a careless server would.
    let stored = fake.job(&id).expect("queued");
    assert_eq!(stored.spec.expect("spec").secrets.len(), 2);

    let mut outputs = Vec::new();
    for args in [
        &["jobs", "get", &id][..],
        &["jobs", "get", &id, "--output", "json"][..],
        &["jobs", "list"][..],
        &["jobs", "list", "--output", "json"][..],
    ] {
        let mut command = fake.hodei(args);
        command.env("HODEI_API_TOKEN", token.expose());
        let outcome = finish(command).await;
        assert_eq!(outcome.code, Some(0), "{args:?}: {}", outcome.stderr);
        for value in [FROM_ENV, INLINE] {
            assert!(
                !outcome.stdout().contains(value),
                "{args:?}: {}",
                outcome.stdout()
            );
            assert!(
                !outcome.stderr.contains(value),
                "{args:?}: {}",
                outcome.stderr
            );
        }
        outputs.push(outcome.stdout());
    }

    let human = &outputs[0];
    assert!(human.contains("Owner:        alice\n"), "{human}");
    assert!(
        human.contains("Secrets:      DB_PASSWORD, PIN (values never shown)\n"),
        "{human}"
    );
    let json: serde_json::Value = serde_json::from_str(&outputs[1]).expect("JSON");
    assert_eq!(json["owner"], "alice");
    assert_eq!(
        json["secret_names"],
        serde_json::json!(["DB_PASSWORD", "PIN"])
    );
    let listed: serde_json::Value = serde_json::from_str(&outputs[3]).expect("JSON");
    assert_eq!(
        listed[0]["secret_names"],
        serde_json::json!(["DB_PASSWORD", "PIN"])
    );
}

#[tokio::test]
async fn given_run_help_when_asked_then_the_secret_forms_and_the_ps_warning_are_explained() {
    let outcome = finish(support::hodei("http://127.0.0.1:1", &["run", "--help"])).await;

    assert_eq!(outcome.code, Some(0));
    let help = outcome.stdout();
    for expected in [
        "--secret <NAME[@FILE|=VALUE]>",
        "NAME@FILE     the contents of FILE, one trailing newline removed",
        "NAME@-        standard input",
        "Warning: while hodei runs, every user of this machine can read",
    ] {
        assert!(help.contains(expected), "{expected:?} not in:\n{help}");
    }
}

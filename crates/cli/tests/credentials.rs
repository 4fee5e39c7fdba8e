//! Which API token every call carries: from `HODEI_API_TOKEN` or a private config file, never
//! from a flag; a refusal by the server says how to get a token; the token's text is never
//! printed.

mod support;

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use hodei_domain::ApiToken;
use support::{FakeServer, Outcome, exits, finish, hodei, isolated};

/// Writes `text` as a config file with `mode` and returns its path.
fn config_file(dir: &Path, text: &str, mode: u32) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_str().expect("utf-8 path").to_owned()
}

fn bearer(token: &ApiToken) -> Option<String> {
    Some(format!("Bearer {}", token.expose()))
}

fn assert_no_token_in(outcome: &Outcome, token: &str) {
    let hex = &token[token.len().saturating_sub(32)..];
    assert!(!outcome.stderr.contains(hex), "stderr: {}", outcome.stderr);
    assert!(
        !outcome.stdout().contains(hex),
        "stdout: {}",
        outcome.stdout()
    );
}

#[tokio::test]
async fn given_a_token_in_the_environment_when_commands_run_then_every_call_carries_it() {
    let fake = FakeServer::start(vec![exits(0)]).await;
    let token = ApiToken::generate();
    fake.require_token(token.expose());

    for args in [
        &["run", "--", "true"][..],
        &["jobs", "list"][..],
        &["workers", "list"][..],
        &["tokens", "list"][..],
    ] {
        let mut command = fake.hodei(args);
        command.env("HODEI_API_TOKEN", token.expose());
        let outcome = finish(command).await;
        assert_eq!(outcome.code, Some(0), "{args:?}: {}", outcome.stderr);
        assert_no_token_in(&outcome, token.expose());
    }

    let headers = fake.authorizations();
    // run: QueueJob, SubscribeLogs, GetJob; then one call per listing.
    assert!(headers.len() >= 5, "{headers:?}");
    assert!(headers.iter().all(|h| *h == bearer(&token)), "{headers:?}");
}

#[tokio::test]
async fn given_a_token_and_a_server_in_a_private_config_file_when_a_command_runs_then_both_are_used()
 {
    let fake = FakeServer::start(vec![]).await;
    let token = ApiToken::generate();
    fake.require_token(token.expose());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_file(
        dir.path(),
        &format!(
            "# written by the test\nserver = \"{}\"\ntoken = \"{}\"\n",
            fake.url,
            token.expose()
        ),
        0o600,
    );

    // Through --config, HODEI_CONFIG and the XDG default location; no --server anywhere.
    let by_flag = {
        let mut command = isolated();
        command.args(["--config", &path, "jobs", "list"]);
        finish(command).await
    };
    let by_env = {
        let mut command = isolated();
        command.env("HODEI_CONFIG", &path).args(["jobs", "list"]);
        finish(command).await
    };
    let by_default_location = {
        let xdg = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(xdg.path().join("hodei")).expect("mkdir");
        config_file(
            &xdg.path().join("hodei"),
            &std::fs::read_to_string(&path).expect("read"),
            0o400,
        );
        let mut command = isolated();
        command
            .env("XDG_CONFIG_HOME", xdg.path())
            .args(["jobs", "list"]);
        finish(command).await
    };

    for outcome in [&by_flag, &by_env, &by_default_location] {
        assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
        assert_eq!(outcome.stderr, "hodei: no jobs\n");
    }
    assert_eq!(fake.authorizations(), vec![bearer(&token); 3]);
}

#[tokio::test]
async fn given_a_token_in_both_the_environment_and_the_file_when_a_command_runs_then_the_environments_is_sent()
 {
    let fake = FakeServer::start(vec![]).await;
    let from_env = ApiToken::generate();
    let from_file = ApiToken::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_file(
        dir.path(),
        &format!("token = \"{}\"\n", from_file.expose()),
        0o600,
    );

    let mut command = fake.hodei(&["--config", &path, "jobs", "list"]);
    command.env("HODEI_API_TOKEN", from_env.expose());
    let outcome = finish(command).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(fake.authorizations(), vec![bearer(&from_env)]);
}

#[tokio::test]
async fn given_a_config_file_others_may_read_when_any_command_runs_then_it_is_refused_before_calling_the_server()
 {
    let fake = FakeServer::start(vec![]).await;
    let token = ApiToken::generate();
    let dir = tempfile::tempdir().expect("temp dir");

    for mode in [0o644, 0o640, 0o604, 0o620] {
        let path = config_file(
            dir.path(),
            &format!("token = \"{}\"\n", token.expose()),
            mode,
        );
        let outcome = finish(fake.hodei(&["--config", &path, "jobs", "list"])).await;

        assert_eq!(outcome.code, Some(1), "mode {mode:o}");
        assert_eq!(
            outcome.stderr,
            format!(
                "error: the config file {path} is refused: its permissions {mode:04o} let other \
                 users read or change it, and it may hold an API token; make it private with \
                 `chmod 600` on it\n"
            )
        );
        assert_no_token_in(&outcome, token.expose());
    }
    assert!(
        fake.authorizations().is_empty(),
        "no call reached the server"
    );
}

#[tokio::test]
async fn given_a_malformed_token_when_any_command_runs_then_the_error_names_its_source_and_not_its_text()
 {
    let fake = FakeServer::start(vec![]).await;
    let almost = format!("hodei_{}", "ab".repeat(31)); // 62 hex digits: one byte short
    let dir = tempfile::tempdir().expect("temp dir");
    let path = config_file(dir.path(), &format!("token = \"{almost}\"\n"), 0o600);

    let mut from_env = fake.hodei(&["jobs", "list"]);
    from_env.env("HODEI_API_TOKEN", &almost);
    let from_env = finish(from_env).await;
    let from_file = finish(fake.hodei(&["--config", &path, "jobs", "list"])).await;

    assert_eq!(from_env.code, Some(1));
    assert_eq!(
        from_env.stderr,
        "error: the API token in HODEI_API_TOKEN is malformed: expected \"hodei_\" and 64 \
         hexadecimal characters, as `hodei tokens create` prints it\n"
    );
    assert_eq!(from_file.code, Some(1));
    assert_eq!(
        from_file.stderr,
        format!(
            "error: the API token in the config file {path} is malformed: expected \"hodei_\" \
             and 64 hexadecimal characters, as `hodei tokens create` prints it\n"
        )
    );
    assert!(fake.authorizations().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn given_a_config_file_with_a_typo_when_any_command_runs_then_the_key_is_named_and_no_value_quoted()
 {
    let fake = FakeServer::start(vec![]).await;
    let token = ApiToken::generate();
    let dir = tempfile::tempdir().expect("temp dir");

    let unknown_key = config_file(
        dir.path(),
        &format!("tokne = \"{}\"\n", token.expose()),
        0o600,
    );
    let outcome = finish(fake.hodei(&["--config", &unknown_key, "jobs", "list"])).await;
    assert_eq!(outcome.code, Some(1));
    assert!(
        outcome.stderr.contains("line 1: unknown field `tokne`"),
        "{}",
        outcome.stderr
    );
    assert_no_token_in(&outcome, token.expose());

    let unquoted = config_file(
        dir.path(),
        &format!("server = \"http://h:1\"\ntoken = {}\n", token.expose()),
        0o600,
    );
    let outcome = finish(fake.hodei(&["--config", &unquoted, "jobs", "list"])).await;
    assert_eq!(outcome.code, Some(1));
    assert!(outcome.stderr.contains("line 2: "), "{}", outcome.stderr);
    assert_no_token_in(&outcome, token.expose());

    let missing = dir.path().join("absent.toml");
    let missing = missing.to_str().expect("utf-8");
    let outcome = finish(fake.hodei(&["--config", missing, "jobs", "list"])).await;
    assert_eq!(outcome.code, Some(1));
    assert!(
        outcome.stderr.starts_with(&format!(
            "error: the config file {missing} is refused: cannot open it"
        )),
        "{}",
        outcome.stderr
    );
}

#[tokio::test]
async fn given_no_token_when_the_server_requires_one_then_the_user_is_told_how_to_get_one() {
    let fake = FakeServer::start(vec![]).await;
    fake.require_token(ApiToken::generate().expose());

    let outcome = finish(fake.hodei(&["jobs", "list"])).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(
        outcome.stderr,
        format!(
            "error: the Hodei server at {} needs an API token and none was given: set \
             HODEI_API_TOKEN, or put `token = \"hodei_…\"` in \
             /nonexistent/hodei-cli-tests/hodei/config.toml (chmod 600); an administrator makes \
             one with `hodei tokens create --name NAME --scope jobs:submit --scope jobs:read`, \
             and the first one is made on the server's host with `hodei-server tokens create \
             --name NAME --scopes all`\n",
            fake.url
        )
    );
    assert_eq!(fake.authorizations(), vec![None], "sent without a header");
}

#[tokio::test]
async fn given_a_token_the_server_refuses_when_a_command_runs_then_its_source_and_the_reason_are_named()
 {
    let fake = FakeServer::start(vec![]).await;
    fake.require_token(ApiToken::generate().expose());
    let other = ApiToken::generate();

    let mut command = fake.hodei(&["run", "--", "true"]);
    command.env("HODEI_API_TOKEN", other.expose());
    let outcome = finish(command).await;

    assert_eq!(outcome.code, Some(1));
    assert_eq!(
        outcome.stderr,
        format!(
            "error: the Hodei server at {} refused the API token from HODEI_API_TOKEN: unknown \
             API token; ask an administrator for a valid token (`hodei tokens create`)\n",
            fake.url
        )
    );
    assert_no_token_in(&outcome, other.expose());
    assert!(fake.queued_specs().is_empty());
}

#[tokio::test]
async fn given_a_token_flag_when_parsed_then_there_is_none_and_help_says_why() {
    let token = ApiToken::generate();

    for flag in ["--token", "--api-token"] {
        let outcome = finish(hodei(
            "http://127.0.0.1:1",
            &[flag, token.expose(), "jobs", "list"],
        ))
        .await;
        assert_eq!(outcome.code, Some(2), "{flag}: {}", outcome.stderr);
        assert!(
            outcome
                .stderr
                .contains(&format!("unexpected argument '{flag}'")),
            "{}",
            outcome.stderr
        );
    }

    let help = finish(hodei("http://127.0.0.1:1", &["--help"])).await;
    assert_eq!(help.code, Some(0));
    let text = help.stdout();
    assert!(!text.contains("--token"), "{text}");
    assert!(text.contains("HODEI_API_TOKEN"), "{text}");
    assert!(text.contains("There is no flag for it"), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
}

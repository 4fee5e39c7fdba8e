//! The CLI against a real `hodei-server` process with authentication on (local provider, a
//! throw-away PostgreSQL database): where the token comes from, what the user is told without
//! one, the token commands' round trip, and secrets that reach the job but never the output.
//!
//! The server is the binary of this target directory (`cargo build --workspace` builds it,
//! `cargo nextest run --workspace` too), or `HODEI_SERVER_BINARY`.

mod support;

use std::{
    ffi::OsString,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::SystemTime,
};

use anyhow::Context as _;
use hodei_domain::ApiToken;
use hodei_testkit::{
    TestDatabase,
    server_process::{ServerCommand, ServerProcess},
};
use support::{Outcome, finish, isolated, wait};
use tokio::{io::AsyncWriteExt as _, process::Command};

/// A real server with its database and log; both go away with it.
struct RealServer {
    process: ServerProcess,
    _db: TestDatabase,
    dir: tempfile::TempDir,
}

impl RealServer {
    async fn start() -> anyhow::Result<Self> {
        let db = TestDatabase::create().await?;
        let dir = tempfile::Builder::new()
            .prefix("hodei-cli-real-")
            .tempdir()?;
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
        let process = ServerProcess::start(ServerCommand {
            binary: server_binary()?,
            args,
            log_filter: "warn,hodei=info".into(),
            log: dir.path().join("server.log"),
        })
        .await?;
        Ok(Self {
            process,
            _db: db,
            dir,
        })
    }

    /// `hodei --server URL ARGS…` with no token at all.
    fn hodei(&self, args: &[&str]) -> Command {
        let mut command = isolated();
        command.arg("--server").arg(self.process.url()).args(args);
        command
    }

    /// `hodei --server URL ARGS…` with `token` in `HODEI_API_TOKEN`.
    fn hodei_as(&self, token: &str, args: &[&str]) -> Command {
        let mut command = self.hodei(args);
        command.env("HODEI_API_TOKEN", token);
        command
    }

    /// Runs `hodei` with the admin token and returns its stdout; fails on a non-zero exit.
    async fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let outcome = finish(self.hodei_as(self.process.token(), args)).await;
        anyhow::ensure!(
            outcome.code == Some(0),
            "hodei {args:?} exited {:?}: {}\n{}",
            outcome.code,
            outcome.stderr,
            self.process.log_tail()
        );
        Ok(outcome.stdout())
    }

    /// A config file holding `token` with the permissions `mode`.
    fn config_file(&self, token: &str, mode: u32) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("config-{mode:o}.toml"));
        std::fs::write(&path, format!("token = \"{token}\"\n"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    }
}

/// The `hodei-server` next to this test's executable (`<target>/<profile>/deps/…`), unless
/// `HODEI_SERVER_BINARY` names one. Built with the workspace's features when it is missing or
/// older than its sources, as the testkit does for the worker.
fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("HODEI_SERVER_BINARY") {
        return Ok(path.into());
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot find the target directory from the test executable")?;
    let binary = profile_dir.join("hodei-server");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = binary.metadata().and_then(|m| m.modified()).ok();
    let stale = [
        "server",
        "store",
        "providers",
        "contract",
        "domain",
        "proto",
    ]
    .iter()
    .any(|krate| newest_mtime(&workspace.join("crates").join(krate).join("src")) > built);
    if stale {
        // `--workspace`: a per-package build would change features and rebuild everything.
        let status = std::process::Command::new(env!("CARGO"))
            .current_dir(&workspace)
            .args(["build", "--quiet", "--workspace", "--bin", "hodei-server"])
            .arg("--target-dir")
            .arg(profile_dir.parent().context("no target directory")?)
            .status()?;
        anyhow::ensure!(
            status.success() && binary.is_file(),
            "hodei-server is not built and cargo failed ({status}): `cargo build --workspace`, \
             or set HODEI_SERVER_BINARY"
        );
    }
    Ok(binary)
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let modified = if entry.path().is_dir() {
            newest_mtime(&entry.path())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(modified);
    }
    newest
}

fn assert_succeeded(outcome: &Outcome, what: &str) {
    assert_eq!(
        outcome.code,
        Some(0),
        "{what}: stdout {}\nstderr {}",
        outcome.stdout(),
        outcome.stderr
    );
}

fn assert_nowhere(outcome: &Outcome, needle: &str, what: &str) {
    assert!(
        !outcome.stdout().contains(needle) && !outcome.stderr.contains(needle),
        "{what} shows {needle:?}: stdout {}\nstderr {}",
        outcome.stdout(),
        outcome.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_token_in_the_environment_or_a_private_config_file_when_a_real_server_is_called_then_it_answers()
-> anyhow::Result<()> {
    let server = RealServer::start().await?;
    let token = server.process.token();

    let from_env = finish(server.hodei_as(token, &["jobs", "list"])).await;
    let private = server.config_file(token, 0o600)?;
    let from_file = {
        let mut command = server.hodei(&["jobs", "list"]);
        command.arg("--config").arg(&private);
        finish(command).await
    };

    assert_succeeded(&from_env, "token from HODEI_API_TOKEN");
    assert_eq!(from_env.stderr, "hodei: no jobs\n");
    assert_succeeded(&from_file, "token from a 0600 config file");
    assert_eq!(from_file.stderr, "hodei: no jobs\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_config_file_others_may_read_when_a_command_runs_then_it_is_refused_with_the_fix()
-> anyhow::Result<()> {
    let server = RealServer::start().await?;
    let token = server.process.token();
    let readable = server.config_file(token, 0o644)?;

    let mut command = server.hodei(&["jobs", "list"]);
    command.env("HODEI_CONFIG", &readable);
    let outcome = finish(command).await;

    assert_eq!(outcome.code, Some(1), "{}", outcome.stderr);
    assert_eq!(
        outcome.stderr,
        format!(
            "error: the config file {} is refused: its permissions 0644 let other users read or \
             change it, and it may hold an API token; make it private with `chmod 600` on it\n",
            readable.display()
        )
    );
    assert_nowhere(&outcome, &token[6..], "the refusal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_no_token_or_an_unknown_one_when_a_real_server_is_called_then_one_sentence_says_what_to_do()
-> anyhow::Result<()> {
    let server = RealServer::start().await?;
    let unknown = ApiToken::generate();

    let without = finish(server.hodei(&["jobs", "list"])).await;
    let wrong = finish(server.hodei_as(unknown.expose(), &["run", "--", "true"])).await;

    assert_eq!(without.code, Some(1), "{}", without.stderr);
    assert_eq!(without.stderr.lines().count(), 1, "{}", without.stderr);
    assert!(
        without.stderr.starts_with(&format!(
            "error: the Hodei server at {} needs an API token and none was given: set \
             HODEI_API_TOKEN, or put `token = \"hodei_…\"` in ",
            server.process.url()
        )),
        "{}",
        without.stderr
    );
    assert!(
        without.stderr.contains("`hodei-server tokens create"),
        "{}",
        without.stderr
    );
    assert_eq!(wrong.code, Some(1), "{}", wrong.stderr);
    assert_eq!(wrong.stderr.lines().count(), 1, "{}", wrong.stderr);
    assert!(
        wrong.stderr.starts_with(&format!(
            "error: the Hodei server at {} refused the API token from HODEI_API_TOKEN: ",
            server.process.url()
        )),
        "{}",
        wrong.stderr
    );
    assert_nowhere(&wrong, &unknown.expose()[6..], "the refusal");
    let jobs = server.admin(&["-o", "json", "jobs", "list"]).await?;
    assert_eq!(jobs.trim(), "[]", "a refused run queued a job");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_tokens_created_with_the_cli_when_listed_used_and_revoked_then_the_server_honours_each_step()
-> anyhow::Result<()> {
    let server = RealServer::start().await?;

    let ci = server
        .admin(&[
            "tokens",
            "create",
            "--name",
            "ci",
            "--scope",
            "jobs:submit",
            "--scope",
            "jobs:read",
            "--expires-in",
            "1h",
        ])
        .await?;
    let ci = ApiToken::parse(ci.trim()).context("create prints the token alone")?;
    let bot: serde_json::Value = serde_json::from_str(
        &server
            .admin(&[
                "-o",
                "json",
                "tokens",
                "create",
                "--name",
                "bot",
                "--scope",
                "workers:read",
            ])
            .await?,
    )?;
    let bot_secret = bot["secret"].as_str().context("JSON has the secret")?;
    let bot_id = bot["token"]["id"].as_str().context("JSON has the id")?;
    assert_eq!(bot["token"]["scopes"], serde_json::json!(["workers:read"]));
    assert!(bot["token"]["expires_at"].is_null(), "{bot}");

    // Each token does what its scopes allow, and no more.
    let ci_lists_jobs = finish(server.hodei_as(ci.expose(), &["jobs", "list"])).await;
    assert_succeeded(&ci_lists_jobs, "ci lists its jobs");
    let ci_lists_workers = finish(server.hodei_as(ci.expose(), &["workers", "list"])).await;
    assert_eq!(ci_lists_workers.code, Some(1), "ci has no workers:read");
    let bot_lists_workers = finish(server.hodei_as(bot_secret, &["workers", "list"])).await;
    assert_succeeded(&bot_lists_workers, "bot lists workers");

    let table = server.admin(&["tokens", "list"]).await?;
    let ci_row = table
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some("ci"))
        .with_context(|| format!("no ci row in\n{table}"))?;
    assert!(ci_row.contains("jobs:submit,jobs:read"), "{ci_row}");
    assert!(ci_row.contains(" active "), "{ci_row}");
    for secret in [&ci.expose()[6..], &bot_secret[6..]] {
        assert!(
            !table.contains(secret),
            "the listing shows a secret:\n{table}"
        );
    }

    // Revoked by name, then by id: refused at once.
    let by_name = server.admin(&["tokens", "revoke", "ci"]).await?;
    assert!(by_name.starts_with("revoked API token "), "{by_name}");
    let by_id = server.admin(&["tokens", "revoke", bot_id]).await?;
    assert!(by_id.contains("(\"bot\")"), "{by_id}");
    for (token, args) in [
        (ci.expose(), &["jobs", "list"][..]),
        (bot_secret, &["workers", "list"][..]),
    ] {
        let refused = finish(server.hodei_as(token, args)).await;
        assert_eq!(refused.code, Some(1), "a revoked token was accepted");
        assert!(
            refused
                .stderr
                .contains("refused the API token from HODEI_API_TOKEN"),
            "{}",
            refused.stderr
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&server.admin(&["-o", "json", "tokens", "list"]).await?)?;
    let states: Vec<(&str, &str)> = listed
        .as_array()
        .context("a JSON array")?
        .iter()
        .filter_map(|t| Some((t["name"].as_str()?, t["state"].as_str()?)))
        .collect();
    assert!(states.contains(&("ci", "revoked")), "{listed}");
    assert!(states.contains(&("bot", "revoked")), "{listed}");
    Ok(())
}

/// One value per way of giving a secret, each unlike anything else in the output.
const FROM_ENV: &str = "env-secret-61f3a9";
const INLINE: &str = "inline-secret-27c4be";
const FROM_FILE: &str = "file-secret-9d08e1";
const FROM_STDIN: &str = "stdin-secret-c5b7d2";

/// Prints each secret in hexadecimal (what the masking cannot recognise, so the test can see it
/// arrived) and then as is (which the server masks).
const PRINT_SECRETS: &str = "for v in \"$S_ENV\" \"$S_INLINE\" \"$S_FILE\" \"$S_STDIN\"; do \
     printf 'hex:%s\\n' \"$(printf %s \"$v\" | od -An -v -tx1 | tr -d ' \\n')\"; \
     printf 'plain:%s\\n' \"$v\"; done";

fn hex(value: &str) -> String {
    value.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_a_secret_passed_each_way_when_run_then_it_reaches_the_job_and_never_the_clis_output()
-> anyhow::Result<()> {
    let server = RealServer::start().await?;
    let file = server.dir.path().join("s_file");
    std::fs::write(&file, format!("{FROM_FILE}\n"))?;
    let file_arg = format!("S_FILE@{}", file.display());
    let inline_arg = format!("S_INLINE={INLINE}");
    let secrets = [FROM_ENV, INLINE, FROM_FILE, FROM_STDIN];

    // The jobs are queued by alice, so they are hers.
    let alice = server
        .admin(&[
            "tokens",
            "create",
            "--name",
            "alice",
            "--scope",
            "jobs:submit,jobs:read",
        ])
        .await?;
    let alice = alice.trim();

    let mut outcomes = Vec::new();
    for format in ["human", "json"] {
        let mut command = server.hodei_as(
            alice,
            &[
                "-o",
                format,
                "run",
                "--secret",
                "S_ENV",
                "--secret",
                &inline_arg,
                "--secret",
                &file_arg,
                "--secret",
                "S_STDIN@-",
                "--",
                PRINT_SECRETS,
            ],
        );
        command.env("S_ENV", FROM_ENV).stdin(Stdio::piped());
        let mut child = command.spawn()?;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin
            .write_all(format!("{FROM_STDIN}\n").as_bytes())
            .await?;
        drop(stdin);
        let outcome = wait(child).await;
        assert_succeeded(&outcome, &format!("hodei -o {format} run --secret …"));
        outcomes.push((format!("run -o {format}"), outcome));
    }

    let human = outcomes[0].1.stdout();
    let lines: Vec<&str> = human.lines().collect();
    let expected: Vec<String> = secrets
        .iter()
        .flat_map(|s| [format!("hex:{}", hex(s)), "plain:***".to_owned()])
        .collect();
    assert_eq!(lines, expected, "each secret arrived, and is masked as is");

    // The job, as `jobs get|list|logs` show it: the owner and the names, never a value.
    let last = outcomes[1].1.stdout();
    let job: serde_json::Value = serde_json::from_str(last.lines().last().unwrap_or_default())?;
    let id = job["id"]
        .as_str()
        .context("the last JSON line is the job")?;
    for args in [
        &["jobs", "get", id][..],
        &["-o", "json", "jobs", "get", id][..],
        &["-o", "json", "jobs", "list"][..],
        &["jobs", "logs", id][..],
        &["-o", "json", "jobs", "logs", id][..],
    ] {
        let outcome = finish(server.hodei_as(alice, args)).await;
        assert_succeeded(&outcome, &format!("hodei {args:?}"));
        outcomes.push((format!("{args:?}"), outcome));
    }
    let details = outcomes[2].1.stdout();
    assert!(details.contains("Owner:        alice\n"), "{details}");
    assert!(
        details.contains("Secrets:      S_ENV, S_FILE, S_INLINE, S_STDIN (values never shown)\n"),
        "{details}"
    );
    let view: serde_json::Value = serde_json::from_str(&outcomes[3].1.stdout())?;
    assert_eq!(view["owner"], "alice");
    assert_eq!(
        view["secret_names"],
        serde_json::json!(["S_ENV", "S_FILE", "S_INLINE", "S_STDIN"])
    );

    for (what, outcome) in &outcomes {
        for secret in secrets {
            assert_nowhere(outcome, secret, what);
        }
    }
    Ok(())
}

//! `hodei tokens create | list | revoke` against the fake TokenService.

mod support;

use hodei_domain::ApiToken;
use hodei_proto::v1 as pb;
use support::{FakeServer, TokenRequest, finish};

fn timestamp(seconds: i64) -> Option<hodei_proto::Timestamp> {
    Some(hodei_proto::Timestamp { seconds, nanos: 0 })
}

#[tokio::test]
async fn given_create_when_it_succeeds_then_stdout_is_the_secret_alone_and_stderr_says_what_it_is()
{
    let fake = FakeServer::start(vec![]).await;
    let admin = ApiToken::generate();
    fake.require_token(admin.expose());

    let mut command = fake.hodei(&[
        "tokens",
        "create",
        "--name",
        "ci",
        "--scope",
        "jobs:read",
        "--scope",
        "jobs:submit",
        "--expires-in",
        "30d",
    ]);
    command.env("HODEI_API_TOKEN", admin.expose());
    let outcome = finish(command).await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    let secrets = fake.created_secrets();
    assert_eq!(secrets.len(), 1);
    assert_eq!(outcome.stdout(), format!("{}\n", secrets[0]));
    assert!(
        outcome.stderr.starts_with(
            "hodei: created API token tok-1 for \"ci\" with scopes jobs:submit,jobs:read, valid \
             until "
        ),
        "{}",
        outcome.stderr
    );
    assert!(
        outcome.stderr.ends_with(
            "; it is printed on stdout this once: store it now (e.g. in HODEI_API_TOKEN)\n"
        ),
        "{}",
        outcome.stderr
    );
    assert!(
        !outcome.stderr.contains(&secrets[0][6..]),
        "{}",
        outcome.stderr
    );
    assert_eq!(
        fake.token_requests(),
        vec![TokenRequest::Create(pb::CreateTokenRequest {
            name: "ci".into(),
            scopes: vec!["jobs:submit".into(), "jobs:read".into()],
            ttl_seconds: Some(30 * 86_400),
        })]
    );
}

#[tokio::test]
async fn given_create_with_all_scopes_and_json_when_it_succeeds_then_one_object_holds_secret_and_token()
 {
    let fake = FakeServer::start(vec![]).await;

    let outcome = finish(fake.hodei(&[
        "tokens", "create", "--name", "root", "--scopes", "all", "-o", "json",
    ]))
    .await;

    assert_eq!(outcome.code, Some(0), "stderr: {}", outcome.stderr);
    assert_eq!(outcome.stderr, "");
    let value: serde_json::Value = serde_json::from_slice(&outcome.stdout).expect("JSON");
    assert_eq!(value["secret"], fake.created_secrets()[0]);
    assert_eq!(value["token"]["id"], "tok-1");
    assert_eq!(value["token"]["state"], "active");
    assert_eq!(value["token"]["expires_at"], serde_json::Value::Null);
    let TokenRequest::Create(request) = &fake.token_requests()[0] else {
        panic!("not a create: {:?}", fake.token_requests());
    };
    assert_eq!(
        request.scopes,
        [
            "jobs:submit",
            "jobs:read",
            "jobs:admin",
            "workers:read",
            "tokens:admin",
            "metrics:read"
        ]
    );
    assert_eq!(request.ttl_seconds, None);
}

#[tokio::test]
async fn given_an_unknown_scope_or_a_bad_ttl_when_create_is_parsed_then_it_is_a_usage_error_and_nothing_is_sent()
 {
    let fake = FakeServer::start(vec![]).await;

    for (args, expected) in [
        (
            &["--scopes", "jobs:write"][..],
            "unknown scope \"jobs:write\"; one of: jobs:submit",
        ),
        (&["--scopes", ","][..], "give at least one scope"),
        (
            &["--scopes", "jobs:read", "--ttl", "500ms"][..],
            "shorter than a second",
        ),
        (
            &["--scopes", "jobs:read", "--ttl", "soon"][..],
            "is not a duration",
        ),
    ] {
        let mut command = fake.hodei(&["tokens", "create", "--name", "x"]);
        command.args(args);
        let outcome = finish(command).await;
        assert_eq!(outcome.code, Some(2), "{args:?}");
        assert!(outcome.stderr.contains(expected), "{}", outcome.stderr);
    }
    assert!(fake.token_requests().is_empty());
}

#[tokio::test]
async fn given_tokens_when_listed_then_a_table_or_json_shows_them_without_secrets() {
    let fake = FakeServer::start(vec![]).await;
    // Two hours ago, so that the AGE column's width does not depend on the day the test runs.
    let two_hours_ago = chrono::Utc::now().timestamp() - 7_200;
    fake.set_tokens(vec![
        pb::ApiToken {
            id: "tok-1".into(),
            name: "ci".into(),
            scopes: vec!["jobs:submit".into(), "jobs:read".into()],
            created_at: timestamp(two_hours_ago),
            created_by: "hodei-server tokens create".into(),
            ..Default::default()
        },
        pb::ApiToken {
            id: "tok-2".into(),
            name: "bob".into(),
            scopes: vec!["jobs:read".into()],
            created_at: timestamp(two_hours_ago),
            created_by: "admin".into(),
            revoked_at: timestamp(two_hours_ago + 60),
            ..Default::default()
        },
    ]);

    let human = finish(fake.hodei(&["tokens", "list"])).await;
    let json = finish(fake.hodei(&["tokens", "list", "--output", "json"])).await;

    assert_eq!(human.code, Some(0), "stderr: {}", human.stderr);
    let lines: Vec<String> = human.stdout().lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0],
        "ID     NAME  SCOPES                 STATE    AGE  EXPIRES  CREATED BY"
    );
    assert!(
        lines[1].starts_with("tok-1  ci    jobs:submit,jobs:read  active   2h   never"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].ends_with("never    hodei-server tokens create"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("tok-2  bob   jobs:read              revoked  "),
        "{}",
        lines[2]
    );
    assert_eq!(json.code, Some(0), "stderr: {}", json.stderr);
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(value[0]["name"], "ci");
    let rfc3339 = |seconds: i64| {
        chrono::DateTime::from_timestamp(seconds, 0)
            .expect("in range")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    assert_eq!(value[0]["created_at"], rfc3339(two_hours_ago));
    assert_eq!(value[1]["state"], "revoked");
    assert_eq!(value[1]["revoked_at"], rfc3339(two_hours_ago + 60));
    assert_eq!(
        fake.token_requests(),
        vec![TokenRequest::List, TokenRequest::List]
    );
}

#[tokio::test]
async fn given_no_tokens_when_listed_then_it_says_so_on_stderr() {
    let fake = FakeServer::start(vec![]).await;

    let outcome = finish(fake.hodei(&["tokens", "list"])).await;

    assert_eq!(outcome.code, Some(0));
    assert_eq!(outcome.stdout(), "");
    assert_eq!(outcome.stderr, "hodei: no API tokens\n");
}

#[tokio::test]
async fn given_a_token_id_or_name_when_revoked_then_its_id_is_revoked_and_an_unknown_one_is_an_error()
 {
    let fake = FakeServer::start(vec![]).await;
    let token = |id: &str, name: &str| pb::ApiToken {
        id: id.into(),
        name: name.into(),
        scopes: vec!["jobs:read".into()],
        ..Default::default()
    };
    fake.set_tokens(vec![token("tok-1", "ci"), token("tok-2", "bot")]);

    let by_id = finish(fake.hodei(&["tokens", "revoke", "tok-1"])).await;
    let by_name = finish(fake.hodei(&["tokens", "revoke", "bot"])).await;
    let unknown = finish(fake.hodei(&["tokens", "revoke", "tok-9"])).await;

    assert_eq!(by_id.code, Some(0), "stderr: {}", by_id.stderr);
    assert_eq!(
        by_id.stdout(),
        "revoked API token tok-1 (\"ci\"): servers refuse it from now on\n"
    );
    assert_eq!(by_name.code, Some(0), "stderr: {}", by_name.stderr);
    assert_eq!(
        by_name.stdout(),
        "revoked API token tok-2 (\"bot\"): servers refuse it from now on\n"
    );
    assert_eq!(unknown.code, Some(1));
    assert_eq!(
        unknown.stderr,
        "error: no API token has the id or name \"tok-9\" (or it is already revoked); `hodei \
         tokens list` shows them\n"
    );
    let revoked: Vec<TokenRequest> = fake
        .token_requests()
        .into_iter()
        .filter(|r| matches!(r, TokenRequest::Revoke(_)))
        .collect();
    assert_eq!(
        revoked,
        vec![
            TokenRequest::Revoke(pb::RevokeTokenRequest { id: "tok-1".into() }),
            TokenRequest::Revoke(pb::RevokeTokenRequest { id: "tok-2".into() }),
        ]
    );
}

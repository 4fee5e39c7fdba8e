//! The web dashboard over real HTTP against a real server and PostgreSQL, without a browser:
//! sign-in and its cookie, the security headers, who may see and do what, CSRF, escaping, and
//! the log stream's resumption. What needs a browser (scripts running, rendering) is in
//! `web_browser.rs`.

mod common;
mod web_support;

use std::time::Duration;

use hodei_proto::v1 as pb;
use web_support::{csrf_of, http, parse_log_events, queue_as, server, sign_in, web_addr};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn every_page_has_a_strict_content_security_policy_and_no_inline_script_or_style()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let cookie = sign_in(addr, &server.admin_token).await?;
    let id = server.queue("echo hi").await?;
    for path in [
        "/login",
        "/jobs",
        &format!("/jobs/{id}"),
        "/workers",
        "/nope",
    ] {
        let page = http(addr, "GET", path, &[("Cookie", &cookie)], None).await?;
        let csp = page
            .header("content-security-policy")
            .unwrap_or_else(|| panic!("{path} has no CSP"));
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        // Every <script> loads a file; no element carries a style or an event handler.
        for (i, _) in page.body.match_indices("<script") {
            assert!(
                page.body[i..].starts_with("<script src=\"/static/app.js\""),
                "{path} has an inline script"
            );
        }
        assert!(!page.body.contains(" style="), "{path} has inline style");
        assert!(
            !page.body.contains(" onclick="),
            "{path} has an inline handler"
        );
    }
    let script = http(addr, "GET", "/static/app.js", &[], None).await?;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/javascript"))
    );
    server.shutdown().await
}

#[tokio::test]
async fn signing_in_keeps_the_token_in_an_http_only_same_site_cookie_and_bad_tokens_are_told_why()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let answer = http(
        addr,
        "POST",
        "/login",
        &[],
        Some(&format!("token={}", server.admin_token.expose())),
    )
    .await?;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(answer.header("location"), Some("/jobs"));
    let cookie = answer.header("set-cookie").expect("a session cookie");
    assert!(cookie.starts_with(&format!("hodei_session={}", server.admin_token.expose())));
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    // Plain HTTP on loopback: `Secure` would make the browser drop the cookie.
    assert!(!cookie.contains("Secure"), "{cookie}");

    let unknown = hodei_domain::ApiToken::generate();
    let refused = http(
        addr,
        "POST",
        "/login",
        &[],
        Some(&format!("token={}", unknown.expose())),
    )
    .await?;
    assert_eq!(refused.status, 401);
    assert!(
        refused.body.contains("unknown API token"),
        "{}",
        refused.body
    );
    assert!(refused.header("set-cookie").is_none());

    let malformed = http(addr, "POST", "/login", &[], Some("token=%3Cscript%3E")).await?;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("not an API token"),
        "{}",
        malformed.body
    );
    assert!(!malformed.body.contains("<script>"));

    // Login CSRF: a form on another site must not sign the visitor in, even with a good token.
    let foreign = http(
        addr,
        "POST",
        "/login",
        &[("Origin", "http://evil.example")],
        Some(&format!("token={}", server.admin_token.expose())),
    )
    .await?;
    assert_eq!(foreign.status, 403, "{foreign:?}");
    assert!(foreign.header("set-cookie").is_none());
    server.shutdown().await
}

#[tokio::test]
async fn without_a_session_every_page_and_the_log_are_refused_and_the_browser_is_sent_to_the_login()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let id = server.queue("echo secret-output").await?;
    for path in [
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/log"),
        format!("/jobs/{id}/log.txt"),
        "/workers".to_owned(),
    ] {
        let answer = http(addr, "GET", &path, &[], None).await?;
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
        assert_eq!(answer.header("refresh"), Some("0; url=/login"), "{path}");
        assert!(!answer.body.contains("secret-output"));
    }
    let forged = hodei_domain::ApiToken::generate();
    let answer = http(
        addr,
        "GET",
        "/jobs",
        &[("Cookie", &format!("hodei_session={}", forged.expose()))],
        None,
    )
    .await?;
    assert_eq!(answer.status, 401, "{answer:?}");
    server.shutdown().await
}

#[tokio::test]
async fn scopes_are_the_apis_a_reader_sees_jobs_but_not_workers_and_no_one_elses_jobs()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let admins_job = server.queue("echo admin").await?;
    let reader = server.token("reader", "jobs:read").await?;
    let cookie = sign_in(addr, &reader).await?;
    let workers = http(addr, "GET", "/workers", &[("Cookie", &cookie)], None).await?;
    assert_eq!(workers.status, 403, "{workers:?}");
    assert!(workers.body.contains("workers:read"), "{}", workers.body);
    let jobs = http(addr, "GET", "/jobs", &[("Cookie", &cookie)], None).await?;
    assert_eq!(jobs.status, 200);
    assert!(
        !jobs.body.contains(&admins_job),
        "another principal's job is listed"
    );
    let job = http(
        addr,
        "GET",
        &format!("/jobs/{admins_job}"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    assert_eq!(job.status, 404, "{job:?}");
    let log = http(
        addr,
        "GET",
        &format!("/jobs/{admins_job}/log.txt"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    assert_eq!(log.status, 404, "{log:?}");

    let nobody = server.token("metrics-only", "metrics:read").await?;
    let cookie = sign_in(addr, &nobody).await?;
    let jobs = http(addr, "GET", "/jobs", &[("Cookie", &cookie)], None).await?;
    assert_eq!(jobs.status, 403, "{jobs:?}");
    server.shutdown().await
}

#[tokio::test]
async fn cancel_needs_the_scope_the_form_token_and_the_same_origin() -> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    // Alice queues with her submitting token and also holds a read-only one.
    let alice = server.token("alice", "jobs:submit").await?;
    let id = queue_as(&server, &alice, "echo started; sleep 60").await?;
    server
        .wait_job(&id, "running", JOB_TIMEOUT, |j| {
            j.state == pb::JobState::Running as i32
        })
        .await?;
    let cancel = format!("/jobs/{id}/cancel");

    // Her read-only token sees the job but gets no button, and a forged cancel carrying its
    // own valid form token is refused by the scope check.
    let reader = server.token("alice", "jobs:read").await?;
    let reader_cookie = sign_in(addr, &reader).await?;
    let page = http(
        addr,
        "GET",
        &format!("/jobs/{id}"),
        &[("Cookie", &reader_cookie)],
        None,
    )
    .await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        !page.body.contains("id=\"cancel\""),
        "a reader is offered the cancel button"
    );
    let reader_csrf = csrf_of(&page.body).expect("the sign-out form's token");
    let forged = http(
        addr,
        "POST",
        &cancel,
        &[("Cookie", &reader_cookie)],
        Some(&format!("csrf={reader_csrf}")),
    )
    .await?;
    assert_eq!(forged.status, 403, "{forged:?}");
    assert!(forged.body.contains("jobs:submit"), "{}", forged.body);

    let cookie = sign_in(addr, &alice).await?;
    let page = http(
        addr,
        "GET",
        &format!("/jobs/{id}"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    assert!(
        page.body.contains("id=\"cancel\""),
        "the owner has no cancel button"
    );
    let csrf = csrf_of(&page.body).expect("a form token");
    for (what, headers, body) in [
        (
            "no form token",
            vec![("Cookie", cookie.as_str())],
            String::new(),
        ),
        (
            "another session's form token",
            vec![("Cookie", cookie.as_str())],
            format!("csrf={reader_csrf}"),
        ),
        (
            "another origin",
            vec![
                ("Cookie", cookie.as_str()),
                ("Origin", "http://evil.example"),
            ],
            format!("csrf={csrf}"),
        ),
    ] {
        let answer = http(addr, "POST", &cancel, &headers, Some(&body)).await?;
        assert_eq!(answer.status, 403, "{what}: {answer:?}");
    }
    assert_eq!(
        server.get_job(&id).await?.state,
        pb::JobState::Running as i32
    );

    let origin = format!("http://{addr}");
    let done = http(
        addr,
        "POST",
        &cancel,
        &[("Cookie", &cookie), ("Origin", &origin)],
        Some(&format!("csrf={csrf}")),
    )
    .await?;
    assert_eq!(done.status, 303, "{done:?}");
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    assert!(job.reason.contains("web dashboard"), "{}", job.reason);
    server.shutdown().await
}

#[tokio::test]
async fn job_provided_strings_are_escaped_in_pages_and_sent_as_json_text_in_the_log()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let cookie = sign_in(addr, &server.admin_token).await?;
    let mut spec = hodei_testkit::jobs::spec(
        "echo '<script>alert(1)</script>'; printf '\\033[31mred\\033[0m\\n' >&2",
    );
    spec.env
        .insert("MARKUP".into(), "\"><img src=x onerror=alert(2)>".into());
    spec.secrets
        .insert("PASSWORD".into(), "hunter2-not-shown".into());
    let id = server.queue_spec(spec).await?;
    server.wait_finished(&id, JOB_TIMEOUT).await?;

    let page = http(
        addr,
        "GET",
        &format!("/jobs/{id}"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("<script>alert"), "unescaped command");
    assert!(!page.body.contains("<img"), "unescaped env value");
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.body.contains("PASSWORD"), "the secret's name is shown");
    assert!(!page.body.contains("hunter2"), "a secret value is shown");
    let list = http(addr, "GET", "/jobs", &[("Cookie", &cookie)], None).await?;
    assert!(!list.body.contains("<script>alert"));

    let events = http(
        addr,
        "GET",
        &format!("/jobs/{id}/log"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    let (lines, end) = parse_log_events(&events.body)?;
    assert_eq!(end.as_deref(), Some("succeeded"));
    let texts: Vec<_> = lines
        .iter()
        .map(|(_, stream, text)| (*stream, text.as_str()))
        .collect();
    assert!(
        texts.contains(&(1, "<script>alert(1)</script>")),
        "{texts:?}"
    );
    assert!(texts.contains(&(2, "\u{1b}[31mred\u{1b}[0m")), "{texts:?}");
    server.shutdown().await
}

#[tokio::test]
async fn the_log_stream_continues_after_the_last_event_id_without_gap_or_duplicate_and_downloads_whole()
-> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let cookie = sign_in(addr, &server.admin_token).await?;
    let id = server.queue("seq 1 5000").await?;
    server.wait_finished(&id, JOB_TIMEOUT).await?;
    let path = format!("/jobs/{id}/log");

    let all = http(addr, "GET", &path, &[("Cookie", &cookie)], None).await?;
    assert_eq!(all.header("content-type"), Some("text/event-stream"));
    let (lines, end) = parse_log_events(&all.body)?;
    let sequences: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(sequences, (1..=5000).collect::<Vec<_>>());
    assert_eq!(end.as_deref(), Some("succeeded"));

    // What a reconnecting EventSource sends: the id of the last event it received.
    let resumed = http(
        addr,
        "GET",
        &path,
        &[("Cookie", &cookie), ("Last-Event-ID", "1234")],
        None,
    )
    .await?;
    let (lines, _) = parse_log_events(&resumed.body)?;
    let sequences: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(sequences, (1235..=5000).collect::<Vec<_>>());
    assert_eq!(lines[0].2, "1235");

    let text = http(
        addr,
        "GET",
        &format!("{path}.txt"),
        &[("Cookie", &cookie)],
        None,
    )
    .await?;
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-disposition")
            .is_some_and(|d| d.starts_with("attachment"))
    );
    let expected: String = (1..=5000).map(|n| format!("{n}\n")).collect();
    assert_eq!(text.body, expected);
    server.shutdown().await
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_not_a_crash() -> anyhow::Result<()> {
    let server = server().await?;
    let addr = web_addr(&server)?;
    let cookie = sign_in(addr, &server.admin_token).await?;
    for (path, status, says) in [
        ("/jobs?state=exploded", 400, "unknown job state"),
        ("/jobs/not-a-uuid", 400, "job"),
        ("/jobs?before=zzz", 400, "page_token"),
        ("/jobs/0190a000-0000-7000-8000-000000000000", 404, "no job"),
        ("/workers?before=%3Cx%3E", 400, "page_token"),
    ] {
        let answer = http(addr, "GET", path, &[("Cookie", &cookie)], None).await?;
        assert_eq!(answer.status, status, "{path}: {answer:?}");
        assert!(answer.body.contains(says), "{path}: {}", answer.body);
        assert!(!answer.body.contains("<x>"));
    }
    server.shutdown().await
}

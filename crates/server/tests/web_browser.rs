//! The web dashboard's acceptance tests in a real browser: Debian's `chromium`, headless,
//! driven through `chromedriver` (WebDriver), against a real server, PostgreSQL and local
//! workers. Run them with `scripts/e2e/run-browser-e2e.sh`, which installs the browser, starts
//! the driver and passes its address in `HODEI_WEBDRIVER_URL`.
//!
//! The 100,000-line test reports its times (first line, last line, the page's answer to a
//! script while lines pour in) on stdout and in `target/web-e2e/100k-lines.txt`; it asserts
//! what it receives, not how fast. The screenshot test writes `docs/screenshots/web-*.png`.

mod common;
mod web_support;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use common::TestServer;
use fantoccini::{Client, ClientBuilder, Locator};
use hodei_domain::ApiToken;
use hodei_proto::v1 as pb;
use hodei_testkit::{Probe, wait_for};
use serde_json::{Value, json};
use web_support::{queue_as, server, web_addr};

const JOB_TIMEOUT: Duration = Duration::from_secs(60);
const PAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A new headless browser session.
async fn browser(width: u32, height: u32) -> anyhow::Result<Client> {
    let driver = std::env::var("HODEI_WEBDRIVER_URL")
        .context("HODEI_WEBDRIVER_URL is not set: run scripts/e2e/run-browser-e2e.sh")?;
    let binary = std::env::var("HODEI_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver)
        .await
        .with_context(|| format!("starting a browser session at {driver}"))?;
    Ok(client)
}

/// Signs in through the login page, as a person would.
async fn sign_in(browser: &Client, base: &str, token: &ApiToken) -> anyhow::Result<()> {
    browser.goto(&format!("{base}/login")).await?;
    let field = browser.find(Locator::Id("token")).await?;
    field.send_keys(token.expose()).await?;
    browser
        .find(Locator::Css("form.login button"))
        .await?
        .click()
        .await?;
    wait_for("the jobs page after signing in", PAGE_TIMEOUT, || async {
        let url = browser.current_url().await?;
        Ok(if url.path() == "/jobs" {
            Probe::Ready(())
        } else {
            Probe::Pending(url.to_string())
        })
    })
    .await
}

/// The log lines the page shows: `(sequence, stdout|stderr, text)`.
async fn shown_lines(browser: &Client) -> anyhow::Result<Vec<(u64, String, String)>> {
    let value = browser
        .execute(
            "return Array.from(document.querySelectorAll('#log .l'), l => \
             [Number(l.dataset.n), l.classList.contains('err') ? 'stderr' : 'stdout', l.textContent]);",
            vec![],
        )
        .await?;
    Ok(serde_json::from_value(value)?)
}

/// A `data-` attribute of the log box, if set.
async fn log_data(browser: &Client, name: &str) -> anyhow::Result<Option<String>> {
    let value = browser
        .execute(
            "const log = document.getElementById('log'); return log ? (log.dataset[arguments[0]] ?? null) : null;",
            vec![json!(name)],
        )
        .await?;
    Ok(value.as_str().map(str::to_owned))
}

async fn wait_log_ended(browser: &Client, timeout: Duration) -> anyhow::Result<String> {
    wait_for("the page to show the end of the log", timeout, || async {
        Ok(match log_data(browser, "ended").await? {
            Some(state) => Probe::Ready(state),
            None => Probe::Pending(format!(
                "{} lines shown",
                log_data(browser, "count").await?.unwrap_or_default()
            )),
        })
    })
    .await
}

fn assert_exactly_once_in_order(
    lines: &[(u64, String, String)],
    count: u64,
    text: impl Fn(u64) -> String,
) {
    let sequences: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(
        sequences,
        (1..=count).collect::<Vec<_>>(),
        "lines are missing, repeated or out of order"
    );
    for (sequence, _, shown) in lines {
        assert_eq!(*shown, text(*sequence), "line {sequence}");
    }
}

struct Setup {
    server: TestServer,
    base: String,
}

async fn setup() -> anyhow::Result<Setup> {
    let server = server().await?;
    let base = format!("http://{}", web_addr(&server)?);
    Ok(Setup { server, base })
}

fn is_final(job: &pb::Job) -> bool {
    hodei_testkit::jobs::is_final(job.state)
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn a_queued_job_appears_without_reload_and_its_log_shows_while_it_runs_in_order_once()
-> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    // Set in this page's window: a reload would lose it.
    browser
        .execute("window.__sameDocument = true;", vec![])
        .await?;

    let id = server
        .queue("for i in $(seq 1 60); do echo line-$i; sleep 0.1; done")
        .await?;
    let link = wait_for("the new job in the list", PAGE_TIMEOUT, || async {
        Ok(match browser.find(Locator::Id(&format!("j-{id}"))).await {
            Ok(link) => Probe::Ready(link),
            Err(_) => Probe::Pending("not listed yet".into()),
        })
    })
    .await?;
    let same = browser
        .execute("return window.__sameDocument === true;", vec![])
        .await?;
    assert_eq!(
        same,
        Value::Bool(true),
        "the list was reloaded to show the job"
    );

    link.click().await?;
    wait_for(
        "the first log line on the job's page",
        JOB_TIMEOUT,
        || async {
            let lines = shown_lines(&browser).await?;
            Ok(if lines.is_empty() {
                Probe::Pending("no line yet".into())
            } else {
                Probe::Ready(())
            })
        },
    )
    .await?;
    let job = server.get_job(&id).await?;
    assert!(
        !is_final(&job),
        "the first line only showed after the job ended"
    );

    assert_eq!(wait_log_ended(&browser, JOB_TIMEOUT).await?, "succeeded");
    let lines = shown_lines(&browser).await?;
    assert_exactly_once_in_order(&lines, 60, |n| format!("line-{n}"));
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn reloading_a_running_jobs_page_mid_stream_continues_without_gap_or_duplicate()
-> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    let id = server
        .queue("for i in $(seq 1 80); do echo out-$i; echo err-$i >&2; sleep 0.05; done")
        .await?;
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    wait_for("20 lines before reloading", JOB_TIMEOUT, || async {
        let count = shown_lines(&browser).await?.len();
        Ok(if count >= 20 {
            Probe::Ready(())
        } else {
            Probe::Pending(format!("{count} lines"))
        })
    })
    .await?;
    assert!(
        !is_final(&server.get_job(&id).await?),
        "the job ended before the reload"
    );
    browser.refresh().await?;
    assert_eq!(wait_log_ended(&browser, JOB_TIMEOUT).await?, "succeeded");
    let lines = shown_lines(&browser).await?;
    // 160 lines: out-i on stdout, err-i on stderr; their order between the two pipes may vary,
    // but each appears once, and sequences run 1..=160 without a gap.
    let sequences: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(sequences, (1..=160).collect::<Vec<_>>());
    for i in 1..=80 {
        for (stream, text) in [
            ("stdout", format!("out-{i}")),
            ("stderr", format!("err-{i}")),
        ] {
            let found = lines.iter().filter(|l| l.2 == text).collect::<Vec<_>>();
            assert_eq!(found.len(), 1, "{text} shown {} times", found.len());
            assert_eq!(found[0].1, stream, "{text} shown as {}", found[0].1);
        }
    }
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn cancel_from_the_page_ends_the_job_cancelled() -> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    let id = server.queue("echo started; sleep 120").await?;
    server
        .wait_job(&id, "running", JOB_TIMEOUT, |j| {
            j.state == pb::JobState::Running as i32
        })
        .await?;
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    browser.find(Locator::Id("cancel")).await?.click().await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_eq!(job.state, pb::JobState::Cancelled as i32, "{job:?}");
    wait_for(
        "the page to show the job cancelled",
        PAGE_TIMEOUT,
        || async {
            let state = browser
                .find(Locator::Id("job-state"))
                .await?
                .attr("data-state")
                .await?
                .unwrap_or_default();
            Ok(if state == "cancelled" {
                Probe::Ready(())
            } else {
                Probe::Pending(state)
            })
        },
    )
    .await?;
    assert!(
        browser.find(Locator::Id("cancel")).await.is_err(),
        "a cancelled job still offers the cancel button"
    );
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn a_token_without_the_cancel_scope_gets_no_button_and_its_forged_cancel_is_refused()
-> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let alice = server.token("alice", "jobs:submit").await?;
    let alice_reader = server.token("alice", "jobs:read").await?;
    let id = queue_as(&server, &alice, "echo started; sleep 120").await?;
    server
        .wait_job(&id, "running", JOB_TIMEOUT, |j| {
            j.state == pb::JobState::Running as i32
        })
        .await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &alice_reader).await?;
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    browser.find(Locator::Id("job-state")).await?;
    assert!(
        browser.find(Locator::Id("cancel")).await.is_err(),
        "a read-only token is offered the cancel button"
    );
    // The forger has a valid form token (the sign-out form's) and the session cookie.
    let status = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch(`/jobs/${arguments[0]}/cancel`, { method: 'POST', credentials: 'same-origin',
                   headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
                   body: `csrf=${csrf}` }).then(r => done(r.status), e => done(String(e)));",
            vec![json!(id)],
        )
        .await?;
    assert_eq!(status, json!(403));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let job = server.get_job(&id).await?;
    assert_eq!(job.state, pb::JobState::Running as i32, "{job:?}");
    assert!(!job.cancel_requested);
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn markup_and_ansi_colour_codes_in_a_log_render_as_text_and_no_script_runs()
-> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    let id = server
        .queue(
            "echo '<script>alert(1)</script>'; \
             echo '<img src=x onerror=\"window.__xss=1\">'; \
             printf '\\033[31mred\\033[0m and \\033[1;32mbold green\\033[0m\\n'; \
             printf '\\033[2Kcleared\\n' >&2",
        )
        .await?;
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    assert_eq!(wait_log_ended(&browser, JOB_TIMEOUT).await?, "succeeded");
    let lines = shown_lines(&browser).await?;
    let texts: Vec<&str> = lines.iter().map(|l| l.2.as_str()).collect();
    assert_eq!(
        texts,
        [
            "<script>alert(1)</script>",
            "<img src=x onerror=\"window.__xss=1\">",
            "red and bold green",
            "cleared"
        ]
    );
    let injected = browser
        .execute(
            "return [document.querySelectorAll('#log script, #log img').length, window.__xss ?? null,
                     Array.from(document.querySelectorAll('#log .l')[2].querySelectorAll('span'), s => s.className)];",
            vec![],
        )
        .await?;
    assert_eq!(injected, json!([0, null, ["c1", "c2 b"]]));
    assert!(
        browser.get_alert_text().await.is_err(),
        "an alert is open: a script from the log ran"
    );
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn a_log_of_100000_lines_streams_to_the_page_completely_and_its_times_are_reported()
-> anyhow::Result<()> {
    const LINES: u64 = 100_000;
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    // Printed at full speed while the page follows it.
    let id = server
        .queue(&format!("seq 1 {LINES} | sed 's/^/line /'"))
        .await?;
    let opened = Instant::now();
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    let mut first_line = None;
    let mut slowest_answer = Duration::ZERO;
    let mut answers = 0u32;
    // While lines pour in, the page must keep answering: each probe is a script round trip.
    let deadline = Instant::now() + Duration::from_secs(240);
    let ended = loop {
        let asked = Instant::now();
        let count: u64 = log_data(&browser, "count")
            .await?
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        slowest_answer = slowest_answer.max(asked.elapsed());
        answers += 1;
        if count > 0 && first_line.is_none() {
            first_line = Some(opened.elapsed());
        }
        if let Some(state) = log_data(&browser, "ended").await? {
            break state;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after 240s waiting for all {LINES} lines on the page; {count} shown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let to_end = opened.elapsed();
    assert_eq!(ended, "succeeded");
    let summary = browser
        .execute(
            "const lines = document.querySelectorAll('#log .l');
             return [lines.length, Number(lines[0].dataset.n), lines[0].textContent,
                     Number(lines[lines.length - 1].dataset.n), lines[lines.length - 1].textContent,
                     Number(document.getElementById('log').dataset.firstLineMs),
                     Number(document.getElementById('log').dataset.endMs)];",
            vec![],
        )
        .await?;
    let expected = json!([LINES, 1, "line 1", LINES, format!("line {LINES}")]);
    assert_eq!(
        summary.as_array().map(|a| &a[..5]),
        expected.as_array().map(|a| &a[..])
    );
    // Scrolling to the top must answer promptly too.
    let scroll = Instant::now();
    browser
        .execute(
            "document.getElementById('log').scrollTop = 0; return 1;",
            vec![],
        )
        .await?;
    let scroll = scroll.elapsed();
    let report = format!(
        "100,000-line log in headless chromium (local provider, PostgreSQL, debug build):\n\
         - first line shown {:.2}s after opening the page (page script: {} ms)\n\
         - last line shown {:.2}s after opening the page (page script: {} ms)\n\
         - slowest answer of the page to a script while streaming: {} ms over {answers} probes\n\
         - scroll to the top after the end: {} ms\n",
        first_line.unwrap_or(to_end).as_secs_f64(),
        summary[5],
        to_end.as_secs_f64(),
        summary[6],
        slowest_answer.as_millis(),
        scroll.as_millis(),
    );
    println!("{report}");
    let dir = workspace().join("target/web-e2e");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("100k-lines.txt"), &report)?;
    browser.close().await?;
    server.shutdown().await
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn screenshots_of_the_three_pages_and_none_is_wider_than_a_phone() -> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let dir = std::env::var("HODEI_WEB_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("docs/screenshots"));
    std::fs::create_dir_all(&dir)?;
    let done = server
        .queue("echo building; printf '\\033[32mok\\033[0m 12 tests passed\\n'; echo 'warning: 1 flaky test' >&2")
        .await?;
    server.wait_finished(&done, JOB_TIMEOUT).await?;
    let failed = server
        .queue("echo compiling; echo 'error: missing file' >&2; exit 2")
        .await?;
    server.wait_finished(&failed, JOB_TIMEOUT).await?;
    let running = server
        .queue("for i in $(seq 1 400); do echo \"step $i: processing item $i\"; [ $((i % 7)) = 0 ] && echo \"retrying item $i\" >&2; sleep 0.05; done")
        .await?;
    server
        .wait_job(&running, "running", JOB_TIMEOUT, |j| {
            j.state == pb::JobState::Running as i32
        })
        .await?;

    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    // The page's own refresh shows the running job's state.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    std::fs::write(dir.join("web-jobs.png"), browser.screenshot().await?)?;
    browser.goto(&format!("{base}/jobs/{running}")).await?;
    wait_for("40 lines of the running job", JOB_TIMEOUT, || async {
        let count = shown_lines(&browser).await?.len();
        Ok(if count >= 40 {
            Probe::Ready(())
        } else {
            Probe::Pending(format!("{count}"))
        })
    })
    .await?;
    std::fs::write(dir.join("web-job.png"), browser.screenshot().await?)?;
    browser.goto(&format!("{base}/workers?all=1")).await?;
    browser.find(Locator::Id("workers-region")).await?;
    std::fs::write(dir.join("web-workers.png"), browser.screenshot().await?)?;

    browser.set_window_size(390, 844).await?;
    for path in [
        "/jobs".to_owned(),
        format!("/jobs/{running}"),
        "/workers?all=1".to_owned(),
    ] {
        browser.goto(&format!("{base}{path}")).await?;
        let widths = browser
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await?;
        let (scroll, inner) = (widths[0].as_u64(), widths[1].as_u64());
        assert!(scroll <= inner, "{path} is wider than the phone: {widths}");
    }
    std::fs::write(dir.join("web-job-phone.png"), browser.screenshot().await?)?;
    browser.close().await?;
    server.shutdown().await
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: scripts/e2e/run-browser-e2e.sh"]
async fn the_job_page_is_usable_with_the_keyboard_alone() -> anyhow::Result<()> {
    let Setup { server, base } = setup().await?;
    let browser = browser(1280, 900).await?;
    sign_in(&browser, &base, &server.admin_token).await?;
    let id = server.queue("echo started; sleep 120").await?;
    server
        .wait_job(&id, "running", JOB_TIMEOUT, |j| {
            j.state == pb::JobState::Running as i32
        })
        .await?;
    browser.goto(&format!("{base}/jobs/{id}")).await?;
    // Tab through the page until the cancel button has the focus, then press Enter.
    let body = browser.find(Locator::Css("body")).await?;
    let mut reached = false;
    for _ in 0..25 {
        body.send_keys("\u{E004}").await?; // Tab
        let focused = browser
            .execute(
                "return document.activeElement && document.activeElement.id;",
                vec![],
            )
            .await?;
        if focused == json!("cancel") {
            reached = true;
            break;
        }
    }
    assert!(reached, "the cancel button cannot be reached with Tab");
    browser
        .active_element()
        .await?
        .send_keys("\u{E007}") // Enter
        .await?;
    let job = server.wait_finished(&id, JOB_TIMEOUT).await?;
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    browser.close().await?;
    server.shutdown().await
}

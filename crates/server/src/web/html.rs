//! The dashboard's HTML, rendered on the server. Every string that comes from a job, a worker
//! or a request goes through [`esc`]; the Content-Security-Policy (no inline script) is the
//! second line of defence, not the first.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use hodei_contract::convert::datetime;
use hodei_proto::v1 as pb;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query parameter value (for links this page builds).
pub fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Who is looking, for the header.
pub struct Viewer<'a> {
    /// `None`: authentication is off.
    pub name: Option<&'a str>,
    pub csrf: &'a str,
}

/// A whole page around `body`.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, body: &str) -> String {
    let header = match viewer {
        Some(viewer) => {
            let who = match viewer.name {
                Some(name) => format!(
                    "<span class=\"who\">{}</span><form class=\"inline\" method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
                    esc(name),
                    esc(viewer.csrf)
                ),
                None => "<span class=\"who warn\">authentication off</span>".to_owned(),
            };
            format!(
                "<header class=\"top\"><a class=\"brand\" href=\"/jobs\">Hodei Jobs</a><nav><a href=\"/jobs\">Jobs</a><a href=\"/workers\">Workers</a></nav><div class=\"user\">{who}</div></header>"
            )
        }
        None => "<header class=\"top\"><span class=\"brand\">Hodei Jobs</span></header>".into(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Hodei Jobs</title><link rel=\"stylesheet\" href=\"/static/app.css\"><script src=\"/static/app.js\" defer></script></head><body><a class=\"skip\" href=\"#main\">Skip to content</a>{header}<main id=\"main\" tabindex=\"-1\">{body}</main></body></html>\n",
        esc(title)
    )
}

pub fn when(ts: Option<&prost_types::Timestamp>) -> String {
    match datetime(ts) {
        Some(at) => time_element(at),
        None => "—".into(),
    }
}

fn time_element(at: DateTime<Utc>) -> String {
    format!(
        "<time datetime=\"{}\">{}</time>",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// "3.2s", "4m 5s", "1h 2m": how long between two instants (or until now).
pub fn span(from: Option<&prost_types::Timestamp>, to: Option<&prost_types::Timestamp>) -> String {
    let Some(from) = datetime(from) else {
        return "—".into();
    };
    let to = datetime(to).unwrap_or_else(Utc::now);
    let ms = (to - from).num_milliseconds().max(0);
    let s = ms / 1000;
    if s < 60 {
        format!("{}.{}s", s, (ms % 1000) / 100)
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    }
}

/// A job state's name as the CLI prints it (`running`, `timed_out`).
pub fn job_state(raw: i32) -> String {
    pb::JobState::try_from(raw)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("JOB_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown ({raw})"))
}

pub fn worker_state(raw: i32) -> String {
    pb::WorkerState::try_from(raw)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("WORKER_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("unknown ({raw})"))
}

pub fn is_final(raw: i32) -> bool {
    matches!(
        pb::JobState::try_from(raw),
        Ok(pb::JobState::Succeeded
            | pb::JobState::Failed
            | pb::JobState::Cancelled
            | pb::JobState::TimedOut)
    )
}

pub fn badge(state: &str) -> String {
    format!(
        "<span class=\"badge s-{}\">{}</span>",
        esc(state),
        esc(&state.replace('_', " "))
    )
}

/// At most `max` characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// The jobs list: filter form, table, pager. The region refreshes itself.
pub fn jobs_region(
    jobs: &[pb::Job],
    state: Option<&str>,
    before: Option<&str>,
    next_page: &str,
) -> String {
    let filter = state.map_or(String::new(), |s| format!("state={}&", query_value(s)));
    let here = format!(
        "/jobs?{filter}{}partial=1",
        before.map_or(String::new(), |b| format!("before={}&", query_value(b)))
    );
    let mut out = format!(
        "<div id=\"jobs-region\" data-refresh=\"{}\"><div class=\"scroll\"><table class=\"grid\"><caption class=\"sr\">Jobs, newest first</caption><thead><tr><th scope=\"col\">Job</th><th scope=\"col\">State</th><th scope=\"col\">Command</th><th scope=\"col\" class=\"wide\">Owner</th><th scope=\"col\" class=\"wide\">Queued</th><th scope=\"col\" class=\"wide\">Took</th><th scope=\"col\" class=\"wide\">Exit</th></tr></thead><tbody>",
        esc(&here)
    );
    if jobs.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"empty\">No jobs.</td></tr>");
    }
    for job in jobs {
        let spec_command = job.spec.as_ref().map_or("", |s| s.command.as_str());
        let _ = write!(
            out,
            "<tr><td><a id=\"j-{id}\" href=\"/jobs/{id}\"><code>{short}</code></a></td><td>{state}</td><td class=\"cmd\"><code>{command}</code></td><td class=\"wide\">{owner}</td><td class=\"wide\">{created}</td><td class=\"wide\">{took}</td><td class=\"wide\">{exit}</td></tr>",
            id = esc(&job.id),
            short = esc(&truncate(&job.id, 13)),
            state = badge(&job_state(job.state)),
            command = esc(&truncate(spec_command, 120)),
            owner = esc(if job.owner.is_empty() {
                "—"
            } else {
                &job.owner
            }),
            created = when(job.created_at.as_ref()),
            took = span(job.started_at.as_ref(), job.finished_at.as_ref()),
            exit = job.exit_code.map_or("—".into(), |c| c.to_string()),
        );
    }
    out.push_str("</tbody></table></div><nav class=\"pager\" aria-label=\"Pages\">");
    if before.is_some() {
        let _ = write!(
            out,
            "<a href=\"/jobs?{}\">Newest</a>",
            esc(filter.trim_end_matches('&'))
        );
    }
    if !next_page.is_empty() {
        let _ = write!(
            out,
            "<a href=\"/jobs?{}before={}\">Older jobs</a>",
            esc(&filter),
            esc(&query_value(next_page))
        );
    }
    out.push_str("</nav></div>");
    out
}

pub fn jobs_body(region: &str, state: Option<&str>) -> String {
    let mut options = String::from("<option value=\"\">any</option>");
    for s in pb::JobState::Queued as i32..=pb::JobState::TimedOut as i32 {
        let name = job_state(s);
        let selected = if Some(name.as_str()) == state {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            options,
            "<option value=\"{n}\"{selected}>{label}</option>",
            n = esc(&name),
            label = esc(&name.replace('_', " "))
        );
    }
    format!(
        "<h1>Jobs</h1><form class=\"filter\" method=\"get\" action=\"/jobs\"><label for=\"state\">State</label><select id=\"state\" name=\"state\">{options}</select><button type=\"submit\">Filter</button></form>{region}"
    )
}

/// What may be done to a job from its page.
pub struct JobActions<'a> {
    pub may_cancel: bool,
    pub csrf: &'a str,
}

/// The part of a job's page that changes while it runs (above the log: fixed rows, so the log
/// does not move).
pub fn job_summary(job: &pb::Job, actions: &JobActions<'_>) -> String {
    let state = job_state(job.state);
    let done = is_final(job.state);
    let mut out = format!(
        "<section id=\"job-summary\" data-refresh=\"/jobs/{id}?partial=summary\"{final_}><dl class=\"facts\"><div><dt>State</dt><dd id=\"job-state\" data-state=\"{state_attr}\">{badge}{requested}</dd></div><div><dt>Reason</dt><dd id=\"job-reason\">{reason}</dd></div><div><dt>Exit code</dt><dd id=\"job-exit\">{exit}</dd></div><div><dt>Attempts</dt><dd>{attempts}</dd></div><div><dt>Owner</dt><dd>{owner}</dd></div><div><dt>Queued</dt><dd>{created}</dd></div><div><dt>Started</dt><dd>{started}</dd></div><div><dt>Finished</dt><dd>{finished}</dd></div><div><dt>Waited</dt><dd>{waited}</dd></div><div><dt>Ran</dt><dd>{ran}</dd></div></dl><div class=\"actions\">",
        id = esc(&job.id),
        final_ = if done { " data-final=\"1\"" } else { "" },
        state_attr = esc(&state),
        badge = badge(&state),
        requested = if job.cancel_requested && !done {
            " <span class=\"note\">cancel requested</span>"
        } else {
            ""
        },
        reason = if job.reason.is_empty() {
            "—".into()
        } else {
            esc(&job.reason)
        },
        exit = job.exit_code.map_or("—".into(), |c| c.to_string()),
        attempts = job.attempts,
        owner = esc(if job.owner.is_empty() {
            "—"
        } else {
            &job.owner
        }),
        created = when(job.created_at.as_ref()),
        started = when(job.started_at.as_ref()),
        finished = when(job.finished_at.as_ref()),
        waited = span(
            job.created_at.as_ref(),
            job.started_at.as_ref().or(job.finished_at.as_ref())
        ),
        ran = if job.started_at.is_some() {
            span(job.started_at.as_ref(), job.finished_at.as_ref())
        } else {
            "—".into()
        },
    );
    if actions.may_cancel && !done && !job.cancel_requested {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/jobs/{}/cancel\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button id=\"cancel\" class=\"danger\" type=\"submit\">Cancel job</button></form>",
            esc(&job.id),
            esc(actions.csrf)
        );
    }
    let _ = write!(
        out,
        "<a class=\"button\" href=\"/jobs/{}/log.txt\" download>Download log</a></div></section>",
        esc(&job.id)
    );
    out
}

/// Attempts (below the log: it may grow without moving the log).
pub fn job_attempts(job: &pb::Job) -> String {
    let done = is_final(job.state);
    let mut out = format!(
        "<section id=\"job-attempts\" data-refresh=\"/jobs/{}?partial=attempts\"{}><h2>Attempts</h2><div class=\"scroll\"><table class=\"grid\"><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Outcome</th><th scope=\"col\">Reason</th><th scope=\"col\" class=\"wide\">Worker</th><th scope=\"col\" class=\"wide\">Started</th><th scope=\"col\" class=\"wide\">Finished</th></tr></thead><tbody>",
        esc(&job.id),
        if done { " data-final=\"1\"" } else { "" }
    );
    if job.attempt_history.is_empty() {
        out.push_str("<tr><td colspan=\"6\" class=\"empty\">Not started yet.</td></tr>");
    }
    for a in &job.attempt_history {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"wide\"><code>{}</code></td><td class=\"wide\">{}</td><td class=\"wide\">{}</td></tr>",
            a.attempt,
            badge(&a.outcome),
            if a.reason.is_empty() {
                "—".into()
            } else {
                esc(&a.reason)
            },
            esc(&truncate(&a.worker_id, 13)),
            when(a.started_at.as_ref()),
            when(a.finished_at.as_ref()),
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

/// The spec as submitted, without secret values (the API never returns them; their names are
/// shown).
pub fn job_spec(job: &pb::Job) -> String {
    let Some(spec) = &job.spec else {
        return String::new();
    };
    let mut out = format!(
        "<section><h2>Spec</h2><pre class=\"command\"><code>{}</code></pre><dl class=\"facts\"><div><dt>Timeout</dt><dd>{}</dd></div><div><dt>Max attempts</dt><dd>{}</dd></div><div><dt>CPU</dt><dd>{}</dd></div><div><dt>Memory</dt><dd>{}</dd></div></dl>",
        esc(&spec.command),
        spec.timeout_seconds
            .map_or("server default".into(), |s| format!("{s}s")),
        spec.max_attempts
            .map_or("server default".into(), |n| n.to_string()),
        spec.resources.as_ref().filter(|r| r.cpu_millis > 0).map_or(
            "no limit".into(),
            |r| format!("{} millicores", r.cpu_millis)
        ),
        spec.resources
            .as_ref()
            .filter(|r| r.memory_bytes > 0)
            .map_or("no limit".into(), |r| format!(
                "{} MiB",
                r.memory_bytes >> 20
            )),
    );
    if !spec.env.is_empty() || !job.secret_names.is_empty() {
        out.push_str("<div class=\"scroll\"><table class=\"grid\"><caption>Environment</caption><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Value</th></tr></thead><tbody>");
        for (name, value) in &spec.env {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td><code>{}</code></td></tr>",
                esc(name),
                esc(value)
            );
        }
        for name in &job.secret_names {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td class=\"secret\">secret (value not shown)</td></tr>",
                esc(name)
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
    out
}

pub fn job_body(job: &pb::Job, actions: &JobActions<'_>) -> String {
    format!(
        "<h1>Job <code class=\"id\">{id}</code></h1>{summary}<section class=\"output\"><h2 id=\"output\">Output</h2><div class=\"logbar\"><span id=\"log-status\" aria-live=\"polite\">Loading…</span><label><input id=\"log-follow\" type=\"checkbox\" checked> Follow</label></div><div id=\"log\" class=\"log\" tabindex=\"0\" role=\"log\" aria-labelledby=\"output\" data-stream=\"/jobs/{id}/log\"></div><p class=\"legend\"><span class=\"key out\">stdout</span> <span class=\"key err\">stderr</span></p></section>{attempts}{spec}",
        id = esc(&job.id),
        summary = job_summary(job, actions),
        attempts = job_attempts(job),
        spec = job_spec(job),
    )
}

pub fn workers_region(workers: &[pb::Worker], all: bool, next_page: &str) -> String {
    let mut out = format!(
        "<div id=\"workers-region\" data-refresh=\"/workers?{}partial=1\"><div class=\"scroll\"><table class=\"grid\"><caption class=\"sr\">Workers, newest first</caption><thead><tr><th scope=\"col\">Worker</th><th scope=\"col\">Provider</th><th scope=\"col\">State</th><th scope=\"col\">Job</th><th scope=\"col\">Heartbeat</th><th scope=\"col\" class=\"wide\">Resource</th><th scope=\"col\" class=\"wide\">Jobs run</th><th scope=\"col\" class=\"wide\">Reason</th></tr></thead><tbody>",
        if all { "all=1&" } else { "" }
    );
    if workers.is_empty() {
        out.push_str("<tr><td colspan=\"8\" class=\"empty\">No workers.</td></tr>");
    }
    let now = Utc::now();
    for w in workers {
        let heartbeat = match datetime(w.last_heartbeat_at.as_ref()) {
            Some(at) => format!(
                "{} ago <span class=\"wide\">({})</span>",
                span(w.last_heartbeat_at.as_ref(), None),
                time_element(at.min(now))
            ),
            None => "—".into(),
        };
        let job = if w.current_job_id.is_empty() {
            "—".into()
        } else {
            format!(
                "<a href=\"/jobs/{}\"><code>{}</code></a>",
                esc(&w.current_job_id),
                esc(&truncate(&w.current_job_id, 13))
            )
        };
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"wide\"><code>{}</code></td><td class=\"wide\">{}</td><td class=\"wide\">{}</td></tr>",
            esc(&truncate(&w.id, 13)),
            esc(&w.provider),
            badge(&worker_state(w.state)),
            job,
            heartbeat,
            esc(&w.resource),
            w.jobs_run,
            if w.reason.is_empty() {
                "—".into()
            } else {
                esc(&w.reason)
            },
        );
    }
    out.push_str("</tbody></table></div><nav class=\"pager\" aria-label=\"Pages\">");
    if !next_page.is_empty() {
        let _ = write!(
            out,
            "<a href=\"/workers?{}before={}\">Older workers</a>",
            if all { "all=1&" } else { "" },
            esc(&query_value(next_page))
        );
    }
    out.push_str("</nav></div>");
    out
}

pub fn workers_body(region: &str, all: bool) -> String {
    let toggle = if all {
        "<a href=\"/workers\">Only live workers</a>"
    } else {
        "<a href=\"/workers?all=1\">Include finished workers</a>"
    };
    format!("<h1>Workers</h1><p class=\"filter\">{toggle}</p>{region}")
}

pub fn login_body(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e))
    });
    format!(
        "<h1>Sign in</h1>{error}<form class=\"login\" method=\"post\" action=\"/login\"><label for=\"token\">API token</label><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus spellcheck=\"false\"><button type=\"submit\">Sign in</button></form><p class=\"hint\">Create a token with <code>hodei tokens create --name you --scopes jobs:read,workers:read</code> (add <code>jobs:submit</code> to cancel your jobs). It is kept in a cookie this page's scripts cannot read, until you sign out.</p>"
    )
}

pub fn error_body(status: u16, message: &str) -> String {
    format!(
        "<h1>{status}</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/jobs\">Back to the jobs</a></p>",
        esc(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_in_text_are_escaped() {
        assert_eq!(
            esc("<script>alert(1)</script> & \"x\" 'y'"),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;"
        );
    }

    #[test]
    fn a_job_whose_command_and_reason_hold_markup_renders_them_as_text() {
        let job = pb::Job {
            id: "0190-x".into(),
            spec: Some(pb::JobSpec {
                command: "echo '<img src=x onerror=alert(1)>'".into(),
                env: [("A".to_owned(), "\"><script>".to_owned())].into(),
                ..Default::default()
            }),
            state: pb::JobState::Failed as i32,
            reason: "<b>bold</b>".into(),
            owner: "<i>".into(),
            secret_names: vec!["TOKEN<".into()],
            ..Default::default()
        };
        let html = job_body(
            &job,
            &JobActions {
                may_cancel: true,
                csrf: "c",
            },
        );
        for raw in ["<img", "<script", "<b>", "<i>", "TOKEN<"] {
            assert!(!html.contains(raw), "{raw} unescaped in {html}");
        }
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        // A finished job offers no cancel.
        assert!(!html.contains("id=\"cancel\""));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("a b&c=\"d\""), "a%20b%26c%3D%22d%22");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis_on_a_character_boundary() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}

//! The web dashboard: jobs, one job with its live log, workers — served on its own address
//! (`--web-listen`, off by default) as server-rendered HTML plus one small script.
//!
//! Every page and action stands for one method of the API and goes through the same door:
//! [`crate::access::admit`] with that method's path (so the scopes are the access layer's
//! rules), then the gRPC service itself, called in-process with the admitted [`Caller`] in the
//! request's extensions (so ownership, `NOT_FOUND` for other people's jobs, limits and the
//! gap-free history-then-live log stream are the API's own code, not a second copy).
//!
//! The API token given at login is kept in an `HttpOnly`, `SameSite=Strict` cookie (`Secure`
//! with `--web-secure-cookie`) and never logged. State-changing requests (cancel, sign out) are
//! POSTs that carry a CSRF token derived from the session's token and a key made at start-up,
//! and a cross-origin `Origin` is refused. Every response carries a Content-Security-Policy that
//! allows only this server's own script and style.

mod html;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Form, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{
        Html, IntoResponse, Redirect, Response,
        sse::{Event, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt};
use hodei_contract::auth::parse_bearer;
use hodei_proto::v1::{
    self as pb, job_service_server::JobService, log_stream_service_server::LogStreamService,
    worker_query_service_server::WorkerQueryService,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{
    access::{Access, Caller, admit},
    core::Core,
    lifecycle::Lifecycle,
    services::{JobsService, LogsService, WorkersService},
    settings::AuthMode,
};

const COOKIE: &str = "hodei_session";
/// Jobs per page of the list.
const JOBS_PAGE: u32 = 50;
const WORKERS_PAGE: u32 = 100;
/// Log lines per server-sent event: one event per ready batch keeps 100,000 lines to ~50
/// events instead of 100,000.
const LOG_BATCH: usize = 2000;

const GET_JOB: &str = "/hodei.v1.JobService/GetJob";
const LIST_JOBS: &str = "/hodei.v1.JobService/ListJobs";
const CANCEL_JOB: &str = "/hodei.v1.JobService/CancelJob";
const SUBSCRIBE_LOGS: &str = "/hodei.v1.LogStreamService/SubscribeLogs";
const LIST_WORKERS: &str = "/hodei.v1.WorkerQueryService/ListWorkers";

/// No inline script or style, nothing from elsewhere, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

struct Web {
    access: Arc<Access>,
    jobs: JobsService,
    logs: LogsService,
    workers: WorkersService,
    /// Keys the CSRF tokens; new at every start (a form from before a restart is refused and
    /// simply reloaded).
    csrf_key: [u8; 32],
    secure_cookie: bool,
}

/// Serves the dashboard on `listen` until `shutdown`; returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    lifecycle: Lifecycle,
    core: Arc<Core>,
    access: Arc<Access>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let mut csrf_key = [0u8; 32];
    getrandom::fill(&mut csrf_key)
        .map_err(|e| anyhow::anyhow!("no randomness for the dashboard's CSRF key: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    if access.mode() == AuthMode::Required
        && !addr.ip().is_loopback()
        && !core.settings.web_secure_cookie
    {
        tracing::warn!(%addr, "the web dashboard is served over plain HTTP beyond loopback: put a TLS-terminating proxy in front of it and set --web-secure-cookie, or tokens travel in clear text");
    }
    let web = Arc::new(Web {
        access: access.clone(),
        jobs: JobsService::new(lifecycle),
        logs: LogsService::new(core.clone(), access),
        workers: WorkersService::new(core.clone()),
        csrf_key,
        secure_cookie: core.settings.web_secure_cookie,
    });
    let app = router(web);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "web dashboard stopped");
        }
    });
    tracing::info!(%addr, "web dashboard listening");
    Ok((addr, task))
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/jobs") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/jobs", get(jobs_page))
        .route("/jobs/{id}", get(job_page))
        .route("/jobs/{id}/log", get(log_events))
        .route("/jobs/{id}/log.txt", get(log_download))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/workers", get(workers_page))
        .route("/static/app.js", get(app_js))
        .route("/static/app.css", get(app_css))
        .fallback(|| async { WebError::new(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Not `no-referrer`: with it Chromium sends `Origin: null` on form posts, which the
        // same-origin check must refuse.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
}

/// A refusal or failure, as a page (or, for someone not signed in, a redirect to the login).
#[derive(Debug)]
struct WebError {
    status: StatusCode,
    message: String,
}

impl WebError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn from_status(status: Status) -> Self {
        let code = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(code, status.message())
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let body = html::page(
            &self.status.as_u16().to_string(),
            None,
            &html::error_body(self.status.as_u16(), &self.message),
        );
        let mut response = (self.status, Html(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // A browser without a (valid) session is sent to the login, which says why.
            response
                .headers_mut()
                .insert(header::REFRESH, HeaderValue::from_static("0; url=/login"));
        }
        response
    }
}

/// Who the request comes from: the token in its session cookie, if any.
struct Session {
    /// The cookie's token as an `authorization` value, as the API would receive it.
    authorization: Option<String>,
    csrf: String,
}

impl Web {
    fn session(&self, headers: &HeaderMap) -> Session {
        let token = cookie(headers, COOKIE);
        let csrf = self.csrf_for(token.as_deref().unwrap_or("anonymous"));
        Session {
            authorization: token.map(|t| format!("Bearer {t}")),
            csrf,
        }
    }

    fn csrf_for(&self, token: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(self.csrf_key);
        digest.update(token.as_bytes());
        hex::encode(digest.finalize())
    }

    /// The caller, if its session may call `method` of the API.
    async fn admit(&self, session: &Session, method: &str) -> Result<Caller, WebError> {
        if self.access.mode() == AuthMode::Required && session.authorization.is_none() {
            return Err(WebError::new(
                StatusCode::UNAUTHORIZED,
                "sign in with an API token",
            ));
        }
        let authorization = session.authorization.as_deref().map(str::as_bytes);
        match admit(&self.access, method, authorization, None).await {
            Ok(Some(caller)) => Ok(caller),
            // Only open and agent methods answer None; none of them is a dashboard action.
            Ok(None) => Err(WebError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{method} is not a client method"),
            )),
            Err(refused) => Err(WebError::from_status(refused)),
        }
    }

    fn viewer<'a>(&self, caller: &'a Caller, session: &'a Session) -> html::Viewer<'a> {
        html::Viewer {
            name: caller.owner(),
            csrf: &session.csrf,
        }
    }

    /// Refuses a state-changing request without the session's CSRF token or from another
    /// origin.
    fn check_post(
        &self,
        headers: &HeaderMap,
        session: &Session,
        csrf: Option<&str>,
    ) -> Result<(), WebError> {
        check_same_origin(headers)?;
        let given = csrf.unwrap_or_default().as_bytes();
        let expected = session.csrf.as_bytes();
        // Compared without an early exit, so timing does not reveal how much matched.
        let same = given.len() == expected.len()
            && given
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(WebError::new(
                StatusCode::FORBIDDEN,
                "missing or stale form token (CSRF): reload the page and try again",
            ));
        }
        Ok(())
    }

    fn cookie_header(&self, value: &str, max_age: Option<u64>) -> String {
        let mut cookie = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(age) = max_age {
            cookie.push_str(&format!("; Max-Age={age}"));
        }
        if self.secure_cookie {
            cookie.push_str("; Secure");
        }
        cookie
    }
}

/// The value of cookie `name`, if the request has it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// A request to a service as if it came through the access layer with this caller.
fn request<T>(message: T, caller: &Caller) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.extensions_mut().insert(caller.clone());
    request
}

fn page_response(title: &str, viewer: &html::Viewer<'_>, body: &str) -> Response {
    Html(html::page(title, Some(viewer), body)).into_response()
}

async fn login_page(State(web): State<Arc<Web>>) -> Response {
    if web.access.mode() == AuthMode::Off {
        return Redirect::to("/jobs").into_response();
    }
    Html(html::page("Sign in", None, &html::login_body(None))).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Refuses a form posted from another site. Browsers send `Origin` on every POST; without the
/// check a page elsewhere could sign a visitor in with the attacker's token (login CSRF) and
/// show them the attacker's jobs as theirs. There is no session yet, so no form token either.
fn check_same_origin(headers: &HeaderMap) -> Result<(), WebError> {
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) && origin.split_once("://").map(|(_, h)| h) != Some(host)
    {
        return Err(WebError::new(
            StatusCode::FORBIDDEN,
            "cross-origin request refused",
        ));
    }
    Ok(())
}

async fn login(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(refused) = check_same_origin(&headers) {
        return refused.into_response();
    }
    let refused = |status: StatusCode, message: String| {
        (
            status,
            Html(html::page(
                "Sign in",
                None,
                &html::login_body(Some(&message)),
            )),
        )
            .into_response()
    };
    // Normalised through the API's own parser, so the cookie holds exactly a token.
    let token = match parse_bearer(format!("Bearer {}", form.token.trim()).as_bytes()) {
        Ok(token) => token,
        Err(e) => return refused(StatusCode::BAD_REQUEST, format!("not an API token: {e}")),
    };
    let authorization = format!("Bearer {}", token.expose());
    match web
        .access
        .authenticate(Some(authorization.as_bytes()), None)
        .await
    {
        Ok(caller) => {
            tracing::info!(principal = caller.name(), "signed in to the web dashboard");
            let cookie = web.cookie_header(token.expose(), None);
            ([(header::SET_COOKIE, cookie)], Redirect::to("/jobs")).into_response()
        }
        Err(e) => refused(StatusCode::UNAUTHORIZED, e.message().to_owned()),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    web.check_post(&headers, &session, form.csrf.as_deref())?;
    let cookie = web.cookie_header("", Some(0));
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response())
}

#[derive(Deserialize)]
struct JobsQuery {
    state: Option<String>,
    before: Option<String>,
    partial: Option<String>,
}

async fn jobs_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<JobsQuery>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    let caller = web.admit(&session, LIST_JOBS).await?;
    let state = query.state.as_deref().filter(|s| !s.is_empty());
    let states = match state {
        None => vec![],
        Some(name) => {
            let proto =
                pb::JobState::from_str_name(&format!("JOB_STATE_{}", name.to_ascii_uppercase()))
                    .filter(|s| *s != pb::JobState::Unspecified)
                    .ok_or_else(|| {
                        WebError::new(
                            StatusCode::BAD_REQUEST,
                            format!("unknown job state {name:?}"),
                        )
                    })?;
            vec![proto as i32]
        }
    };
    let before = query.before.as_deref().filter(|s| !s.is_empty());
    let listed = web
        .jobs
        .list_jobs(request(
            pb::ListJobsRequest {
                states,
                limit: JOBS_PAGE,
                page_token: before.unwrap_or_default().to_owned(),
                view: pb::JobView::Basic as i32,
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    let region = html::jobs_region(&listed.jobs, state, before, &listed.next_page_token);
    if query.partial.is_some() {
        return Ok(Html(region).into_response());
    }
    let viewer = web.viewer(&caller, &session);
    Ok(page_response(
        "Jobs",
        &viewer,
        &html::jobs_body(&region, state),
    ))
}

#[derive(Deserialize)]
struct JobQuery {
    partial: Option<String>,
}

async fn job_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<JobQuery>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    let caller = web.admit(&session, GET_JOB).await?;
    let job = web
        .jobs
        .get_job(request(
            pb::GetJobRequest {
                job_id: id,
                view: pb::JobView::Full as i32,
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    // The button is offered to those the cancel itself would admit: the method's scopes, and
    // the job being theirs (or `jobs:admin`).
    let owner = Some(job.owner.as_str()).filter(|o| !o.is_empty());
    let may_cancel =
        web.admit(&session, CANCEL_JOB).await.is_ok() && caller.can_cancel_job_of(owner);
    let actions = html::JobActions {
        may_cancel,
        csrf: &session.csrf,
    };
    match query.partial.as_deref() {
        Some("summary") => Ok(Html(html::job_summary(&job, &actions)).into_response()),
        Some("attempts") => Ok(Html(html::job_attempts(&job)).into_response()),
        Some(other) => Err(WebError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown part {other:?}"),
        )),
        None => {
            let viewer = web.viewer(&caller, &session);
            Ok(page_response(
                &format!("Job {}", job.id),
                &viewer,
                &html::job_body(&job, &actions),
            ))
        }
    }
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
}

/// Server-sent events: `lines` (a JSON array of `[sequence, stream, text]`, the event's id
/// its last sequence), then `end` once the job has ended and every line was sent. A
/// reconnecting `EventSource` sends `Last-Event-ID` and continues after it; a stream that ends
/// without `end` (the server stopping) is reconnected by the browser the same way.
async fn log_events(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    let session = web.session(&headers);
    let caller = web.admit(&session, SUBSCRIBE_LOGS).await?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|seen| seen + 1);
    let from = resume.or(query.from).unwrap_or(1).max(1);
    let lines = web
        .logs
        .subscribe_logs(request(
            pb::SubscribeLogsRequest {
                job_id: id.clone(),
                from_sequence: from,
                follow: true,
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    let mut refused = false;
    let batches = lines
        .ready_chunks(LOG_BATCH)
        .map(move |batch| {
            if refused {
                return vec![];
            }
            let mut events = Vec::with_capacity(2);
            let mut json = Vec::with_capacity(batch.len());
            let mut last = None;
            for item in batch {
                match item {
                    Ok(line) => {
                        last = Some(line.sequence);
                        json.push(serde_json::json!([
                            line.sequence,
                            line.stream,
                            String::from_utf8_lossy(&line.data)
                        ]));
                    }
                    Err(status) => {
                        refused = true;
                        if let Some(last) = last.take() {
                            events.push(lines_event(&json, last));
                        }
                        events.push(Event::default().event("refused").data(status.message()));
                        return events;
                    }
                }
            }
            if let Some(last) = last {
                events.push(lines_event(&json, last));
            }
            events
        })
        .flat_map(futures::stream::iter);
    // After the last line: `end` if the job has ended; otherwise the stream was cut (the
    // server is stopping) and the browser reconnects from the last id it saw.
    let tail = futures::stream::once(async move {
        let job = web
            .jobs
            .get_job(request(
                pb::GetJobRequest {
                    job_id: id,
                    view: pb::JobView::Basic as i32,
                },
                &caller,
            ))
            .await;
        match job {
            Ok(job) if html::is_final(job.get_ref().state) => Some(
                Event::default()
                    .event("end")
                    .data(html::job_state(job.get_ref().state)),
            ),
            _ => None,
        }
    })
    .filter_map(futures::future::ready);
    Ok(Sse::new(batches.chain(tail).map(Ok))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn lines_event(json: &[serde_json::Value], last: u64) -> Event {
    Event::default()
        .event("lines")
        .id(last.to_string())
        .data(serde_json::Value::Array(json.to_vec()).to_string())
}

/// The whole log as text, each line as the job printed it.
async fn log_download(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    let caller = web.admit(&session, SUBSCRIBE_LOGS).await?;
    let lines = web
        .logs
        .subscribe_logs(request(
            pb::SubscribeLogsRequest {
                job_id: id.clone(),
                from_sequence: 1,
                follow: false,
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    let body = lines.ready_chunks(LOG_BATCH).map(|batch| {
        let mut out = Vec::new();
        for line in batch {
            let line = line?;
            out.extend_from_slice(&line.data);
            out.push(b'\n');
        }
        Ok::<_, Status>(bytes::Bytes::from(out))
    });
    // The id is a UUID (the service refused anything else), so it is safe in the header.
    let disposition = format!("attachment; filename=\"job-{id}.log\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response())
}

async fn cancel(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    web.check_post(&headers, &session, form.csrf.as_deref())?;
    let caller = web.admit(&session, CANCEL_JOB).await?;
    let job = web
        .jobs
        .cancel_job(request(
            pb::CancelJobRequest {
                job_id: id,
                reason: format!("requested by {} from the web dashboard", caller.name()),
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response())
}

#[derive(Deserialize)]
struct WorkersQuery {
    all: Option<String>,
    before: Option<String>,
    partial: Option<String>,
}

async fn workers_page(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<WorkersQuery>,
) -> Result<Response, WebError> {
    let session = web.session(&headers);
    let caller = web.admit(&session, LIST_WORKERS).await?;
    let all = query.all.is_some_and(|v| v == "1");
    let listed = web
        .workers
        .list_workers(request(
            pb::ListWorkersRequest {
                include_finished: all,
                limit: WORKERS_PAGE,
                page_token: query.before.unwrap_or_default(),
            },
            &caller,
        ))
        .await
        .map_err(WebError::from_status)?
        .into_inner();
    let region = html::workers_region(&listed.workers, all, &listed.next_page_token);
    if query.partial.is_some() {
        return Ok(Html(region).into_response());
    }
    let viewer = web.viewer(&caller, &session);
    Ok(page_response(
        "Workers",
        &viewer,
        &html::workers_body(&region, all),
    ))
}

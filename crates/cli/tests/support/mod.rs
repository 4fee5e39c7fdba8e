//! A fake Hodei server for the CLI's tests, spoken to over real gRPC on `127.0.0.1:0`, and a
//! helper that runs the real `hodei` binary against it.
//!
//! Each job follows a *program* of steps (print a line, wait, finish in some state) played by a
//! task of the fake, so tests can produce output mid-run, wait for Ctrl-C's cancellation, or
//! break a log stream on purpose.
//!
//! Every call's `authorization` header is recorded; after [`FakeServer::require_token`] a call
//! without that token is answered `UNAUTHENTICATED` with the real server's messages. Queued
//! jobs keep their spec as received, secrets included, as a careless server would return it:
//! the CLI must show only the names whatever comes back. A fake `TokenService` records what it
//! is asked.

#![allow(dead_code)] // each test binary uses a different part of the fake

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use hodei_proto::v1::{
    self as pb, job_service_server::JobServiceServer,
    log_stream_service_server::LogStreamServiceServer, token_service_server::TokenServiceServer,
    worker_query_service_server::WorkerQueryServiceServer,
};
use tokio::{
    net::TcpListener,
    process::{Child, Command},
    sync::{Notify, mpsc, watch},
    task::JoinHandle,
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// How long any single `hodei` invocation may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// One step of a fake job.
#[derive(Debug, Clone)]
pub enum Step {
    Out(&'static [u8]),
    Err(&'static [u8]),
    Sleep(Duration),
    /// Wait until the test calls [`FakeServer::release`].
    WaitForRelease,
    /// Wait until a client calls `CancelJob`.
    WaitForCancel,
    Finish {
        state: pb::JobState,
        exit_code: Option<i32>,
        reason: &'static str,
    },
}

pub fn exits(code: i32) -> Step {
    Step::Finish {
        state: if code == 0 {
            pb::JobState::Succeeded
        } else {
            pb::JobState::Failed
        },
        exit_code: Some(code),
        reason: "",
    }
}

/// Faults the fake injects into log streams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The first `SubscribeLogs` of each job fails with `Unavailable` after this many lines.
    pub break_first_stream_after: Option<usize>,
    /// Resubscriptions start this many lines before the requested sequence, as an
    /// at-least-once server might; the client must drop the repeats.
    pub resend_overlap: u64,
    /// Every `SubscribeLogs` after the first of a job fails with `Unavailable`, as while a
    /// server restarts.
    pub refuse_resubscriptions: bool,
    /// The first stream ends normally (no error) where `break_first_stream_after` says, as a
    /// server or proxy closing streams early would.
    pub end_cleanly: bool,
}

#[derive(Default)]
struct Inner {
    jobs: Vec<JobEntry>,
    program: Vec<Step>,
    faults: Faults,
    queued_specs: Vec<pb::JobSpec>,
    subscriptions: Vec<pb::SubscribeLogsRequest>,
    cancels: Vec<pb::CancelJobRequest>,
    list_requests: Vec<pb::ListJobsRequest>,
    worker_requests: Vec<pb::ListWorkersRequest>,
    workers: Vec<pb::Worker>,
    page_size: usize,
    /// The `authorization` header of every call, in order (`None`: absent).
    authorizations: Vec<Option<String>>,
    /// When set, calls without `Bearer <this>` are refused `UNAUTHENTICATED`.
    required_token: Option<String>,
    tokens: Vec<pb::ApiToken>,
    token_requests: Vec<TokenRequest>,
    /// Secrets the fake's TokenService handed out.
    created_secrets: Vec<String>,
}

/// What the fake's TokenService was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenRequest {
    Create(pb::CreateTokenRequest),
    List,
    Revoke(pb::RevokeTokenRequest),
}

/// The principal the fake says a job belongs to when a token is required.
pub const PRINCIPAL: &str = "alice";

struct JobEntry {
    job: pb::Job,
    lines: Vec<pb::LogLine>,
    subscriptions: usize,
    /// Bumped on every change, so followers and programs wake up.
    changed: watch::Sender<u64>,
    cancel_requested: bool,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    release: Arc<Notify>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub url: String,
    shared: Shared,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    /// A plain-HTTP fake whose queued jobs play `program`.
    pub async fn start(program: Vec<Step>) -> Self {
        Self::start_with(program, None).await
    }

    /// With `tls`, the fake speaks HTTPS with that certificate and key (PEM).
    pub async fn start_with(program: Vec<Step>, tls: Option<(String, String)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Shared::default();
        {
            let mut inner = shared.inner.lock().unwrap();
            inner.program = program;
            inner.page_size = 2;
        }
        let mut builder = tonic::transport::Server::builder();
        let url = match &tls {
            Some((cert, key)) => {
                let identity = tonic::transport::Identity::from_pem(cert, key);
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .expect("tls config");
                format!("https://localhost:{}", addr.port())
            }
            None => format!("http://{addr}"),
        };
        let check = {
            let shared = shared.clone();
            move |request: Request<()>| shared.authenticate(request)
        };
        let router = builder
            .add_service(JobServiceServer::with_interceptor(
                shared.clone(),
                check.clone(),
            ))
            .add_service(LogStreamServiceServer::with_interceptor(
                shared.clone(),
                check.clone(),
            ))
            .add_service(WorkerQueryServiceServer::with_interceptor(
                shared.clone(),
                check.clone(),
            ))
            .add_service(TokenServiceServer::with_interceptor(shared.clone(), check));
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("fake server");
        });
        Self {
            addr,
            url,
            shared,
            task,
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.inner.lock().unwrap().faults = faults;
    }

    /// From now on, calls without `authorization: Bearer <token>` are refused as the real
    /// server refuses them.
    pub fn require_token(&self, token: &str) {
        self.shared.inner.lock().unwrap().required_token = Some(token.to_owned());
    }

    /// The `authorization` header of every call so far (`None`: the call had none).
    pub fn authorizations(&self) -> Vec<Option<String>> {
        self.shared.inner.lock().unwrap().authorizations.clone()
    }

    pub fn set_tokens(&self, tokens: Vec<pb::ApiToken>) {
        self.shared.inner.lock().unwrap().tokens = tokens;
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.shared.inner.lock().unwrap().token_requests.clone()
    }

    /// The secrets `CreateToken` answered with, in order.
    pub fn created_secrets(&self) -> Vec<String> {
        self.shared.inner.lock().unwrap().created_secrets.clone()
    }

    pub fn set_workers(&self, workers: Vec<pb::Worker>) {
        self.shared.inner.lock().unwrap().workers = workers;
    }

    /// Creates a job directly (as another client would have) and starts its program.
    pub fn add_job(&self, command: &str, program: Vec<Step>) -> String {
        let spec = pb::JobSpec {
            command: command.to_owned(),
            ..Default::default()
        };
        self.shared.create_job(spec, program).id
    }

    /// Lets every program waiting at [`Step::WaitForRelease`] go on.
    pub fn release(&self) {
        self.shared.release.notify_waiters();
    }

    pub fn queued_specs(&self) -> Vec<pb::JobSpec> {
        self.shared.inner.lock().unwrap().queued_specs.clone()
    }

    pub fn subscriptions(&self) -> Vec<pb::SubscribeLogsRequest> {
        self.shared.inner.lock().unwrap().subscriptions.clone()
    }

    pub fn cancels(&self) -> Vec<pb::CancelJobRequest> {
        self.shared.inner.lock().unwrap().cancels.clone()
    }

    pub fn list_requests(&self) -> Vec<pb::ListJobsRequest> {
        self.shared.inner.lock().unwrap().list_requests.clone()
    }

    pub fn worker_requests(&self) -> Vec<pb::ListWorkersRequest> {
        self.shared.inner.lock().unwrap().worker_requests.clone()
    }

    pub fn job(&self, id: &str) -> Option<pb::Job> {
        let inner = self.shared.inner.lock().unwrap();
        inner
            .jobs
            .iter()
            .find(|e| e.job.id == id)
            .map(|e| e.job.clone())
    }

    /// Waits (up to [`DEADLINE`]) until job `id` and its output satisfy `done`; `what` names the
    /// condition for the failure message.
    pub async fn wait_until_job(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&pb::Job, &[pb::LogLine]) -> bool,
    ) {
        let done = &done;
        hodei_testkit::wait_for(&format!("job {id} {what}"), DEADLINE, || async move {
            let inner = self.shared.inner.lock().unwrap();
            let entry = inner.jobs.iter().find(|e| e.job.id == id);
            Ok(match entry {
                Some(entry) if done(&entry.job, &entry.lines) => hodei_testkit::Probe::Ready(()),
                Some(entry) => hodei_testkit::Probe::Pending(format!(
                    "state {}, {} lines",
                    entry.job.state,
                    entry.lines.len()
                )),
                None => hodei_testkit::Probe::Pending("no such job".into()),
            })
        })
        .await
        .expect("the fake's job reaches the awaited point");
    }

    /// `hodei --server <fake> ARGS...` with piped stdout and stderr.
    pub fn hodei(&self, args: &[&str]) -> Command {
        hodei(&self.url, args)
    }
}

/// `hodei --server URL ARGS...` with piped stdout and stderr, without the settings of whoever
/// runs the tests (see [`isolated`]).
pub fn hodei(url: &str, args: &[&str]) -> Command {
    let mut command = isolated();
    command.arg("--server").arg(url).args(args);
    command
}

/// The `hodei` binary with no `HODEI_*` variable from the environment of whoever runs the tests
/// and a config directory that does not exist, so that their own config file is never read.
pub fn isolated() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hodei"));
    for name in [
        "HODEI_SERVER",
        "HODEI_TLS_CA",
        "HODEI_API_TOKEN",
        "HODEI_CONFIG",
    ] {
        command.env_remove(name);
    }
    command
        .env("XDG_CONFIG_HOME", "/nonexistent/hodei-cli-tests")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// What a finished `hodei` process left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Outcome {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs the command to completion within [`DEADLINE`].
pub async fn finish(mut command: Command) -> Outcome {
    let child = command.spawn().expect("spawn hodei");
    wait(child).await
}

pub async fn wait(child: Child) -> Outcome {
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("hodei did not finish in time")
        .expect("wait for hodei");
    Outcome {
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn now() -> Option<hodei_proto::Timestamp> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Some(hodei_proto::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    })
}

impl Shared {
    /// Records the call's `authorization` header and, when a token is required, refuses a call
    /// without it with the real server's messages.
    fn authenticate(&self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let mut inner = self.inner.lock().unwrap();
        inner.authorizations.push(header.clone());
        let Some(required) = &inner.required_token else {
            return Ok(request);
        };
        match header {
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <API token>`: create a token with `hodei tokens \
                 create` (or `hodei-server tokens create` on the server) and give it to the \
                 client in HODEI_API_TOKEN",
            )),
            Some(header) if header == format!("Bearer {required}") => Ok(request),
            Some(_) => Err(Status::unauthenticated("unknown API token")),
        }
    }

    fn create_job(&self, spec: pb::JobSpec, program: Vec<Step>) -> pb::Job {
        let mut inner = self.inner.lock().unwrap();
        let id = format!("job-{}", inner.jobs.len() + 1);
        let mut secret_names: Vec<String> = spec.secrets.keys().cloned().collect();
        secret_names.sort();
        let owner = if inner.required_token.is_some() {
            PRINCIPAL.to_owned()
        } else {
            String::new()
        };
        let job = pb::Job {
            id: id.clone(),
            owner,
            secret_names,
            spec: Some(spec),
            state: pb::JobState::Running as i32,
            attempts: 1,
            worker_id: "worker-1".to_owned(),
            created_at: now(),
            started_at: now(),
            ..Default::default()
        };
        let (changed, _) = watch::channel(0);
        inner.jobs.push(JobEntry {
            job: job.clone(),
            lines: Vec::new(),
            subscriptions: 0,
            changed,
            cancel_requested: false,
        });
        drop(inner);
        tokio::spawn(self.clone().play(id, program));
        job
    }

    /// Changes a job and wakes everyone watching it.
    fn update_job<T>(&self, id: &str, f: impl FnOnce(&mut JobEntry) -> T) -> Option<T> {
        let mut inner = self.inner.lock().unwrap();
        let entry = inner.jobs.iter_mut().find(|e| e.job.id == id)?;
        let result = f(entry);
        entry.changed.send_modify(|v| *v += 1);
        Some(result)
    }

    fn read_job<T>(&self, id: &str, f: impl FnOnce(&JobEntry) -> T) -> Option<T> {
        let inner = self.inner.lock().unwrap();
        inner.jobs.iter().find(|e| e.job.id == id).map(f)
    }

    fn watch(&self, id: &str) -> Option<watch::Receiver<u64>> {
        let inner = self.inner.lock().unwrap();
        inner
            .jobs
            .iter()
            .find(|e| e.job.id == id)
            .map(|e| e.changed.subscribe())
    }

    async fn play(self, id: String, program: Vec<Step>) {
        let Some(mut changes) = self.watch(&id) else {
            return;
        };
        for step in program {
            match step {
                Step::Out(data) => self.emit(&id, pb::LogStream::Stdout, data),
                Step::Err(data) => self.emit(&id, pb::LogStream::Stderr, data),
                Step::Sleep(duration) => tokio::time::sleep(duration).await,
                Step::WaitForRelease => self.release.notified().await,
                Step::WaitForCancel => loop {
                    if self.read_job(&id, |e| e.cancel_requested) == Some(true) {
                        break;
                    }
                    if changes.changed().await.is_err() {
                        return;
                    }
                },
                Step::Finish {
                    state,
                    exit_code,
                    reason,
                } => {
                    self.update_job(&id, |e| {
                        e.job.state = state as i32;
                        e.job.exit_code = exit_code;
                        e.job.reason = reason.to_owned();
                        e.job.finished_at = now();
                    });
                }
            }
        }
    }

    fn emit(&self, id: &str, stream: pb::LogStream, data: &[u8]) {
        self.update_job(id, |e| {
            let sequence = e.lines.len() as u64 + 1;
            e.lines.push(pb::LogLine {
                job_id: e.job.id.clone(),
                sequence,
                stream: stream as i32,
                data: data.to_vec().into(),
                emitted_at: now(),
            });
        });
    }
}

fn is_terminal(state: i32) -> bool {
    state >= pb::JobState::Succeeded as i32
}

#[tonic::async_trait]
impl pb::job_service_server::JobService for Shared {
    async fn queue_job(
        &self,
        request: Request<pb::QueueJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let spec = request.into_inner().spec.unwrap_or_default();
        if spec.command.trim().is_empty() {
            return Err(Status::invalid_argument(
                "invalid job spec: command is empty; give the shell command to run",
            ));
        }
        let program = {
            let mut inner = self.inner.lock().unwrap();
            inner.queued_specs.push(spec.clone());
            inner.program.clone()
        };
        let job = self.create_job(spec, program);
        Ok(Response::new(job))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = request.into_inner().job_id;
        self.read_job(&id, |e| e.job.clone())
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("job {id} not found")))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let mut inner = self.inner.lock().unwrap();
        inner.list_requests.push(request.clone());
        let matching: Vec<pb::Job> = inner
            .jobs
            .iter()
            .rev()
            .map(|e| e.job.clone())
            .filter(|job| request.states.is_empty() || request.states.contains(&job.state))
            .collect();
        let (jobs, next_page_token) = page_of(
            &matching,
            &request.page_token,
            request.limit,
            inner.page_size,
        )?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        self.inner.lock().unwrap().cancels.push(request.clone());
        let id = request.job_id;
        let job = self
            .update_job(&id, |e| {
                if is_terminal(e.job.state) {
                    return Err(Status::failed_precondition(format!(
                        "job {} has already finished",
                        e.job.id
                    )));
                }
                e.cancel_requested = true;
                Ok(e.job.clone())
            })
            .ok_or_else(|| Status::not_found(format!("job {id} not found")))??;
        Ok(Response::new(job))
    }
}

#[tonic::async_trait]
impl pb::log_stream_service_server::LogStreamService for Shared {
    type SubscribeLogsStream = ReceiverStream<Result<pb::LogLine, Status>>;

    async fn subscribe_logs(
        &self,
        request: Request<pb::SubscribeLogsRequest>,
    ) -> Result<Response<Self::SubscribeLogsStream>, Status> {
        let request = request.into_inner();
        let faults = {
            let mut inner = self.inner.lock().unwrap();
            inner.subscriptions.push(request.clone());
            inner.faults
        };
        let id = request.job_id.clone();
        let nth = self
            .update_job(&id, |e| {
                e.subscriptions += 1;
                e.subscriptions
            })
            .ok_or_else(|| Status::not_found(format!("job {id} not found")))?;
        let mut changes = self.watch(&id).expect("job exists");
        if nth > 1 && faults.refuse_resubscriptions {
            return Err(Status::unavailable("the server is restarting (injected)"));
        }
        let break_after = faults.break_first_stream_after.filter(|_| nth == 1);
        let mut next = request.from_sequence.max(1);
        if nth > 1 {
            next = next.saturating_sub(faults.resend_overlap).max(1);
        }
        let (sender, receiver) = mpsc::channel(16);
        let shared = self.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            loop {
                // Mark the current version seen *before* reading, so a line emitted after the
                // read wakes the wait below.
                changes.borrow_and_update();
                let (lines, finished) = shared
                    .read_job(&id, |e| {
                        let lines: Vec<pb::LogLine> = e
                            .lines
                            .iter()
                            .filter(|l| l.sequence >= next)
                            .cloned()
                            .collect();
                        (lines, is_terminal(e.job.state))
                    })
                    .expect("job exists");
                for line in lines {
                    if break_after.is_some_and(|n| sent >= n) {
                        break;
                    }
                    next = line.sequence + 1;
                    sent += 1;
                    if sender.send(Ok(line)).await.is_err() {
                        return;
                    }
                }
                if break_after.is_some_and(|n| sent >= n) {
                    if !faults.end_cleanly {
                        let _ = sender
                            .send(Err(Status::unavailable("connection reset (injected)")))
                            .await;
                    }
                    return;
                }
                if finished || !request.follow {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_logs(
        &self,
        _request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        Err(Status::unimplemented("the CLI does not use GetLogs"))
    }
}

#[tonic::async_trait]
impl pb::worker_query_service_server::WorkerQueryService for Shared {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let request = request.into_inner();
        let mut inner = self.inner.lock().unwrap();
        inner.worker_requests.push(request.clone());
        let matching: Vec<pb::Worker> = inner
            .workers
            .iter()
            .filter(|w| request.include_finished || w.state <= pb::WorkerState::Terminating as i32)
            .cloned()
            .collect();
        let (workers, next_page_token) = page_of(
            &matching,
            &request.page_token,
            request.limit,
            inner.page_size,
        )?;
        Ok(Response::new(pb::ListWorkersResponse {
            workers,
            next_page_token,
        }))
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for Shared {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let request = request.into_inner();
        let secret = hodei_domain::ApiToken::generate().expose().to_owned();
        let mut inner = self.inner.lock().unwrap();
        inner
            .token_requests
            .push(TokenRequest::Create(request.clone()));
        inner.created_secrets.push(secret.clone());
        let token = pb::ApiToken {
            id: format!("tok-{}", inner.tokens.len() + 1),
            name: request.name,
            scopes: request.scopes,
            created_at: now(),
            created_by: PRINCIPAL.to_owned(),
            expires_at: request.ttl_seconds.and_then(|ttl| {
                now().map(|at| hodei_proto::Timestamp {
                    seconds: at.seconds + ttl,
                    nanos: 0,
                })
            }),
            revoked_at: None,
        };
        inner.tokens.push(token.clone());
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(token),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let mut inner = self.inner.lock().unwrap();
        inner.token_requests.push(TokenRequest::List);
        Ok(Response::new(pb::ListTokensResponse {
            tokens: inner.tokens.clone(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        let request = request.into_inner();
        let mut inner = self.inner.lock().unwrap();
        inner
            .token_requests
            .push(TokenRequest::Revoke(request.clone()));
        let token = inner
            .tokens
            .iter_mut()
            .find(|t| t.id == request.id)
            .ok_or_else(|| Status::not_found(format!("no API token {}", request.id)))?;
        token.revoked_at = now();
        Ok(Response::new(token.clone()))
    }
}

/// Env maps as sorted pairs, for assertions.
pub fn sorted(env: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    env.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// A TCP proxy in front of the fake whose [`cut`](CuttableProxy::cut) drops every open
/// connection at once, as a network failure or a server crash does; new connections are still
/// accepted.
pub struct CuttableProxy {
    pub url: String,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CuttableProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (cut, _) = watch::channel(0);
        let cuts = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                    // Both sockets are dropped here, mid-stream.
                });
            }
        });
        Self { url, cut, task }
    }

    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// One page of `items` as the fake serves listings: the token is the offset of the next page,
/// and a page holds at most `page_size` items whatever the limit, so that clients must follow
/// pages.
fn page_of<T: Clone>(
    items: &[T],
    page_token: &str,
    limit: u32,
    page_size: usize,
) -> Result<(Vec<T>, String), Status> {
    let offset: usize = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse()
            .map_err(|_| Status::invalid_argument("bad page token"))?
    };
    let limit = match limit {
        0 => 100,
        n => n as usize,
    };
    let page: Vec<T> = items
        .iter()
        .skip(offset)
        .take(limit.min(page_size))
        .cloned()
        .collect();
    let end = offset + page.len();
    let next = if end < items.len() {
        end.to_string()
    } else {
        String::new()
    };
    Ok((page, next))
}

//! A fake `WorkerAgentService` on `127.0.0.1:0`, spoken to over real gRPC, that hands each
//! worker session to the test so the test plays the server's side message by message.

#![allow(dead_code)] // each test binary uses a different part of the support

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use hodei_proto::v1::{
    self as pb, server_message, worker_agent_service_server::WorkerAgentService,
    worker_agent_service_server::WorkerAgentServiceServer, worker_message::Msg,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// Shaped like a real one-time token (64 hex digits), so a provider's `OneTimeToken` can hold it.
pub const TOKEN: &str = "70ce7e5c0ffee70ce7e5c0ffee70ce7e5c0ffee70ce7e5c0ffee70ce7e5c0ffe";
/// What `Register` answers: a session credential is 64 hex digits.
pub const SESSION_TOKEN: &str = "5e5510c0ffee5e5510c0ffee5e5510c0ffee5e5510c0ffee5e5510c0ffee5e55";
/// Job ids the tests assign; the contract wants UUIDs.
pub const JOB_1: &str = "0192f0c4-8a51-7c3e-9f6e-000000000001";
pub const FIRST: &str = "0192f0c4-8a51-7c3e-9f6e-00000000000a";
pub const SECOND: &str = "0192f0c4-8a51-7c3e-9f6e-00000000000b";
/// The timeout of an assignment when the test does not care: longer than any test.
pub const NO_TEST_REACHES: u64 = 3600;
pub const WORKER_ID: &str = "worker-under-test";
pub const HEARTBEAT_MS: u32 = 200;
/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Default)]
struct Inner {
    registrations: Vec<pb::RegisterRequest>,
    /// Refuse every further session, as a server that declared the worker lost does.
    refuse_sessions: bool,
}

#[derive(Clone)]
struct Fake {
    inner: Arc<Mutex<Inner>>,
    sessions: mpsc::UnboundedSender<FakeSession>,
}

pub struct FakeServer {
    pub addr: SocketAddr,
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    sessions: mpsc::UnboundedReceiver<FakeSession>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, None).await
    }

    /// On a given listener (to appear late on a known port), optionally with TLS (cert, key).
    pub async fn serve(listener: TcpListener, tls: Option<(String, String)>) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let inner = Arc::new(Mutex::new(Inner::default()));
        let (sessions_tx, sessions) = mpsc::unbounded_channel();
        let fake = Fake {
            inner: inner.clone(),
            sessions: sessions_tx,
        };
        let mut builder = tonic::transport::Server::builder();
        let url = match tls {
            Some((cert, key)) => {
                let identity = tonic::transport::Identity::from_pem(cert, key);
                builder = builder
                    .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                    .expect("tls config");
                format!("https://localhost:{}", addr.port())
            }
            None => format!("http://{addr}"),
        };
        let router = builder.add_service(WorkerAgentServiceServer::new(fake));
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("fake server");
        });
        Self {
            addr,
            url,
            inner,
            sessions,
            task,
        }
    }

    pub fn registrations(&self) -> Vec<pb::RegisterRequest> {
        self.inner.lock().unwrap().registrations.clone()
    }

    /// From now on, `Connect` answers `UNAUTHENTICATED` (the credential no longer resolves).
    pub fn refuse_sessions(&self) {
        self.inner.lock().unwrap().refuse_sessions = true;
    }

    /// The next worker session, its first message not yet read.
    pub async fn raw_session(&mut self) -> FakeSession {
        tokio::time::timeout(DEADLINE, self.sessions.recv())
            .await
            .expect("a worker connects in time")
            .expect("fake server running")
    }

    /// The next worker session, after checking that its first message is `ready`.
    pub async fn session(&mut self) -> FakeSession {
        let mut session = self.raw_session().await;
        match session.recv().await {
            Some(Msg::Ready(_)) => session,
            other => panic!("the first message of a session must be ready, got {other:?}"),
        }
    }
}

#[tonic::async_trait]
impl WorkerAgentService for Fake {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        self.inner
            .lock()
            .unwrap()
            .registrations
            .push(request.clone());
        if request.token != TOKEN {
            return Err(Status::unauthenticated("token already used"));
        }
        Ok(Response::new(pb::RegisterResponse {
            session_token: SESSION_TOKEN.into(),
            heartbeat_interval_ms: HEARTBEAT_MS,
            // As a server that predates reconnection: the worker keeps its own grace.
            reconnect_grace_ms: 0,
        }))
    }

    type ConnectStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        if self.inner.lock().unwrap().refuse_sessions {
            return Err(Status::unauthenticated("unknown or expired session"));
        }
        if authorization.as_deref() != Some(&format!("Bearer {SESSION_TOKEN}")) {
            return Err(Status::unauthenticated(format!(
                "bad authorization {authorization:?}"
            )));
        }
        let (outbound, receiver) = mpsc::channel(16);
        let session = FakeSession {
            inbound: Some(request.into_inner()),
            outbound: Some(outbound),
        };
        self.sessions
            .send(session)
            .map_err(|_| Status::unavailable("test gone"))?;
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// The server's side of one worker session.
pub struct FakeSession {
    inbound: Option<Streaming<pb::WorkerMessage>>,
    outbound: Option<mpsc::Sender<Result<pb::ServerMessage, Status>>>,
}

impl FakeSession {
    /// The worker's next message; `None` once the worker has closed its side.
    pub async fn recv(&mut self) -> Option<Msg> {
        let inbound = self.inbound.as_mut().expect("inbound open");
        match tokio::time::timeout(DEADLINE, inbound.message()).await {
            Ok(Ok(Some(message))) => Some(message.msg.expect("a message with content")),
            Ok(Ok(None)) => None,
            Ok(Err(status)) => panic!("worker stream failed: {status}"),
            Err(_) => panic!("no message from the worker within {DEADLINE:?}"),
        }
    }

    /// The worker's next message that is not a heartbeat.
    pub async fn recv_skipping_heartbeats(&mut self) -> Option<Msg> {
        loop {
            match self.recv().await {
                Some(Msg::Heartbeat(_)) => continue,
                other => return other,
            }
        }
    }

    pub async fn send(&self, message: server_message::Msg) {
        self.outbound
            .as_ref()
            .expect("outbound open")
            .send(Ok(pb::ServerMessage { msg: Some(message) }))
            .await
            .expect("worker still connected");
    }

    pub async fn assign(&self, job_id: &str, command: &str) {
        self.assign_with(job_id, command, NO_TEST_REACHES, 1000)
            .await;
    }

    pub async fn assign_with(
        &self,
        job_id: &str,
        command: &str,
        timeout_seconds: u64,
        kill_grace_ms: u32,
    ) {
        self.send(server_message::Msg::Assign(pb::AssignJob {
            job_id: job_id.into(),
            attempt: 1,
            command: command.into(),
            env: [("JOB_VAR".to_string(), "from-the-job".to_string())].into(),
            timeout_seconds,
            kill_grace_ms,
            secrets: Default::default(),
            first_sequence: 0,
        }))
        .await;
    }

    /// Assigns attempt 1 of `job_id` as a server that lets the worker number its lines.
    pub async fn assign_numbered(&self, job_id: &str, command: &str, first_sequence: u64) {
        self.send(server_message::Msg::Assign(pb::AssignJob {
            job_id: job_id.into(),
            attempt: 1,
            command: command.into(),
            env: Default::default(),
            timeout_seconds: NO_TEST_REACHES,
            kill_grace_ms: 1000,
            secrets: Default::default(),
            first_sequence,
        }))
        .await;
    }

    /// `SessionInfo`, as a server that stores output idempotently and acknowledges it.
    pub async fn info(&self, persisted_sequence: u64) {
        self.send(server_message::Msg::Info(pb::SessionInfo {
            server_id: "fake".into(),
            worker_addresses: Vec::new(),
            persisted_sequence,
        }))
        .await;
    }

    pub async fn recorded(&self, job_id: &str) {
        self.send(server_message::Msg::JobRecorded(pb::JobRecorded {
            job_id: job_id.into(),
        }))
        .await;
    }

    pub async fn ack(&self, job_id: &str, persisted_sequence: u64) {
        self.send(server_message::Msg::LogAck(pb::LogAck {
            job_id: job_id.into(),
            persisted_sequence,
        }))
        .await;
    }

    pub async fn cancel(&self, job_id: &str, reason: &str) {
        self.send(server_message::Msg::Cancel(pb::CancelJob {
            job_id: job_id.into(),
            reason: reason.into(),
        }))
        .await;
    }

    pub async fn shutdown(&self, reason: &str, now: bool) {
        self.send(server_message::Msg::Shutdown(pb::Shutdown {
            reason: reason.into(),
            now,
        }))
        .await;
    }

    /// Ends the server's side of the stream, as a server that drops the worker does.
    pub fn end_stream(&mut self) {
        self.outbound = None;
    }

    /// Ends the server's side with an error status.
    pub async fn fail_stream(&mut self, status: Status) {
        if let Some(outbound) = self.outbound.take() {
            let _ = outbound.send(Err(status)).await;
        }
    }

    /// Collects everything up to and including the job's `JobFinished`: its start, the lines
    /// of each stream, and the report.
    pub async fn job_until_finished(&mut self) -> JobRecord {
        let mut record = JobRecord::default();
        loop {
            match self.recv().await {
                Some(Msg::Heartbeat(beat)) => record.heartbeats.push(beat.running_job_id),
                Some(Msg::JobStarted(started)) => record.started = Some(started),
                Some(Msg::Logs(batch)) => {
                    record.batches += 1;
                    for chunk in batch.lines {
                        record.lines.push((chunk.stream, chunk.data.to_vec()));
                    }
                }
                Some(Msg::JobFinished(finished)) => {
                    record.finished = Some(finished);
                    return record;
                }
                Some(other) => panic!("unexpected message during a job: {other:?}"),
                None => panic!("worker closed its stream before reporting the job"),
            }
        }
    }

    /// Waits until the worker closes its side, then closes the server's side.
    pub async fn expect_close(&mut self) {
        loop {
            match self.recv().await {
                None => break,
                Some(Msg::Heartbeat(_)) => continue,
                Some(other) => panic!("expected the worker to close, got {other:?}"),
            }
        }
        self.outbound = None;
    }
}

#[derive(Debug, Default)]
pub struct JobRecord {
    pub started: Option<pb::JobStarted>,
    pub lines: Vec<(i32, Vec<u8>)>,
    pub batches: usize,
    pub heartbeats: Vec<String>,
    pub finished: Option<pb::JobFinished>,
}

impl JobRecord {
    pub fn stdout(&self) -> Vec<String> {
        self.stream(pb::LogStream::Stdout)
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stream(pb::LogStream::Stderr)
    }

    fn stream(&self, stream: pb::LogStream) -> Vec<String> {
        self.lines
            .iter()
            .filter(|(s, _)| *s == stream as i32)
            .map(|(_, data)| String::from_utf8_lossy(data).into_owned())
            .collect()
    }

    pub fn finished(&self) -> &pb::JobFinished {
        self.finished.as_ref().expect("job finished")
    }

    pub fn outcome(&self) -> pb::JobOutcome {
        pb::JobOutcome::try_from(self.finished().outcome).expect("known outcome")
    }

    pub fn pid(&self) -> u32 {
        self.started.as_ref().expect("job started").pid
    }
}

/// Processes of group `pgid` still alive (zombies excluded), after giving signalled ones up to
/// a second to die.
pub async fn survivors_of_group(pgid: u32) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        let alive = hodei_testkit::process::live_processes_in_group(pgid);
        if alive.is_empty() || tokio::time::Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

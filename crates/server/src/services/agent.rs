//! `WorkerAgentService`: registration with the one-time token, then the worker's session.

use std::pin::Pin;

use futures::Stream;
use hodei_domain::{OneTimeToken, SessionCredential, WorkerId};
use hodei_proto::v1::{self as pb, worker_agent_service_server::WorkerAgentService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    commands::SessionCommand, lifecycle::Lifecycle, registry::AttachError, session::Session,
};

pub struct AgentService {
    lifecycle: Lifecycle,
}

impl AgentService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }
}

/// Messages buffered towards one worker.
const OUTBOUND_CAPACITY: usize = 32;

type ServerStream = Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerAgentService for AgentService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let request = request.into_inner();
        if request.token.is_empty() {
            return Err(Status::unauthenticated("missing registration token"));
        }
        let token = OneTimeToken::parse(&request.token)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let worker: WorkerId = request
            .worker_id
            .parse()
            .map_err(|e: hodei_domain::IdParseError| Status::unauthenticated(e.to_string()))?;

        let session = SessionCredential::generate();
        let outcome = self
            .lifecycle
            .register(worker, &token, &session)
            .await
            .map_err(|e| Status::unavailable(format!("cannot register now: {e}")))?;
        if let Err(rejection) = outcome {
            tracing::warn!(%worker, %rejection, "registration refused");
            return Err(Status::unauthenticated(rejection.to_string()));
        }
        tracing::info!(%worker, agent_version = request.agent_version, hostname = request.hostname, "worker registered");
        Ok(Response::new(pb::RegisterResponse {
            session_token: session.expose().to_string(),
            heartbeat_interval_ms: u32::try_from(
                self.lifecycle
                    .core()
                    .settings
                    .heartbeat_interval
                    .as_millis(),
            )
            .unwrap_or(u32::MAX),
        }))
    }

    type ConnectStream = ServerStream;

    async fn connect(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let session = bearer_token(&request)?;
        let worker = self
            .lifecycle
            .core()
            .store
            .worker_for_session(session.hash())
            .await
            .map_err(|e| Status::unavailable(format!("cannot check the session now: {e}")))?
            .ok_or_else(|| Status::unauthenticated("unknown or expired session"))?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel::<SessionCommand>();
        let bound_job = self
            .lifecycle
            .attach(worker, commands_tx)
            .map_err(|e| match e {
                AttachError::Unknown => {
                    Status::failed_precondition("this server does not manage that worker any more")
                }
                AttachError::AlreadyConnected => {
                    Status::already_exists("worker already has an open session")
                }
                AttachError::Retiring => Status::failed_precondition("worker is being retired"),
            })?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let session = Session::new(self.lifecycle.clone(), worker, out_tx);
        self.lifecycle.spawn_session(
            worker,
            session.run(request.into_inner(), commands_rx, bound_job),
        );
        tracing::info!(%worker, "worker session opened");
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

fn bearer_token<T>(request: &Request<T>) -> Result<SessionCredential, Status> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Status::unauthenticated("missing `authorization: Bearer <session token>`")
    })?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <session token>`"))?;
    SessionCredential::parse(token).map_err(|e| Status::unauthenticated(format!("session {e}")))
}

//! `WorkerAgentService`: registration with the one-time token, then the worker's session.

use std::pin::Pin;

use futures::Stream;
use hodei_domain::{OneTimeToken, SessionCredential, WorkerId};
use hodei_proto::v1::{self as pb, worker_agent_service_server::WorkerAgentService};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    commands::SessionCommand,
    lifecycle::Lifecycle,
    registry::{AttachError, Phase},
    session::Session,
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
            reconnect_grace_ms: u32::try_from(
                self.lifecycle.core().settings.reconnect_grace.as_millis(),
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
        // A previous stream of this worker that this process has not seen end yet: the worker
        // retries shortly (it opens a stream only after its previous one broke).
        if let Some(phase) = self.lifecycle.core().registry.phase(worker) {
            match phase {
                Phase::Registered { .. } => {}
                Phase::Retiring => {
                    return Err(Status::failed_precondition("worker is being retired"));
                }
                Phase::Provisioning { .. } => {
                    return Err(Status::failed_precondition(
                        "worker has not finished registering",
                    ));
                }
                _ => {
                    return Err(Status::unavailable(
                        "the worker's previous session is still closing; retry",
                    ));
                }
            }
        }
        let attached = self
            .lifecycle
            .attach_session(worker)
            .await
            .map_err(|e| Status::unavailable(format!("cannot attach the session now: {e}")))?
            .ok_or_else(|| Status::unauthenticated("unknown or expired session"))?;
        let (commands_tx, commands_rx) = mpsc::unbounded_channel::<SessionCommand>();
        let (bound_job, adopted) = match self.lifecycle.attach(worker, commands_tx.clone()) {
            Ok(bound_job) => (bound_job, false),
            // Not provisioned by this process, or its stream broke before: adopted.
            Err(AttachError::Unknown) => {
                self.lifecycle
                    .adopt(worker, commands_tx)
                    .map_err(attach_error)?;
                (None, true)
            }
            Err(e) => return Err(attach_error(e)),
        };
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let session = Session::new(
            self.lifecycle.clone(),
            worker,
            out_tx,
            attached.epoch,
            attached.jobs_run,
            adopted,
        );
        self.lifecycle.spawn_session(
            worker,
            session.run(request.into_inner(), commands_rx, bound_job),
        );
        tracing::info!(%worker, "worker session opened");
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

fn attach_error(e: AttachError) -> Status {
    match e {
        AttachError::Unknown => Status::failed_precondition("worker has not finished registering"),
        AttachError::AlreadyConnected => {
            Status::unavailable("the worker's previous session is still closing; retry")
        }
        AttachError::Retiring => Status::failed_precondition("worker is being retired"),
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

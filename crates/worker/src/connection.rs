//! Reaching the server: the gRPC channel, `Register` with retries, and opening the session.
//!
//! A Pod may start before its network works, so both steps are retried with backoff while the
//! server cannot be reached, until `HODEI_REGISTER_TIMEOUT_SECS` has passed. A gRPC status the
//! server itself sent (say `Unauthenticated` for a replayed token) is an answer, not an outage:
//! it ends the worker at once.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use hodei_domain::SessionCredential;
use hodei_proto::v1::{
    RegisterRequest, ServerMessage, WorkerMessage,
    worker_agent_service_client::WorkerAgentServiceClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Status, Streaming,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    config::{Config, TlsCa},
    error::{WorkerError, root_cause},
    heartbeat,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of one attempt, covering TLS and HTTP/2 handshakes with a server that accepts
/// connections but never answers.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// HTTP/2 pings notice a silently dead connection (a vanished node) within about 30 s.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(250);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
/// Messages queued towards the server. Small on purpose: a log batch may be ~1 MiB, and a full
/// queue is what makes the job's output readers wait when the network or the server is slow.
const OUTBOUND_CAPACITY: usize = 4;

pub type AgentClient = WorkerAgentServiceClient<Channel>;

/// What `Register` gave this worker.
#[derive(Debug, Clone)]
pub struct Registration {
    pub session_credential: SessionCredential,
    pub heartbeat_interval: Duration,
    /// The server's reconnect grace, if it has one (it predates reconnection otherwise).
    pub reconnect_grace: Option<Duration>,
}

/// The open session: messages to the server are sent into `outbound` (closing it by dropping
/// every sender ends the worker's half of the stream); the server's messages arrive on `inbound`.
pub struct SessionStreams {
    pub outbound: mpsc::Sender<WorkerMessage>,
    pub inbound: Streaming<ServerMessage>,
}

/// The endpoint for `HODEI_SERVER`: timeouts, keep-alives, and TLS for `https://`.
pub fn endpoint(config: &Config) -> Result<Endpoint, WorkerError> {
    if !config.uses_tls()
        && let Some(ca) = &config.tls_ca
    {
        tracing::warn!(
            ca = ca.source,
            "a CA is configured but the server address is http://; the CA is not used"
        );
    }
    endpoint_for(&config.server, config.tls_ca.as_ref())
        .map_err(|reason| WorkerError::Config(invalid_server(config, reason)))
}

/// The endpoint for `address` (`HODEI_SERVER`, or another server of the instance a server told
/// this worker about), trusting `tls_ca` (or the system's roots) for `https://`. `Err`: why the
/// address is unusable.
pub fn endpoint_for(address: &str, tls_ca: Option<&TlsCa>) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(address.to_string())
        .map_err(|err| root_cause(&err))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(TCP_KEEPALIVE))
        .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if !address.starts_with("https://") {
        return Ok(endpoint);
    }
    let tls = match tls_ca {
        Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem)),
        None => ClientTlsConfig::new().with_native_roots(),
    };
    endpoint.tls_config(tls).map_err(|err| root_cause(&err))
}

fn invalid_server(config: &Config, reason: String) -> crate::config::ConfigError {
    crate::config::ConfigError::InvalidServer {
        value: config.server.clone(),
        reason,
    }
}

/// Connects and exchanges the one-time token for a session, retrying while the server cannot
/// be reached until `deadline`.
pub async fn register(
    config: &Config,
    endpoint: &Endpoint,
    deadline: Instant,
) -> Result<(AgentClient, Registration), WorkerError> {
    let request = RegisterRequest {
        worker_id: config.worker_id.clone(),
        token: config.token.expose().to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: hostname(),
    };
    retrying(&config.server, "registration", deadline, || {
        let request = request.clone();
        async move {
            let channel = endpoint
                .connect()
                .await
                .map_err(|err| Failure::Retry(root_cause(&err)))?;
            let mut client = WorkerAgentServiceClient::new(channel);
            let response = client.register(request).await.map_err(Failure::from)?;
            let response = response.into_inner();
            let session_credential = SessionCredential::parse(&response.session_token)
                .map_err(|err| Failure::Malformed(format!("its session credential: {err}")))?;
            Ok((
                client,
                Registration {
                    session_credential,
                    heartbeat_interval: heartbeat::interval_from_ms(response.heartbeat_interval_ms),
                    reconnect_grace: (response.reconnect_grace_ms > 0)
                        .then(|| Duration::from_millis(u64::from(response.reconnect_grace_ms))),
                },
            ))
        }
    })
    .await
}

fn authorization(credential: &SessionCredential) -> Result<MetadataValue<Ascii>, WorkerError> {
    MetadataValue::try_from(format!("Bearer {}", credential.expose())).map_err(|_| {
        WorkerError::Refused {
            step: "session",
            code: tonic::Code::InvalidArgument,
            message: "the session token it issued cannot be sent as gRPC metadata".into(),
        }
    })
}

/// One `Connect` call whose first message, `first`, is already queued when the server sees
/// the stream.
async fn connect(
    mut client: AgentClient,
    authorization: MetadataValue<Ascii>,
    first: WorkerMessage,
) -> Result<SessionStreams, Failure> {
    let (outbound, receiver) = mpsc::channel(OUTBOUND_CAPACITY);
    outbound
        .try_send(first)
        .map_err(|_| Failure::Retry("cannot queue the first message".into()))?;
    let mut request = Request::new(ReceiverStream::new(receiver));
    request
        .metadata_mut()
        .insert("authorization", authorization);
    let response = client.connect(request).await.map_err(Failure::from)?;
    Ok(SessionStreams {
        outbound,
        inbound: response.into_inner(),
    })
}

/// Opens the `Connect` stream with the session credential; its first message is `ready`.
pub async fn open_session(
    client: &AgentClient,
    server: &str,
    credential: &SessionCredential,
    deadline: Instant,
) -> Result<SessionStreams, WorkerError> {
    let authorization = authorization(credential)?;
    retrying(server, "session", deadline, || {
        connect(client.clone(), authorization.clone(), heartbeat::ready())
    })
    .await
}

/// A server to try: its address (for logs) and the endpoint that reaches it.
#[derive(Clone)]
pub struct Target {
    pub address: String,
    pub endpoint: Endpoint,
}

/// Re-opens the session after its stream broke, with `first` (a `resume`) as first message,
/// on a fresh connection to each of `targets` in turn (the servers of the instance), retrying
/// every round with backoff and jitter until `deadline`. Every failure is retried — a server
/// may be dead or restarting, another may not know the worker yet, a previous stream may still
/// be closing — except a refused credential (`UNAUTHENTICATED`): the worker was declared lost
/// or retired meanwhile (servers share one database, so one refusal is every server's).
/// Returns the streams and the index of the target that answered.
pub async fn reopen_session(
    targets: &[Target],
    credential: &SessionCredential,
    first: WorkerMessage,
    deadline: Instant,
) -> Result<(SessionStreams, usize), WorkerError> {
    let authorization = authorization(credential)?;
    let started = Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempts = 0usize;
    loop {
        let index = attempts % targets.len().max(1);
        let Some(target) = targets.get(index) else {
            return Err(WorkerError::Unreachable {
                server: "(no server address)".into(),
                waited: started.elapsed(),
                cause: "no server to re-connect to".into(),
            });
        };
        attempts += 1;
        let attempt = async {
            let channel = target
                .endpoint
                .connect()
                .await
                .map_err(|err| Failure::Retry(root_cause(&err)))?;
            connect(
                WorkerAgentServiceClient::new(channel),
                authorization.clone(),
                first.clone(),
            )
            .await
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let budget = ATTEMPT_TIMEOUT
            .min(remaining)
            .max(Duration::from_millis(100));
        let cause = match tokio::time::timeout(budget, attempt).await {
            Ok(Ok(streams)) => {
                tracing::info!(
                    attempts,
                    server = target.address,
                    waited_ms = started.elapsed().as_millis() as u64,
                    "session re-opened"
                );
                return Ok((streams, index));
            }
            Ok(Err(Failure::Fatal(status))) if status.code() == tonic::Code::Unauthenticated => {
                return Err(WorkerError::Refused {
                    step: "resumed session",
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
            Ok(Err(Failure::Fatal(status))) => {
                format!("{} ({:?})", status.message(), status.code())
            }
            Ok(Err(Failure::Retry(cause) | Failure::Malformed(cause))) => cause,
            Err(_) => format!("no answer within {}ms", budget.as_millis()),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(WorkerError::Unreachable {
                server: target.address.clone(),
                waited: started.elapsed(),
                cause,
            });
        }
        // The next server of the round at once; after a whole round, a pause. Many workers
        // lose the same server at once: their attempts are spread (±50 %).
        let round_done = attempts.is_multiple_of(targets.len());
        let pause = if round_done {
            jittered(delay).min(remaining)
        } else {
            Duration::ZERO
        };
        tracing::warn!(
            attempts,
            server = target.address,
            %cause,
            retry_in_ms = pause.as_millis() as u64,
            "cannot re-open the session yet; retrying"
        );
        tokio::time::sleep(pause).await;
        if round_done {
            delay = (delay * 2).min(MAX_RETRY_DELAY);
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1.5).
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    delay.mul_f64(0.5 + (random % 1000) as f64 / 1000.0)
}

/// How one attempt failed.
enum Failure {
    /// The server could not be reached or is (by its own word) unavailable: try again.
    Retry(String),
    /// The server answered no.
    Fatal(Status),
    /// The server answered yes with something this worker cannot use.
    Malformed(String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        // A status with a source was made on this side from an I/O error; one without was
        // sent by the server (or a proxy), and only "unavailable" invites another try.
        if std::error::Error::source(&status).is_some() || status.code() == tonic::Code::Unavailable
        {
            let cause = match std::error::Error::source(&status) {
                Some(source) => root_cause(source),
                None => status.message().to_string(),
            };
            Failure::Retry(cause)
        } else {
            Failure::Fatal(status)
        }
    }
}

async fn retrying<T, F, Fut>(
    server: &str,
    step: &'static str,
    deadline: Instant,
    mut attempt: F,
) -> Result<T, WorkerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let started = Instant::now();
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let budget = ATTEMPT_TIMEOUT.min(remaining).max(CONNECT_TIMEOUT);
        let cause = match tokio::time::timeout(budget, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(Failure::Fatal(status))) => {
                return Err(WorkerError::Refused {
                    step,
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
            Ok(Err(Failure::Malformed(detail))) => {
                return Err(WorkerError::Malformed { step, detail });
            }
            Ok(Err(Failure::Retry(cause))) => cause,
            Err(_) => format!("no answer within {}s", budget.as_secs()),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(WorkerError::Unreachable {
                server: server.to_string(),
                waited: started.elapsed(),
                cause,
            });
        }
        // The last attempt is made at the deadline, not one backoff step before it.
        let pause = delay.min(remaining);
        tracing::warn!(
            step,
            attempts,
            %cause,
            retry_in_ms = pause.as_millis() as u64,
            "cannot reach the server yet; retrying"
        );
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// This machine's (or Pod's) host name, for the server's log; empty if unknown.
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_sent_by_the_server_is_fatal_unless_it_says_unavailable() {
        assert!(matches!(
            Failure::from(Status::unauthenticated("token already used")),
            Failure::Fatal(_)
        ));
        assert!(matches!(
            Failure::from(Status::unavailable("database down")),
            Failure::Retry(cause) if cause == "database down"
        ));
    }

    #[test]
    fn a_status_made_from_a_local_io_error_is_retried() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let status = Status::from_error(Box::new(io));
        assert!(
            matches!(Failure::from(status), Failure::Retry(cause) if cause == "Connection refused")
        );
    }

    #[test]
    fn the_hostname_is_known() {
        assert!(!hostname().is_empty());
    }
}

//! One gRPC channel to the server, and the four clients the CLI uses on it, each adding the
//! API token's `authorization` header to every call ([`Authorization`]).
//!
//! The generated clients have no `connect` constructor (it would collide with the `Connect`
//! RPC), so the channel is built here from an [`Endpoint`]: TLS when the URL is `https://`,
//! a connect timeout, a limit on waiting for an answer (a port that accepts connections but
//! does not speak gRPC), and HTTP/2 keep-alive so a silently dead connection under a long
//! `--follow` is noticed instead of waiting forever. A failed call is told apart here too: the
//! transport's failure reads like the connect failure, `UNAUTHENTICATED` says how to give a
//! token (or which one was refused), the server's other answers keep their message.

use std::{error::Error as _, path::PathBuf, time::Duration};

use hodei_proto::v1::{
    job_service_client::JobServiceClient, log_stream_service_client::LogStreamServiceClient,
    token_service_client::TokenServiceClient,
    worker_query_service_client::WorkerQueryServiceClient,
};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::{
    credentials::{Authorization, Credentials, TokenSource},
    error::{CliError, root_cause},
};

/// The channel every client uses: each call gets the `authorization` header.
pub type AuthChannel = InterceptedService<Channel, Authorization>;

const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a call may wait for the server's answer to begin. For `SubscribeLogs` that is the
/// start of the stream, not its end, so following a long job is not cut short.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub server: String,
    pub tls_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub credentials: Credentials,
    /// The config file a token would be read from, for the advice when none was given.
    pub config_hint: Option<PathBuf>,
}

/// The clients of one connection; cloning shares the connection.
#[derive(Debug, Clone)]
pub struct Clients {
    /// The server URL, for error messages.
    pub server: String,
    pub jobs: JobServiceClient<AuthChannel>,
    pub logs: LogStreamServiceClient<AuthChannel>,
    pub workers: WorkerQueryServiceClient<AuthChannel>,
    pub tokens: TokenServiceClient<AuthChannel>,
    /// Where the token sent came from (`None`: none is sent), for error messages.
    token_source: Option<TokenSource>,
    config_hint: Option<PathBuf>,
}

impl Clients {
    /// Connects eagerly, so that an unreachable server is reported before anything else.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, CliError> {
        let endpoint = endpoint(options)?;
        let unreachable = |cause: String| CliError::Unreachable {
            url: options.server.clone(),
            cause,
        };
        // The endpoint's timeout covers the TCP connect; this one also covers the TLS and HTTP/2
        // handshakes with a server that accepts but never answers.
        let channel = tokio::time::timeout(options.connect_timeout * 2, endpoint.connect())
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer within {}s",
                    (options.connect_timeout * 2).as_secs()
                ))
            })?
            .map_err(|err| unreachable(root_cause(&err)))?;
        let auth = options.credentials.authorization();
        Ok(Self {
            server: options.server.clone(),
            jobs: JobServiceClient::with_interceptor(channel.clone(), auth.clone()),
            logs: LogStreamServiceClient::with_interceptor(channel.clone(), auth.clone()),
            workers: WorkerQueryServiceClient::with_interceptor(channel.clone(), auth.clone()),
            tokens: TokenServiceClient::with_interceptor(channel, auth),
            token_source: options.credentials.source().cloned(),
            config_hint: options.config_hint.clone(),
        })
    }

    /// Turns a failed RPC into the error shown to the user.
    pub fn error(&self, status: tonic::Status) -> CliError {
        if status.code() == tonic::Code::Unauthenticated {
            return CliError::Unauthenticated {
                url: self.server.clone(),
                sent: self.token_source.clone(),
                config_hint: self.config_hint.clone(),
                message: status.message().to_owned(),
            };
        }
        error_from_status(&self.server, status)
    }
}

/// An RPC failure: a dropped connection reads like the connect failure, anything else is the
/// server's own message.
fn error_from_status(url: &str, status: tonic::Status) -> CliError {
    if is_answer_timeout(&status) {
        return CliError::Unreachable {
            url: url.to_owned(),
            cause: format!("no answer within {}s", ANSWER_TIMEOUT.as_secs()),
        };
    }
    if is_transport_failure(&status) {
        return CliError::Unreachable {
            url: url.to_owned(),
            cause: root_cause(&status),
        };
    }
    let message = if status.message().is_empty() {
        format!("the server answered {}", status.code().description())
    } else {
        status.message().to_owned()
    };
    CliError::Server {
        code: status.code(),
        message,
    }
}

/// Whether the status was made by the client's transport (connection refused or dropped) rather
/// than sent by the server: tonic attaches the transport error as its source.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.source().is_some()
}

/// Whether the client gave up waiting for the answer ([`ANSWER_TIMEOUT`]).
fn is_answer_timeout(status: &tonic::Status) -> bool {
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = error.source();
    }
    false
}

const PEM_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

fn endpoint(options: &ConnectOptions) -> Result<Endpoint, CliError> {
    let url = options.server.as_str();
    let https = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(CliError::Usage(format!(
            "the server URL {url:?} must start with http:// or https://, e.g. {}",
            crate::args::DEFAULT_SERVER
        )));
    };
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| CliError::Usage(format!("the server URL {url:?} is not valid: {err}")))?
        .connect_timeout(options.connect_timeout)
        .timeout(ANSWER_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);

    match (&options.tls_ca, https) {
        (Some(path), false) => Err(CliError::Usage(format!(
            "--tls-ca {} needs an https:// server URL, not {url}",
            path.display()
        ))),
        (None, false) => Ok(endpoint),
        (ca, true) => {
            let tls = match ca {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|source| CliError::ReadCa {
                        path: path.clone(),
                        source,
                    })?;
                    // Checked here because rustls would only say "no certificates" at connect.
                    if !pem.windows(PEM_MARKER.len()).any(|w| w == PEM_MARKER) {
                        return Err(CliError::ReadCa {
                            path: path.clone(),
                            source: std::io::Error::other(
                                "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                            ),
                        });
                    }
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
                }
                None => ClientTlsConfig::new().with_native_roots(),
            };
            endpoint.tls_config(tls).map_err(|err| {
                CliError::Usage(format!("cannot use TLS for {url}: {}", root_cause(&err)))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EXIT_FAILURE;

    #[test]
    fn a_server_status_keeps_its_message() {
        let err = error_from_status(
            "http://h:1",
            tonic::Status::invalid_argument("invalid job spec: command is empty"),
        );
        assert_eq!(err.to_string(), "invalid job spec: command is empty");
        assert_eq!(err.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn a_status_without_message_still_says_something() {
        let err = error_from_status("http://h:1", tonic::Status::new(tonic::Code::NotFound, ""));
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn a_transport_failure_reads_as_unreachable() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(refused));
        let err = error_from_status("http://h:1", status);
        assert_eq!(
            err.to_string(),
            "cannot reach the Hodei server at http://h:1: Connection refused (is hodei-server \
             running? set --server or HODEI_SERVER)"
        );
    }

    #[test]
    fn an_unavailable_sent_by_the_server_keeps_its_message() {
        let err = error_from_status(
            "http://h:1",
            tonic::Status::unavailable("database unavailable"),
        );
        assert_eq!(err.to_string(), "database unavailable");
    }

    fn options(server: &str, tls_ca: Option<&str>) -> ConnectOptions {
        ConnectOptions {
            server: server.to_owned(),
            tls_ca: tls_ca.map(PathBuf::from),
            connect_timeout: Duration::from_secs(1),
            credentials: Credentials::default(),
            config_hint: None,
        }
    }

    #[test]
    fn a_url_without_scheme_is_a_usage_error() {
        let err = endpoint(&options("127.0.0.1:50051", None)).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{err}");
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn a_ca_with_plain_http_is_a_usage_error() {
        let err = endpoint(&options("http://h:1", Some("/ca.pem"))).unwrap_err();
        assert!(matches!(err, CliError::Usage(_)), "{err}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_before_connecting() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), "not a certificate").expect("write");
        let path = file.path().to_str().expect("utf-8");
        let err = endpoint(&options("https://h:1", Some(path))).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let err = endpoint(&options("https://h:1", Some("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}

//! What can go wrong, worded for the person at the terminal, and the exit code each gets.

use std::{error::Error as _, io, path::PathBuf};

/// Exit code of server-side and connection errors.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of usage errors, as clap uses.
pub const EXIT_USAGE: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach the Hodei server at {url}: {cause} (is hodei-server running? set --server \
         or HODEI_SERVER)"
    )]
    Unreachable { url: String, cause: String },

    /// The server answered with an error status; its message is meant for people.
    #[error("{message}")]
    Server { code: tonic::Code, message: String },

    #[error("cannot read the CA certificate {}: {source}", path.display())]
    ReadCa { path: PathBuf, source: io::Error },

    #[error("{0}")]
    Usage(String),

    #[error(
        "lost the log stream of job {job_id}: {cause}; the job goes on without it, follow it \
         with `hodei jobs logs -f --from {next_sequence} {job_id}`"
    )]
    StreamLost {
        job_id: String,
        next_sequence: u64,
        cause: String,
    },

    #[error("cannot write the output: {0}")]
    Output(#[source] io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }

    /// An RPC failure: a dropped connection reads like the connect failure, anything else is the
    /// server's own message.
    pub fn from_status(url: &str, status: tonic::Status) -> Self {
        if is_answer_timeout(&status) {
            return CliError::Unreachable {
                url: url.to_owned(),
                cause: format!(
                    "no answer within {}s",
                    crate::connection::ANSWER_TIMEOUT.as_secs()
                ),
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
}

/// Whether the status was made by the client's transport (connection refused or dropped) rather
/// than sent by the server: tonic attaches the transport error as its source.
pub fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.source().is_some()
}

/// Whether the client gave up waiting for the answer ([`crate::connection::ANSWER_TIMEOUT`]).
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

/// The innermost cause of an error chain, which is the specific one ("Connection refused (os
/// error 111)") where the outer ones are generic ("transport error").
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    let text = current.to_string();
    if text.is_empty() {
        error.to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_status_keeps_its_message() {
        let err = CliError::from_status(
            "http://h:1",
            tonic::Status::invalid_argument("invalid job spec: command is empty"),
        );
        assert_eq!(err.to_string(), "invalid job spec: command is empty");
        assert_eq!(err.exit_code(), EXIT_FAILURE);
    }

    #[test]
    fn a_status_without_message_still_says_something() {
        let err =
            CliError::from_status("http://h:1", tonic::Status::new(tonic::Code::NotFound, ""));
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn a_transport_failure_reads_as_unreachable() {
        let refused = io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused");
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(refused));
        let err = CliError::from_status("http://h:1", status);
        assert_eq!(
            err.to_string(),
            "cannot reach the Hodei server at http://h:1: Connection refused (is hodei-server \
             running? set --server or HODEI_SERVER)"
        );
    }

    #[test]
    fn an_unavailable_sent_by_the_server_keeps_its_message() {
        let err = CliError::from_status(
            "http://h:1",
            tonic::Status::unavailable("database unavailable"),
        );
        assert_eq!(err.to_string(), "database unavailable");
    }
}

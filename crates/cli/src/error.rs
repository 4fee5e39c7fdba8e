//! What can go wrong, worded for the person at the terminal, and the exit code each gets.

use std::{io, path::PathBuf};

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

    #[error("cannot start: {0}")]
    Start(#[source] io::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
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

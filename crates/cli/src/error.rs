//! What can go wrong, worded for the person at the terminal, and the exit code each gets.

use std::{
    io,
    path::{Path, PathBuf},
};

use crate::credentials::{TOKEN_ENV, TokenSource};

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

    /// The config file is unusable; `problem` says why and never quotes its text.
    #[error("the config file {} is refused: {problem}", path.display())]
    Config { path: PathBuf, problem: String },

    #[error(
        "the API token in {from} is malformed: expected \"hodei_\" and 64 hexadecimal \
         characters, as `hodei tokens create` prints it"
    )]
    MalformedToken { from: TokenSource },

    /// The server answered `UNAUTHENTICATED`: no token was sent, or it refused the one sent.
    #[error("{}", unauthenticated(url, sent.as_ref(), config_hint.as_deref(), message))]
    Unauthenticated {
        url: String,
        /// Where the token sent came from; `None` when none was sent.
        sent: Option<TokenSource>,
        /// The config file the CLI would read a token from, for the advice.
        config_hint: Option<PathBuf>,
        message: String,
    },

    /// A `--secret` whose value cannot be had; never contains a value.
    #[error("{0}")]
    Secret(String),

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

/// What to tell someone the server did not let in: how to give a token, or that the one given
/// was refused and why (the server's reason names the token by name and id, never its text).
fn unauthenticated(
    url: &str,
    sent: Option<&TokenSource>,
    config_hint: Option<&Path>,
    message: &str,
) -> String {
    match sent {
        None => {
            let file = config_hint.map_or_else(
                || "the config file named by HODEI_CONFIG".to_owned(),
                |path| path.display().to_string(),
            );
            format!(
                "the Hodei server at {url} needs an API token and none was given: set \
                 {TOKEN_ENV}, or put `token = \"hodei_…\"` in {file} (chmod 600); an \
                 administrator makes one with `hodei tokens create --name NAME --scope \
                 jobs:submit --scope jobs:read`, and the first one is made on the server's host \
                 with `hodei-server tokens create --name NAME --scopes all`"
            )
        }
        Some(source) => format!(
            "the Hodei server at {url} refused the API token from {source}: {message}; ask an \
             administrator for a valid token (`hodei tokens create`)"
        ),
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

//! Why the worker stops before its work is done, worded for the person reading the Pod's log.

use std::time::Duration;

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot reach the server at {server} (tried for {:.1}s): {cause} \
         (is HODEI_SERVER right, and can this worker reach it over the network?)",
        .waited.as_secs_f64()
    )]
    Unreachable {
        server: String,
        waited: Duration,
        cause: String,
    },
    #[error("the server refused the {step}: {message} ({code:?})")]
    Refused {
        step: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("the server's answer to the {step} is unusable: {detail}")]
    Malformed { step: &'static str, detail: String },
    #[error("lost connection to the server: {0}")]
    LostConnection(String),
    #[error("cannot install the signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl WorkerError {
    /// 2 for a configuration mistake, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            WorkerError::Config(_) => 2,
            _ => 1,
        }
    }
}

/// The innermost cause of an error: the part that says what actually went wrong
/// ("Connection refused" rather than "transport error").
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
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

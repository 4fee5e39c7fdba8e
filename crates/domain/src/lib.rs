//! The vocabulary of Hodei Jobs, free of I/O: what a job is, which states jobs and workers move
//! through, and the rules for one-time worker tokens.
//!
//! Every other crate converts to and from these types at its edge (proto in `hodei-server`, SQL
//! rows in `hodei-store`, Pods and containers in `hodei-providers`).

mod access;
mod ids;
mod job;
mod log;
mod secrets;
mod token;
mod transitions;
mod worker;

pub use access::{
    ApiToken, ApiTokenInfo, MalformedApiToken, Principal, Scope, Scopes, UnknownScope,
};
pub use ids::{IdParseError, JobId, TokenId, WorkerId};
pub use job::{
    Job, JobAttempt, JobSpec, JobSpecError, JobSpecLimits, JobState, Resources, TerminalOutcome,
};
pub use log::{LogLine, LogStreamKind};
pub use secrets::{JobSecrets, MAX_SECRETS, MIN_SECRET_BYTES, SecretError};
pub use token::{MalformedToken, OneTimeToken, SecretHash, SessionCredential};
pub use transitions::{
    JOB_TRANSITIONS, JobStep, JobTransition, WORKER_TRANSITIONS, WorkerStep, WorkerTransition,
};
pub use worker::{Worker, WorkerFailure, WorkerState, image_pull_failure};

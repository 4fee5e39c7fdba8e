//! The contract between the parts of Hodei Jobs, beyond the wire types of `hodei-proto`.
//!
//! The server, the worker agent, the providers and the CLI each depend on this crate for what
//! they must agree on, so that no rule is written twice:
//! - [`env`]: the environment a provider starts a worker with;
//! - [`assignment`]: what a worker is told to run, and its rules (the timeout is always set);
//! - [`convert`]: proto ↔ domain conversions (jobs, states, output, outcomes, workers, times) — the only
//!   place they happen;
//! - [`duration`]: the one grammar for durations people type (`90s`, `5m`, `1h30m`).
//!
//! No I/O and no transport: errors are [`ContractError`]s, which the gRPC edge turns into
//! `INVALID_ARGUMENT` statuses.

pub mod assignment;
pub mod convert;
pub mod duration;
pub mod env;
mod error;

pub use assignment::Assignment;
pub use error::ContractError;

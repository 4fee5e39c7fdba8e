//! Benchmarks of Hodei Jobs on real processes: a private PostgreSQL, one or more release
//! `hodei-server` processes with the local provider, release `hodei-worker`s, and gRPC
//! clients.
//!
//! One module per benchmark; each returns its [`measure::Figure`]s, printed with unit, the ratio
//! to a baseline measured in the same run, and the target. `BENCHMARKS.md` at the
//! repository root records the results and the commands that produced them.

pub mod baseline;
pub mod dispatch;
pub mod footprint;
pub mod harness;
pub mod logs;
pub mod measure;
pub mod provisioning;
pub mod takeover;
pub mod throughput;

//! The harness every Hodei test suite shares.
//!
//! - [`TestDatabase`]: a fresh, empty PostgreSQL database per test — from
//!   `HODEI_TEST_DATABASE_URL`, else a private throw-away server started from the machine's
//!   PostgreSQL binaries, else a testcontainers PostgreSQL when Docker can provide one.
//! - [`wait_for`]: polling with a deadline that, on timeout, says what it waited for and what it
//!   saw last.
//! - [`worker_binary`]: the `hodei-worker` executable the local provider starts.
//! - [`server_process`]: a real `hodei-server` process, its port, its log, its admin token,
//!   stopping and killing it; [`auth`]: clients that send an API token.
//! - [`process`]: children that die with the test, signals, who is alive according to `/proc`.
//! - [`jobs`] and [`log_lines`]: what the end-to-end suites assert about jobs and their output.

pub mod auth;
mod binaries;
pub mod jobs;
pub mod log_lines;
mod postgres;
pub mod process;
pub mod server_process;
mod wait;

pub use binaries::{cli_binary, worker_binary};
pub use postgres::TestDatabase;
pub use wait::{Probe, probe_value, wait_for};

/// Installs a `tracing` subscriber writing to the test's captured output (once per process).
/// `RUST_LOG` filters it; default `info` for hodei crates.
pub fn init_tracing() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,hodei=info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

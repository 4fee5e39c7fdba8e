//! The `hodei` command-line client of Hodei Jobs.
//!
//! `hodei run -- CMD` queues a job and behaves as if the command ran here: its stdout and stderr
//! lines appear on ours as they are produced and the process exits with the job's exit code.
//! `hodei jobs ...` and `hodei workers list` inspect the server; `hodei tokens ...` manages
//! API tokens.
//!
//! Where to start reading: [`args`] (the command line), then [`commands`]; [`credentials`] and
//! [`config_file`] say which API token every call carries; [`secrets`] reads `--secret`
//! values; [`follow`] keeps a log stream going across broken connections; [`output`] is
//! everything printed.

pub mod args;
pub mod commands;
pub mod config_file;
pub mod connection;
pub mod credentials;
pub mod error;
pub mod follow;
pub mod output;
pub mod quote;
pub mod secrets;
pub mod states;
pub mod units;

use std::{
    io::{self, Write},
    process::ExitCode,
};

use clap::Parser as _;

/// Parses the command line, runs the command and reports an error the way a person at the
/// terminal needs it. Usage errors (and `--help`) are clap's, with its exit code 2 (0).
pub fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(error::CliError::Start)
        .and_then(|runtime| runtime.block_on(commands::execute(cli)));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let mut stderr = io::stderr().lock();
            let _ = writeln!(stderr, "error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

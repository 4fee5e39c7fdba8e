//! Everything the CLI prints: tables and detail blocks for people, JSON for scripts, and the
//! job's own log lines.
//!
//! Nothing here uses `println!`: it panics when stdout is a closed pipe (`hodei jobs list |
//! head -1`), and the CLI must not panic. A closed stdout simply ends the output.

pub mod human;
pub mod json;
pub mod log_writer;
pub mod table;
pub mod time;

use std::io::{self, Write};

use serde::Serialize;

use crate::error::CliError;

/// The names of a job's secrets, sorted: `Job.secret_names`, and the keys of `spec.secrets`
/// should a server ever send them. Their values are never printed, whatever the server sends.
pub fn secret_names(job: &hodei_proto::v1::Job) -> Vec<String> {
    let from_spec = job.spec.iter().flat_map(|spec| spec.secrets.keys());
    let names: std::collections::BTreeSet<&String> =
        job.secret_names.iter().chain(from_spec).collect();
    names.into_iter().cloned().collect()
}

/// Writes `text` to stdout and flushes; a closed pipe is not an error.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    ignore_broken_pipe(
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush()),
    )
}

/// `value` as indented JSON followed by a newline.
pub fn print_json(value: &impl Serialize) -> Result<(), CliError> {
    print(&(to_json(value, true)? + "\n"))
}

/// `value` as JSON on one line, for streams of objects (NDJSON).
pub fn print_json_line(value: &impl Serialize) -> Result<(), CliError> {
    print(&(to_json(value, false)? + "\n"))
}

fn to_json(value: &impl Serialize, pretty: bool) -> Result<String, CliError> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    text.map_err(|err| CliError::Output(io::Error::other(err)))
}

/// A message for the person at the terminal, on stderr, prefixed `hodei: `. Failing to write it
/// is ignored: there is nowhere left to report it.
pub fn notice(message: &str) {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "hodei: {message}");
    let _ = stderr.flush();
}

fn ignore_broken_pipe(result: io::Result<()>) -> Result<(), CliError> {
    match result {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(CliError::Output(err)),
        _ => Ok(()),
    }
}

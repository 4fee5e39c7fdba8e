//! Writes a job's log lines as they arrive: stdout lines to stdout, stderr lines to stderr, the
//! exact bytes plus `\n`, flushed line by line so a watching person or a pipe sees them live.

use std::io::{self, Write};

use hodei_proto::v1 as pb;

use super::json::LogLineView;
use crate::{args::OutputFormat, error::CliError};

#[derive(Debug)]
pub struct LogWriter {
    format: OutputFormat,
    stdout_open: bool,
    stderr_open: bool,
}

impl LogWriter {
    pub fn new(format: OutputFormat) -> Self {
        Self {
            format,
            stdout_open: true,
            stderr_open: true,
        }
    }

    /// Writes one line. When a reader closes its end (`| head`), lines for it are dropped from
    /// then on instead of failing: the job's exit code still matters to the caller.
    pub fn write(&mut self, line: &pb::LogLine) -> Result<(), CliError> {
        let to_stderr =
            self.format == OutputFormat::Human && line.stream == pb::LogStream::Stderr as i32;
        let open = if to_stderr {
            &mut self.stderr_open
        } else {
            &mut self.stdout_open
        };
        if !*open {
            return Ok(());
        }
        let result = match self.format {
            OutputFormat::Json => {
                let json = serde_json::to_vec(&LogLineView::from(line))
                    .map_err(|err| CliError::Output(io::Error::other(err)))?;
                write_line(&mut io::stdout().lock(), &json)
            }
            OutputFormat::Human if to_stderr => write_line(&mut io::stderr().lock(), &line.data),
            OutputFormat::Human => write_line(&mut io::stdout().lock(), &line.data),
        };
        match result {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                *open = false;
                Ok(())
            }
            other => other.map_err(CliError::Output),
        }
    }

    /// Whether stdout is still read; `hodei jobs logs -f | head` stops following once it is not.
    pub fn stdout_open(&self) -> bool {
        self.stdout_open
    }
}

fn write_line(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    out.write_all(data)?;
    out.write_all(b"\n")?;
    out.flush()
}

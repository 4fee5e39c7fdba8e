//! Output lines of a job.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::JobId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStreamKind {
    Stdout,
    Stderr,
}

impl LogStreamKind {
    pub const fn as_i16(self) -> i16 {
        match self {
            LogStreamKind::Stdout => 1,
            LogStreamKind::Stderr => 2,
        }
    }

    pub const fn from_i16(value: i16) -> Option<Self> {
        match value {
            1 => Some(LogStreamKind::Stdout),
            2 => Some(LogStreamKind::Stderr),
            _ => None,
        }
    }
}

/// One line of a job's output, with its per-job sequence number (1, 2, 3, ... without gaps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub job_id: JobId,
    pub sequence: u64,
    pub stream: LogStreamKind,
    /// Raw bytes without the newline: programs may print anything, including non-UTF-8.
    /// `Bytes` so that fanning a line out to many subscribers does not copy it.
    pub data: Bytes,
    pub emitted_at: DateTime<Utc>,
}

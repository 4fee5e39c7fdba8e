//! Job output, persisted in batches.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hodei_domain::{JobId, LogLine, LogStreamKind};

use crate::{Store, StoreError};

/// A line to append; the store does not invent sequence numbers, the caller owns them.
#[derive(Debug, Clone)]
pub struct NewLogLine {
    pub sequence: u64,
    pub stream: LogStreamKind,
    pub data: Bytes,
    pub emitted_at: DateTime<Utc>,
}

impl Store {
    /// Appends lines in one statement. A sequence that already exists is an error: the caller
    /// owns the numbering, and a duplicate would mean two writers for one job.
    pub async fn append_logs(&self, job: JobId, lines: &[NewLogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut sequences = Vec::with_capacity(lines.len());
        let mut streams = Vec::with_capacity(lines.len());
        let mut data = Vec::with_capacity(lines.len());
        let mut emitted = Vec::with_capacity(lines.len());
        for line in lines {
            sequences.push(i64::try_from(line.sequence).unwrap_or(i64::MAX));
            streams.push(line.stream.as_i16());
            data.push(line.data.as_ref());
            emitted.push(line.emitted_at);
        }
        sqlx::query(
            "INSERT INTO job_logs (job_id, sequence, stream, data, emitted_at) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::smallint[], $4::bytea[], $5::timestamptz[])",
        )
        .bind(job.as_uuid())
        .bind(&sequences)
        .bind(&streams)
        .bind(&data)
        .bind(&emitted)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Up to `limit` lines with `sequence >= from`, in order, and no more of them than fit in
    /// `max_bytes` of output (always at least one line): a page of long lines must still fit
    /// in one gRPC message, and in memory.
    pub async fn logs(
        &self,
        job: JobId,
        from: u64,
        limit: u32,
        max_bytes: usize,
    ) -> Result<Vec<LogLine>, StoreError> {
        // The limit is applied before the running total, so the total never reads past it.
        let rows: Vec<(i64, i16, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT sequence, stream, data, emitted_at FROM (
                SELECT sequence, stream, data, emitted_at,
                       sum(length(data)) OVER (ORDER BY sequence) - length(data) AS bytes_before
                FROM (SELECT sequence, stream, data, emitted_at FROM job_logs
                      WHERE job_id = $1 AND sequence >= $2 ORDER BY sequence LIMIT $3) first_lines
             ) page
             WHERE bytes_before < $4 ORDER BY sequence",
        )
        .bind(job.as_uuid())
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(sequence, stream, data, emitted_at)| {
                Ok(LogLine {
                    job_id: job,
                    sequence: u64::try_from(sequence)
                        .map_err(|_| StoreError::corrupt("job_logs", "negative sequence"))?,
                    stream: LogStreamKind::from_i16(stream).ok_or_else(|| {
                        StoreError::corrupt("job_logs", format!("unknown stream {stream}"))
                    })?,
                    data: Bytes::from(data),
                    emitted_at,
                })
            })
            .collect()
    }

    /// The highest sequence stored for `job`, 0 when it has no output yet.
    pub async fn last_log_sequence(&self, job: JobId) -> Result<u64, StoreError> {
        let (max,): (Option<i64>,) =
            sqlx::query_as("SELECT max(sequence) FROM job_logs WHERE job_id = $1")
                .bind(job.as_uuid())
                .fetch_one(&self.pool)
                .await?;
        Ok(max.and_then(|m| u64::try_from(m).ok()).unwrap_or(0))
    }
}

//! Job output, persisted in batches.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hodei_domain::{JobId, LogLine, LogStreamKind, WorkerId};

use crate::{Store, StoreError};

/// A line to append; the store does not invent sequence numbers, the caller owns them.
#[derive(Debug, Clone)]
pub struct NewLogLine {
    pub sequence: u64,
    pub stream: LogStreamKind,
    pub data: Bytes,
    pub emitted_at: DateTime<Utc>,
}

/// What [`Store::append_logs_held`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The attempt still holds the job; when false nothing was stored.
    pub held: bool,
    /// Lines actually inserted: fewer than given when some were already stored (re-sent after
    /// a reconnect).
    pub inserted: u64,
}

/// Lines as the columns `UNNEST` takes: sequences, streams, data, emission times.
type Columns<'a> = (Vec<i64>, Vec<i16>, Vec<&'a [u8]>, Vec<DateTime<Utc>>);

fn columns(lines: &[NewLogLine]) -> Columns<'_> {
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
    (sequences, streams, data, emitted)
}

impl Store {
    /// Appends lines of attempt `attempt` of `job`, run by `worker`, in one statement that is
    /// both idempotent and fenced:
    /// - a sequence already stored is skipped (`ON CONFLICT DO NOTHING`): a worker re-sends what
    ///   was not acknowledged when its stream broke, and the same line must be stored once;
    /// - nothing is stored unless the job is still held by that worker in that attempt, and the
    ///   job row is held `FOR SHARE` meanwhile, so a re-queue (an `UPDATE` of the row) waits for
    ///   an insert in flight and the next attempt numbers its lines after every line stored.
    pub async fn append_logs_held(
        &self,
        job: JobId,
        worker: WorkerId,
        attempt: u32,
        lines: &[NewLogLine],
    ) -> Result<Appended, StoreError> {
        let (sequences, streams, data, emitted) = columns(lines);
        let (held, inserted): (i64, i64) = sqlx::query_as(
            "WITH held AS ( \
                 SELECT id FROM jobs \
                 WHERE id = $1 AND worker_id = $6 AND attempts = $7 \
                   AND state IN ('assigned', 'running') \
                 FOR SHARE \
             ), ins AS ( \
                 INSERT INTO job_logs (job_id, sequence, stream, data, emitted_at) \
                 SELECT $1, l.* FROM UNNEST($2::bigint[], $3::smallint[], $4::bytea[], \
                                           $5::timestamptz[]) AS l \
                 WHERE EXISTS (SELECT 1 FROM held) \
                 ON CONFLICT (job_id, sequence) DO NOTHING \
                 RETURNING sequence \
             ) \
             SELECT (SELECT count(*) FROM held), (SELECT count(*) FROM ins)",
        )
        .bind(job.as_uuid())
        .bind(&sequences)
        .bind(&streams)
        .bind(&data)
        .bind(&emitted)
        .bind(worker.as_uuid())
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .fetch_one(&self.pool)
        .await?;
        Ok(Appended {
            held: held > 0,
            inserted: u64::try_from(inserted).unwrap_or(0),
        })
    }

    /// Appends lines in one statement. A sequence that already exists is an error: the caller
    /// owns the numbering, and a duplicate would mean two writers for one job.
    pub async fn append_logs(&self, job: JobId, lines: &[NewLogLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        let (sequences, streams, data, emitted) = columns(lines);
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

//! A session's output ingestion: batches the worker has already sent are merged, numbered,
//! masked (the job's secret values become `***`), stored by one insert, acknowledged to the
//! worker (`LogAck`), and only then published to followers.
//!
//! A worker that resumes numbers its own lines (`LogBatch.first_sequence`) and re-sends what was
//! not acknowledged: lines below the next expected sequence are dropped here, and the insert
//! skips any sequence already stored, so every line is stored once. An agent that predates
//! resuming sends 0 and the session numbers its lines, as it always did.

use std::sync::Arc;

use chrono::Utc;
use futures::FutureExt;
use hodei_contract::convert::{datetime, stream_from_proto};
use hodei_domain::LogLine;
use hodei_proto::v1::{self as pb, worker_message};
use hodei_store::NewLogLine;
use tonic::Streaming;

use super::{End, Session};

/// Most lines one `LogBatch` may carry. The agent sends at most 1000; a message packed with
/// tiny lines is refused before it costs a huge insert and a huge fan-out.
pub const MAX_LINES_PER_BATCH: usize = 10_000;
/// Output stored by one INSERT at most: batches the worker has already sent are merged up to
/// these, so inserts grow when the database is the bottleneck and stay small when it is not.
const COALESCE_LINES: usize = 5_000;
const COALESCE_BYTES: usize = 1 << 20;

/// A batch over [`MAX_LINES_PER_BATCH`] is a protocol violation.
fn check_batch(batch: &pb::LogBatch) -> Result<(), End> {
    if batch.lines.len() > MAX_LINES_PER_BATCH {
        return Err(End::Lost(format!(
            "protocol violation: a batch of {} lines (at most {MAX_LINES_PER_BATCH})",
            batch.lines.len()
        )));
    }
    Ok(())
}

impl Session {
    /// Stores and publishes a batch of output, merged with the batches of the same job that
    /// have already arrived behind it (never waiting for more).
    pub(super) async fn on_logs(
        &mut self,
        batch: pb::LogBatch,
        inbound: &mut Streaming<pb::WorkerMessage>,
    ) -> Result<(), End> {
        let worker = self.worker;
        if self.current_for(&batch.job_id).is_none() {
            tracing::warn!(%worker, job = batch.job_id, "output for a job the worker does not hold; dropped");
            return Ok(());
        }
        check_batch(&batch)?;
        let pb::LogBatch {
            job_id,
            lines: mut chunks,
            first_sequence,
        } = batch;
        let mut bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        while chunks.len() < COALESCE_LINES && bytes < COALESCE_BYTES {
            let Some(next) = inbound.message().now_or_never() else {
                break;
            };
            // Only a batch that continues this one is merged.
            let continues = |more: &pb::LogBatch| {
                more.job_id == job_id
                    && (more.first_sequence == 0) == (first_sequence == 0)
                    && (first_sequence == 0
                        || more.first_sequence == first_sequence + chunks.len() as u64)
            };
            match next {
                Ok(Some(pb::WorkerMessage {
                    msg: Some(worker_message::Msg::Logs(more)),
                })) if continues(&more) => {
                    check_batch(&more)?;
                    self.last_seen = std::time::Instant::now();
                    bytes += more.lines.iter().map(|c| c.data.len()).sum::<usize>();
                    chunks.extend(more.lines);
                }
                other => {
                    self.read_ahead = Some(other);
                    break;
                }
            }
        }
        if chunks.is_empty() {
            return Ok(());
        }
        let Some(current) = self.current_for(&job_id) else {
            return Ok(());
        };
        let job = current.job.id;
        let attempt = current.job.attempts;
        let now = Utc::now();
        let first = if first_sequence == 0 {
            current.next_sequence
        } else {
            if first_sequence < current.first_sequence.unwrap_or(1) {
                return Err(End::Lost(format!(
                    "protocol violation: output numbered from {first_sequence}, before the \
                     attempt's first line {}",
                    current.first_sequence.unwrap_or(1)
                )));
            }
            // Lines already stored (re-sent after a reconnect) are dropped.
            let stored = current.next_sequence.saturating_sub(first_sequence);
            let stored = usize::try_from(stored)
                .unwrap_or(usize::MAX)
                .min(chunks.len());
            chunks.drain(..stored);
            let first = first_sequence + stored as u64;
            if first > current.next_sequence {
                // Lines are missing in between: the stream ends (not the worker), and the
                // worker resumes from what is stored, re-sending the missing lines.
                return Err(End::Detached(format!(
                    "output of job {job} skipped from {} to {first}",
                    current.next_sequence
                )));
            }
            first
        };
        if chunks.is_empty() {
            let persisted = current.next_sequence - 1;
            return self.acknowledge(&job_id, persisted).await;
        }
        let lines: Vec<NewLogLine> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| NewLogLine {
                sequence: first + i as u64,
                stream: stream_from_proto(chunk.stream),
                data: current.masker.mask(chunk.data),
                emitted_at: datetime(chunk.emitted_at.as_ref()).unwrap_or(now),
            })
            .collect();
        current.next_sequence = first + lines.len() as u64;
        let persisted = current.next_sequence - 1;
        let core = self.lifecycle.core().clone();
        let stored = core
            .retry_db("storing output", || {
                core.store.append_logs_held(job, worker, attempt, &lines)
            })
            .await;
        match stored {
            Ok(appended) if appended.held => {
                core.metrics.log_lines.inc_by(appended.inserted);
            }
            Ok(_) => {
                // The attempt was re-queued or ended meanwhile: nothing of it may be stored.
                self.current = None;
                let reason = format!("job {job} is no longer held by this worker");
                tracing::warn!(%worker, reason, "output refused");
                return self.retire(&reason, true).await;
            }
            Err(e) => {
                // Losing output silently would be worse than losing the attempt: re-queue it.
                return Err(End::Lost(format!(
                    "cannot persist output of job {job}: {e}"
                )));
            }
        }
        self.acknowledge(&job_id, persisted).await?;
        let published: Arc<[LogLine]> = lines
            .into_iter()
            .map(|line| LogLine {
                job_id: job,
                sequence: line.sequence,
                stream: line.stream,
                data: line.data,
                emitted_at: line.emitted_at,
            })
            .collect();
        core.announcements.stored(job, persisted);
        core.hub.publish(job, published);
        Ok(())
    }

    /// Tells the worker that its lines of `job_id` up to `persisted` are stored.
    async fn acknowledge(&self, job_id: &str, persisted: u64) -> Result<(), End> {
        self.send(pb::server_message::Msg::LogAck(pb::LogAck {
            job_id: job_id.to_string(),
            persisted_sequence: persisted,
        }))
        .await
    }
}

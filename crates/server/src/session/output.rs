//! A session's output ingestion: batches the worker has already sent are merged, numbered,
//! stored by one insert, and only then published to followers.

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
        } = batch;
        let mut bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        while chunks.len() < COALESCE_LINES && bytes < COALESCE_BYTES {
            let Some(next) = inbound.message().now_or_never() else {
                break;
            };
            match next {
                Ok(Some(pb::WorkerMessage {
                    msg: Some(worker_message::Msg::Logs(more)),
                })) if more.job_id == job_id => {
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
        let now = Utc::now();
        let first = current.next_sequence;
        let lines: Vec<NewLogLine> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, chunk)| NewLogLine {
                sequence: first + i as u64,
                stream: stream_from_proto(chunk.stream),
                data: chunk.data,
                emitted_at: datetime(chunk.emitted_at.as_ref()).unwrap_or(now),
            })
            .collect();
        current.next_sequence += lines.len() as u64;
        let core = self.lifecycle.core();
        let stored = core
            .retry_db("storing output", || core.store.append_logs(job, &lines))
            .await;
        if let Err(e) = stored {
            // Losing output silently would be worse than losing the attempt: re-queue it.
            return Err(End::Lost(format!(
                "cannot persist output of job {job}: {e}"
            )));
        }
        core.metrics.log_lines.inc_by(lines.len() as u64);
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
        core.hub.publish(job, published);
        Ok(())
    }
}

//! From the pipe readers to the job's journal: a bounded queue of lines and the batches cut
//! from it (the session sends the journal's lines to the server, see `journal.rs`).
//!
//! Lines must reach the server while the job runs, so the sender never waits for a batch to
//! fill: it takes the first line as soon as there is one, adds whatever else is already queued
//! (up to [`MAX_BATCH_LINES`] / [`MAX_BATCH_BYTES`]) and sends. Under a flood this coalesces
//! naturally, because lines pile up while the previous batch is on its way.
//!
//! The queue is bounded both in lines and in bytes. When it is full the readers stop reading,
//! the pipes fill, and the job blocks on its writes: a job printing faster than the network can
//! carry is slowed down instead of growing the worker's memory.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use hodei_proto::v1::{LogChunk, LogStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::journal::Journal;

pub const MAX_BATCH_LINES: usize = 1000;
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Bounds of the queue between the readers and the sender.
const QUEUE_LINES: usize = 1024;
const QUEUE_BYTES: usize = 1024 * 1024;

/// A line waiting to be sent; holds its share of the byte budget until it is taken.
struct QueuedLine {
    chunk: LogChunk,
    _budget: OwnedSemaphorePermit,
}

/// The readers' end of the queue.
#[derive(Clone)]
pub struct LineSender {
    lines: mpsc::Sender<QueuedLine>,
    budget: Arc<Semaphore>,
}

/// The sender's end of the queue.
pub struct LineReceiver {
    lines: mpsc::Receiver<QueuedLine>,
    budget: Arc<Semaphore>,
}

/// Nobody takes lines any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

pub fn line_channel() -> (LineSender, LineReceiver) {
    let (tx, rx) = mpsc::channel(QUEUE_LINES);
    let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
    (
        LineSender {
            lines: tx,
            budget: budget.clone(),
        },
        LineReceiver { lines: rx, budget },
    )
}

impl LineSender {
    /// Queues one line, waiting while the queue is full.
    pub async fn send(&self, stream: LogStream, data: Bytes) -> Result<(), Closed> {
        let emitted_at = SystemTime::now();
        // Empty lines cost one unit so that they, too, are bounded by the byte budget.
        let weight = u32::try_from(data.len().clamp(1, QUEUE_BYTES)).unwrap_or(u32::MAX);
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(weight)
            .await
            .map_err(|_| Closed)?;
        let chunk = LogChunk {
            stream: stream as i32,
            data,
            emitted_at: Some(emitted_at.into()),
        };
        self.lines
            .send(QueuedLine {
                chunk,
                _budget: budget,
            })
            .await
            .map_err(|_| Closed)
    }
}

impl LineReceiver {
    /// Waits for the first line, then takes whatever else is already queued, up to the batch
    /// limits. `None` once every sender is gone and the queue is empty.
    pub async fn next_batch(&mut self) -> Option<Vec<LogChunk>> {
        let first = self.lines.recv().await?;
        let mut bytes = first.chunk.data.len();
        let mut batch = vec![first.chunk];
        while batch.len() < MAX_BATCH_LINES && bytes < MAX_BATCH_BYTES {
            match self.lines.try_recv() {
                Ok(line) => {
                    bytes += line.chunk.data.len();
                    batch.push(line.chunk);
                }
                Err(_) => break,
            }
        }
        Some(batch)
    }
}

impl Drop for LineReceiver {
    fn drop(&mut self) {
        // Wakes readers waiting for budget so they notice that nobody listens any more.
        self.budget.close();
    }
}

/// Moves the job's lines into its journal until the readers are done, then closes it. Returns
/// the number of lines.
pub async fn journal_batches(mut lines: LineReceiver, journal: Arc<Journal>) -> u64 {
    let mut taken = 0u64;
    while let Some(batch) = lines.next_batch().await {
        taken += batch.len() as u64;
        journal.append(batch).await;
    }
    journal.close();
    taken
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn line(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[tokio::test]
    async fn a_single_line_is_a_batch_at_once_without_waiting_for_more() {
        let (sender, mut receiver) = line_channel();
        sender.send(LogStream::Stdout, line("alone")).await.unwrap();

        let batch = tokio::time::timeout(Duration::from_millis(100), receiver.next_batch())
            .await
            .expect("the batch does not wait for more lines")
            .expect("a batch");

        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].data, "alone");
        assert_eq!(batch[0].stream, LogStream::Stdout as i32);
        assert!(batch[0].emitted_at.is_some());
        drop(sender);
    }

    #[tokio::test]
    async fn lines_already_queued_are_coalesced_into_one_batch_in_order() {
        let (sender, mut receiver) = line_channel();
        for i in 0..10 {
            sender
                .send(LogStream::Stdout, line(&format!("{i}")))
                .await
                .unwrap();
        }
        sender.send(LogStream::Stderr, line("err")).await.unwrap();
        drop(sender);

        let batch = receiver.next_batch().await.expect("a batch");

        let data: Vec<&[u8]> = batch.iter().map(|c| c.data.as_ref()).collect();
        let expected: Vec<String> = (0..10)
            .map(|i| i.to_string())
            .chain(["err".into()])
            .collect();
        let expected: Vec<&[u8]> = expected.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(data, expected);
        assert!(receiver.next_batch().await.is_none());
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_the_line_limit() {
        let (sender, mut receiver) = line_channel();
        let producer = tokio::spawn(async move {
            for _ in 0..MAX_BATCH_LINES + 5 {
                sender.send(LogStream::Stdout, line("x")).await.unwrap();
            }
        });
        producer.await.unwrap();

        assert_eq!(receiver.next_batch().await.unwrap().len(), MAX_BATCH_LINES);
        assert_eq!(receiver.next_batch().await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_batch_stops_growing_once_it_reaches_the_byte_limit() {
        let (sender, mut receiver) = line_channel();
        let big = Bytes::from(vec![b'b'; 64 * 1024]);
        let producer = tokio::spawn(async move {
            for _ in 0..20 {
                sender.send(LogStream::Stdout, big.clone()).await.unwrap();
            }
        });

        let mut sizes = Vec::new();
        while let Some(batch) = receiver.next_batch().await {
            let bytes: usize = batch.iter().map(|c| c.data.len()).sum();
            assert!(bytes <= MAX_BATCH_BYTES, "batch of {bytes} bytes");
            sizes.push(batch.len());
        }
        producer.await.unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_reader_wait_until_lines_are_taken() {
        let (sender, mut receiver) = line_channel();
        let big = Bytes::from(vec![b'q'; 64 * 1024]);
        // The byte budget (1 MiB) holds 16 such lines; the 17th must wait.
        for _ in 0..16 {
            sender.send(LogStream::Stdout, big.clone()).await.unwrap();
        }
        let blocked = tokio::time::timeout(
            Duration::from_millis(100),
            sender.send(LogStream::Stdout, big.clone()),
        )
        .await;
        assert!(
            blocked.is_err(),
            "the 17th line was queued beyond the budget"
        );

        receiver.next_batch().await.expect("a batch");
        tokio::time::timeout(Duration::from_secs(1), sender.send(LogStream::Stdout, big))
            .await
            .expect("room once a batch was taken")
            .unwrap();
    }

    #[tokio::test]
    async fn a_reader_waiting_for_room_is_released_when_the_receiver_goes_away() {
        let (sender, receiver) = line_channel();
        let big = Bytes::from(vec![b'q'; 64 * 1024]);
        for _ in 0..16 {
            sender.send(LogStream::Stdout, big.clone()).await.unwrap();
        }
        let waiting = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(LogStream::Stdout, big).await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        let result = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiting reader is released")
            .unwrap();
        assert_eq!(result, Err(Closed));
    }

    #[tokio::test]
    async fn every_line_reaches_the_journal_in_order_and_it_is_closed_at_the_end() {
        let (sender, receiver) = line_channel();
        let journal = Journal::new("job-1".into(), 1, 1, crate::journal::DEFAULT_CAPACITY);
        let task = tokio::spawn(journal_batches(receiver, journal.clone()));
        for i in 0..3 {
            sender
                .send(LogStream::Stdout, line(&i.to_string()))
                .await
                .unwrap();
        }
        drop(sender);

        assert_eq!(task.await.unwrap(), 3);
        let mut data = Vec::new();
        while let Some(unsent) = journal.next_unsent().await {
            let crate::journal::Unsent::Lines { chunks, .. } = unsent else {
                panic!("not lines: {unsent:?}");
            };
            data.extend(chunks.into_iter().map(|c| c.data));
        }
        assert_eq!(data, vec![line("0"), line("1"), line("2")]);
        assert!(journal.all_sent());
    }
}

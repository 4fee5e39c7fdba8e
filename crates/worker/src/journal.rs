//! The output of the job being run, kept until the server says it is stored.
//!
//! The job's lines are numbered here, from the assignment's `first_sequence`, and stay in the
//! journal until a `LogAck` covers them. The session sends what it has not sent on the current
//! stream; when a stream breaks, the next one starts again after the last sequence the server
//! reports stored (`SessionInfo.persisted_sequence`), so a reconnect loses no line, and the
//! server's idempotent insert stores none twice.
//!
//! The journal is bounded in bytes. When it is full, appending waits: the line queue behind it
//! fills, the readers stop reading, the pipes fill and the job blocks on its writes — the same
//! back-pressure as for a slow network, now also while no server can be reached. Nothing is
//! dropped.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use hodei_proto::v1::LogChunk;
use tokio::sync::Notify;

use crate::batch::{MAX_BATCH_BYTES, MAX_BATCH_LINES};

/// Default bound of the unacknowledged output, `HODEI_RESUME_BUFFER_BYTES`.
pub const DEFAULT_CAPACITY: usize = 4 << 20;
/// What a kept line costs beyond its bytes (its entry, its allocation), counted against the
/// bound so that a flood of short lines is bounded in memory, not only in bytes of output.
const LINE_OVERHEAD: usize = 128;
/// Smallest bound accepted: two of the largest batches.
pub const MIN_CAPACITY: usize = 2 * MAX_BATCH_BYTES;

/// Something of the job the server has not been sent on the current stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Unsent {
    /// The job's command started with this process group leader.
    Started(u32),
    /// Consecutive lines, the first numbered `first` (0: the server numbers them).
    Lines { first: u64, chunks: Vec<LogChunk> },
}

#[derive(Debug)]
struct State {
    /// The sequence the next appended line gets.
    next_sequence: u64,
    /// Lines not yet acknowledged, in sequence order.
    lines: VecDeque<(u64, LogChunk)>,
    bytes: usize,
    /// The highest sequence sent on the current stream.
    sent_upto: u64,
    pid: Option<u32>,
    started_sent: bool,
    /// The runner appends nothing more.
    closed: bool,
    /// The server does not acknowledge (it predates resuming): lines are forgotten once sent.
    trim_on_send: bool,
}

/// One job's output journal, shared by the job's runner (which appends) and the session
/// (which sends, and trims on acknowledgements).
#[derive(Debug)]
pub struct Journal {
    job_id: String,
    attempt: u32,
    /// The server numbers the lines (its assignment had no first sequence).
    numbered_by_server: bool,
    capacity: usize,
    state: Mutex<State>,
    changed: Notify,
}

fn weight(chunk: &LogChunk) -> usize {
    chunk.data.len() + LINE_OVERHEAD
}

impl Journal {
    pub fn new(job_id: String, attempt: u32, first_sequence: u64, capacity: usize) -> Arc<Self> {
        let first = first_sequence.max(1);
        Arc::new(Self {
            job_id,
            attempt,
            numbered_by_server: first_sequence == 0,
            capacity: capacity.max(MIN_CAPACITY),
            state: Mutex::new(State {
                next_sequence: first,
                lines: VecDeque::new(),
                bytes: 0,
                sent_upto: first - 1,
                pid: None,
                started_sent: false,
                closed: false,
                trim_on_send: false,
            }),
            changed: Notify::new(),
        })
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update<T>(&self, change: impl FnOnce(&mut State) -> T) -> T {
        let result = change(&mut self.lock());
        self.changed.notify_waiters();
        result
    }

    /// Waits until `take` finds something (it runs under the lock after every change).
    async fn wait_for<T>(&self, mut take: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let taken = take(&mut self.lock());
            if let Some(taken) = taken {
                self.changed.notify_waiters();
                return taken;
            }
            notified.await;
        }
    }

    /// The job's command started.
    pub fn started(&self, pid: u32) {
        self.update(|state| state.pid = Some(pid));
    }

    /// Its process group leader, once started.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// The sequence the next line gets.
    pub fn next_sequence(&self) -> u64 {
        self.lock().next_sequence
    }

    /// Numbers and keeps `chunks`, waiting while the journal is full (an empty journal takes
    /// any batch, so a batch larger than the bound cannot wait for ever).
    pub async fn append(&self, chunks: Vec<LogChunk>) {
        let size: usize = chunks.iter().map(weight).sum();
        let mut chunks = Some(chunks);
        self.wait_for(|state| {
            if !state.lines.is_empty() && state.bytes + size > self.capacity {
                return None;
            }
            for chunk in chunks.take().unwrap_or_default() {
                state.lines.push_back((state.next_sequence, chunk));
                state.next_sequence += 1;
            }
            state.bytes += size;
            Some(())
        })
        .await
    }

    /// The runner has appended everything.
    pub fn close(&self) {
        self.update(|state| state.closed = true);
    }

    /// Lines up to `persisted` are stored: forgotten.
    pub fn ack(&self, persisted: u64) {
        self.update(|state| {
            while let Some((sequence, chunk)) = state.lines.front() {
                if *sequence > persisted {
                    break;
                }
                state.bytes -= weight(chunk);
                state.lines.pop_front();
            }
            state.sent_upto = state.sent_upto.max(persisted);
        });
    }

    /// A new stream whose server has stored lines up to `persisted` (and knows the job
    /// started, from the worker's `Resume`): everything after it is sent again.
    pub fn rewind(&self, persisted: u64) {
        self.ack(persisted);
        self.update(|state| {
            let oldest = state.lines.front().map_or(state.next_sequence, |(s, _)| *s);
            state.sent_upto = persisted.max(oldest - 1);
            state.started_sent = true;
        });
    }

    /// Whether the server acknowledges lines; if not, lines are forgotten once sent.
    pub fn set_acknowledged(&self, acknowledged: bool) {
        self.update(|state| {
            state.trim_on_send = !acknowledged;
        });
    }

    /// Everything appended has been sent on the current stream, and nothing more will be.
    pub fn all_sent(&self) -> bool {
        let state = self.lock();
        state.closed && state.sent_upto + 1 >= state.next_sequence
    }

    /// The next thing to send on the current stream, taken as sent; `None` once the runner is
    /// done and everything went out. Cancel-safe: what is returned is marked sent in the same
    /// poll.
    pub async fn next_unsent(&self) -> Option<Unsent> {
        self.wait_for(|state| {
            if !state.started_sent
                && let Some(pid) = state.pid
            {
                state.started_sent = true;
                return Some(Some(Unsent::Started(pid)));
            }
            let from = state.sent_upto + 1;
            let mut chunks = Vec::new();
            let mut bytes = 0;
            for (sequence, chunk) in state.lines.iter() {
                if *sequence < from {
                    continue;
                }
                if chunks.len() >= MAX_BATCH_LINES || bytes >= MAX_BATCH_BYTES {
                    break;
                }
                bytes += chunk.data.len();
                chunks.push(chunk.clone());
            }
            if chunks.is_empty() {
                return (state.closed && from >= state.next_sequence).then_some(None);
            }
            state.sent_upto = from + chunks.len() as u64 - 1;
            if state.trim_on_send {
                while let Some((sequence, chunk)) = state.lines.front() {
                    if *sequence > state.sent_upto {
                        break;
                    }
                    state.bytes -= weight(chunk);
                    state.lines.pop_front();
                }
            }
            let first = if self.numbered_by_server { 0 } else { from };
            Some(Some(Unsent::Lines { first, chunks }))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn chunk(text: &str) -> LogChunk {
        LogChunk {
            stream: 1,
            data: Bytes::copy_from_slice(text.as_bytes()),
            emitted_at: None,
        }
    }

    fn texts(unsent: Option<Unsent>) -> (u64, Vec<String>) {
        match unsent {
            Some(Unsent::Lines { first, chunks }) => (
                first,
                chunks
                    .iter()
                    .map(|c| String::from_utf8_lossy(&c.data).into_owned())
                    .collect(),
            ),
            other => panic!("expected lines, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn lines_are_numbered_from_the_first_sequence_and_resent_after_a_rewind() {
        let journal = Journal::new("job".into(), 2, 11, DEFAULT_CAPACITY);
        journal
            .append(vec![chunk("a"), chunk("b"), chunk("c")])
            .await;

        assert_eq!(
            texts(journal.next_unsent().await),
            (11, vec!["a".into(), "b".into(), "c".into()])
        );
        journal.ack(11);
        // The stream broke; the new server stored up to 12.
        journal.rewind(12);
        assert_eq!(texts(journal.next_unsent().await), (13, vec!["c".into()]));
        journal.close();
        assert!(journal.all_sent());
        assert_eq!(journal.next_unsent().await, None);
    }

    #[tokio::test]
    async fn a_full_journal_makes_appending_wait_until_lines_are_acknowledged() {
        let journal = Journal::new("job".into(), 1, 1, MIN_CAPACITY);
        let big = LogChunk {
            stream: 1,
            data: Bytes::from(vec![b'x'; MIN_CAPACITY / 2 - LINE_OVERHEAD]),
            emitted_at: None,
        };
        journal.append(vec![big.clone()]).await;
        journal.append(vec![big.clone()]).await;
        let blocked = tokio::time::timeout(
            Duration::from_millis(100),
            journal.append(vec![big.clone()]),
        )
        .await;
        assert!(blocked.is_err(), "appended beyond the bound");

        journal.next_unsent().await;
        journal.ack(1);
        tokio::time::timeout(Duration::from_secs(1), journal.append(vec![big]))
            .await
            .expect("room once a line was acknowledged");
        assert_eq!(journal.next_sequence(), 4);
    }

    #[tokio::test]
    async fn the_start_is_sent_first_and_a_server_that_numbers_lines_gets_zero() {
        let journal = Journal::new("job".into(), 1, 0, DEFAULT_CAPACITY);
        journal.started(42);
        journal.append(vec![chunk("x")]).await;
        assert_eq!(journal.next_unsent().await, Some(Unsent::Started(42)));
        assert_eq!(texts(journal.next_unsent().await), (0, vec!["x".into()]));
    }
}

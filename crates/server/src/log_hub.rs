//! Live fan-out of job output to subscribers.
//!
//! Lines are published only *after* they are persisted, so a subscriber that registers with the
//! hub first and then reads the database cannot miss a line: anything published after its read
//! is delivered live, anything before is in the database. Subscribers that fall behind lose
//! live events (`Lagged`) and catch up from the database; a slow subscriber therefore never
//! slows the worker.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use hodei_domain::{JobId, LogLine};
use tokio::sync::broadcast;

/// Events per job buffered for subscribers before the slowest starts lagging. An event is one
/// stored insert (at most ~5,000 lines or ~1 MiB, see `session.rs`), and a lagging subscriber
/// keeps up to this many alive, so this bounds the memory one followed job can hold.
const CHANNEL_CAPACITY: usize = 32;

#[derive(Debug, Clone)]
pub enum HubEvent {
    /// Persisted lines, in sequence order.
    Lines(Arc<[LogLine]>),
    /// Another server stored the job's lines up to this sequence (`u64::MAX`: maybe, look):
    /// they are read from the database.
    StoredElsewhere(u64),
    /// The job reached a final state; no more lines will come.
    Finished,
}

#[derive(Default)]
pub struct LogHub {
    channels: Mutex<HashMap<JobId, broadcast::Sender<HubEvent>>>,
}

/// A live subscription; unregisters itself when dropped.
pub struct Subscription {
    hub: Arc<LogHub>,
    job: JobId,
    pub receiver: broadcast::Receiver<HubEvent>,
}

impl LogHub {
    pub fn subscribe(self: &Arc<Self>, job: JobId) -> Subscription {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let sender = channels
            .entry(job)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0);
        Subscription {
            hub: self.clone(),
            job,
            receiver: sender.subscribe(),
        }
    }

    /// Delivers persisted lines to current subscribers, if any. Never blocks.
    pub fn publish(&self, job: JobId, lines: Arc<[LogLine]>) {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(&job) {
            let _ = sender.send(HubEvent::Lines(lines));
        }
    }

    /// Another server stored lines of `job` up to `up_to`: its followers here read them.
    pub fn stored_elsewhere(&self, job: JobId, up_to: u64) {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(&job) {
            let _ = sender.send(HubEvent::StoredElsewhere(up_to));
        }
    }

    /// Every follower looks at the database (notifications from other servers may be lost).
    pub fn nudge_all(&self) {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        for sender in channels.values() {
            let _ = sender.send(HubEvent::StoredElsewhere(u64::MAX));
        }
    }

    /// Tells subscribers the job ended, and forgets it.
    pub fn finish(&self, job: JobId) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.remove(&job) {
            let _ = sender.send(HubEvent::Finished);
        }
    }

    #[cfg(test)]
    fn tracked_jobs(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = channels.get(&self.job) {
            // Our receiver is still counted until this function returns.
            if sender.receiver_count() <= 1 {
                channels.remove(&self.job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chrono::Utc;
    use hodei_domain::LogStreamKind;

    use super::*;

    fn lines(job: JobId, seqs: &[u64]) -> Arc<[LogLine]> {
        seqs.iter()
            .map(|&sequence| LogLine {
                job_id: job,
                sequence,
                stream: LogStreamKind::Stdout,
                data: Bytes::from_static(b"x"),
                emitted_at: Utc::now(),
            })
            .collect()
    }

    #[tokio::test]
    async fn subscribers_get_published_lines_then_the_end() {
        let hub = Arc::new(LogHub::default());
        let job = JobId::new();
        let mut a = hub.subscribe(job);
        let mut b = hub.subscribe(job);
        hub.publish(job, lines(job, &[1, 2]));
        hub.finish(job);
        for sub in [&mut a, &mut b] {
            let HubEvent::Lines(got) = sub.receiver.recv().await.unwrap() else {
                panic!("expected lines")
            };
            assert_eq!(got.len(), 2);
            assert!(matches!(
                sub.receiver.recv().await.unwrap(),
                HubEvent::Finished
            ));
        }
    }

    #[test]
    fn publishing_without_subscribers_keeps_nothing() {
        let hub = Arc::new(LogHub::default());
        let job = JobId::new();
        hub.publish(job, lines(job, &[1]));
        assert_eq!(hub.tracked_jobs(), 0);
    }

    #[test]
    fn the_last_subscriber_leaving_forgets_the_job() {
        let hub = Arc::new(LogHub::default());
        let job = JobId::new();
        let a = hub.subscribe(job);
        let b = hub.subscribe(job);
        drop(a);
        assert_eq!(hub.tracked_jobs(), 1);
        drop(b);
        assert_eq!(hub.tracked_jobs(), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_instead_of_blocking_the_publisher() {
        let hub = Arc::new(LogHub::default());
        let job = JobId::new();
        let mut slow = hub.subscribe(job);
        for i in 0..(CHANNEL_CAPACITY as u64 + 10) {
            hub.publish(job, lines(job, &[i + 1]));
        }
        assert!(matches!(
            slow.receiver.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}

//! The other servers of the instance, reached through the database: this server's lease row,
//! the notifications servers exchange (`LISTEN/NOTIFY`: work to dispatch; output stored and
//! jobs ended, for followers connected to another server), and the addresses a worker may
//! re-connect to.
//!
//! Notifications are hints, never the only way something is learned: a server that misses one
//! (its listening connection broke) finds the work at its dispatcher's safety tick and the end
//! of a followed job at the follower's quiet re-check; when its listener re-connects it looks
//! at everything at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hodei_domain::JobId;
use hodei_store::Notification;
use tokio::{sync::Notify, task::JoinHandle};

use crate::core::Core;

/// A job was queued or a worker slot freed: servers with idle workers or room look at the queue.
/// The payload is the sender's id.
pub const DISPATCH_CHANNEL: &str = "hodei_dispatch";
/// `<sender> <job> <sequence>`: the job's output is stored up to `sequence`;
/// `<sender> <job> end`: the job reached a final state.
pub const OUTPUT_CHANNEL: &str = "hodei_output";

/// How long a failed listener waits before it connects again.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    StoredUpTo(u64),
    Ended,
}

/// What this server has to tell the others, coalesced until its sender task sends it: a burst
/// of a thousand queued jobs is one notification, and a job's many stored batches one high-water
/// mark.
#[derive(Default)]
pub struct Announcements {
    work: AtomicBool,
    output: Mutex<HashMap<JobId, Progress>>,
    pending: Notify,
}

impl Announcements {
    pub fn work(&self) {
        self.work.store(true, Ordering::SeqCst);
        self.pending.notify_one();
    }

    pub fn stored(&self, job: JobId, up_to: u64) {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        match output.entry(job).or_insert(Progress::StoredUpTo(up_to)) {
            Progress::StoredUpTo(mark) => *mark = (*mark).max(up_to),
            Progress::Ended => {}
        }
        drop(output);
        self.pending.notify_one();
    }

    pub fn ended(&self, job: JobId) {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job, Progress::Ended);
        self.pending.notify_one();
    }

    fn take(&self) -> (bool, Vec<(JobId, Progress)>) {
        let work = self.work.swap(false, Ordering::SeqCst);
        let output = std::mem::take(&mut *self.output.lock().unwrap_or_else(|e| e.into_inner()));
        (work, output.into_iter().collect())
    }
}

/// Records this server in the instance's `servers` table (before it serves, so the first
/// workers already see it among the addresses they may re-connect to).
pub async fn register(core: &Core) -> Result<(), hodei_store::StoreError> {
    renew(core).await
}

async fn renew(core: &Core) -> Result<(), hodei_store::StoreError> {
    core.store
        .renew_server_lease(
            core.server_id,
            &core.settings.instance,
            &core.worker_address,
            core.settings.server_lease,
        )
        .await
}

/// The lease renewal, the sender and the listener.
pub fn spawn(core: &Arc<Core>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(hold_lease(core.clone())),
        tokio::spawn(send(core.clone())),
        tokio::spawn(listen(core.clone())),
    ]
}

/// Renews this server's lease until it stops (a graceful shutdown then removes the row; a
/// renewal after that would bring it back).
async fn hold_lease(core: Arc<Core>) {
    let every = core.settings.server_lease / 3;
    loop {
        tokio::select! {
            _ = core.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = renew(&core).await {
            tracing::warn!(error = %e, "cannot renew this server's lease; another server may take over the workers it provisions");
        }
    }
}

async fn send(core: Arc<Core>) {
    let me = core.server_id.to_string();
    loop {
        tokio::select! {
            _ = core.kill.cancelled() => return,
            _ = core.announcements.pending.notified() => {}
        }
        let (work, output) = core.announcements.take();
        if work
            && let Err(e) = core
                .store
                .notify(DISPATCH_CHANNEL, std::slice::from_ref(&me))
                .await
        {
            tracing::debug!(error = %e, "cannot tell other servers about new work");
        }
        if output.is_empty() {
            continue;
        }
        let payloads: Vec<String> = output
            .into_iter()
            .map(|(job, progress)| match progress {
                Progress::StoredUpTo(mark) => format!("{me} {job} {mark}"),
                Progress::Ended => format!("{me} {job} end"),
            })
            .collect();
        if let Err(e) = core.store.notify(OUTPUT_CHANNEL, &payloads).await {
            tracing::debug!(error = %e, "cannot tell other servers about stored output");
        }
    }
}

async fn listen(core: Arc<Core>) {
    let me = core.server_id.to_string();
    loop {
        let mut listener = match core.store.listen(&[DISPATCH_CHANNEL, OUTPUT_CHANNEL]).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other servers' notifications; retrying");
                tokio::select! {
                    _ = core.kill.cancelled() => return,
                    _ = tokio::time::sleep(LISTEN_RETRY) => continue,
                }
            }
        };
        missed_anything(&core);
        loop {
            let next = tokio::select! {
                _ = core.kill.cancelled() => return,
                next = listener.recv() => next,
            };
            match next {
                Ok(Some(notification)) => on_notification(&core, &me, &notification),
                // The connection broke and is being re-made: what was sent meanwhile is lost.
                Ok(None) => missed_anything(&core),
                Err(e) => {
                    tracing::warn!(error = %e, "listening for other servers' notifications failed; re-connecting");
                    break;
                }
            }
        }
    }
}

/// Notifications may have been missed: the dispatcher and every follower look for themselves.
fn missed_anything(core: &Core) {
    core.wake_dispatcher();
    core.hub.nudge_all();
}

fn on_notification(core: &Core, me: &str, notification: &Notification) {
    let payload = notification.payload.as_str();
    match notification.channel.as_str() {
        DISPATCH_CHANNEL if payload != me => core.wake_dispatcher(),
        OUTPUT_CHANNEL => {
            let mut parts = payload.splitn(3, ' ');
            let (Some(sender), Some(job), Some(progress)) =
                (parts.next(), parts.next(), parts.next())
            else {
                tracing::debug!(payload, "malformed output notification");
                return;
            };
            if sender == me {
                return;
            }
            let Ok(job) = job.parse::<JobId>() else {
                tracing::debug!(payload, "output notification without a job id");
                return;
            };
            match progress {
                "end" => core.hub.finish(job),
                mark => match mark.parse::<u64>() {
                    Ok(mark) => core.hub.stored_elsewhere(job, mark),
                    Err(_) => tracing::debug!(payload, "output notification without a sequence"),
                },
            }
        }
        _ => {}
    }
}

/// Where a worker of this server may re-connect: this server first, then the other live
/// servers of the instance (oldest first), without repeats (servers behind one Service share
/// an address). Only this server's when the database cannot say.
pub async fn worker_addresses(core: &Core) -> Vec<String> {
    let mut addresses = vec![core.worker_address.clone()];
    match core.store.peer_servers(&core.settings.instance).await {
        Ok(peers) => {
            for peer in peers {
                if !addresses.contains(&peer.worker_address) {
                    addresses.push(peer.worker_address);
                }
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot list the other servers for a worker"),
    }
    addresses
}

/// Whether another live server of the instance takes work (a shutting-down server moves its
/// workers there at once instead of waiting for their jobs).
pub async fn others_alive(core: &Core) -> bool {
    match core.store.peer_servers(&core.settings.instance).await {
        Ok(peers) => peers.iter().any(|p| p.id != core.server_id),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_coalesce_into_one_mark_per_job_and_an_end_wins() {
        let announcements = Announcements::default();
        let (a, b) = (JobId::new(), JobId::new());
        announcements.stored(a, 5);
        announcements.stored(a, 3);
        announcements.stored(a, 9);
        announcements.stored(b, 2);
        announcements.ended(b);
        announcements.stored(b, 4);
        announcements.work();
        let (work, mut output) = announcements.take();
        output.sort_by_key(|(job, _)| *job == b);
        assert!(work);
        assert_eq!(
            output,
            vec![(a, Progress::StoredUpTo(9)), (b, Progress::Ended)]
        );
        let (work, output) = announcements.take();
        assert!(!work && output.is_empty(), "taken once");
    }
}

//! The graceful shutdown of the lifecycle: running jobs keep running on workers told to move
//! (they re-connect to another server of the instance, or to the next process of this one, and
//! resume), idle workers move too or are told to go, and the server's tasks end.

use std::time::Duration;

use hodei_domain::{JobId, WorkerId, WorkerState};

use super::Lifecycle;
use crate::{commands::SessionCommand, registry::Phase};

/// At shutdown, how long giving running jobs back to the queue may take in all.
const SHUTDOWN_GIVE_BACK: Duration = Duration::from_secs(15);
/// Beyond the kill grace, how long workers told to exit may take to be destroyed.
const DESTROY_SLACK: Duration = Duration::from_secs(15);
/// How long the server's remaining tasks may take to end once every worker is gone.
const TASKS_GRACE: Duration = Duration::from_secs(10);

impl Lifecycle {
    /// Stop taking work (and say so in the database, so no worker is sent here) → when another
    /// server of the instance is alive, tell every connected worker to move there at once;
    /// when this one is alone, let running jobs finish for `shutdown_grace`, then tell the
    /// workers of jobs still running to move (they re-connect to the next process of this
    /// server within their reconnect grace) and idle ones to exit → wait until every worker is
    /// destroyed or detached → wait for the server's tasks → remove this server's row. What is
    /// left after the bounds is taken over by the instance's maintenance server once this
    /// server's lease passes (or the workers' own leases).
    pub async fn shutdown(&self) {
        let core = &self.core;
        core.start_draining();
        if let Err(e) = core.store.set_server_draining(core.server_id).await {
            tracing::warn!(error = %e, "cannot record this server as draining");
        }
        let others = crate::peers::others_alive(core).await;
        if others {
            tracing::info!("shutting down: moving every worker to the other servers");
        } else {
            tracing::info!("shutting down: waiting for running jobs");
            let grace = tokio::time::Instant::now() + core.settings.shutdown_grace;
            core.registry
                .wait_until(grace, |r| r.busy_count() == 0)
                .await;
        }

        // Giving jobs back waits out a database outage (retry_db), but not for longer than this
        // in all: what is left is re-queued by the next start's recovery instead.
        let give_back_by = tokio::time::Instant::now() + SHUTDOWN_GIVE_BACK;
        let give_back = |job: JobId, worker: WorkerId, reason: &'static str| async move {
            let requeued = tokio::time::timeout_at(give_back_by, self.requeue(job, worker, reason));
            if requeued.await.is_err() {
                tracing::warn!(%job, %worker, "database unreachable at shutdown; the next start re-queues the job");
            }
        };
        for (worker, phase) in core.registry.snapshot() {
            match phase {
                // Not re-queued: the job keeps running; its worker resumes on the next server.
                Phase::Busy { .. } | Phase::Resuming => self.tell_to_move(worker),
                Phase::Idle | Phase::Reserved if others => self.tell_to_move(worker),
                Phase::Idle | Phase::Reserved => self.tell_to_exit(worker, false),
                Phase::Provisioning { .. } | Phase::Registered { .. } => {
                    if core.registry.retire_if_unconnected(worker) {
                        if let Some(job) = phase.job() {
                            give_back(job, worker, "server shut down before the worker registered")
                                .await;
                        }
                        self.retire(worker, WorkerState::Terminated, "server shut down".into());
                    }
                }
                Phase::Retiring => {}
            }
        }

        let destroyed_by = tokio::time::Instant::now() + core.settings.kill_grace + DESTROY_SLACK;
        core.registry
            .wait_until(destroyed_by, |r| r.alive_count() == 0)
            .await;
        core.tasks.close();
        // Tasks that only wait (retry timers, log followers) end now.
        core.stop.cancel();
        let _ = tokio::time::timeout(TASKS_GRACE, core.tasks.wait()).await;
        let leftover = core.registry.alive_count();
        if leftover > 0 {
            tracing::warn!(
                leftover,
                "workers still alive at shutdown; the instance's maintenance takes them over once this server's lease passes"
            );
        } else if let Err(e) = core.store.remove_server(core.server_id).await {
            tracing::warn!(error = %e, "cannot remove this server's row; it expires with its lease");
        }
    }

    /// Asks a connected worker's session to tell its worker to re-connect, keeping its job.
    fn tell_to_move(&self, worker: WorkerId) {
        if let Some(commands) = self.core.registry.commands(worker) {
            let _ = commands.send(SessionCommand::Move {
                reason: "server shutting down".into(),
            });
        }
    }

    /// Asks a connected worker's session to make its worker exit (`now`: killing its job).
    fn tell_to_exit(&self, worker: WorkerId, now: bool) {
        if let Some(commands) = self.core.registry.commands(worker) {
            let _ = commands.send(SessionCommand::Retire {
                reason: "server shutting down".into(),
                now,
            });
        }
    }
}

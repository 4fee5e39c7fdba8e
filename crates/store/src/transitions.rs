//! The handle through which every job and worker state changes.

use sqlx::PgPool;

use crate::Store;

/// Every statement that changes the state of a job or a worker: queueing, claims, starts,
/// ends, re-queues, cancels, registration, and a worker's own states. The methods live beside
/// their tables (`jobs.rs`, `workers.rs`, `tokens.rs`); each is one statement (or one short
/// transaction) guarded by the states `hodei_domain`'s transition tables allow, so the loser of
/// a race changes nothing and sees `None`/`false`.
///
/// Kept apart from [`Store`] (reads, output, heartbeats) so that a server can give it to the one
/// module that owns the lifecycle, and a reader knows where every transition is.
#[derive(Clone, Debug)]
pub struct Transitions {
    pub(crate) pool: PgPool,
}

impl Transitions {
    /// Transitions on the same pool as `store`.
    pub fn new(store: &Store) -> Self {
        Self {
            pool: store.pool().clone(),
        }
    }
}

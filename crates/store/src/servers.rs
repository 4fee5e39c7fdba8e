//! The servers of an instance: a lease row per live process, the notifications they exchange,
//! and the lock that elects one of them for the instance-wide maintenance.

use std::time::Duration;

use hodei_domain::{JobId, WorkerId};
use sqlx::{Connection, PgConnection, postgres::PgListener};
use uuid::Uuid;

use crate::{
    Store, StoreError, Transitions,
    workers::{NewWorkerRow, insert_worker_in, interval},
};

/// A server of the instance that workers may dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerServer {
    pub id: Uuid,
    pub worker_address: String,
}

/// A worker and the job it holds, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stranded {
    pub worker: WorkerId,
    pub job: Option<JobId>,
}

fn stranded(rows: Vec<(Uuid, Option<Uuid>)>) -> Vec<Stranded> {
    rows.into_iter()
        .map(|(worker, job)| Stranded {
            worker: WorkerId::from_uuid(worker),
            job: job.map(JobId::from_uuid),
        })
        .collect()
}

/// One notification from another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// A dedicated connection that `LISTEN`s on the instance's channels.
pub struct Listener(PgListener);

impl Listener {
    /// The next notification; `None` when the connection was lost (and is being re-made):
    /// whatever was sent meanwhile is gone, so the caller acts as if everything changed.
    pub async fn recv(&mut self) -> Result<Option<Notification>, StoreError> {
        Ok(self.0.try_recv().await?.map(|n| Notification {
            channel: n.channel().to_string(),
            payload: n.payload().to_string(),
        }))
    }
}

/// Held while this process is the one server of its instance doing the instance-wide
/// maintenance: a session-level advisory lock on a connection of its own, outside the pool.
/// When the process dies its connection closes and PostgreSQL releases the lock, so another
/// server takes over; no two hold it at once.
pub struct MaintenanceLock {
    connection: PgConnection,
}

impl MaintenanceLock {
    /// Whether the lock's connection still answers (if it does, the lock is still held).
    pub async fn still_held(&mut self) -> bool {
        self.connection.ping().await.is_ok()
    }
}

impl Store {
    /// Records this server's lease, or renews it. An upsert: a server whose row was removed as
    /// dead during a database outage comes back with its next renewal.
    pub async fn renew_server_lease(
        &self,
        id: Uuid,
        instance: &str,
        worker_address: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO servers (id, instance, worker_address, lease_expires_at) \
             VALUES ($1, $2, $3, now() + $4) \
             ON CONFLICT (id) DO UPDATE SET lease_expires_at = EXCLUDED.lease_expires_at",
        )
        .bind(id)
        .bind(instance)
        .bind(worker_address)
        .bind(interval(ttl))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The server is shutting down: other servers stop offering it to workers.
    pub async fn set_server_draining(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("UPDATE servers SET draining = true WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The server is gone (a graceful exit): nobody waits for its lease to pass.
    pub async fn remove_server(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM servers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live servers of `instance` that take work, oldest first.
    pub async fn peer_servers(&self, instance: &str) -> Result<Vec<PeerServer>, StoreError> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, worker_address FROM servers \
             WHERE instance = $1 AND NOT draining AND lease_expires_at > now() \
             ORDER BY started_at, id",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, worker_address)| PeerServer { id, worker_address })
            .collect())
    }

    /// What no live server will finish, for the maintenance server to put right:
    /// - workers of `instance` that a server other than `me` was provisioning or destroying,
    ///   whose server is dead (its lease passed, or it predates server leases);
    /// - workers in a final state that still hold a job (a re-queue lost to an outage).
    pub async fn stranded_workers(
        &self,
        instance: &str,
        me: Uuid,
    ) -> Result<Vec<Stranded>, StoreError> {
        let rows: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT w.id, j.id FROM workers w \
             LEFT JOIN jobs j ON j.worker_id = w.id AND j.state IN ('assigned', 'running') \
             WHERE w.instance = $1 AND ( \
                 (w.state IN ('provisioning', 'terminating') \
                  AND w.server_id IS DISTINCT FROM $2 \
                  AND NOT EXISTS (SELECT 1 FROM servers s \
                                  WHERE s.id = w.server_id AND s.lease_expires_at > now())) \
              OR (w.state IN ('lost', 'terminated', 'failed') AND j.id IS NOT NULL)) \
             ORDER BY w.id",
        )
        .bind(instance)
        .bind(me)
        .fetch_all(&self.pool)
        .await?;
        Ok(stranded(rows))
    }

    /// Workers server `server` is provisioning or destroying, with the job each holds: what
    /// its registry should know.
    pub async fn unattached_workers_of(&self, server: Uuid) -> Result<Vec<Stranded>, StoreError> {
        let rows: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT w.id, j.id FROM workers w \
             LEFT JOIN jobs j ON j.worker_id = w.id AND j.state IN ('assigned', 'running') \
             WHERE w.server_id = $1 AND w.state IN ('provisioning', 'terminating') \
             ORDER BY w.id",
        )
        .bind(server)
        .fetch_all(&self.pool)
        .await?;
        Ok(stranded(rows))
    }

    /// Removes the rows of `instance`'s servers whose lease passed more than `after` ago.
    /// Returns how many.
    pub async fn forget_dead_servers(
        &self,
        instance: &str,
        after: Duration,
    ) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "DELETE FROM servers WHERE instance = $1 AND lease_expires_at < now() - $2",
        )
        .bind(instance)
        .bind(interval(after))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Sends `payloads` on `channel` to every server listening (delivered when the statement
    /// commits; PostgreSQL folds identical ones of a transaction into one).
    pub async fn notify(&self, channel: &str, payloads: &[String]) -> Result<(), StoreError> {
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(channel)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A connection of its own that listens on `channels`.
    pub async fn listen(&self, channels: &[&str]) -> Result<Listener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all(channels.iter().copied()).await?;
        Ok(Listener(listener))
    }

    /// Tries to become the maintenance server of `instance`: `None` while another holds it.
    pub async fn try_maintenance_lock(
        &self,
        instance: &str,
    ) -> Result<Option<MaintenanceLock>, StoreError> {
        let mut connection = self.pool.acquire().await?.detach();
        let (locked,): (bool,) =
            // The key: 64 bits of a hash of the instance's name.
            sqlx::query_as("SELECT pg_try_advisory_lock(hashtextextended('hodei maintenance ' || $1, 0))")
                .bind(instance)
                .fetch_one(&mut connection)
                .await?;
        if locked {
            Ok(Some(MaintenanceLock { connection }))
        } else {
            let _ = connection.close().await;
            Ok(None)
        }
    }
}

impl Transitions {
    /// Claims the oldest queued job for a worker that does not exist yet and records that
    /// worker (`Provisioning`, with its token and the server provisioning it), all in one
    /// transaction: either the job is bound to a recorded worker, or nothing changed (`None`:
    /// nothing claimable, or no room). With `max_workers`, only while the instance has fewer
    /// alive workers, counted in the database across its servers: claims for new workers take
    /// a per-instance lock for their transaction, so two servers cannot both take the last slot.
    pub async fn claim_job_for_new_worker(
        &self,
        new: &NewWorkerRow<'_>,
        max_workers: Option<u32>,
    ) -> Result<Option<hodei_domain::Job>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(max_workers) = max_workers {
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtextextended('hodei new workers ' || $1, 0))",
            )
            .bind(new.instance)
            .execute(&mut *tx)
            .await?;
            let (alive,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM workers WHERE instance = $1 \
                 AND state IN ('provisioning', 'idle', 'busy', 'terminating')",
            )
            .bind(new.instance)
            .fetch_one(&mut *tx)
            .await?;
            if alive >= i64::from(max_workers) {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let Some(job) = crate::jobs::claim_next_job_in(&mut tx, new.id).await? else {
            tx.rollback().await?;
            return Ok(None);
        };
        insert_worker_in(&mut tx, new).await?;
        tx.commit().await?;
        Ok(Some(job))
    }
}

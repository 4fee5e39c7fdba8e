//! One-time registration tokens: issued with a worker, consumed by its `Register` call.

use hodei_domain::{SecretHash, WorkerId};
use uuid::Uuid;

use crate::{Store, StoreError, Transitions};

/// Why `Register` was refused. Each has its own message so an operator can tell a replay from
/// a clock problem from a misrouted worker.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("unknown registration token")]
    Unknown,
    #[error("registration token was issued for a different worker id")]
    WrongWorker,
    #[error("registration token has already been used")]
    AlreadyUsed,
    #[error("registration token has expired")]
    Expired,
    /// The token is fine but the worker is no longer waiting to register (e.g. it was declared
    /// failed by the provisioning deadline).
    #[error("worker is no longer expected to register (state {state})")]
    WorkerNotExpected { state: String },
}

impl Store {
    /// The worker a session credential belongs to, if that worker is still alive.
    pub async fn worker_for_session(
        &self,
        session: SecretHash,
    ) -> Result<Option<WorkerId>, StoreError> {
        let row: Option<(Uuid,)> = sqlx::query_as(
            "SELECT id FROM workers WHERE session_hash = $1 AND state IN ('idle', 'busy')",
        )
        .bind(session.as_bytes().as_slice())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(id,)| WorkerId::from_uuid(id)))
    }
}

impl Transitions {
    /// Consumes the token of `worker` and binds a session credential to the worker, atomically:
    /// either the token is consumed *and* the worker registered, or nothing changes. Its lease
    /// starts (`lease_ttl`): until its session attaches, only the lease says it is expected,
    /// and a worker whose server died before it connected is lost when it passes.
    pub async fn register_worker(
        &self,
        worker: WorkerId,
        token: SecretHash,
        session: SecretHash,
        lease_ttl: std::time::Duration,
    ) -> Result<Result<(), TokenRejection>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let consumed = sqlx::query(
            "UPDATE worker_tokens SET consumed_at = now() \
             WHERE token_hash = $1 AND worker_id = $2 AND consumed_at IS NULL AND expires_at > now()",
        )
        .bind(token.as_bytes().as_slice())
        .bind(worker.as_uuid())
        .execute(&mut *tx)
        .await?;
        if consumed.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Err(
                classify_rejected_token(&self.pool, worker, token).await?
            ));
        }
        let registered = sqlx::query(
            "UPDATE workers SET state = 'idle', session_hash = $2, registered_at = now(), \
             last_heartbeat_at = now(), lease_expires_at = now() + $3 \
             WHERE id = $1 AND state = 'provisioning'",
        )
        .bind(worker.as_uuid())
        .bind(session.as_bytes().as_slice())
        .bind(crate::workers::interval(lease_ttl))
        .execute(&mut *tx)
        .await?;
        if registered.rows_affected() == 0 {
            tx.rollback().await?;
            let state: Option<(String,)> =
                sqlx::query_as("SELECT state FROM workers WHERE id = $1")
                    .bind(worker.as_uuid())
                    .fetch_optional(&self.pool)
                    .await?;
            return Ok(Err(TokenRejection::WorkerNotExpected {
                state: state.map_or_else(|| "unknown".into(), |(s,)| s),
            }));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}

/// Why a token that consumed nothing was refused.
async fn classify_rejected_token(
    pool: &sqlx::PgPool,
    worker: WorkerId,
    token: SecretHash,
) -> Result<TokenRejection, StoreError> {
    let row: Option<(Uuid, bool, bool)> = sqlx::query_as(
        "SELECT worker_id, consumed_at IS NOT NULL, expires_at <= now() \
         FROM worker_tokens WHERE token_hash = $1",
    )
    .bind(token.as_bytes().as_slice())
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => TokenRejection::Unknown,
        Some((owner, _, _)) if owner != *worker.as_uuid() => TokenRejection::WrongWorker,
        Some((_, true, _)) => TokenRejection::AlreadyUsed,
        Some((_, false, true)) => TokenRejection::Expired,
        // Valid now: it was consumed or expired between the two statements.
        Some(_) => TokenRejection::AlreadyUsed,
    })
}

//! PostgreSQL persistence for Hodei Jobs.
//!
//! One [`Store`] wraps one connection pool: reads, output, heartbeats. Every state change goes
//! through [`Transitions`] instead: a single SQL statement (or a short transaction) guarded by
//! the state it expects, so concurrent callers cannot move a job or a worker through an illegal
//! transition: the loser of a race sees `None`/`false`.
//!
//! Rows become domain types here and nowhere else.

mod api_tokens;
mod error;
mod jobs;
mod logs;
mod rows;
mod secrets;
mod servers;
mod tokens;
mod transitions;
mod workers;

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use error::StoreError;
pub use jobs::{RequeueOutcome, RetryBackoff};
pub use logs::{Appended, NewLogLine};
pub use servers::{Listener, MaintenanceLock, Notification, PeerServer, Stranded};
pub use tokens::TokenRejection;
pub use transitions::Transitions;
pub use workers::{Attached, ExpiredLease, NewWorkerRow};

/// Migrations embedded at compile time from `crates/store/migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects (retrying while the database starts up, up to `connect_timeout`) and applies
    /// pending migrations.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(|e| StoreError::InvalidUrl {
            detail: format!("{e}"),
        })?;
        let options = options.application_name("hodei-server");
        let connected = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(connect_timeout)
            // No ping before every statement: it doubled the round trips of each one. A
            // connection that died meanwhile fails its statement with a connection error
            // instead, which the server waits out and retries (`Core::retry_db`).
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await;
        let pool = match connected {
            Ok(pool) => pool,
            // The pool only says it timed out; one more attempt says why (refused, unknown
            // host, authentication failed).
            Err(sqlx::Error::PoolTimedOut) => {
                use sqlx::ConnectOptions as _;
                return Err(match options.connect().await {
                    Err(cause) => cause.into(),
                    Ok(_) => sqlx::Error::PoolTimedOut.into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (tests); does not migrate.
    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A cheap query that proves the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

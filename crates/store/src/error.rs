#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL: {detail}")]
    InvalidUrl { detail: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value the code cannot interpret: a bug or a manual edit, never user input.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

impl StoreError {
    pub(crate) fn corrupt(table: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            table,
            detail: detail.into(),
        }
    }

    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
            )
        )
    }
}

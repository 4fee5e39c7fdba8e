#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database URL: {detail}")]
    InvalidUrl { detail: String },
    /// sqlx's own message already says what failed ("error returned from database: …",
    /// "error communicating with database: …"); callers add what they were doing.
    #[error(transparent)]
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

    /// Whether the database could not be reached (as opposed to refusing a statement): the
    /// connection broke, none could be made, or the server said it is shutting down or
    /// starting up (SQLSTATE class 08, and 57P01–57P03, what a restart or fail-over looks like).
    pub fn is_connection_error(&self) -> bool {
        match self {
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed,
            ) => true,
            StoreError::Database(sqlx::Error::Database(error)) => error
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            _ => false,
        }
    }

    /// A connection error worth waiting out: not a pool this process closed on purpose.
    pub fn is_transient(&self) -> bool {
        self.is_connection_error() && !matches!(self, StoreError::Database(sqlx::Error::PoolClosed))
    }
}

//! The store's error type: callers need to tell "try again later" (the database is unavailable)
//! from "this cannot work" (a conflict) from a bug.

use deadpool_postgres::PoolError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database configuration: {0}")]
    Config(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(tokio_postgres::Error),
}

/// SQLSTATE for unique violations.
const UNIQUE_VIOLATION: &str = "23505";

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        match error.code() {
            Some(code) if code.code() == UNIQUE_VIOLATION => {
                let constraint = error.as_db_error().and_then(|db| db.constraint()).unwrap_or("unique").to_string();
                StoreError::Conflict(constraint)
            }
            // No SQLSTATE means the failure is in the connection, not in the statement.
            None => StoreError::Unavailable(error.to_string()),
            // Class 08 is connection exceptions, 57P0x is the server shutting down.
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
                StoreError::Unavailable(error.to_string())
            }
            Some(_) => StoreError::Database(error),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

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
            // No SQLSTATE and an I/O cause or a closed connection: the database is out of reach.
            // Without either (a row count or a type the code did not expect) it is a bug: 500,
            // not a 503 inviting a retry that would fail the same way.
            None if error.is_closed() || io_cause(&error) => StoreError::Unavailable(error.to_string()),
            None => StoreError::Database(error),
            // Class 08 is connection exceptions, 57P0x is the server shutting down.
            Some(code) if code.code().starts_with("08") || code.code().starts_with("57P") => {
                StoreError::Unavailable(error.to_string())
            }
            Some(_) => StoreError::Database(error),
        }
    }
}

fn io_cause(error: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if inner.is::<std::io::Error>() {
            return true;
        }
        cause = inner.source();
    }
    false
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

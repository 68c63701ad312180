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
    #[error("database error: {}", describe(.0))]
    Database(tokio_postgres::Error),
}

/// The SQLSTATE, severity and message of a database error (tokio-postgres's own `Display` says
/// only "db error"). The `detail` part is left out: it can quote row values, i.e. personal data.
/// Any other error is shown with its causes (its `Display` alone omits them, e.g. the I/O error
/// behind "error communicating with the server").
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} {}: {}", db.code().code(), db.severity(), db.message());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    text
}

/// SQLSTATEs of a statement PostgreSQL aborted to resolve a conflict with another transaction
/// (deadlock victim, serialization failure): running it again is the documented remedy.
const RETRYABLE_CONFLICTS: [&str; 2] = ["40P01", "40001"];

impl StoreError {
    /// Whether the statement lost a lock conflict and may simply be run again.
    pub fn is_contention(&self) -> bool {
        matches!(self, StoreError::Database(error)
            if error.code().is_some_and(|code| RETRYABLE_CONFLICTS.contains(&code.code())))
    }
}

/// How many times a statement that lost a lock conflict is run before giving up.
const CONTENTION_ATTEMPTS: u32 = 8;

/// Runs `statement` until it does not lose a lock conflict (40P01, 40001), a few times at most;
/// a statement still losing after that is reported unavailable (retry later), not as a bug.
pub(crate) async fn retry_contention<T, E, F, Fut>(what: &str, mut statement: F) -> Result<T, StoreError>
where
    E: Into<StoreError>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match statement().await.map_err(Into::into) {
            Err(error) if error.is_contention() => {
                if attempt >= CONTENTION_ATTEMPTS {
                    return Err(StoreError::Unavailable(format!("{what}: {error} ({attempt} attempts)")));
                }
                tracing::debug!(%error, attempt, what, "statement lost a lock conflict; running it again");
                let mut bytes = [0u8; 1];
                let _ = getrandom::fill(&mut bytes);
                let jitter = u64::from(bytes[0] % 10);
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 5 + jitter)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
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
            None if error.is_closed() || io_cause(&error) => StoreError::Unavailable(describe(&error)),
            None => StoreError::Database(error),
            // Class 08 is connection exceptions, 57P0x is the server shutting down, class 53 is
            // insufficient resources (53300: too many connections, 53100: disk full).
            Some(code)
                if code.code().starts_with("08") || code.code().starts_with("57P") || code.code().starts_with("53") =>
            {
                StoreError::Unavailable(describe(&error))
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

/// What to do about a failure that is a common set-up mistake (a database not created yet, a
/// refused user or password, nothing listening), in words naming the database, user and host of
/// `config`; `None` for anything else. Never quotes the password.
pub(crate) fn set_up_hint(error: &StoreError, config: &tokio_postgres::Config) -> Option<String> {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    // A password with an unencoded `@` makes the URL parser take the rest of it for the host:
    // never echo such a "host", say what is wrong instead.
    if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/' | '[' | ']')) {
        return Some(
            "the host in HERALD_DATABASE_URL is not a host name: characters such as @ : / # in a password \
             must be percent-encoded (@ is %40)"
                .into(),
        );
    }
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("(no user)");
    let database = config.get_dbname().unwrap_or(user);
    let code = match error {
        StoreError::Database(error) => error.code().map(|code| code.code().to_string()),
        _ => None,
    };
    match (error, code.as_deref()) {
        (_, Some("3D000")) => {
            Some(format!("create the database first: createdb -h {host} -p {port} -U {user} {database}"))
        }
        (_, Some("28P01")) => Some(format!(
            "the server refused the password of user \"{user}\": check the password in HERALD_DATABASE_URL"
        )),
        (_, Some("28000")) => Some(format!(
            "the server refused user \"{user}\" (no such role, or no pg_hba.conf entry for it from this host): check the user in HERALD_DATABASE_URL"
        )),
        (StoreError::Unavailable(reason), _) if reason.contains("Connection refused") => {
            Some(format!("nothing accepts connections at {host}:{port}: is PostgreSQL running there?"))
        }
        (StoreError::Unavailable(reason), _)
            if ["lookup address", "timed out", "timeout", "unreachable"]
                .iter()
                .any(|cause| reason.to_ascii_lowercase().contains(cause)) =>
        {
            Some(format!("{host}:{port} cannot be reached: check the host in HERALD_DATABASE_URL and the network"))
        }
        _ => None,
    }
}

//! Connecting to RabbitMQ, and the pacing of reconnections, shared by the API's publisher and
//! the worker's consumer sessions.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use lapin::{Connection, ConnectionProperties};

/// Quick at first, then every few seconds while the broker stays down.
const BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(3))
    .with_jitter()
    .without_max_times();

/// The longest any delay of [`Reconnect`] can be.
pub const MAX_DELAY: Duration = Duration::from_secs(3);

/// A session that lasted this long was healthy: the next failure starts the back-off over.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Longest wait for one step of a broker session's life (connect and declare, close): a node
/// that is starting may accept the TCP connection and never finish the handshake, and a
/// restarting one never sends its close-ok.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The delays between connection attempts.
#[derive(Debug)]
pub struct Reconnect {
    delays: ExponentialBackoff,
    since: Instant,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { delays: BACKOFF.build(), since: Instant::now() }
    }
}

impl Reconnect {
    /// Marks the start of a session (or of a connection attempt).
    pub fn session_started(&mut self) {
        self.since = Instant::now();
    }

    /// The delay before the next attempt, after a session or attempt failed. A session that
    /// worked for a while starts the back-off over; failed attempts after it grow it again.
    pub fn next_delay(&mut self) -> Duration {
        if self.since.elapsed() > HEALTHY_SESSION {
            self.delays = BACKOFF.build();
        }
        self.since = Instant::now();
        self.delays.next().unwrap_or(MAX_DELAY)
    }
}

/// Whether `url` is an AMQP URL at all: a malformed one is a configuration error to refuse at
/// start-up, not an outage to retry for ever. The reason never quotes the URL (it may hold a
/// password).
pub fn check_url(url: &str) -> Result<(), String> {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(_) => Ok(()),
        Err(reason) if reason.contains(url) => Err("not an absolute URL".into()),
        Err(reason) => Err(reason),
    }
}

/// The error of a connection that is gone (or never came).
pub fn connection_closed() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed))
}

/// Connects to `url`, named `name` in the broker's connection list, within [`STEP_TIMEOUT`].
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.to_string().into());
    tokio::time::timeout(STEP_TIMEOUT, Connection::connect(url, properties)).await.map_err(|_| connection_closed())?
}

/// Closes `connection` without waiting longer than [`STEP_TIMEOUT`] for the broker's close-ok.
pub async fn close(connection: &Connection, code: u16, why: &str) {
    let _ = tokio::time::timeout(STEP_TIMEOUT, connection.close(code, why.to_string().into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_urls_are_refused_without_quoting_them() {
        assert!(check_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(check_url("amqp://127.0.0.1").is_ok());
        for bad in ["amqp//guest:hunter2@@127.0.0.1:x/", "http://guest:hunter2@127.0.0.1/", "mailto:hunter2"] {
            let reason = check_url(bad).expect_err(bad);
            assert!(!reason.contains("hunter2"), "{bad}: {reason}");
        }
    }

    #[test]
    fn delays_grow_while_attempts_fail_and_start_over_after_a_healthy_session() {
        let mut reconnect = Reconnect::default();
        // Jitter adds up to the delay itself: compare the bounds, not exact values.
        let delays: Vec<Duration> = (0..8).map(|_| reconnect.next_delay()).collect();
        assert!(delays.iter().all(|delay| *delay <= MAX_DELAY * 2), "{delays:?}");
        assert!(delays[7] >= Duration::from_secs(1), "the back-off grew: {delays:?}");
        // A session that lasted longer than a healthy one: the next failure retries quickly.
        reconnect.since = Instant::now() - HEALTHY_SESSION - Duration::from_secs(1);
        assert!(reconnect.next_delay() <= Duration::from_millis(200));
        // And a long outage after it keeps growing instead of retrying at the minimum.
        reconnect.since = Instant::now() - HEALTHY_SESSION - Duration::from_secs(1);
        reconnect.next_delay();
        let later: Vec<Duration> = (0..8).map(|_| reconnect.next_delay()).collect();
        assert!(later[7] >= Duration::from_secs(1), "{later:?}");
    }
}

//! Herald's RabbitMQ layer, shared by the API (ingest publishes), the worker (consumes, settles)
//! and the CLI (replays dead letters):
//!
//! - [`topology`]: the exchanges and queues, their names and arguments, declared by everyone;
//! - [`publisher`]: the supervised connection and the confirming publisher;
//! - [`headers`]: the one set of header names and how values are written and read;
//! - [`reconnect`]: connecting within a bound, and the back-off between attempts;
//! - [`replay`]: putting a dead letter back on the work exchange, once.
//!
//! It knows messages only as bytes with headers: what they mean is `herald_core`'s business.

pub mod headers;
pub mod publisher;
pub mod reconnect;
pub mod replay;
pub mod topology;

pub use publisher::{Broker, BrokerSettings, OutgoingMessage, PublishError, QueueState};
pub use topology::Topology;

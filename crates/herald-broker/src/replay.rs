//! Re-injecting dead letters: the message goes back to the work exchange with its retry counters
//! reset, once per time it was dead-lettered, whoever asks and however often.

use chrono::{DateTime, Utc};
use herald_core::Channel;
use herald_store::{DeadLetter, Store, StoreError};
use lapin::types::FieldTable;
use uuid::Uuid;

use crate::publisher::{Broker, OutgoingMessage, PublishError};
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Published again.
    Replayed,
    /// Replayed earlier (and not dead-lettered again since): nothing published.
    AlreadyReplayed,
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the broker did not take the message: {0}")]
    Broker(#[from] PublishError),
}

/// Replays dead letter `id` (of `sandbox`, or of any sandbox when `None`).
pub async fn replay_dead_letter(
    store: &Store,
    broker: &Broker,
    sandbox: Option<&str>,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<ReplayOutcome, ReplayError> {
    let Some(letter) = store.begin_replay(sandbox, id, now).await? else {
        return Ok(match store.get_dead_letter(sandbox, id).await? {
            Some(_) => ReplayOutcome::AlreadyReplayed,
            None => ReplayOutcome::NotFound,
        });
    };
    if let Err(error) = broker.publish_all(&[message_of(broker.topology(), &letter, now)]).await {
        store.abort_replay(id).await?;
        return Err(error.into());
    }
    tracing::info!(dead_letter_id = %id, message_id = %letter.message_id, "dead letter replayed");
    Ok(ReplayOutcome::Replayed)
}

/// The original body and id, without the retry and dead-letter headers of its previous life,
/// to its sandbox's shard (a letter without a known channel and sandbox goes where it came from).
fn message_of(topology: &Topology, letter: &DeadLetter, now: DateTime<Utc>) -> OutgoingMessage {
    let channel = Topology::channel_of_routing_key(&letter.channel).parse::<Channel>().ok();
    let routing_key = match (channel, letter.sandbox.as_deref()) {
        (Some(channel), Some(sandbox)) => topology.routing_key_for(channel, sandbox),
        _ => letter.channel.clone(),
    };
    OutgoingMessage {
        routing_key,
        message_id: letter.message_id.clone(),
        payload: letter.body.clone(),
        headers: FieldTable::default(),
        timestamp_secs: u64::try_from(now.timestamp()).unwrap_or(0),
    }
}

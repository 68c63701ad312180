//! Dead letters seen by the worker: copied from the dead-letter queue into the database, where
//! they can be listed and replayed.

use herald_store::StoreError;
use uuid::Uuid;

use crate::pipeline::Pipeline;

impl Pipeline {
    /// Copies a message from the dead-letter queue into the database, where it can be listed
    /// and replayed. The body is kept as it was, even when it is not a valid envelope.
    pub async fn record_dead_letter(&self, letter: DeadLetterFacts<'_>) -> Result<(), StoreError> {
        let envelope: Option<serde_json::Value> = serde_json::from_slice(letter.body).ok();
        let field = |name: &str| {
            envelope.as_ref().and_then(|e| e.get(name)).and_then(serde_json::Value::as_str).map(str::to_string)
        };
        let uuid = |name: &str| field(name).and_then(|id| Uuid::parse_str(&id).ok());
        let recipient_index = envelope
            .as_ref()
            .and_then(|e| e.get("recipientIndex"))
            .and_then(serde_json::Value::as_i64)
            .and_then(|i| i32::try_from(i).ok());
        let record = herald_store::NewDeadLetter {
            message_id: letter.message_id.map_or_else(|| format!("unidentified/{}", Uuid::now_v7()), str::to_string),
            sandbox: field("sandbox"),
            campaign_id: uuid("campaignId"),
            execution_id: uuid("executionId"),
            recipient_index,
            channel: letter.routing_key.to_string(),
            reason: letter.reason,
            last_error: letter.last_error,
            body: letter.body.to_vec(),
        };
        self.store().record_dead_letter(&record, self.now()).await?;
        crate::observe::dead_letter(self.metrics(), &record.channel, &record.reason);
        Ok(())
    }
}

/// What the delivery loop read off a dead-lettered message.
#[derive(Debug, Clone)]
pub struct DeadLetterFacts<'a> {
    pub body: &'a [u8],
    pub message_id: Option<&'a str>,
    pub routing_key: &'a str,
    pub reason: String,
    pub last_error: Option<String>,
}

//! Customer feedback webhooks: a sandbox's configuration, and the outbox the delivery triggers
//! fill (migration 0016) and the workers' relay drains onto RabbitMQ.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError};

/// A sandbox's webhook, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub sandbox: String,
    pub url: String,
    pub event_types: Vec<String>,
    pub channels: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An event waiting in the outbox, with what its payload needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_id: String,
    pub sandbox: String,
    pub event_type: String,
    pub execution_id: Uuid,
    pub recipient_index: i32,
    pub campaign_id: Uuid,
    pub campaign_version_id: Option<Uuid>,
    pub channel: String,
    pub reason: Option<String>,
    pub feedback_detail: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// From the execution, while it is kept (the idempotency window): its request id and the
    /// recipient's summary (namespace and masked id).
    pub request_id: Option<String>,
    pub recipient: Option<Value>,
}

const CONFIG: &str =
    "sandbox, url, event_types, channels, enabled, disabled_reason, disabled_at, created_at, updated_at";

fn config(row: &tokio_postgres::Row) -> WebhookConfig {
    WebhookConfig {
        sandbox: row.get(0),
        url: row.get(1),
        event_types: row.get(2),
        channels: row.get(3),
        enabled: row.get(4),
        disabled_reason: row.get(5),
        disabled_at: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
    }
}

impl Store {
    /// Sets the sandbox's webhook (enabled again). With `new_secret`, creates it or replaces its
    /// secret; without, updates an existing one only (`None` when there is none).
    pub async fn put_webhook(
        &self,
        sandbox: &str,
        (url, event_types, channels): (&str, &[String], &[String]),
        new_secret: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<WebhookConfig>, StoreError> {
        let client = self.client().await?;
        let row = match new_secret {
            Some(secret) => {
                client
                    .query_opt(
                        &format!(
                            "INSERT INTO feedback_webhooks (sandbox, url, event_types, channels, secret, created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $6)
                             ON CONFLICT (sandbox) DO UPDATE
                                SET url = EXCLUDED.url, event_types = EXCLUDED.event_types, channels = EXCLUDED.channels,
                                    secret = EXCLUDED.secret, enabled = true, disabled_reason = NULL, disabled_at = NULL,
                                    updated_at = EXCLUDED.updated_at
                             RETURNING {CONFIG}"
                        ),
                        &[&sandbox, &url, &event_types, &channels, &secret, &now],
                    )
                    .await?
            }
            None => {
                client
                    .query_opt(
                        &format!(
                            "UPDATE feedback_webhooks SET url = $2, event_types = $3, channels = $4, enabled = true,
                                    disabled_reason = NULL, disabled_at = NULL, updated_at = $5
                              WHERE sandbox = $1 RETURNING {CONFIG}"
                        ),
                        &[&sandbox, &url, &event_types, &channels, &now],
                    )
                    .await?
            }
        };
        Ok(row.as_ref().map(config))
    }

    pub async fn get_webhook(&self, sandbox: &str) -> Result<Option<WebhookConfig>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(&format!("SELECT {CONFIG} FROM feedback_webhooks WHERE sandbox = $1"), &[&sandbox])
            .await?;
        Ok(row.as_ref().map(config))
    }

    /// The URL and secret to deliver `sandbox`'s events with, while its webhook is enabled.
    pub async fn webhook_target(&self, sandbox: &str) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT url, secret FROM feedback_webhooks WHERE sandbox = $1 AND enabled", &[&sandbox])
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    pub async fn delete_webhook(&self, sandbox: &str) -> Result<bool, StoreError> {
        Ok(self.client().await?.execute("DELETE FROM feedback_webhooks WHERE sandbox = $1", &[&sandbox]).await? > 0)
    }

    /// Turns the webhook off (the receiver answered 410 Gone): no more events are queued for it.
    pub async fn disable_webhook(&self, sandbox: &str, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE feedback_webhooks SET enabled = false, disabled_reason = $2, disabled_at = $3, updated_at = $3
                  WHERE sandbox = $1 AND enabled",
                &[&sandbox, &reason, &now],
            )
            .await?;
        Ok(())
    }

    /// Takes up to `limit` outbox events (rows other relays hold are skipped) and hands them to
    /// `publish`; they are deleted only if it returns `true`, in the same transaction, so an event
    /// is published at least once.
    pub async fn relay_webhook_outbox<F, Fut>(&self, limit: i64, publish: F) -> Result<usize, StoreError>
    where
        F: FnOnce(Vec<OutboxEvent>) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        let rows = transaction
            .query(
                "SELECT o.id, o.event_id, o.sandbox, o.event_type, o.execution_id, o.recipient_index, o.campaign_id,
                        o.campaign_version_id, o.channel, o.reason, o.feedback_detail, o.attempts, o.created_at,
                        e.request_id, e.recipients -> o.recipient_index
                   FROM webhook_outbox o LEFT JOIN executions e ON e.execution_id = o.execution_id
                  ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
                &[&limit],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let events: Vec<OutboxEvent> = rows
            .iter()
            .map(|row| OutboxEvent {
                id: row.get(0),
                event_id: row.get(1),
                sandbox: row.get(2),
                event_type: row.get(3),
                execution_id: row.get(4),
                recipient_index: row.get(5),
                campaign_id: row.get(6),
                campaign_version_id: row.get(7),
                channel: row.get(8),
                reason: row.get(9),
                feedback_detail: row.get(10),
                attempts: row.get(11),
                created_at: row.get(12),
                request_id: row.get(13),
                recipient: row.get(14),
            })
            .collect();
        let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
        if !publish(events).await {
            return Ok(0);
        }
        transaction.execute("DELETE FROM webhook_outbox WHERE id = ANY($1)", &[&ids]).await?;
        transaction.commit().await?;
        Ok(ids.len())
    }
}

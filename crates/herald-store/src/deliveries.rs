//! Delivery records: the claim a worker takes before calling a provider, and the outcome it
//! writes after. The claim is what makes a redelivered message safe: a delivery whose row is
//! final is acknowledged without a provider call.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use herald_core::delivery::DeliveryStatus;
use uuid::Uuid;

use crate::{Store, StoreError};

/// Identifies one delivery and who is working on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey {
    pub execution_id: Uuid,
    pub recipient_index: i32,
    pub campaign_id: Uuid,
    pub channel: String,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryClaim {
    /// This worker holds the delivery; `attempts` counts provider calls before this one.
    Claimed { token: Uuid, attempts: i32 },
    /// Already decided: acknowledge without calling the provider.
    Final(DeliveryStatus),
    /// Another worker claimed it moments ago and may still be sending: look again later.
    Busy,
    /// A claim older than the stale limit: its worker died during the call, so the message may
    /// have been sent. Recorded `unknown`, not resent.
    Abandoned,
}

/// One claim in a batch: `token` is chosen by the caller and identifies the claim if taken.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub key: DeliveryKey,
    pub version_id: Option<Uuid>,
    pub token: Uuid,
    pub now: DateTime<Utc>,
    /// When the API accepted the request: the start of the accept→sent latency in reports.
    pub accepted_at: DateTime<Utc>,
    /// Take over an abandoned claim (maybe sent) instead of recording it `unknown`.
    pub resend_abandoned: bool,
}

/// One outcome in a batch, written only if `token` still holds the claim.
#[derive(Debug, Clone)]
pub struct Finish {
    pub key: DeliveryKey,
    pub token: Uuid,
    pub status: DeliveryStatus,
    pub reason: Option<String>,
    pub provider_message_id: Option<String>,
    /// Provider calls this claim made (added to the delivery's attempts).
    pub calls: i32,
    pub last_error: Option<String>,
    /// For `retrying`: not claimable again before this delay has passed (database time).
    pub retry_after: Option<std::time::Duration>,
    pub now: DateTime<Utc>,
}

impl Store {
    /// The status and claim time of the deliveries whose claims did not take, in one query: after
    /// a worker restart a whole batch of redelivered, already decided messages lands here.
    async fn current_states(
        client: &deadpool_postgres::Object,
        missed: &[&ClaimRequest],
    ) -> Result<HashMap<(Uuid, i32), (String, Option<DateTime<Utc>>)>, StoreError> {
        if missed.is_empty() {
            return Ok(HashMap::new());
        }
        let executions: Vec<Uuid> = missed.iter().map(|r| r.key.execution_id).collect();
        let indexes: Vec<i32> = missed.iter().map(|r| r.key.recipient_index).collect();
        let rows = client
            .query(
                "SELECT d.execution_id, d.recipient_index, d.status, d.claimed_at
                   FROM deliveries d JOIN UNNEST($1::uuid[], $2::int[]) AS u(e, i)
                     ON d.execution_id = u.e AND d.recipient_index = u.i",
                &[&executions, &indexes],
            )
            .await?;
        Ok(rows.iter().map(|row| ((row.get(0), row.get(1)), (row.get(2), row.get(3)))).collect())
    }

    /// What a claim that did not take found: final, busy, or abandoned (then recorded `unknown`).
    async fn unclaimed(
        client: &deadpool_postgres::Object,
        key: &DeliveryKey,
        state: Option<&(String, Option<DateTime<Utc>>)>,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<DeliveryClaim, StoreError> {
        // No row: it was claimed and released in between; look again later.
        let Some((status, claimed_at)) = state else {
            return Ok(DeliveryClaim::Busy);
        };
        let status = DeliveryStatus::parse(status).unwrap_or(DeliveryStatus::Unknown);
        if status == DeliveryStatus::Retrying {
            // Another copy is waiting in a retry tier and is not due yet: look again later.
            return Ok(DeliveryClaim::Busy);
        }
        if status != DeliveryStatus::Sending {
            return Ok(DeliveryClaim::Final(status));
        }
        if claimed_at.is_some_and(|at| now - at < stale_after) {
            return Ok(DeliveryClaim::Busy);
        }
        let abandoned = client
            .execute(
                "UPDATE deliveries SET status = 'unknown', reason = 'worker-died-during-send', updated_at = $3
                  WHERE execution_id = $1 AND recipient_index = $2 AND status = 'sending'",
                &[&key.execution_id, &key.recipient_index, &now],
            )
            .await?;
        Ok(if abandoned == 1 { DeliveryClaim::Abandoned } else { DeliveryClaim::Busy })
    }

    /// Claims many deliveries in one statement; outcomes are in request order. Requests for a
    /// delivery already requested earlier in the batch are answered `Busy` (a duplicate copy).
    pub async fn claim_deliveries(
        &self,
        requests: &[ClaimRequest],
        stale_after: Duration,
    ) -> Result<Vec<DeliveryClaim>, StoreError> {
        let client = self.client().await?;
        let mut seen = std::collections::HashSet::new();
        let first: Vec<&ClaimRequest> =
            requests.iter().filter(|r| seen.insert((r.key.execution_id, r.key.recipient_index))).collect();
        let executions: Vec<Uuid> = first.iter().map(|r| r.key.execution_id).collect();
        let indexes: Vec<i32> = first.iter().map(|r| r.key.recipient_index).collect();
        let versions: Vec<Option<Uuid>> = first.iter().map(|r| r.version_id).collect();
        let campaigns: Vec<Uuid> = first.iter().map(|r| r.key.campaign_id).collect();
        let channels: Vec<&str> = first.iter().map(|r| r.key.channel.as_str()).collect();
        let tokens: Vec<Uuid> = first.iter().map(|r| r.token).collect();
        let nows: Vec<DateTime<Utc>> = first.iter().map(|r| r.now).collect();
        let accepted: Vec<DateTime<Utc>> = first.iter().map(|r| r.accepted_at).collect();
        let claim = client
            .prepare_cached(
                "INSERT INTO deliveries (execution_id, recipient_index, status, attempts, campaign_version_id, campaign_id, channel,
                                         claim_token, claimed_at, created_at, updated_at, accepted_at)
                 SELECT e, i, 'sending', 0, v, c, ch, t, n, n, n, a
                   FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::uuid[], $5::text[], $6::uuid[], $7::timestamptz[],
                               $8::timestamptz[]) AS u(e, i, v, c, ch, t, n, a)
                 ON CONFLICT (execution_id, recipient_index) DO UPDATE
                    SET status = 'sending', claim_token = EXCLUDED.claim_token, claimed_at = EXCLUDED.claimed_at,
                        campaign_version_id = EXCLUDED.campaign_version_id, updated_at = EXCLUDED.updated_at
                  WHERE deliveries.status = 'retrying' AND (deliveries.not_before IS NULL OR deliveries.not_before <= now())
                 RETURNING claim_token, attempts",
            )
            .await?;
        let claimed: std::collections::HashMap<Uuid, i32> = client
            .query(&claim, &[&executions, &indexes, &versions, &campaigns, &channels, &tokens, &nows, &accepted])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let missed: Vec<&ClaimRequest> = first.iter().copied().filter(|r| !claimed.contains_key(&r.token)).collect();
        let states = Self::current_states(&client, &missed).await?;
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut answered = std::collections::HashSet::new();
        for request in requests {
            let identity = (request.key.execution_id, request.key.recipient_index);
            if !answered.insert(identity) {
                outcomes.push(DeliveryClaim::Busy);
            } else if let Some(attempts) = claimed.get(&request.token) {
                outcomes.push(DeliveryClaim::Claimed { token: request.token, attempts: *attempts });
            } else {
                let state = states.get(&identity);
                let outcome = Self::unclaimed(&client, &request.key, state, request.now, stale_after).await?;
                let outcome = match outcome {
                    DeliveryClaim::Abandoned if request.resend_abandoned => Self::take_over(&client, request).await?,
                    other => other,
                };
                outcomes.push(outcome);
            }
        }
        Ok(outcomes)
    }

    /// Claims a delivery just recorded `unknown` (abandoned) for a campaign that resends.
    async fn take_over(
        client: &deadpool_postgres::Object,
        request: &ClaimRequest,
    ) -> Result<DeliveryClaim, StoreError> {
        let row = client
            .query_opt(
                "UPDATE deliveries SET status = 'sending', reason = NULL, claim_token = $3, claimed_at = $4, updated_at = $4
                  WHERE execution_id = $1 AND recipient_index = $2 AND status = 'unknown' RETURNING attempts",
                &[&request.key.execution_id, &request.key.recipient_index, &request.token, &request.now],
            )
            .await?;
        Ok(match row {
            Some(row) => DeliveryClaim::Claimed { token: request.token, attempts: row.get(0) },
            None => DeliveryClaim::Busy,
        })
    }

    /// Writes many outcomes in one statement; `true` where the claim was still held.
    pub async fn finish_deliveries(&self, finishes: &[Finish]) -> Result<Vec<bool>, StoreError> {
        let executions: Vec<Uuid> = finishes.iter().map(|f| f.key.execution_id).collect();
        let indexes: Vec<i32> = finishes.iter().map(|f| f.key.recipient_index).collect();
        let tokens: Vec<Uuid> = finishes.iter().map(|f| f.token).collect();
        let statuses: Vec<&str> = finishes.iter().map(|f| f.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = finishes.iter().map(|f| f.reason.as_deref()).collect();
        let message_ids: Vec<Option<&str>> = finishes.iter().map(|f| f.provider_message_id.as_deref()).collect();
        let calls: Vec<i32> = finishes.iter().map(|f| f.calls).collect();
        let errors: Vec<Option<&str>> = finishes.iter().map(|f| f.last_error.as_deref()).collect();
        let nows: Vec<DateTime<Utc>> = finishes.iter().map(|f| f.now).collect();
        // A little less than the tier delay: the broker never delivers before the TTL expires.
        let not_before: Vec<Option<f64>> =
            finishes.iter().map(|f| f.retry_after.map(|d| d.as_secs_f64() * 0.9)).collect();
        let client = self.client().await?;
        let finish = client
            .prepare_cached(
                "UPDATE deliveries AS d
                    SET status = u.s, reason = u.r, provider_message_id = u.p, attempts = d.attempts + u.c, last_error = u.l,
                        updated_at = u.n, not_before = CASE WHEN u.nb IS NULL THEN NULL ELSE now() + make_interval(secs => u.nb) END
                   FROM UNNEST($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
                               $9::timestamptz[], $10::float8[]) AS u(e, i, t, s, r, p, c, l, n, nb)
                  WHERE d.execution_id = u.e AND d.recipient_index = u.i AND d.claim_token = u.t AND d.status = 'sending'
                 RETURNING d.claim_token",
            )
            .await?;
        let written: std::collections::HashSet<Uuid> = client
            .query(
                &finish,
                &[
                    &executions,
                    &indexes,
                    &tokens,
                    &statuses,
                    &reasons,
                    &message_ids,
                    &calls,
                    &errors,
                    &nows,
                    &not_before,
                ],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(finishes.iter().map(|f| written.contains(&f.token)).collect())
    }

    /// Records a delivery decided without a provider call (excluded, or failed before sending).
    /// A delivery that already has a row keeps it.
    pub async fn record_delivery(
        &self,
        key: &DeliveryKey,
        version_id: Option<Uuid>,
        status: DeliveryStatus,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO deliveries (execution_id, recipient_index, status, reason, attempts, campaign_version_id, campaign_id, channel,
                                         created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $8)
                 ON CONFLICT (execution_id, recipient_index) DO UPDATE
                    SET status = EXCLUDED.status, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
                  WHERE deliveries.status = 'retrying'",
                &[&key.execution_id, &key.recipient_index, &status.as_str(), &reason, &version_id, &key.campaign_id, &key.channel, &now],
            )
            .await?;
        Ok(())
    }

    /// Creates a profile holding only its identity, unless one exists (`createNewProfiles`).
    pub async fn ensure_identity_profile(
        &self,
        sandbox: &str,
        namespace: &str,
        user_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO profiles (sandbox, namespace, user_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT DO NOTHING",
                &[&sandbox, &namespace, &user_id, &now],
            )
            .await?;
        Ok(())
    }

    /// The SNS endpoint created earlier for (application, token): its ARN and whether it is dead.
    pub async fn push_endpoint(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
    ) -> Result<Option<(String, bool)>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT endpoint_arn, disabled_at IS NOT NULL FROM push_endpoints WHERE sandbox = $1 AND application_arn = $2 AND token = $3",
                &[&sandbox, &application_arn, &token],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    pub async fn remember_push_endpoint(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
        endpoint_arn: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO push_endpoints (sandbox, application_arn, token, endpoint_arn, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sandbox, application_arn, token) DO UPDATE SET endpoint_arn = EXCLUDED.endpoint_arn, disabled_at = NULL",
                &[&sandbox, &application_arn, &token, &endpoint_arn, &now],
            )
            .await?;
        Ok(())
    }

    /// Marks a token dead after its endpoint reported disabled.
    pub async fn mark_push_token_dead(
        &self,
        sandbox: &str,
        application_arn: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE push_endpoints SET disabled_at = $4 WHERE sandbox = $1 AND application_arn = $2 AND token = $3",
                &[&sandbox, &application_arn, &token, &now],
            )
            .await?;
        Ok(())
    }
}

//! Delivery records: the claim a worker takes before calling a provider, the mark it sets just
//! before the call, and the outcome it writes after. The claim is what makes a redelivered
//! message safe: a delivery whose row is final is acknowledged without a provider call.
//!
//! Batched statements lock rows in key order (execution id, recipient index), so that concurrent
//! batches of several workers cannot deadlock; a statement that loses a lock conflict anyway is
//! run again ([`retry_contention`]).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use herald_core::Channel;
use herald_core::delivery::{DeliveryStatus, reasons};
use uuid::Uuid;

use crate::error::retry_contention;
use crate::{Store, StoreError};

/// Identifies one delivery and who is working on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey {
    pub execution_id: Uuid,
    pub recipient_index: i32,
    pub campaign_id: Uuid,
    pub channel: Channel,
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
    /// A claim older than the stale limit whose worker had started a provider call: it died
    /// during the call, so the message may have been sent. Recorded `unknown`, not resent.
    Abandoned,
    /// The address is on the sandbox's suppression list: recorded `excluded`/`suppressed` by the
    /// claim itself; acknowledge without calling the provider.
    Suppressed,
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
    /// The suppression list entry the claim consults (in the same statement), if the channel has one.
    pub suppression: Option<SuppressionCheck>,
}

/// What a claim looks up on the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionCheck {
    pub sandbox: String,
    /// As `herald_core::feedback::suppression_address` normalises it.
    pub address: String,
    /// The campaign sends to addresses suppressed only for a complaint.
    pub allow_complained: bool,
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

/// The mark that a claim's provider call is about to start.
#[derive(Debug, Clone)]
pub struct CallStart {
    pub key: DeliveryKey,
    pub token: Uuid,
    pub now: DateTime<Utc>,
}

/// How old a claim without a call mark must be before another copy takes it over. Short: a
/// takeover is safe at any time (the old holder's mark then fails and it never calls), so this
/// only keeps two live workers from trading a claim back and forth.
pub(crate) const UNSTARTED_CLAIM_STALE: Duration = Duration::seconds(5);

/// The row of a delivery whose claim did not take.
#[derive(Debug, Clone)]
struct CurrentState {
    status: DeliveryStatus,
    attempts: i32,
    claim_token: Option<Uuid>,
    claimed_at: Option<DateTime<Utc>>,
    /// Set just before the provider call: the claim's worker may have sent the message.
    call_started: bool,
}

type Identity = (Uuid, i32);

fn identity(key: &DeliveryKey) -> Identity {
    (key.execution_id, key.recipient_index)
}

impl Store {
    /// The rows of the deliveries whose claims did not take, in one query: after a worker
    /// restart a whole batch of redelivered, already decided messages lands here.
    async fn current_states(
        client: &deadpool_postgres::Object,
        missed: &[&ClaimRequest],
    ) -> Result<HashMap<Identity, CurrentState>, StoreError> {
        if missed.is_empty() {
            return Ok(HashMap::new());
        }
        let executions: Vec<Uuid> = missed.iter().map(|r| r.key.execution_id).collect();
        let indexes: Vec<i32> = missed.iter().map(|r| r.key.recipient_index).collect();
        let rows = client
            .query(
                "SELECT d.execution_id, d.recipient_index, d.status, d.claim_token, d.claimed_at, d.call_started_at IS NOT NULL,
                        d.attempts
                   FROM deliveries d JOIN UNNEST($1::uuid[], $2::int[]) AS u(e, i)
                     ON d.execution_id = u.e AND d.recipient_index = u.i",
                &[&executions, &indexes],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let state = CurrentState {
                    status: row.try_get(2)?,
                    claim_token: row.get(3),
                    claimed_at: row.get(4),
                    call_started: row.get(5),
                    attempts: row.get(6),
                };
                Ok(((row.get(0), row.get(1)), state))
            })
            .collect()
    }

    /// What a claim that did not take found: final, busy, or a stale claim. A stale claim whose
    /// worker never started a call is taken over (nothing can have been sent); one whose worker
    /// did is recorded `unknown` (abandoned), and taken over only for campaigns that resend.
    async fn unclaimed(
        client: &deadpool_postgres::Object,
        request: &ClaimRequest,
        state: Option<&CurrentState>,
        stale_after: Duration,
    ) -> Result<DeliveryClaim, StoreError> {
        // No row: it was claimed and released in between; look again later.
        let Some(state) = state else {
            return Ok(DeliveryClaim::Busy);
        };
        let status = state.status;
        if status == DeliveryStatus::Retrying {
            // Another copy is waiting in a retry tier and is not due yet: look again later.
            return Ok(DeliveryClaim::Busy);
        }
        if status != DeliveryStatus::Sending {
            return Ok(DeliveryClaim::Final(status));
        }
        // This request's own claim, written by a batch whose statement failed afterwards and is
        // now run again item by item: it holds the delivery.
        if state.claim_token == Some(request.token) {
            return Ok(DeliveryClaim::Claimed { token: request.token, attempts: state.attempts });
        }
        // A claim that never reached its call can be taken over sooner: if its worker is alive
        // after all, its mark fails on the changed token and it never calls.
        let limit = if state.call_started { stale_after } else { stale_after.min(UNSTARTED_CLAIM_STALE) };
        if state.claimed_at.is_some_and(|at| request.now - at < limit) {
            return Ok(DeliveryClaim::Busy);
        }
        let Some(stale_token) = state.claim_token else {
            return Ok(DeliveryClaim::Busy);
        };
        if !state.call_started {
            tracing::info!(execution_id = %request.key.execution_id, "a stale claim never reached the provider; sending");
            return Self::take_over(client, request, "sending", stale_token).await;
        }
        let abandoned = client
            .execute(
                "UPDATE deliveries SET status = 'unknown', reason = $4, updated_at = $3
                  WHERE execution_id = $1 AND recipient_index = $2 AND status = 'sending' AND claim_token = $5",
                &[
                    &request.key.execution_id,
                    &request.key.recipient_index,
                    &request.now,
                    &reasons::MAYBE_SENT,
                    &stale_token,
                ],
            )
            .await?;
        if abandoned != 1 {
            return Ok(DeliveryClaim::Busy);
        }
        if request.resend_abandoned {
            return Self::take_over(client, request, "unknown", stale_token).await;
        }
        Ok(DeliveryClaim::Abandoned)
    }

    /// Claims many deliveries in one statement; outcomes are in request order. A second copy of a
    /// delivery in the same batch gets what the first one's row says: decided copies are final
    /// (acknowledged, never retried), and a copy of one being sent is busy.
    pub async fn claim_deliveries(
        &self,
        requests: &[ClaimRequest],
        stale_after: Duration,
    ) -> Result<Vec<DeliveryClaim>, StoreError> {
        let client = self.client().await?;
        let mut seen = HashSet::new();
        let mut first: Vec<&ClaimRequest> = requests.iter().filter(|r| seen.insert(identity(&r.key))).collect();
        first.sort_by_key(|r| identity(&r.key));
        let executions: Vec<Uuid> = first.iter().map(|r| r.key.execution_id).collect();
        let indexes: Vec<i32> = first.iter().map(|r| r.key.recipient_index).collect();
        let versions: Vec<Option<Uuid>> = first.iter().map(|r| r.version_id).collect();
        let campaigns: Vec<Uuid> = first.iter().map(|r| r.key.campaign_id).collect();
        let channels: Vec<Channel> = first.iter().map(|r| r.key.channel).collect();
        let tokens: Vec<Uuid> = first.iter().map(|r| r.token).collect();
        let nows: Vec<DateTime<Utc>> = first.iter().map(|r| r.now).collect();
        let accepted: Vec<DateTime<Utc>> = first.iter().map(|r| r.accepted_at).collect();
        let sandboxes: Vec<Option<&str>> =
            first.iter().map(|r| r.suppression.as_ref().map(|c| c.sandbox.as_str())).collect();
        let addresses: Vec<Option<&str>> =
            first.iter().map(|r| r.suppression.as_ref().map(|c| c.address.as_str())).collect();
        let allow: Vec<bool> =
            first.iter().map(|r| r.suppression.as_ref().is_some_and(|c| c.allow_complained)).collect();
        // Rows are inserted (and conflicting rows locked) in key order. The statements of the hot
        // writes are functions with cached plans that cannot go stale (migration 0014); the claim
        // consults the suppression list in the same statement (migration 0015).
        let claim = client
            .prepare_cached(
                "SELECT token, earlier_attempts, suppressed
                   FROM herald_claim_deliveries($1::uuid[], $2::int[], $3::uuid[], $4::uuid[], $5::text[], $6::uuid[],
                                                $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::boolean[])",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
            &executions,
            &indexes,
            &versions,
            &campaigns,
            &channels,
            &tokens,
            &nows,
            &accepted,
            &sandboxes,
            &addresses,
            &allow,
        ];
        let claimed: HashMap<Uuid, (i32, bool)> =
            retry_contention("claiming deliveries", || client.query(&claim, &params))
                .await?
                .iter()
                .map(|row| (row.get(0), (row.get(1), row.get(2))))
                .collect();
        let missed: Vec<&ClaimRequest> = first.iter().copied().filter(|r| !claimed.contains_key(&r.token)).collect();
        let states = Self::current_states(&client, &missed).await?;
        let mut outcomes = Vec::with_capacity(requests.len());
        let mut answered: HashMap<Identity, DeliveryClaim> = HashMap::new();
        for request in requests {
            let key = identity(&request.key);
            let outcome = if let Some(earlier) = answered.get(&key) {
                match earlier {
                    DeliveryClaim::Final(status) => DeliveryClaim::Final(*status),
                    DeliveryClaim::Abandoned => DeliveryClaim::Final(DeliveryStatus::Unknown),
                    DeliveryClaim::Suppressed => DeliveryClaim::Final(DeliveryStatus::Excluded),
                    DeliveryClaim::Claimed { .. } | DeliveryClaim::Busy => DeliveryClaim::Busy,
                }
            } else if let Some((attempts, suppressed)) = claimed.get(&request.token) {
                if *suppressed {
                    DeliveryClaim::Suppressed
                } else {
                    DeliveryClaim::Claimed { token: request.token, attempts: *attempts }
                }
            } else {
                Self::unclaimed(&client, request, states.get(&key), stale_after).await?
            };
            answered.entry(key).or_insert_with(|| outcome.clone());
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Claims a delivery whose stale claim (`stale_token`, in status `from`) is taken over.
    async fn take_over(
        client: &deadpool_postgres::Object,
        request: &ClaimRequest,
        from: &str,
        stale_token: Uuid,
    ) -> Result<DeliveryClaim, StoreError> {
        let row = client
            .query_opt(
                "UPDATE deliveries SET status = 'sending', reason = NULL, claim_token = $3, claimed_at = $4, updated_at = $4,
                                       call_started_at = NULL
                  WHERE execution_id = $1 AND recipient_index = $2 AND status = $5 AND claim_token = $6 RETURNING attempts",
                &[
                    &request.key.execution_id,
                    &request.key.recipient_index,
                    &request.token,
                    &request.now,
                    &from,
                    &stale_token,
                ],
            )
            .await?;
        Ok(match row {
            Some(row) => DeliveryClaim::Claimed { token: request.token, attempts: row.get(0) },
            None => DeliveryClaim::Busy,
        })
    }

    /// Marks claims whose provider call is about to start; `true` where the claim is still held.
    /// From this mark on, a worker that dies leaves the delivery `unknown` (maybe sent) rather
    /// than resendable. Input order is kept in the answer.
    pub async fn mark_calls_started(&self, calls: &[CallStart]) -> Result<Vec<bool>, StoreError> {
        let mut sorted: Vec<&CallStart> = calls.iter().collect();
        sorted.sort_by_key(|c| identity(&c.key));
        let executions: Vec<Uuid> = sorted.iter().map(|c| c.key.execution_id).collect();
        let indexes: Vec<i32> = sorted.iter().map(|c| c.key.recipient_index).collect();
        let tokens: Vec<Uuid> = sorted.iter().map(|c| c.token).collect();
        let nows: Vec<DateTime<Utc>> = sorted.iter().map(|c| c.now).collect();
        let client = self.client().await?;
        let mark = client
            .prepare_cached(
                "SELECT token FROM herald_mark_calls_started($1::uuid[], $2::int[], $3::uuid[], $4::timestamptz[]) AS token",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [&executions, &indexes, &tokens, &nows];
        let marked: HashSet<Uuid> = retry_contention("marking provider calls", || client.query(&mark, &params))
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(calls.iter().map(|c| marked.contains(&c.token)).collect())
    }

    /// Writes many outcomes in one statement; `true` where the claim was still held. A claim
    /// another worker declared abandoned meanwhile (its token unchanged) still takes the outcome:
    /// a known answer beats "maybe sent".
    pub async fn finish_deliveries(&self, finishes: &[Finish]) -> Result<Vec<bool>, StoreError> {
        let mut sorted: Vec<&Finish> = finishes.iter().collect();
        sorted.sort_by_key(|f| identity(&f.key));
        let executions: Vec<Uuid> = sorted.iter().map(|f| f.key.execution_id).collect();
        let indexes: Vec<i32> = sorted.iter().map(|f| f.key.recipient_index).collect();
        let tokens: Vec<Uuid> = sorted.iter().map(|f| f.token).collect();
        let statuses: Vec<&str> = sorted.iter().map(|f| f.status.as_str()).collect();
        // Texts from a provider answer: a NUL byte (PostgreSQL cannot store it) must not make an
        // outcome unwritable, since the worker holds it until it is written.
        let storable = |text: &Option<String>| text.as_deref().map(|t| t.replace('\0', ""));
        let reasons: Vec<Option<String>> = sorted.iter().map(|f| storable(&f.reason)).collect();
        let message_ids: Vec<Option<String>> = sorted.iter().map(|f| storable(&f.provider_message_id)).collect();
        let calls: Vec<i32> = sorted.iter().map(|f| f.calls).collect();
        let errors: Vec<Option<String>> = sorted.iter().map(|f| storable(&f.last_error)).collect();
        let nows: Vec<DateTime<Utc>> = sorted.iter().map(|f| f.now).collect();
        // A little less than the tier delay: the broker never delivers before the TTL expires.
        let not_before: Vec<Option<f64>> =
            sorted.iter().map(|f| f.retry_after.map(|d| d.as_secs_f64() * 0.9)).collect();
        let client = self.client().await?;
        let finish = client
            .prepare_cached(
                "SELECT token FROM herald_finish_deliveries($1::uuid[], $2::int[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int[],
                                                 $8::text[], $9::timestamptz[], $10::float8[], $11::text) AS token",
            )
            .await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
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
            &reasons::MAYBE_SENT,
        ];
        let written: HashSet<Uuid> = retry_contention("writing delivery outcomes", || client.query(&finish, &params))
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(finishes.iter().map(|f| written.contains(&f.token)).collect())
    }

    /// Records a delivery decided without a provider call (excluded, or failed before sending,
    /// with `last_error` saying why: a template over its budget, for instance), in one statement
    /// so that no reader sees it without its reason. A delivery that already has a row keeps it,
    /// unless it waits for a retry or is a dead worker's claim that never reached its call (else
    /// it would stay `sending` for ever).
    pub async fn record_delivery(
        &self,
        key: &DeliveryKey,
        version_id: Option<Uuid>,
        status: DeliveryStatus,
        (reason, last_error): (&str, Option<&str>),
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO deliveries (execution_id, recipient_index, status, reason, attempts, campaign_version_id, campaign_id, channel,
                                         last_error, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $10, $8, $8)
                 ON CONFLICT (execution_id, recipient_index) DO UPDATE
                    SET status = EXCLUDED.status, reason = EXCLUDED.reason, last_error = EXCLUDED.last_error,
                        updated_at = EXCLUDED.updated_at
                  WHERE deliveries.status = 'retrying'
                     OR (deliveries.status = 'sending' AND deliveries.call_started_at IS NULL
                         AND deliveries.claimed_at < EXCLUDED.updated_at - make_interval(secs => $9))",
                &[
                    &key.execution_id,
                    &key.recipient_index,
                    &status.as_str(),
                    &reason,
                    &version_id,
                    &key.campaign_id,
                    &key.channel,
                    &now,
                    &(UNSTARTED_CLAIM_STALE.num_milliseconds() as f64 / 1000.0),
                    &last_error,
                ],
            )
            .await?;
        Ok(())
    }
}

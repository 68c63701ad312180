//! Audience executions: the request (idempotent on its request id), its schedule, and the
//! durable fan-out's checkpoints and lease.
//!
//! A schedule fires in one statement that moves it from `scheduled` to `running` under its row
//! lock (`FOR UPDATE SKIP LOCKED`), so any number of instances fire it once. A running fan-out is
//! published by whichever instance holds its lease; every checkpoint renews the lease and is
//! written only by its holder, so an instance that lost it (it stalled, another took over) stops
//! at its next page.

use chrono::{DateTime, Utc};
use herald_core::Channel;
use herald_core::audience::filter::CompiledFilter;
use serde_json::Value;
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutStatus {
    Scheduled,
    Cancelled,
    Running,
    Succeeded,
    Failed,
}

impl FanoutStatus {
    pub const ALL: [FanoutStatus; 5] = [
        FanoutStatus::Scheduled,
        FanoutStatus::Cancelled,
        FanoutStatus::Running,
        FanoutStatus::Succeeded,
        FanoutStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FanoutStatus::Scheduled => "scheduled",
            FanoutStatus::Cancelled => "cancelled",
            FanoutStatus::Running => "running",
            FanoutStatus::Succeeded => "succeeded",
            FanoutStatus::Failed => "failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudienceExecution {
    pub execution_id: Uuid,
    pub schedule_id: Option<Uuid>,
    pub sandbox: String,
    pub campaign_id: Uuid,
    pub request_id: String,
    pub audience_id: Uuid,
    pub context: Value,
    pub status: FanoutStatus,
    pub failure: Option<String>,
    pub execute_at: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub late_ms: Option<i64>,
    pub deadline: Option<DateTime<Utc>>,
    pub generation: Option<i32>,
    pub targeted: Option<i64>,
    pub cursor: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl AudienceExecution {
    /// Members published (confirmed by the broker): positions are dense, so the checkpoint.
    pub fn published(&self) -> i64 {
        i64::from(self.cursor)
    }

    /// Members recorded excluded without a message: those from the checkpoint on, once the
    /// fan-out failed with its snapshot fixed.
    pub fn unreached(&self) -> i64 {
        match (self.status, self.targeted) {
            (FanoutStatus::Failed, Some(targeted)) => (targeted - self.published()).max(0),
            _ => 0,
        }
    }
}

const COLUMNS: &str = "execution_id, schedule_id, sandbox, campaign_id, request_id, audience_id, context, status, \
    failure, execute_at, fired_at, late_ms, deadline, generation, targeted, cursor, created_at, \
    finished_at";

fn execution(row: &tokio_postgres::Row) -> Result<AudienceExecution, StoreError> {
    let status: String = row.get(7);
    Ok(AudienceExecution {
        execution_id: row.get(0),
        schedule_id: row.get(1),
        sandbox: row.get(2),
        campaign_id: row.get(3),
        request_id: row.get(4),
        audience_id: row.get(5),
        context: row.get(6),
        status: FanoutStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown audience execution status {status:?}")))?,
        failure: row.get(8),
        execute_at: row.get(9),
        fired_at: row.get(10),
        late_ms: row.get(11),
        deadline: row.get(12),
        generation: row.get(13),
        targeted: row.get(14),
        cursor: row.get(15),
        created_at: row.get(16),
        finished_at: row.get(17),
    })
}

/// A new audience execution, immediate (`schedule` false: it starts running at once) or
/// scheduled for `execute_at`.
#[derive(Debug, Clone)]
pub struct NewAudienceExecution {
    pub sandbox: String,
    pub campaign_id: Uuid,
    pub request_id: String,
    pub body_hash: Vec<u8>,
    pub audience_id: Uuid,
    pub context: Value,
    pub execute_at: DateTime<Utc>,
    pub schedule: bool,
    pub now: DateTime<Utc>,
    /// How long the fan-out may publish once it fires (AJO: 12 h).
    pub window: chrono::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AudienceClaim {
    Created(AudienceExecution),
    /// The same request id with the same body: answer as the first time.
    Existing(AudienceExecution),
    BodyMismatch,
}

/// What deleting a schedule found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// It had fired (or was cancelled before: the same answer as the first time is `Cancelled`).
    AlreadyFired,
    NotFound,
}

/// Progress of a fan-out's deliveries, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanoutCounts {
    pub sent: i64,
    pub failed: i64,
    pub excluded: i64,
    pub unknown: i64,
    /// Claimed by a worker or waiting in a retry tier.
    pub pending: i64,
}

/// What a fan-out sends to, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: i32,
    pub targeted: i64,
}

impl Store {
    /// Records an audience execution request, once per (sandbox, campaign, request id).
    pub async fn claim_audience_execution(&self, new: &NewAudienceExecution) -> Result<AudienceClaim, StoreError> {
        let client = self.client().await?;
        // The key of a unitary execution: another request (see migration 0019).
        let unitary = client
            .query_opt(
                "SELECT 1 FROM executions WHERE sandbox = $1 AND campaign_id = $2 AND request_id = $3",
                &[&new.sandbox, &new.campaign_id, &new.request_id],
            )
            .await?;
        if unitary.is_some() {
            return Ok(AudienceClaim::BodyMismatch);
        }
        let execution_id = Uuid::now_v7();
        let schedule_id = new.schedule.then(Uuid::now_v7);
        let (status, fired_at, deadline) = if new.schedule {
            ("scheduled", None, None)
        } else {
            ("running", Some(new.now), Some(new.now + new.window))
        };
        let row = client
            .query_opt(
                &format!(
                    "INSERT INTO audience_executions (execution_id, schedule_id, sandbox, campaign_id, request_id, \
                       body_hash, audience_id, context, status, execute_at, fired_at, late_ms, deadline, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $11::timestamptz IS NULL THEN NULL ELSE 0 END, $12, $13) \
                     ON CONFLICT (sandbox, campaign_id, request_id) DO NOTHING RETURNING {COLUMNS}"
                ),
                &[
                    &execution_id,
                    &schedule_id,
                    &new.sandbox,
                    &new.campaign_id,
                    &new.request_id,
                    &new.body_hash,
                    &new.audience_id,
                    &new.context,
                    &status,
                    &new.execute_at,
                    &fired_at,
                    &deadline,
                    &new.now,
                ],
            )
            .await?;
        if let Some(row) = row {
            return Ok(AudienceClaim::Created(execution(&row)?));
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT {COLUMNS}, body_hash FROM audience_executions \
                     WHERE sandbox = $1 AND campaign_id = $2 AND request_id = $3"
                ),
                &[&new.sandbox, &new.campaign_id, &new.request_id],
            )
            .await?;
        let hash: Vec<u8> = row.get(18);
        if hash != new.body_hash {
            return Ok(AudienceClaim::BodyMismatch);
        }
        Ok(AudienceClaim::Existing(execution(&row)?))
    }

    pub async fn audience_execution(&self, sandbox: &str, id: Uuid) -> Result<Option<AudienceExecution>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM audience_executions WHERE execution_id = $1 AND sandbox = $2"),
                &[&id, &sandbox],
            )
            .await?;
        row.as_ref().map(execution).transpose()
    }

    pub async fn schedule(&self, sandbox: &str, schedule_id: Uuid) -> Result<Option<AudienceExecution>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM audience_executions WHERE schedule_id = $1 AND sandbox = $2"),
                &[&schedule_id, &sandbox],
            )
            .await?;
        row.as_ref().map(execution).transpose()
    }

    /// The campaign's scheduled audience executions, newest first (at most 500).
    pub async fn campaign_schedules(
        &self,
        sandbox: &str,
        campaign_id: Uuid,
    ) -> Result<Vec<AudienceExecution>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM audience_executions \
                     WHERE sandbox = $1 AND campaign_id = $2 AND schedule_id IS NOT NULL \
                     ORDER BY created_at DESC LIMIT 500"
                ),
                &[&sandbox, &campaign_id],
            )
            .await?;
        rows.iter().map(execution).collect()
    }

    /// Cancels a schedule that has not fired. Under the row lock the firing statement takes, so
    /// a schedule is either cancelled or fired, never both.
    pub async fn cancel_schedule(
        &self,
        sandbox: &str,
        schedule_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<CancelOutcome, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "WITH target AS (SELECT execution_id, status FROM audience_executions \
                                  WHERE schedule_id = $1 AND sandbox = $2 FOR UPDATE), \
                      cancelled AS (UPDATE audience_executions e SET status = 'cancelled', finished_at = $3 \
                                      FROM target WHERE e.execution_id = target.execution_id \
                                       AND target.status = 'scheduled' RETURNING e.execution_id) \
                 SELECT target.status, (SELECT count(*) FROM cancelled) FROM target",
                &[&schedule_id, &sandbox, &now],
            )
            .await?;
        Ok(match row {
            None => CancelOutcome::NotFound,
            Some(row) => {
                let status: String = row.get(0);
                if row.get::<_, i64>(1) > 0 || status == "cancelled" {
                    CancelOutcome::Cancelled
                } else {
                    CancelOutcome::AlreadyFired
                }
            }
        })
    }

    /// Fires every due schedule (up to `limit`): `running` from now, with how late it fired.
    /// Returns (execution id, milliseconds late).
    pub async fn fire_due_schedules(
        &self,
        now: DateTime<Utc>,
        window: chrono::Duration,
        limit: i64,
    ) -> Result<Vec<(Uuid, i64)>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "UPDATE audience_executions e \
                    SET status = 'running', fired_at = $1, deadline = $1 + $2::float8 * interval '1 second', \
                        late_ms = GREATEST(0, (extract(epoch FROM ($1 - e.execute_at)) * 1000)::bigint) \
                  WHERE e.execution_id IN (SELECT execution_id FROM audience_executions \
                                            WHERE status = 'scheduled' AND execute_at <= $1 \
                                            ORDER BY execute_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
                    AND e.status = 'scheduled' \
                  RETURNING e.execution_id, e.late_ms",
                &[&now, &(window.num_milliseconds() as f64 / 1000.0), &limit],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Takes the lease of one running fan-out nobody holds (never held, its holder's lease
    /// passed, or released), for `owner` until `until`.
    pub async fn lease_fanout(
        &self,
        owner: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        except: &[Uuid],
    ) -> Result<Option<AudienceExecution>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE audience_executions SET lease_owner = $1, lease_until = $3 \
                      WHERE execution_id = (SELECT execution_id FROM audience_executions \
                                             WHERE status = 'running' AND (lease_until IS NULL OR lease_until < $2) \
                                               AND NOT (execution_id = ANY ($4)) \
                                             ORDER BY execute_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
                      RETURNING {COLUMNS}"
                ),
                &[&owner, &now, &until, &except],
            )
            .await?;
        row.as_ref().map(execution).transpose()
    }

    /// Fixes what a fan-out sends to, once: a list audience's current generation, or a new
    /// computation of a filter audience. Counts the audience as targeted in the report, in the
    /// same transaction. `None` when `owner` no longer holds the lease; `Some(None)` when the
    /// audience is gone.
    pub async fn start_fanout(
        &self,
        execution_id: Uuid,
        owner: Uuid,
        channel: Channel,
        filter: Option<&CompiledFilter>,
        now: DateTime<Utc>,
    ) -> Result<Option<Option<Snapshot>>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT e.generation, e.targeted, e.sandbox, e.audience_id, e.campaign_id, a.generation, a.size \
                   FROM audience_executions e LEFT JOIN audiences a ON a.id = e.audience_id \
                  WHERE e.execution_id = $1 AND e.lease_owner = $2 AND e.status = 'running' FOR UPDATE OF e",
                &[&execution_id, &owner],
            )
            .await?
        else {
            return Ok(None);
        };
        if let (Some(generation), Some(targeted)) = (row.get::<_, Option<i32>>(0), row.get::<_, Option<i64>>(1)) {
            return Ok(Some(Some(Snapshot { generation, targeted })));
        }
        let (sandbox, audience_id, campaign_id): (String, Uuid, Uuid) = (row.get(2), row.get(3), row.get(4));
        let Some(current) = row.get::<_, Option<i32>>(5) else {
            return Ok(Some(None));
        };
        let (generation, targeted) = match filter {
            Some(filter) => Store::recompute_audience(&tx, &sandbox, audience_id, filter, now).await?,
            None => (current, row.get::<_, i64>(6)),
        };
        tx.execute(
            "UPDATE audience_executions SET generation = $2, targeted = $3 WHERE execution_id = $1",
            &[&execution_id, &generation, &targeted],
        )
        .await?;
        if targeted > 0 {
            tx.execute(
                "INSERT INTO report_pending (campaign_id, minute, channel, event, reason, count) \
                 VALUES ($1, date_trunc('minute', $2::timestamptz), $3, 'targeted', '', $4)",
                &[&campaign_id, &now, &channel.as_str(), &targeted],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(Some(Some(Snapshot { generation, targeted })))
    }

    /// Records that every member before `cursor` is confirmed by the broker, and renews the
    /// lease. `false` when `owner` lost the lease or the fan-out was ended.
    pub async fn checkpoint_fanout(
        &self,
        execution_id: Uuid,
        owner: Uuid,
        cursor: i32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let updated = client
            .execute(
                "UPDATE audience_executions SET cursor = $3, lease_until = $4 \
                  WHERE execution_id = $1 AND lease_owner = $2 AND status = 'running' AND cursor <= $3",
                &[&execution_id, &owner, &cursor, &lease_until],
            )
            .await?;
        Ok(updated == 1)
    }

    /// Ends a fan-out: `Succeeded` once all is published, or `Failed` with `reason`, recording
    /// every member not yet published as excluded with that reason (counted in the report by
    /// the deliveries trigger). `false` when `owner` no longer holds the lease.
    pub async fn finish_fanout(
        &self,
        execution_id: Uuid,
        owner: Uuid,
        failure: Option<&str>,
        channel: Channel,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT audience_id, generation, cursor, campaign_id FROM audience_executions \
                  WHERE execution_id = $1 AND lease_owner = $2 AND status = 'running' FOR UPDATE",
                &[&execution_id, &owner],
            )
            .await?
        else {
            return Ok(false);
        };
        let (audience_id, generation, cursor, campaign_id): (Uuid, Option<i32>, i32, Uuid) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if let (Some(reason), Some(generation)) = (failure, generation) {
            tx.execute(
                "INSERT INTO deliveries (execution_id, recipient_index, status, reason, attempts, campaign_id, \
                       channel, created_at, updated_at) \
                     SELECT $1, m.seq, 'excluded', $5, 0, $6, $7, $8, $8 FROM audience_members m \
                      WHERE m.audience_id = $2 AND m.generation = $3 AND m.seq >= $4 \
                     ON CONFLICT (execution_id, recipient_index) DO NOTHING",
                &[&execution_id, &audience_id, &generation, &cursor, &reason, &campaign_id, &channel.as_str(), &now],
            )
            .await?;
        }
        let status = if failure.is_some() { "failed" } else { "succeeded" };
        tx.execute(
            "UPDATE audience_executions SET status = $2, failure = $3, finished_at = $4, \
                    lease_owner = NULL, lease_until = NULL WHERE execution_id = $1",
            &[&execution_id, &status, &failure, &now],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Gives a fan-out's lease up (its process is stopping), so another instance takes it at once.
    pub async fn release_fanout(&self, execution_id: Uuid, owner: Uuid) -> Result<(), StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE audience_executions SET lease_owner = NULL, lease_until = NULL \
                  WHERE execution_id = $1 AND lease_owner = $2",
                &[&execution_id, &owner],
            )
            .await?;
        Ok(())
    }

    /// Deliveries of an execution by status (one index range scan).
    pub async fn fanout_counts(&self, execution_id: Uuid) -> Result<FanoutCounts, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT status, count(*) FROM deliveries WHERE execution_id = $1 GROUP BY status", &[&execution_id])
            .await?;
        let mut counts = FanoutCounts::default();
        for row in rows {
            let (status, count): (String, i64) = (row.get(0), row.get(1));
            match status.as_str() {
                "sent" => counts.sent += count,
                "failed" => counts.failed += count,
                "excluded" => counts.excluded += count,
                "unknown" => counts.unknown += count,
                _ => counts.pending += count,
            }
        }
        Ok(counts)
    }
}

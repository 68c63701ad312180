//! Campaigns and their versions. A campaign has at most one live version and at most one draft
//! version (two columns on the campaign row, so "at most one" is structural). Every change runs
//! in a transaction holding the campaign row lock, so the decision (made by the caller from the
//! locked record) and the write cannot interleave with another change.

use chrono::{DateTime, Utc};
use herald_core::{CampaignDefinition, CampaignStatus, Channel, StoredState};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::{Store, StoreError};

/// The PostgreSQL notification channel on which every campaign change is announced, with the
/// campaign id as payload.
pub const CAMPAIGN_CHANGES_CHANNEL: &str = "herald_campaign_changes";

/// One stored version of a campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionRecord {
    pub id: Uuid,
    pub number: i32,
    pub definition: CampaignDefinition,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
}

/// A campaign with its live and draft versions.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignRecord {
    pub id: Uuid,
    pub sandbox: String,
    pub name: String,
    pub description: Option<String>,
    pub channel: Channel,
    pub state: StoredState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub archived_at: Option<DateTime<Utc>>,
    pub live: Option<VersionRecord>,
    pub draft: Option<VersionRecord>,
}

impl CampaignRecord {
    pub fn status(&self, now: DateTime<Utc>) -> CampaignStatus {
        CampaignStatus::at(self.state, self.live.as_ref().map(|live| &live.definition.schedule), now)
    }

    /// The newest version: the draft when there is one, else the live one.
    pub fn latest(&self) -> Option<&VersionRecord> {
        self.draft.as_ref().or(self.live.as_ref())
    }
}

/// What a new campaign starts with (as a draft).
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub sandbox: String,
    pub name: String,
    pub description: Option<String>,
    pub channel: Channel,
    pub definition: CampaignDefinition,
}

/// A change decided from the locked record.
#[derive(Debug, Clone)]
pub enum CampaignChange {
    /// Writes the draft version (creating it next to the live one if there is none).
    EditDraft {
        name: String,
        description: Option<String>,
        definition: Box<CampaignDefinition>,
    },
    /// Promotes the draft to live, replacing any live version.
    Activate,
    Stop,
    Archive,
    Delete,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError<E> {
    #[error("campaign not found")]
    NotFound,
    #[error("change refused")]
    Refused(E),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const SELECT_CAMPAIGN: &str = "
    SELECT c.id, c.sandbox, c.name, c.description, c.channel, c.state,
           c.created_at, c.updated_at, c.activated_at, c.stopped_at, c.archived_at,
           lv.id, lv.number, lv.definition, lv.created_at, lv.updated_at, lv.activated_at,
           dv.id, dv.number, dv.definition, dv.created_at, dv.updated_at, dv.activated_at
      FROM campaigns c
      LEFT JOIN campaign_versions lv ON lv.id = c.live_version_id
      LEFT JOIN campaign_versions dv ON dv.id = c.draft_version_id";

/// The SQL twin of [`CampaignStatus::at`] for filtering lists; `$3` is the instant.
const STATUS_SQL: &str = "CASE c.state WHEN 'active' THEN CASE
        WHEN c.live_end IS NOT NULL AND c.live_end <= $3 THEN 'completed'
        WHEN c.live_start IS NOT NULL AND c.live_start > $3 THEN 'scheduled'
        ELSE 'live' END
    ELSE c.state END";

fn version_from(row: &Row, first: usize) -> Result<Option<VersionRecord>, StoreError> {
    let Some(id) = row.get::<_, Option<Uuid>>(first) else {
        return Ok(None);
    };
    let definition: serde_json::Value = row.get(first + 2);
    let definition =
        serde_json::from_value(definition).map_err(|error| StoreError::Corrupt(format!("version {id}: {error}")))?;
    Ok(Some(VersionRecord {
        id,
        number: row.get(first + 1),
        definition,
        created_at: row.get(first + 3),
        updated_at: row.get(first + 4),
        activated_at: row.get(first + 5),
    }))
}

fn campaign_from(row: &Row) -> Result<CampaignRecord, StoreError> {
    let channel: String = row.get(4);
    let state: String = row.get(5);
    Ok(CampaignRecord {
        id: row.get(0),
        sandbox: row.get(1),
        name: row.get(2),
        description: row.get(3),
        channel: channel.parse().map_err(StoreError::Corrupt)?,
        state: StoredState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("unknown state `{state}`")))?,
        created_at: row.get(6),
        updated_at: row.get(7),
        activated_at: row.get(8),
        stopped_at: row.get(9),
        archived_at: row.get(10),
        live: version_from(row, 11)?,
        draft: version_from(row, 17)?,
    })
}

fn definition_json(definition: &CampaignDefinition) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(definition).map_err(|error| StoreError::Corrupt(error.to_string()))
}

impl Store {
    /// Creates a campaign as a draft with version 1. A name already used in the sandbox is a
    /// [`StoreError::Conflict`].
    pub async fn create_campaign(&self, new: &NewCampaign, now: DateTime<Utc>) -> Result<CampaignRecord, StoreError> {
        let (campaign_id, version_id) = (Uuid::now_v7(), Uuid::now_v7());
        let definition = definition_json(&new.definition)?;
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "INSERT INTO campaigns (id, sandbox, name, description, channel, state, draft_version_id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'draft', $6, $7, $7)",
                &[&campaign_id, &new.sandbox, &new.name, &new.description, &new.channel.as_str(), &version_id, &now],
            )
            .await?;
        transaction
            .execute(
                "INSERT INTO campaign_versions (id, campaign_id, number, definition, created_at, updated_at) VALUES ($1, $2, 1, $3, $4, $4)",
                &[&version_id, &campaign_id, &definition, &now],
            )
            .await?;
        transaction.commit().await?;
        self.get_campaign(&new.sandbox, campaign_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt("campaign vanished after insert".into()))
    }

    pub async fn get_campaign(&self, sandbox: &str, id: Uuid) -> Result<Option<CampaignRecord>, StoreError> {
        let sql = format!("{SELECT_CAMPAIGN} WHERE c.sandbox = $1 AND c.id = $2");
        let row = self.client().await?.query_opt(&sql, &[&sandbox, &id]).await?;
        row.as_ref().map(campaign_from).transpose()
    }

    /// Campaigns of `sandbox` in creation order, optionally only those with `status` at `now`,
    /// starting after the campaign `after` (a cursor from the previous page). A cursor that names
    /// no campaign of the sandbox (deleted, made up, or another sandbox's) gives an empty page, so
    /// a cursor cannot tell whether another sandbox's id exists.
    pub async fn list_campaigns(
        &self,
        sandbox: &str,
        status: Option<CampaignStatus>,
        now: DateTime<Utc>,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<CampaignRecord>, StoreError> {
        let sql = format!(
            "{SELECT_CAMPAIGN} WHERE c.sandbox = $1 AND ($2::text IS NULL OR {STATUS_SQL} = $2)
               AND ($4::uuid IS NULL OR (c.created_at, c.id) > (SELECT created_at, id FROM campaigns WHERE id = $4 AND sandbox = $1))
             ORDER BY c.created_at, c.id LIMIT $5"
        );
        let status = status.map(CampaignStatus::as_str);
        let params: [&(dyn ToSql + Sync); 5] = [&sandbox, &status, &now, &after, &limit];
        let rows = self.client().await?.query(&sql, &params).await?;
        rows.iter().map(campaign_from).collect()
    }

    /// Locks the campaign, lets `decide` choose a change from its current record, applies it
    /// and returns the new record (`None` once deleted). Nothing is written when `decide` refuses.
    pub async fn change_campaign<E>(
        &self,
        sandbox: &str,
        id: Uuid,
        now: DateTime<Utc>,
        decide: impl FnOnce(&CampaignRecord) -> Result<CampaignChange, E>,
    ) -> Result<Option<CampaignRecord>, ChangeError<E>> {
        let mut client = self.client().await.map_err(ChangeError::Store)?;
        let transaction = client.transaction().await.map_err(StoreError::from)?;
        let sql = format!("{SELECT_CAMPAIGN} WHERE c.sandbox = $1 AND c.id = $2 FOR UPDATE OF c");
        let row = transaction.query_opt(&sql, &[&sandbox, &id]).await.map_err(StoreError::from)?;
        let record = campaign_from(&row.ok_or(ChangeError::NotFound)?)?;
        let change = decide(&record).map_err(ChangeError::Refused)?;
        let statement = match &change {
            CampaignChange::EditDraft { name, description, definition } => {
                let definition = definition_json(definition)?;
                transaction
                    .execute(
                        "UPDATE campaigns SET name = $2, description = $3, updated_at = $4 WHERE id = $1",
                        &[&id, name, description, &now],
                    )
                    .await
                    .map_err(StoreError::from)?;
                match &record.draft {
                    Some(draft) => transaction
                        .execute(
                            "UPDATE campaign_versions SET definition = $2, updated_at = $3 WHERE id = $1",
                            &[&draft.id, &definition, &now],
                        )
                        .await
                        .map(|_| ()),
                    None => {
                        let version_id = Uuid::now_v7();
                        let number = record.live.as_ref().map_or(0, |live| live.number) + 1;
                        transaction
                            .execute(
                                "INSERT INTO campaign_versions (id, campaign_id, number, definition, created_at, updated_at)
                                 VALUES ($1, $2, $3, $4, $5, $5)",
                                &[&version_id, &id, &number, &definition, &now],
                            )
                            .await
                            .map_err(StoreError::from)?;
                        transaction
                            .execute("UPDATE campaigns SET draft_version_id = $2 WHERE id = $1", &[&id, &version_id])
                            .await
                            .map(|_| ())
                    }
                }
            }
            CampaignChange::Activate => {
                let draft =
                    record.draft.as_ref().ok_or_else(|| StoreError::Corrupt("activate without a draft".into()))?;
                let schedule = &draft.definition.schedule;
                transaction
                    .execute("UPDATE campaign_versions SET activated_at = $2 WHERE id = $1", &[&draft.id, &now])
                    .await
                    .map_err(StoreError::from)?;
                transaction
                    .execute(
                        "UPDATE campaigns SET state = 'active', live_version_id = draft_version_id, draft_version_id = NULL,
                                live_start = $2, live_end = $3, activated_at = $4, updated_at = $4 WHERE id = $1",
                        &[&id, &schedule.start_date, &schedule.end_date, &now],
                    )
                    .await
                    .map(|_| ())
            }
            CampaignChange::Stop => transaction
                .execute(
                    "UPDATE campaigns SET state = 'stopped', stopped_at = $2, updated_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map(|_| ()),
            CampaignChange::Archive => transaction
                .execute(
                    "UPDATE campaigns SET state = 'archived', archived_at = $2, updated_at = $2 WHERE id = $1",
                    &[&id, &now],
                )
                .await
                .map(|_| ()),
            CampaignChange::Delete => {
                transaction.execute("DELETE FROM campaigns WHERE id = $1", &[&id]).await.map(|_| ())
            }
        };
        statement.map_err(StoreError::from)?;
        // Delivered to listeners on commit only: every API process drops its cached copy.
        transaction
            .execute("SELECT pg_notify($1, $2)", &[&CAMPAIGN_CHANGES_CHANNEL, &id.to_string()])
            .await
            .map_err(StoreError::from)?;
        transaction.commit().await.map_err(StoreError::from)?;
        if matches!(change, CampaignChange::Delete) {
            return Ok(None);
        }
        Ok(self.get_campaign(sandbox, id).await?)
    }
}

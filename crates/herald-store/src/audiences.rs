//! Audiences: a filter over a sandbox's stored profiles, or an uploaded list. Either way its
//! members are written as a numbered generation (`audience_members`), so a fan-out reads a fixed
//! snapshot by key, and a recomputation or a new upload never moves a running fan-out's
//! recipients.

use std::pin::Pin;

use chrono::{DateTime, Utc};
use herald_core::audience::filter::CompiledFilter;
use herald_core::audience::members::Member;
use herald_core::execution::RecipientType;
use serde_json::Value;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::{Store, StoreError};

/// What selects an audience's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudienceKind {
    Filter,
    List,
}

impl AudienceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AudienceKind::Filter => "filter",
            AudienceKind::List => "list",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AudienceRecord {
    pub id: Uuid,
    pub name: String,
    pub kind: AudienceKind,
    pub filter: Option<Value>,
    pub generation: i32,
    pub size: i64,
    pub computed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const AUDIENCE_COLUMNS: &str = "id, name, kind, filter, generation, size, computed_at, created_at, updated_at";

fn audience(row: &tokio_postgres::Row) -> Result<AudienceRecord, StoreError> {
    let kind: String = row.get(2);
    Ok(AudienceRecord {
        id: row.get(0),
        name: row.get(1),
        kind: match kind.as_str() {
            "filter" => AudienceKind::Filter,
            "list" => AudienceKind::List,
            other => return Err(StoreError::Corrupt(format!("unknown audience kind {other:?}"))),
        },
        filter: row.get(3),
        generation: row.get(4),
        size: row.get(5),
        computed_at: row.get(6),
        created_at: row.get(7),
        updated_at: row.get(8),
    })
}

/// The summary of a finished upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadSummary {
    pub generation: i32,
    /// Distinct members stored.
    pub size: i64,
    /// Rows read, duplicates included.
    pub rows: u64,
}

/// Members of an audience generation, from `seq` on, in order: (seq, member).
pub type MemberPage = Vec<(i32, Member)>;

fn kind_text(kind: RecipientType) -> &'static str {
    match kind {
        RecipientType::Aep => "aep",
        RecipientType::External => "external",
    }
}

/// Writes generation `generation` of `audience_id` from the sandbox's profiles matching
/// `filter`, inside `tx`; returns its size. Members are numbered in identity order.
async fn compute_members(
    tx: &tokio_postgres::Transaction<'_>,
    sandbox: &str,
    audience_id: Uuid,
    generation: i32,
    filter: &CompiledFilter,
) -> Result<i64, StoreError> {
    let sql = format!(
        "INSERT INTO audience_members (audience_id, generation, seq, kind, namespace, user_id) \
         SELECT $1, $2, (row_number() OVER (ORDER BY p.namespace, p.user_id) - 1)::integer, 'aep', p.namespace, p.user_id \
           FROM profiles p WHERE p.sandbox = $3 AND ({})",
        filter.sql
    );
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&audience_id, &generation, &sandbox];
    params.extend(filter.params.iter().map(|p| p as &(dyn ToSql + Sync)));
    let inserted = tx.execute(sql.as_str(), &params).await?;
    Ok(i64::try_from(inserted).unwrap_or(i64::MAX))
}

/// Deletes the generations of `audience_id` that are neither its current one nor read by a
/// running fan-out.
const PRUNE_GENERATIONS: &str = "DELETE FROM audience_members m \
    WHERE m.audience_id = $1 \
      AND m.generation <> (SELECT generation FROM audiences WHERE id = $1) \
      AND m.generation NOT IN (SELECT e.generation FROM audience_executions e \
                                WHERE e.audience_id = $1 AND e.status = 'running' AND e.generation IS NOT NULL)";

impl Store {
    /// Creates an audience; a filter audience is computed at once. A name taken in the sandbox
    /// is a conflict.
    pub async fn create_audience(
        &self,
        sandbox: &str,
        name: &str,
        filter: Option<(&Value, &CompiledFilter)>,
        now: DateTime<Utc>,
    ) -> Result<AudienceRecord, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id = Uuid::now_v7();
        let kind = if filter.is_some() { AudienceKind::Filter } else { AudienceKind::List };
        let inserted = tx
            .execute(
                "INSERT INTO audiences (id, sandbox, name, kind, filter, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (sandbox, name) DO NOTHING",
                &[&id, &sandbox, &name, &kind.as_str(), &filter.map(|(raw, _)| raw), &now],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!("an audience named {name:?} exists")));
        }
        if let Some((_, compiled)) = filter {
            let size = compute_members(&tx, sandbox, id, 1, compiled).await?;
            tx.execute(
                "UPDATE audiences SET generation = 1, size = $2, computed_at = $3 WHERE id = $1",
                &[&id, &size, &now],
            )
            .await?;
        }
        let row = tx.query_one(&format!("SELECT {AUDIENCE_COLUMNS} FROM audiences WHERE id = $1"), &[&id]).await?;
        tx.commit().await?;
        audience(&row)
    }

    pub async fn get_audience(&self, sandbox: &str, id: Uuid) -> Result<Option<AudienceRecord>, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {AUDIENCE_COLUMNS} FROM audiences WHERE id = $1 AND sandbox = $2"),
                &[&id, &sandbox],
            )
            .await?;
        row.as_ref().map(audience).transpose()
    }

    pub async fn list_audiences(&self, sandbox: &str) -> Result<Vec<AudienceRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {AUDIENCE_COLUMNS} FROM audiences WHERE sandbox = $1 ORDER BY name LIMIT 1000"),
                &[&sandbox],
            )
            .await?;
        rows.iter().map(audience).collect()
    }

    /// Deletes an audience and its members; `Conflict` while an execution is scheduled for it or
    /// fanning out to it. `false` when there is no such audience.
    pub async fn delete_audience(&self, sandbox: &str, id: Uuid) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(_) =
            tx.query_opt("SELECT 1 FROM audiences WHERE id = $1 AND sandbox = $2 FOR UPDATE", &[&id, &sandbox]).await?
        else {
            return Ok(false);
        };
        let busy: i64 = tx
            .query_one(
                "SELECT count(*) FROM audience_executions WHERE audience_id = $1 AND status IN ('scheduled', 'running')",
                &[&id],
            )
            .await?
            .get(0);
        if busy > 0 {
            return Err(StoreError::Conflict(format!("{busy} executions are scheduled for or sending to it")));
        }
        tx.execute("DELETE FROM audiences WHERE id = $1", &[&id]).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Starts replacing a list audience's members. Refused (`Conflict`) for a filter audience or
    /// while another upload to it runs; `None` when there is no such audience.
    pub async fn begin_member_upload(&self, sandbox: &str, id: Uuid) -> Result<Option<MemberUpload>, StoreError> {
        let client = self.client().await?;
        // A client gone mid-upload ends its statements within a second (its connection is closed,
        // and PostgreSQL otherwise finds out only when it next writes to it), and no statement of
        // an upload runs longer than five minutes.
        client
            .batch_execute("SET client_connection_check_interval = '1s'; BEGIN; SET LOCAL statement_timeout = '300s'")
            .await?;
        let mut upload = MemberUpload { client: Some(client), writer: None, audience_id: id, generation: 0, rows: 0 };
        let row = upload
            .client()
            .query_opt(
                "SELECT kind, generation FROM audiences WHERE id = $1 AND sandbox = $2 FOR UPDATE NOWAIT",
                &[&id, &sandbox],
            )
            .await
            .map_err(|error| match error.code().map(tokio_postgres::error::SqlState::code) {
                Some("55P03") => StoreError::Conflict("another upload to this audience is running".into()),
                _ => StoreError::from(error),
            })?;
        let Some(row) = row else { return Ok(None) };
        if row.get::<_, String>(0) != "list" {
            return Err(StoreError::Conflict("a filter audience's members come from its filter".into()));
        }
        upload.generation = row.get::<_, i32>(1) + 1;
        let client = upload.client();
        client
            .batch_execute(
                "CREATE TEMP TABLE upload_members (seq integer, kind text, namespace text, user_id text) ON COMMIT DROP",
            )
            .await?;
        let sink = client.copy_in("COPY upload_members (seq, kind, namespace, user_id) FROM STDIN BINARY").await?;
        upload.writer =
            Some(Box::pin(BinaryCopyInWriter::new(sink, &[Type::INT4, Type::TEXT, Type::TEXT, Type::TEXT])));
        Ok(Some(upload))
    }

    /// Up to `limit` members of a generation from position `from` on, in order.
    pub async fn audience_page(
        &self,
        audience_id: Uuid,
        generation: i32,
        from: i32,
        limit: i64,
    ) -> Result<MemberPage, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, kind, namespace, user_id FROM audience_members \
                 WHERE audience_id = $1 AND generation = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
                &[&audience_id, &generation, &from, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let kind: &str = row.get(1);
                let kind = if kind == "external" { RecipientType::External } else { RecipientType::Aep };
                (row.get(0), Member { kind, namespace: row.get(2), user_id: row.get(3) })
            })
            .collect())
    }

    /// Computes the next generation of a filter audience (for a fan-out starting now), inside the
    /// caller's transaction; returns it and its size.
    pub(crate) async fn recompute_audience(
        tx: &tokio_postgres::Transaction<'_>,
        sandbox: &str,
        audience_id: Uuid,
        filter: &CompiledFilter,
        now: DateTime<Utc>,
    ) -> Result<(i32, i64), StoreError> {
        let generation: i32 = tx
            .query_one(
                "UPDATE audiences SET generation = generation + 1 WHERE id = $1 RETURNING generation",
                &[&audience_id],
            )
            .await?
            .get(0);
        let size = compute_members(tx, sandbox, audience_id, generation, filter).await?;
        tx.execute(
            "UPDATE audiences SET size = $2, computed_at = $3, updated_at = $3 WHERE id = $1",
            &[&audience_id, &size, &now],
        )
        .await?;
        tx.execute(PRUNE_GENERATIONS, &[&audience_id]).await?;
        Ok((generation, size))
    }

    /// Deletes generations of the audience no running fan-out reads any more.
    pub async fn prune_audience(&self, audience_id: Uuid) -> Result<(), StoreError> {
        self.client().await?.execute(PRUNE_GENERATIONS, &[&audience_id]).await?;
        Ok(())
    }
}

/// A list upload in progress: one transaction, the rows streamed in with `COPY`. Dropped
/// without [`MemberUpload::finish`], its connection is closed rather than returned to the pool
/// mid-transaction, so nothing of it is kept.
pub struct MemberUpload {
    client: Option<deadpool_postgres::Object>,
    writer: Option<Pin<Box<BinaryCopyInWriter>>>,
    audience_id: Uuid,
    generation: i32,
    rows: u64,
}

impl std::fmt::Debug for MemberUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberUpload").field("audience_id", &self.audience_id).field("rows", &self.rows).finish()
    }
}

impl MemberUpload {
    fn client(&self) -> &deadpool_postgres::Object {
        self.client.as_ref().expect("an upload's connection is kept until it ends")
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends a member, numbered in upload order.
    pub async fn write(&mut self, member: &Member) -> Result<(), StoreError> {
        let seq = i32::try_from(self.rows).map_err(|_| StoreError::Conflict("too many members".into()))?;
        let writer = self.writer.as_mut().expect("the copy runs until finish");
        writer.as_mut().write(&[&seq, &kind_text(member.kind), &member.namespace, &member.user_id]).await?;
        self.rows += 1;
        Ok(())
    }

    /// Stores the upload as the audience's new generation: each identity once, at its first
    /// position, positions renumbered without gaps.
    pub async fn finish(mut self, now: DateTime<Utc>) -> Result<UploadSummary, StoreError> {
        if let Some(mut writer) = self.writer.take() {
            writer.as_mut().finish().await?;
        }
        let (audience_id, generation) = (self.audience_id, self.generation);
        let client = self.client();
        let size = client
            .execute(
                "INSERT INTO audience_members (audience_id, generation, seq, kind, namespace, user_id) \
                 SELECT $1, $2, (row_number() OVER (ORDER BY seq) - 1)::integer, kind, namespace, user_id \
                   FROM (SELECT DISTINCT ON (namespace, user_id) seq, kind, namespace, user_id \
                           FROM upload_members ORDER BY namespace, user_id, seq) first_copies",
                &[&audience_id, &generation],
            )
            .await?;
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        client
            .execute(
                "UPDATE audiences SET generation = $2, size = $3, computed_at = $4, updated_at = $4 WHERE id = $1",
                &[&audience_id, &generation, &size, &now],
            )
            .await?;
        client.execute(PRUNE_GENERATIONS, &[&audience_id]).await?;
        client.batch_execute("COMMIT").await?;
        // Committed: the connection goes back to the pool.
        drop(self.client.take());
        Ok(UploadSummary { generation, size, rows: self.rows })
    }
}

impl Drop for MemberUpload {
    fn drop(&mut self) {
        self.writer.take();
        if let Some(client) = self.client.take() {
            // Mid-transaction (an error, or the client went away): close it, never reuse it.
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

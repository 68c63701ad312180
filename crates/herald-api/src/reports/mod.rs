//! Reports: `GET /campaigns/{id}/report` (the live report by default: the last 24 hours),
//! `GET /campaigns/{id}/report.html` (the same as a page with a chart) and `GET /reports` (the
//! global report, across the sandbox's campaigns, for any window).

mod page;

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use herald_core::report::{ChannelReport, ReportWindow, WindowError, channel_reports};
use herald_core::{Channel, Scope};
use herald_store::CampaignRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Caller;
use crate::json::ApiQuery;
use crate::problem::Problem;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ReportQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    bucket_seconds: Option<i64>,
}

/// Report bounds are kept to years 1 to 9999: PostgreSQL's timestamps end at 4713 BC, and
/// window arithmetic near chrono's own limits would overflow.
fn within_years(at: Option<DateTime<Utc>>) -> bool {
    at.is_none_or(|at| (1..=9999).contains(&chrono::Datelike::year(&at)))
}

impl ReportQuery {
    fn window(&self, now: DateTime<Utc>) -> Result<ReportWindow, Problem> {
        for (pointer, at) in [("/from", self.from), ("/to", self.to)] {
            if !within_years(at) {
                return Err(Problem::validation(
                    "Invalid report window",
                    vec![Problem::field_error(pointer, "must be between the years 1 and 9999")],
                ));
            }
        }
        ReportWindow::new(self.from, self.to, self.bucket_seconds, now).map_err(|error| {
            let pointer = match error {
                WindowError::Empty | WindowError::TooLong => "/from",
                WindowError::BadBucket | WindowError::TooManyBuckets => "/bucketSeconds",
            };
            Problem::validation("Invalid report window", vec![Problem::field_error(pointer, error.to_string())])
        })
    }
}

/// One campaign's report, as JSON and as the page renders it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CampaignReport {
    campaign_id: Uuid,
    name: String,
    /// Where the campaign is in its lifecycle now (a report of a stopped campaign says so).
    status: herald_core::CampaignStatus,
    channel: Channel,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket_seconds: i64,
    channels: Vec<ChannelReport>,
}

async fn campaign_report(
    state: &AppState,
    caller: &Caller,
    id: &str,
    query: &ReportQuery,
) -> Result<CampaignReport, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let record: CampaignRecord = crate::campaigns::load(state, caller, id).await?;
    let now = state.clock.now();
    let window = match (query.from, query.to) {
        // No window asked for: the last 24 hours, or, for a campaign younger than that, from its
        // creation (at least the last hour), so a new campaign's first sends fill the chart
        // instead of one thin bar at the right edge of a day.
        (None, None) => {
            let from = record.created_at.clamp(now - chrono::Duration::hours(24), now - chrono::Duration::hours(1));
            ReportQuery { from: Some(from), ..query.clone() }.window(now)?
        }
        _ => query.window(now)?,
    };
    let rows = state.store.report_rows(&caller.sandbox, Some(record.id), &window).await?;
    Ok(CampaignReport {
        campaign_id: record.id,
        status: record.status(now),
        name: record.name,
        channel: record.channel,
        from: window.from,
        to: window.to,
        bucket_seconds: window.bucket.num_seconds(),
        channels: channel_reports(&window, &[record.channel], &rows.counts, &rows.series, &rows.latency),
    })
}

pub(crate) async fn campaign(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Json<CampaignReport>, Problem> {
    Ok(Json(campaign_report(&state, &caller, &id, &query).await?))
}

pub(crate) async fn campaign_page(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Response, Problem> {
    let report = campaign_report(&state, &caller, &id, &query).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is inline; nothing may be fetched from elsewhere.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
        ],
        page::render(&report),
    )
        .into_response())
}

/// The global report: every channel, and a line per campaign with activity in the window.
pub(crate) async fn global(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ReportQuery>,
) -> Result<Json<Value>, Problem> {
    caller.require(Scope::CampaignsRead)?;
    let window = query.window(state.clock.now())?;
    let (rows, per_campaign) = tokio::try_join!(
        state.store.report_rows(&caller.sandbox, None, &window),
        state.store.report_campaign_counts(&caller.sandbox, &window),
    )?;
    let mut campaigns: BTreeMap<(String, Uuid), Value> = BTreeMap::new();
    for row in per_campaign {
        let entry = campaigns.entry((row.name.clone(), row.campaign_id)).or_insert_with(|| {
            json!({
                "campaignId": row.campaign_id, "name": row.name, "channel": row.channel,
                "targeted": 0, "sent": 0, "failed": 0, "excluded": 0, "unknown": 0, "retries": 0, "deadLettered": 0,
                "delivered": 0, "bounced": 0, "complained": 0, "delayed": 0, "rejected": 0,
            })
        });
        if let Some(slot) = entry.get_mut(row.event.json_field()) {
            *slot = json!(slot.as_i64().unwrap_or(0) + row.count);
        }
    }
    Ok(Json(json!({
        "from": window.from,
        "to": window.to,
        "bucketSeconds": window.bucket.num_seconds(),
        "channels": channel_reports(&window, &Channel::ALL, &rows.counts, &rows.series, &rows.latency),
        "campaigns": campaigns.into_values().collect::<Vec<_>>(),
    })))
}

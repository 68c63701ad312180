//! Report queries. They read the rollups that migration 0007's triggers keep (per campaign,
//! channel and minute), never the delivery records, so their cost follows the window's length
//! and not the number of deliveries in it. Outcomes not yet folded into the rollups
//! (`report_pending`, at most a few seconds' worth) are read too, so reports are exact.

use herald_core::report::{CountRow, LatencyRow, ReportEvent, ReportWindow, SeriesRow};
use uuid::Uuid;

use crate::{Store, StoreError};

/// The rollup rows behind one report.
#[derive(Debug, Clone, Default)]
pub struct ReportRows {
    pub counts: Vec<CountRow>,
    pub series: Vec<SeriesRow>,
    pub latency: Vec<LatencyRow>,
}

/// One campaign's totals per event, for the global report's campaign table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignCount {
    pub campaign_id: Uuid,
    pub name: String,
    pub channel: String,
    pub event: ReportEvent,
    pub count: i64,
}

/// Event counts: the rollups and what is pending.
const COUNTS: &str = "SELECT campaign_id, channel, minute, event, reason, count FROM report_counts
                      UNION ALL
                      SELECT campaign_id, channel, minute, event, reason, count FROM report_pending WHERE event <> 'latency'";

/// The latency histogram: the rollups and what is pending.
const LATENCY: &str = "SELECT campaign_id, channel, minute, bucket, count FROM report_latency
                       UNION ALL
                       SELECT campaign_id, channel, minute, bucket, count FROM report_pending WHERE event = 'latency'";

/// Per hour, for long windows; pending rows are rounded down to their hour.
const COUNTS_HOURLY: &str =
    "SELECT campaign_id, channel, hour AS minute, event, reason, count FROM report_counts_hourly
                             UNION ALL
                             SELECT campaign_id, channel, date_trunc('hour', minute), event, reason, count
                               FROM report_pending WHERE event <> 'latency'";

const LATENCY_HOURLY: &str = "SELECT campaign_id, channel, hour AS minute, bucket, count FROM report_latency_hourly
                              UNION ALL
                              SELECT campaign_id, channel, date_trunc('hour', minute), bucket, count
                                FROM report_pending WHERE event = 'latency'";

/// The counts and latency sources that answer `window`: hourly rollups when its bounds and
/// buckets are whole hours, else the per-minute ones.
fn sources(window: &ReportWindow) -> (&'static str, &'static str) {
    if window.hourly() { (COUNTS_HOURLY, LATENCY_HOURLY) } else { (COUNTS, LATENCY) }
}

/// Pending rows folded per round.
const ROLLUP_BATCH: i32 = 50_000;

impl Store {
    /// Folds pending report rows into the rollups until none is left; returns how many it moved.
    pub async fn roll_up_reports(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        let mut moved = 0;
        loop {
            let taken: i64 = client.query_one("SELECT herald_report_rollup($1)", &[&ROLLUP_BATCH]).await?.get(0);
            moved += taken;
            if taken < i64::from(ROLLUP_BATCH) {
                return Ok(moved);
            }
        }
    }

    /// Runs [`Store::roll_up_reports`] every `interval`, for the life of the process. Every
    /// Herald process runs one; they share the work.
    pub async fn roll_up_reports_forever(self, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.roll_up_reports().await {
                tracing::debug!(%error, "report rollup postponed");
            }
        }
    }

    /// The rows of a report over `window`: for one campaign, or for every campaign of the sandbox.
    pub async fn report_rows(
        &self,
        sandbox: &str,
        campaign_id: Option<Uuid>,
        window: &ReportWindow,
    ) -> Result<ReportRows, StoreError> {
        let client = self.client().await?;
        // $1 sandbox, $2 from, $3 to, $4 the campaign or null for all, $5 the bucket width. Each
        // query is planned with its parameter values, so a null $4 costs no index.
        let filter = "c.sandbox = $1 AND r.minute >= $2 AND r.minute < $3 AND ($4::uuid IS NULL OR r.campaign_id = $4)";
        let (counts_from, latency_from) = sources(window);
        let counts_sql = format!(
            "SELECT r.channel, r.event, r.reason, sum(r.count)::bigint
               FROM ({counts_from}) r JOIN campaigns c ON c.id = r.campaign_id WHERE {filter} GROUP BY 1, 2, 3"
        );
        let series_sql = format!(
            "SELECT r.channel, date_bin(make_interval(secs => $5::float8), r.minute, $2), r.event, sum(r.count)::bigint
               FROM ({counts_from}) r JOIN campaigns c ON c.id = r.campaign_id
              WHERE {filter} GROUP BY 1, 2, 3"
        );
        let latency_sql = format!(
            "SELECT r.channel, r.bucket, sum(r.count)::bigint
               FROM ({latency_from}) r JOIN campaigns c ON c.id = r.campaign_id WHERE {filter} GROUP BY 1, 2"
        );
        let (from, to) = (window.from, window.to);
        #[allow(clippy::cast_precision_loss)]
        let bucket = window.bucket.num_seconds() as f64;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [&sandbox, &from, &to, &campaign_id, &bucket];
        let (counts, series, latency) = tokio::try_join!(
            client.query(&counts_sql, &params[..4]),
            client.query(&series_sql, &params),
            client.query(&latency_sql, &params[..4]),
        )?;
        Ok(ReportRows {
            counts: counts
                .iter()
                .map(|row| {
                    Ok(CountRow { channel: row.get(0), event: row.try_get(1)?, reason: row.get(2), count: row.get(3) })
                })
                .collect::<Result<_, StoreError>>()?,
            series: series
                .iter()
                .map(|row| {
                    Ok(SeriesRow { channel: row.get(0), start: row.get(1), event: row.try_get(2)?, count: row.get(3) })
                })
                .collect::<Result<_, StoreError>>()?,
            latency: latency
                .iter()
                .map(|row| LatencyRow { channel: row.get(0), bucket: row.get(1), count: row.get(2) })
                .collect(),
        })
    }

    /// Totals per campaign and event over a window, for every campaign of the sandbox with activity.
    pub async fn report_campaign_counts(
        &self,
        sandbox: &str,
        window: &ReportWindow,
    ) -> Result<Vec<CampaignCount>, StoreError> {
        let (counts_from, _) = sources(window);
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT r.campaign_id, c.name, r.channel, r.event, sum(r.count)::bigint
                   FROM ({counts_from}) r JOIN campaigns c ON c.id = r.campaign_id
                  WHERE c.sandbox = $1 AND r.minute >= $2 AND r.minute < $3
                  GROUP BY 1, 2, 3, 4 ORDER BY 2, 1"
                ),
                &[&sandbox, &window.from, &window.to],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(CampaignCount {
                    campaign_id: row.get(0),
                    name: row.get(1),
                    channel: row.get(2),
                    event: row.try_get(3)?,
                    count: row.get(4),
                })
            })
            .collect()
    }
}

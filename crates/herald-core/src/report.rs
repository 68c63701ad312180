//! Reports: the window a caller asks for, and the per-channel document assembled from the
//! rollup rows the store reads (counts per event and reason, counts per time bucket, and an
//! accept→sent latency histogram).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use crate::Channel;

/// Latency histogram buckets grow by this factor: bucket `b` holds [BASE^b, BASE^(b+1)) ms.
pub const LATENCY_BASE: f64 = 1.1;
/// The live report: the last 24 hours.
pub const DEFAULT_SPAN: Duration = Duration::hours(24);
/// Longest window one report covers.
pub const MAX_SPAN: Duration = Duration::days(400);
/// Windows longer than this have hour resolution (and are read from the hourly rollups).
pub const HOURLY_ABOVE: Duration = Duration::hours(48);
/// Most time buckets one report returns.
pub const MAX_BUCKETS: i64 = 1_000;
/// Bucket widths chosen when the caller names none: the first that gives at most ~100 points.
const NICE_BUCKETS: [i64; 9] = [60, 300, 900, 1_800, 3_600, 10_800, 21_600, 86_400, 604_800];

/// A report's time range, whole minutes (whole hours beyond [`HOURLY_ABOVE`]), and its bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub bucket: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("`from` must be before `to`")]
    Empty,
    #[error("a report covers at most {} days", MAX_SPAN.num_days())]
    TooLong,
    #[error("`bucketSeconds` must be a multiple of 60 between 60 and the window's length")]
    BadBucket,
    #[error("at most {MAX_BUCKETS} time buckets: choose a larger `bucketSeconds`")]
    TooManyBuckets,
}

impl ReportWindow {
    /// `from` is rounded down and `to` up to the minute (to the hour for windows longer than
    /// [`HOURLY_ABOVE`]); by default the window is the 24 hours before `now`.
    pub fn new(
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        bucket_seconds: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Self, WindowError> {
        let minute = Duration::minutes(1);
        let to = ceil(to.unwrap_or(now), minute);
        let mut from = from.unwrap_or(to - DEFAULT_SPAN).duration_trunc(minute).map_err(|_| WindowError::Empty)?;
        let mut to = to;
        if to - from > HOURLY_ABOVE {
            let hour = Duration::hours(1);
            from = from.duration_trunc(hour).map_err(|_| WindowError::Empty)?;
            to = ceil(to, hour);
        }
        if from >= to {
            return Err(WindowError::Empty);
        }
        let span = to - from;
        if span > MAX_SPAN {
            return Err(WindowError::TooLong);
        }
        let seconds = match bucket_seconds {
            Some(seconds) if seconds < 60 || seconds % 60 != 0 || seconds > span.num_seconds() => {
                return Err(WindowError::BadBucket);
            }
            Some(seconds) => seconds,
            None => NICE_BUCKETS.into_iter().find(|b| span.num_seconds() / b <= 100).unwrap_or(604_800),
        };
        if (span.num_seconds() + seconds - 1) / seconds > MAX_BUCKETS {
            return Err(WindowError::TooManyBuckets);
        }
        Ok(Self { from, to, bucket: Duration::seconds(seconds) })
    }

    /// Whether the hourly rollups can answer: hour-aligned bounds and buckets.
    pub fn hourly(&self) -> bool {
        let hour = Duration::hours(1);
        self.to - self.from > HOURLY_ABOVE
            && self.bucket.num_seconds() % 3_600 == 0
            && self.from.duration_trunc(hour).is_ok_and(|floor| floor == self.from)
            && self.to.duration_trunc(hour).is_ok_and(|floor| floor == self.to)
    }

    /// The start of every bucket, from `from` up to `to`.
    pub fn bucket_starts(&self) -> Vec<DateTime<Utc>> {
        let mut starts = Vec::new();
        let mut start = self.from;
        while start < self.to {
            starts.push(start);
            start += self.bucket;
        }
        starts
    }
}

fn ceil(at: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    match at.duration_trunc(unit) {
        Ok(floor) if floor == at => at,
        Ok(floor) => floor + unit,
        Err(_) => at,
    }
}

/// Total and per-reason counts, for one channel and event over the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Breakdown {
    pub total: i64,
    pub by_reason: BTreeMap<String, i64>,
}

impl Breakdown {
    fn add(&mut self, reason: &str, count: i64) {
        self.total += count;
        let reason = if reason.is_empty() { "unspecified" } else { reason };
        *self.by_reason.entry(reason.to_string()).or_default() += count;
    }
}

/// Accept→sent latency percentiles, each the upper bound of its histogram bucket (≤ 10% high).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    pub count: i64,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Event counts in one time bucket, for charts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeriesPoint {
    pub start: DateTime<Utc>,
    pub targeted: i64,
    pub sent: i64,
    pub failed: i64,
    pub excluded: i64,
    pub unknown: i64,
    pub retries: i64,
    pub dead_lettered: i64,
    pub delivered: i64,
    /// Hard and soft.
    pub bounced: i64,
    pub complained: i64,
}

/// Bounces after the send: hard (permanent: the address is suppressed) and soft, by sub-type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bounces {
    pub total: i64,
    pub hard: Breakdown,
    pub soft: Breakdown,
}

/// Feedback as fractions of the messages sent in the window (`None` before any was sent). SES
/// reviews an account at a 5% bounce rate or a 0.1% complaint rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    pub delivery: Option<f64>,
    pub bounce: Option<f64>,
    pub complaint: Option<f64>,
}

/// What one channel's recipients became over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelReport {
    pub channel: Channel,
    /// Recipients of accepted executions.
    pub targeted: i64,
    pub sent: i64,
    pub failed: Breakdown,
    pub excluded: Breakdown,
    /// Provider calls beyond each delivery's first.
    pub retries: i64,
    pub dead_lettered: Breakdown,
    /// The worker died during the provider call: maybe sent.
    pub unknown: i64,
    /// After the send (SES events): accepted by the receiving server.
    pub delivered: i64,
    pub bounces: Bounces,
    /// Marked as spam, by feedback type.
    pub complaints: Breakdown,
    /// Delivery delayed (the receiving server deferred it), by delay type.
    pub delayed: Breakdown,
    /// Refused by SES after the call (Reject, RenderingFailure).
    pub rejected: Breakdown,
    pub rates: Rates,
    pub latency_ms: LatencySummary,
    pub series: Vec<SeriesPoint>,
}

/// What the report triggers count (migration 0007 writes these names into `report_pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportEvent {
    /// Recipients of an execution the broker confirmed.
    Targeted,
    Sent,
    Failed,
    Excluded,
    /// Maybe sent: the worker died during the call, or the provider never answered.
    Unknown,
    /// Provider calls beyond each delivery's first.
    Retry,
    DeadLettered,
    /// An accept→sent latency observation (its histogram bucket), not a count.
    Latency,
    /// Feedback after the send, counted when the event is recorded (herald-store `feedback.rs`).
    Delivered,
    BouncedHard,
    BouncedSoft,
    Complained,
    Delayed,
    Rejected,
}

impl ReportEvent {
    pub const ALL: [ReportEvent; 14] = [
        ReportEvent::Targeted,
        ReportEvent::Sent,
        ReportEvent::Failed,
        ReportEvent::Excluded,
        ReportEvent::Unknown,
        ReportEvent::Retry,
        ReportEvent::DeadLettered,
        ReportEvent::Latency,
        ReportEvent::Delivered,
        ReportEvent::BouncedHard,
        ReportEvent::BouncedSoft,
        ReportEvent::Complained,
        ReportEvent::Delayed,
        ReportEvent::Rejected,
    ];

    /// Written when a provider's feedback is recorded, not by the outcome triggers.
    pub fn is_feedback(self) -> bool {
        matches!(
            self,
            ReportEvent::Delivered
                | ReportEvent::BouncedHard
                | ReportEvent::BouncedSoft
                | ReportEvent::Complained
                | ReportEvent::Delayed
                | ReportEvent::Rejected
        )
    }

    /// The name the triggers write.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportEvent::Targeted => "targeted",
            ReportEvent::Sent => "sent",
            ReportEvent::Failed => "failed",
            ReportEvent::Excluded => "excluded",
            ReportEvent::Unknown => "unknown",
            ReportEvent::Retry => "retry",
            ReportEvent::DeadLettered => "dead_lettered",
            ReportEvent::Latency => "latency",
            ReportEvent::Delivered => "delivered",
            ReportEvent::BouncedHard => "bounced_hard",
            ReportEvent::BouncedSoft => "bounced_soft",
            ReportEvent::Complained => "complained",
            ReportEvent::Delayed => "delayed",
            ReportEvent::Rejected => "rejected",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|event| event.as_str() == name)
    }

    /// The field of a report's JSON that counts it.
    pub fn json_field(self) -> &'static str {
        match self {
            ReportEvent::Retry => "retries",
            ReportEvent::DeadLettered => "deadLettered",
            ReportEvent::Latency => "latencyMs",
            ReportEvent::BouncedHard | ReportEvent::BouncedSoft => "bounced",
            other => other.as_str(),
        }
    }
}

/// One rollup row: `count` events of a kind (and reason) on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountRow {
    pub channel: String,
    pub event: ReportEvent,
    pub reason: String,
    pub count: i64,
}

/// Events of a kind on a channel in the bucket starting at `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesRow {
    pub channel: String,
    pub start: DateTime<Utc>,
    pub event: ReportEvent,
    pub count: i64,
}

/// Sent messages whose accept→sent latency fell in histogram bucket `bucket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyRow {
    pub channel: String,
    pub bucket: i16,
    pub count: i64,
}

/// One report per channel in `channels`, in that order, from the rollup rows of the window.
pub fn channel_reports(
    window: &ReportWindow,
    channels: &[Channel],
    counts: &[CountRow],
    series: &[SeriesRow],
    latency: &[LatencyRow],
) -> Vec<ChannelReport> {
    channels
        .iter()
        .map(|&channel| {
            let name = channel.as_str();
            let mut report = ChannelReport {
                channel,
                targeted: 0,
                sent: 0,
                failed: Breakdown::default(),
                excluded: Breakdown::default(),
                retries: 0,
                dead_lettered: Breakdown::default(),
                unknown: 0,
                delivered: 0,
                bounces: Bounces::default(),
                complaints: Breakdown::default(),
                delayed: Breakdown::default(),
                rejected: Breakdown::default(),
                rates: Rates::default(),
                latency_ms: latency_summary(latency.iter().filter(|row| row.channel == name)),
                series: window
                    .bucket_starts()
                    .into_iter()
                    .map(|start| SeriesPoint { start, ..Default::default() })
                    .collect(),
            };
            for row in counts.iter().filter(|row| row.channel == name) {
                match row.event {
                    ReportEvent::Targeted => report.targeted += row.count,
                    ReportEvent::Sent => report.sent += row.count,
                    ReportEvent::Failed => report.failed.add(&row.reason, row.count),
                    ReportEvent::Excluded => report.excluded.add(&row.reason, row.count),
                    ReportEvent::Unknown => report.unknown += row.count,
                    ReportEvent::Retry => report.retries += row.count,
                    ReportEvent::DeadLettered => report.dead_lettered.add(&row.reason, row.count),
                    // Latencies come as histogram rows, never as counts.
                    ReportEvent::Latency => {}
                    ReportEvent::Delivered => report.delivered += row.count,
                    ReportEvent::BouncedHard => report.bounces.hard.add(&row.reason, row.count),
                    ReportEvent::BouncedSoft => report.bounces.soft.add(&row.reason, row.count),
                    ReportEvent::Complained => report.complaints.add(&row.reason, row.count),
                    ReportEvent::Delayed => report.delayed.add(&row.reason, row.count),
                    ReportEvent::Rejected => report.rejected.add(&row.reason, row.count),
                }
            }
            report.bounces.total = report.bounces.hard.total + report.bounces.soft.total;
            report.rates = rates(&report);
            let width = window.bucket.num_seconds().max(1);
            for row in series.iter().filter(|row| row.channel == name) {
                let index = usize::try_from((row.start - window.from).num_seconds() / width).ok();
                let Some(point) = index.and_then(|index| report.series.get_mut(index)) else { continue };
                let slot = match row.event {
                    ReportEvent::Targeted => &mut point.targeted,
                    ReportEvent::Sent => &mut point.sent,
                    ReportEvent::Failed => &mut point.failed,
                    ReportEvent::Excluded => &mut point.excluded,
                    ReportEvent::Unknown => &mut point.unknown,
                    ReportEvent::Retry => &mut point.retries,
                    ReportEvent::DeadLettered => &mut point.dead_lettered,
                    ReportEvent::Delivered => &mut point.delivered,
                    ReportEvent::BouncedHard | ReportEvent::BouncedSoft => &mut point.bounced,
                    ReportEvent::Complained => &mut point.complained,
                    ReportEvent::Latency | ReportEvent::Delayed | ReportEvent::Rejected => continue,
                };
                *slot += row.count;
            }
            report
        })
        .collect()
}

/// Delivered, bounced and complained per message sent, rounded to 0.01%.
fn rates(report: &ChannelReport) -> Rates {
    #[allow(clippy::cast_precision_loss)]
    let of_sent =
        |count: i64| (report.sent > 0).then(|| (count as f64 / report.sent as f64 * 10_000.0).round() / 10_000.0);
    Rates {
        delivery: of_sent(report.delivered),
        bounce: of_sent(report.bounces.total),
        complaint: of_sent(report.complaints.total),
    }
}

/// Percentiles read off the histogram: the upper bound of the bucket holding each rank.
pub fn latency_summary<'a>(rows: impl Iterator<Item = &'a LatencyRow>) -> LatencySummary {
    let mut buckets: BTreeMap<i16, i64> = BTreeMap::new();
    for row in rows {
        *buckets.entry(row.bucket).or_default() += row.count;
    }
    let count: i64 = buckets.values().sum();
    let percentile = |q: f64| -> Option<f64> {
        if count == 0 {
            return None;
        }
        // The smallest value at or above a fraction q of the observations (nearest rank).
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let rank = ((q * count as f64).ceil() as i64).max(1);
        let mut seen = 0;
        buckets.iter().find_map(|(bucket, n)| {
            seen += n;
            (seen >= rank).then(|| (LATENCY_BASE.powi(i32::from(*bucket) + 1) * 10.0).round() / 10.0)
        })
    };
    LatencySummary { count, p50: percentile(0.50), p95: percentile(0.95), p99: percentile(0.99) }
}

/// The histogram bucket of a latency, as the database computes it.
pub fn latency_bucket(milliseconds: f64) -> i16 {
    #[allow(clippy::cast_possible_truncation)]
    let bucket = (milliseconds.max(1.0).ln() / LATENCY_BASE.ln()).floor() as i16;
    bucket
}

#[cfg(test)]
mod tests;

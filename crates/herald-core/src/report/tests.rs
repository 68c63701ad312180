use chrono::TimeZone;

use super::*;

fn at(hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 28, hour, minute, second).unwrap()
}

fn count(channel: &str, event: &str, reason: &str, count: i64) -> CountRow {
    CountRow {
        channel: channel.into(),
        event: ReportEvent::parse(event).expect("a report event"),
        reason: reason.into(),
        count,
    }
}

#[test]
fn the_default_window_is_the_last_24_hours_in_whole_minutes() {
    let window = ReportWindow::new(None, None, None, at(12, 30, 15)).unwrap();
    assert_eq!(window.to, at(12, 31, 0));
    assert_eq!(window.from, Utc.with_ymd_and_hms(2026, 11, 27, 12, 31, 0).unwrap());
    assert_eq!(window.bucket, Duration::minutes(15), "24 h in at most 100 points");
    assert_eq!(window.bucket_starts().len(), 96);
}

#[test]
fn windows_are_validated() {
    let now = at(12, 0, 0);
    assert_eq!(ReportWindow::new(Some(at(11, 0, 0)), Some(at(10, 0, 0)), None, now), Err(WindowError::Empty));
    assert_eq!(ReportWindow::new(Some(now - Duration::days(401)), Some(now), None, now), Err(WindowError::TooLong));
    assert_eq!(ReportWindow::new(Some(at(10, 0, 0)), Some(now), Some(90), now), Err(WindowError::BadBucket));
    assert_eq!(ReportWindow::new(Some(at(10, 0, 0)), Some(now), Some(3 * 3600), now), Err(WindowError::BadBucket));
    assert_eq!(
        ReportWindow::new(Some(now - Duration::days(30)), Some(now), Some(60), now),
        Err(WindowError::TooManyBuckets)
    );
    let window = ReportWindow::new(Some(at(10, 0, 30)), Some(at(11, 0, 1)), Some(600), now).unwrap();
    assert_eq!((window.from, window.to), (at(10, 0, 0), at(11, 1, 0)));
    assert_eq!(window.bucket_starts().len(), 7, "the last bucket is partial");
}

#[test]
fn windows_over_two_days_are_whole_hours_and_read_hourly_rollups() {
    let now = at(12, 0, 0);
    let day = ReportWindow::new(Some(at(10, 0, 30)), Some(at(11, 30, 0)), None, now).unwrap();
    assert!(!day.hourly());
    let month =
        ReportWindow::new(Some(now - Duration::days(30) + Duration::minutes(7)), Some(at(11, 30, 5)), None, now)
            .unwrap();
    assert_eq!(month.from, now - Duration::days(30));
    assert_eq!(month.to, at(12, 0, 0));
    assert_eq!(month.bucket, Duration::hours(24), "30 days in at most 100 points");
    assert!(month.hourly());
    let odd = ReportWindow::new(Some(now - Duration::days(3)), Some(now), Some(1_800), now).unwrap();
    assert!(!odd.hourly(), "half-hour buckets need the minute rollups");
}

#[test]
fn counts_are_split_by_channel_event_and_reason() {
    let window = ReportWindow::new(Some(at(10, 0, 0)), Some(at(11, 0, 0)), Some(1800), at(12, 0, 0)).unwrap();
    let counts = [
        count("email", "targeted", "", 10),
        count("email", "sent", "", 6),
        count("email", "failed", "MessageRejected", 1),
        count("email", "failed", "max-attempts", 1),
        count("email", "excluded", "campaign-stopped", 1),
        count("email", "unknown", "worker-died-during-send", 1),
        count("email", "retry", "", 4),
        count("email", "dead_lettered", "max-attempts", 1),
        count("sms", "sent", "", 3),
    ];
    let series = [
        SeriesRow { channel: "email".into(), start: at(10, 30, 0), event: ReportEvent::Sent, count: 6 },
        SeriesRow { channel: "email".into(), start: at(10, 0, 0), event: ReportEvent::Targeted, count: 10 },
    ];
    let reports = channel_reports(&window, &[Channel::Email, Channel::Push], &counts, &series, &[]);
    assert_eq!(reports.len(), 2);
    let email = &reports[0];
    assert_eq!((email.targeted, email.sent, email.unknown, email.retries), (10, 6, 1, 4));
    assert_eq!(email.failed.total, 2);
    assert_eq!(email.failed.by_reason["MessageRejected"], 1);
    assert_eq!(email.excluded.by_reason["campaign-stopped"], 1);
    assert_eq!(email.dead_lettered.total, 1);
    assert_eq!(email.series.len(), 2);
    assert_eq!((email.series[0].targeted, email.series[1].sent), (10, 6));
    let push = &reports[1];
    assert_eq!((push.targeted, push.sent, push.latency_ms.count), (0, 0, 0));
    assert_eq!(push.latency_ms.p50, None);
}

#[test]
fn percentiles_come_from_the_histogram_within_ten_percent() {
    let mut rows = Vec::new();
    for (milliseconds, n) in [(100.0, 50), (1_000.0, 45), (10_000.0, 5)] {
        rows.push(LatencyRow { channel: "sms".into(), bucket: latency_bucket(milliseconds), count: n });
    }
    let summary = latency_summary(rows.iter());
    assert_eq!(summary.count, 100);
    let within = |value: Option<f64>, exact: f64| {
        let value = value.unwrap();
        assert!(value >= exact && value <= exact * 1.1, "{value} is not within 10% above {exact}");
    };
    within(summary.p50, 100.0);
    within(summary.p95, 1_000.0);
    within(summary.p99, 10_000.0);
}

#[test]
fn latency_buckets_match_the_database_formula() {
    // herald_latency_bucket(ms) = floor(ln(greatest(ms, 1)) / ln(1.1))
    assert_eq!(latency_bucket(0.2), 0);
    assert_eq!(latency_bucket(1.0), 0);
    assert_eq!(latency_bucket(1.1 * 1.0001), 1);
    assert_eq!(latency_bucket(150.0), 52);
}

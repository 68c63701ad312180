//! The report page: a summary table and a stacked bar chart of outcomes per time bucket, drawn
//! as inline SVG on the server, so the page needs no script and nothing from another origin.

use std::fmt::Write;

use herald_core::report::{Breakdown, ChannelReport, SeriesPoint};

use super::CampaignReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 320.0;
const MARGIN_LEFT: f64 = 56.0;
const MARGIN_BOTTOM: f64 = 28.0;
const MARGIN_TOP: f64 = 12.0;

/// One chart series: label, colour, and its value in a bucket.
type Series = (&'static str, &'static str, fn(&SeriesPoint) -> i64);

/// Chart series, bottom to top.
const SERIES: [Series; 4] = [
    ("sent", "#2e7d32", |p| p.sent),
    ("failed", "#c62828", |p| p.failed),
    ("excluded", "#9e9e9e", |p| p.excluded),
    ("unknown (maybe sent)", "#f9a825", |p| p.unknown),
];

pub(super) fn render(report: &CampaignReport) -> String {
    let mut html = String::with_capacity(16 * 1024);
    let title = format!("{} — report", escape(&report.name));
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <style>body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#212121}}\
         table{{border-collapse:collapse;margin:12px 0}}td,th{{padding:4px 12px;border-bottom:1px solid #e0e0e0;text-align:left}}\
         td.n{{text-align:right;font-variant-numeric:tabular-nums}}.legend span{{display:inline-block;margin-right:16px}}\
         .swatch{{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}}</style></head><body>\
         <h1>{title}</h1><p>Campaign <code>{id}</code> · <strong id=\"status\">{status}</strong> · {channel} · {from} to {to} (UTC) · buckets of {bucket} min</p>",
        id = report.campaign_id,
        status = report.status.as_str(),
        channel = report.channel,
        from = report.from.format("%Y-%m-%d %H:%M"),
        to = report.to.format("%Y-%m-%d %H:%M"),
        bucket = report.bucket_seconds / 60,
    );
    // Other windows ending at the same instant; relative links keep whatever proxy served this page.
    let stamp = |at: chrono::DateTime<chrono::Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let window = |span: chrono::Duration| format!("from={}&amp;to={}", stamp(report.to - span), stamp(report.to));
    let _ = write!(
        html,
        "<p id=\"windows\"><a href=\"report.html?{hour}\">last hour</a> · <a href=\"report.html?{day}\">last 24 hours</a> · <a href=\"report.html?{week}\">last 7 days</a> · \
         <a href=\"report.html?{month}\">last 30 days</a> · <a href=\"report?from={from}&amp;to={to}\">this report as JSON</a></p>",
        hour = window(chrono::Duration::hours(1)),
        day = window(chrono::Duration::days(1)),
        week = window(chrono::Duration::days(7)),
        month = window(chrono::Duration::days(30)),
        from = stamp(report.from),
        to = stamp(report.to),
    );
    for channel in &report.channels {
        summary(&mut html, channel);
        chart(&mut html, channel, report.bucket_seconds);
    }
    html.push_str("</body></html>");
    html
}

fn summary(html: &mut String, report: &ChannelReport) {
    let latency = |value: Option<f64>| value.map_or_else(|| "—".to_string(), |ms| format!("{ms} ms"));
    let _ = write!(
        html,
        "<table id=\"summary\"><tr><th>Targeted</th><td class=\"n\">{}</td></tr><tr><th>Sent</th><td class=\"n\">{}</td></tr>",
        report.targeted, report.sent
    );
    breakdown_row(html, "Failed", &report.failed);
    breakdown_row(html, "Excluded", &report.excluded);
    breakdown_row(html, "Dead-lettered", &report.dead_lettered);
    // After the send: what SES said (the rates are of the messages sent in the window).
    let rate = |value: Option<f64>| value.map_or_else(|| "—".to_string(), |r| format!("{:.2}%", r * 100.0));
    let _ = write!(
        html,
        "<tr><th>Delivered</th><td class=\"n\" id=\"delivered\">{}</td><td>{} of sent</td></tr>",
        report.delivered,
        rate(report.rates.delivery)
    );
    breakdown_row(html, "Hard bounces", &report.bounces.hard);
    breakdown_row(html, "Soft bounces", &report.bounces.soft);
    let _ = write!(
        html,
        "<tr><th>Bounce rate</th><td class=\"n\" id=\"bounce-rate\">{}</td></tr>",
        rate(report.rates.bounce)
    );
    breakdown_row(html, "Complaints", &report.complaints);
    let _ = write!(
        html,
        "<tr><th>Complaint rate</th><td class=\"n\" id=\"complaint-rate\">{}</td></tr>",
        rate(report.rates.complaint)
    );
    breakdown_row(html, "Delayed", &report.delayed);
    breakdown_row(html, "Rejected by SES", &report.rejected);
    let _ = write!(
        html,
        "<tr><th>Unknown (maybe sent)</th><td class=\"n\">{}</td></tr><tr><th>Retries</th><td class=\"n\">{}</td></tr>\
         <tr><th>Accept→sent p50 / p95 / p99</th><td class=\"n\">{} / {} / {}</td></tr></table>",
        report.unknown,
        report.retries,
        latency(report.latency_ms.p50),
        latency(report.latency_ms.p95),
        latency(report.latency_ms.p99),
    );
}

fn breakdown_row(html: &mut String, label: &str, breakdown: &Breakdown) {
    let reasons: Vec<String> =
        breakdown.by_reason.iter().map(|(reason, n)| format!("{}: {n}", escape(reason))).collect();
    let _ = write!(
        html,
        "<tr><th>{label}</th><td class=\"n\">{}</td><td>{}</td></tr>",
        breakdown.total,
        reasons.join(", ")
    );
}

fn chart(html: &mut String, report: &ChannelReport, bucket_seconds: i64) {
    let points = &report.series;
    let stacked = |p: &SeriesPoint| SERIES.iter().map(|(_, _, value)| value(p)).sum::<i64>();
    let top = nice_ceiling(points.iter().map(stacked).max().unwrap_or(0));
    let plot_width = WIDTH - MARGIN_LEFT - 8.0;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    #[allow(clippy::cast_precision_loss)]
    let slot = plot_width / points.len().max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let y = |value: i64| MARGIN_TOP + plot_height - plot_height * value as f64 / top as f64;
    let _ = write!(
        html,
        "<h2>Outcomes over time</h2><svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" shape-rendering=\"crispEdges\" role=\"img\" aria-label=\"outcomes per time bucket\">"
    );
    for step in 0..=4 {
        let value = top * step / 4;
        let _ = write!(
            html,
            "<line x1=\"{MARGIN_LEFT}\" x2=\"{WIDTH}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{x}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#616161\">{value}</text>",
            y = y(value),
            x = MARGIN_LEFT - 6.0,
            ty = y(value) + 4.0,
        );
    }
    let label_every = points.len().div_ceil(8).max(1);
    let day_labels = bucket_seconds * i64::try_from(points.len()).unwrap_or(i64::MAX) > 2 * 86_400;
    for (i, point) in points.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = MARGIN_LEFT + slot * i as f64;
        let mut base = 0;
        for (label, colour, value) in SERIES {
            let n = value(point);
            if n > 0 {
                let _ = write!(
                    html,
                    "<rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>{label}: {n}</title></rect>",
                    top = y(base + n),
                    w = (slot * 0.8).max(1.0),
                    h = y(base) - y(base + n),
                );
            }
            base += n;
        }
        if i % label_every == 0 {
            let format = if day_labels { "%m-%d %H:%M" } else { "%H:%M" };
            let _ = write!(
                html,
                "<text x=\"{x:.1}\" y=\"{ty}\" font-size=\"11\" fill=\"#616161\">{}</text>",
                point.start.format(format),
                ty = HEIGHT - 8.0,
            );
        }
    }
    html.push_str("</svg><p class=\"legend\">");
    for (label, colour, _) in SERIES {
        let _ = write!(html, "<span><i class=\"swatch\" style=\"background:{colour}\"></i>{label}</span>");
    }
    html.push_str("</p>");
}

/// Four grid steps of a round size (1, 2, 2.5 or 5 times a power of ten) that reach `value`.
fn nice_ceiling(value: i64) -> i64 {
    let mut magnitude = 1;
    loop {
        let quarter = if magnitude >= 10 { Some(magnitude * 25 / 10) } else { None };
        for step in [Some(magnitude), Some(2 * magnitude), quarter, Some(5 * magnitude)].into_iter().flatten() {
            if step * 4 >= value {
                return step * 4;
            }
        }
        magnitude *= 10;
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("<script>\"x\" & 'y'"), "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;");
    }

    #[test]
    fn the_axis_top_is_a_round_number_at_or_above_the_largest_bar() {
        for (value, top) in [(0, 4), (3, 4), (7, 8), (40, 40), (41, 80), (950, 1000)] {
            assert_eq!(nice_ceiling(value), top, "for {value}");
        }
    }
}

//! The alert rules (deploy/prometheus) and the Grafana dashboard (deploy/grafana) against the
//! metrics the code exports: a misspelt metric name yields an empty panel or an alert that never
//! fires, and nothing else would tell. tests/compose.rs checks how the stack wires them together;
//! `promtool test rules deploy/prometheus/alerts.test.yml` (in .ci/run) checks what the rules compute.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Counter,
    Histogram,
    Gauge,
}

/// Every metric Herald exports, as Prometheus names it (counters with their `_total`).
const METRICS: [(&str, Kind); 16] = [
    ("herald_http_requests_total", Kind::Counter),
    ("herald_http_request_duration_seconds", Kind::Histogram),
    ("herald_publish_confirm_duration_seconds", Kind::Histogram),
    ("herald_campaign_cache_lookups_total", Kind::Counter),
    ("herald_messages_consumed_total", Kind::Counter),
    ("herald_delivery_outcomes_total", Kind::Counter),
    ("herald_provider_call_duration_seconds", Kind::Histogram),
    ("herald_accept_to_sent_seconds", Kind::Histogram),
    ("herald_retries_total", Kind::Counter),
    ("herald_dead_letters_total", Kind::Counter),
    ("herald_channel_pauses_total", Kind::Counter),
    ("herald_channel_paused", Kind::Gauge),
    ("herald_queue_messages", Kind::Gauge),
    ("herald_queue_consumers", Kind::Gauge),
    ("herald_feedback_events_total", Kind::Counter),
    ("herald_webhook_deliveries_total", Kind::Counter),
];

/// Labels an alert's annotations may show: never an address, a recipient or an instance.
const ANNOTATION_LABELS: [&str; 8] = ["channel", "reason", "status", "route", "tier", "component", "job", "queue"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}")).remove(0)
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/dashboards/herald.json")).expect("the dashboard is valid JSON")
}

/// The names a query may use: counters and gauges as they are, histograms as their series.
fn series_names() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in METRICS {
        match kind {
            Kind::Histogram => out.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}"))),
            Kind::Counter | Kind::Gauge => {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// What the code registers: counters without `_total`, which the exporter appends.
fn registered_name(name: &str, kind: Kind) -> &str {
    if kind == Kind::Counter { name.strip_suffix("_total").expect("counters end in _total") } else { name }
}

/// Every `herald_...` identifier in a text.
fn herald_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for (start, _) in text.match_indices("herald_") {
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let end = text[start..].find(|c: char| !is_ident(c)).map_or(text.len(), |n| start + n);
        out.insert(text[start..end].to_string());
    }
    out
}

fn assert_known_names(file: &str, text: &str) {
    let known = series_names();
    let names = herald_names(text);
    assert!(!names.is_empty(), "{file} uses no herald metric");
    for name in names {
        assert!(known.contains(&name), "{file} uses {name}, which Herald does not export (known: {known:?})");
    }
}

/// The rules of every group in alerts.yml.
fn alert_rules() -> Vec<Yaml> {
    yaml("deploy/prometheus/alerts.yml")["groups"]
        .as_vec()
        .expect("alert groups")
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("rules").clone())
        .collect()
}

fn rule<'a>(rules: &'a [Yaml], name: &str) -> &'a Yaml {
    rules.iter().find(|r| r["alert"].as_str() == Some(name)).unwrap_or_else(|| panic!("no alert {name}"))
}

/// Whitespace-insensitive, so that expressions may be wrapped.
fn squeeze(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn prometheus_files_use_only_exported_metrics() {
    for file in ["deploy/prometheus/alerts.yml", "deploy/prometheus/alerts.test.yml"] {
        assert_known_names(file, &read(file));
    }
}

#[test]
fn alert_rules_are_well_formed_and_cover_the_essentials() {
    let rules = alert_rules();
    let mut names = BTreeSet::new();
    for rule in &rules {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(name.to_string()), "alert {name} is defined twice");
        assert!(name.starts_with("Herald"), "{name}: prefix alerts with Herald");
        assert!(!rule["expr"].as_str().unwrap_or_default().trim().is_empty(), "{name} has no expr");
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(["critical", "warning"].contains(&severity), "{name}: severity {severity:?}");
        for annotation in ["summary", "description"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{name} has no {annotation}");
            for (at, _) in text.match_indices("$labels.") {
                let label: String =
                    text[at + 8..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(ANNOTATION_LABELS.contains(&label.as_str()), "{name}'s {annotation} shows label {label}");
            }
            assert!(!text.to_lowercase().contains("instance"), "{name}'s {annotation} names an instance (an address)");
        }
    }

    let dead = rule(&rules, "HeraldDeadLetters");
    assert!(squeeze(dead["expr"].as_str().unwrap()).contains("increase(herald_dead_letters_total[10m]))>0"));
    let paused = rule(&rules, "HeraldChannelPaused");
    assert_eq!(squeeze(paused["expr"].as_str().unwrap()), "maxby(channel)(herald_channel_paused)==1");
    assert_eq!(paused["for"].as_str(), Some("5m"));
    let slow = rule(&rules, "HeraldAcceptToSentSlow");
    assert_eq!(
        squeeze(slow["expr"].as_str().unwrap()),
        "histogram_quantile(0.99,sumby(le,channel)(rate(herald_accept_to_sent_seconds_bucket[5m])))>60"
    );
    assert_eq!(slow["for"].as_str(), Some("10m"));
    for name in ["HeraldApiErrorRatioHigh", "HeraldProviderErrorRatioHigh"] {
        rule(&rules, name);
    }
}

#[test]
fn every_alert_has_a_promtool_unit_test_that_fires_it() {
    let tests = yaml("deploy/prometheus/alerts.test.yml");
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yml"));
    let mut fired = BTreeSet::new();
    for case in tests["tests"].as_vec().expect("tests") {
        for check in case["alert_rule_test"].as_vec().expect("alert_rule_test") {
            if check["exp_alerts"].as_vec().is_some_and(|alerts| !alerts.is_empty()) {
                fired.insert(check["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    for rule in alert_rules() {
        let name = rule["alert"].as_str().unwrap();
        assert!(fired.contains(name), "alerts.test.yml never expects {name} to fire");
    }
}

/// Every `datasource` object anywhere in the dashboard.
fn datasources<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                if key == "datasource" {
                    out.push(child);
                }
                datasources(child, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| datasources(item, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_exported_metrics_through_the_provisioned_datasource() {
    let text = read("deploy/grafana/dashboards/herald.json");
    assert_known_names("deploy/grafana/dashboards/herald.json", &text);
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "herald");
    assert!(dashboard["schemaVersion"].as_i64().is_some_and(|v| (36..=41).contains(&v)));

    let provisioned = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let uid = provisioned["datasources"][0]["uid"].as_str().expect("the datasource has a fixed uid");
    let mut found = Vec::new();
    datasources(&dashboard, &mut found);
    for datasource in found {
        let ok = datasource["uid"] == uid && datasource["type"] == "prometheus"
            || datasource["uid"] == "-- Grafana --" && datasource["type"] == "grafana";
        assert!(ok, "the dashboard refers to datasource {datasource}, not the provisioned {uid}");
    }

    // Every metric is on the dashboard.
    let used = herald_names(&text);
    for (name, kind) in METRICS {
        let shown = match kind {
            Kind::Histogram => used.iter().any(|u| u.strip_prefix(name).is_some_and(|s| s.starts_with('_'))),
            Kind::Counter | Kind::Gauge => used.contains(name),
        };
        assert!(shown, "no panel shows {name}");
    }
}

#[test]
fn dashboard_panels_have_unique_ids_queries_and_distinct_places() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut places: Vec<(i64, i64, i64, i64, String)> = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        assert!(ids.insert(panel["id"].as_i64().expect("a numeric id")), "panel id of {title} is reused");
        let g = &panel["gridPos"];
        let [x, y, w, h] =
            ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(x >= 0 && w > 0 && h > 0 && x + w <= 24, "{title} is outside the 24-column grid");
        for (ox, oy, ow, oh, other) in &places {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title} and {other} overlap");
        }
        places.push((x, y, w, h, title.clone()));
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("{title} has no queries"));
        assert!(!targets.is_empty(), "{title} has no queries");
        for target in targets {
            assert!(
                target["expr"].as_str().is_some_and(|e| e.contains("herald_")),
                "{title}: a query without a metric"
            );
        }
    }
}

/// Every `.rs` file under a directory, recursively.
fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_telemetry_crate_registers_every_metric_the_deploy_files_use() {
    let dir = root().join("crates/herald-telemetry/src");
    assert!(
        dir.is_dir(),
        "{} does not exist: the metrics are registered in the herald-telemetry crate, which the alert \
         rules and the dashboard are checked against",
        dir.display()
    );
    let mut files = Vec::new();
    rust_sources(&dir, &mut files);
    let source: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect::<Vec<_>>().join("\n");
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|(name, kind)| registered_name(name, *kind))
        .filter(|name| !source.contains(&format!("\"{name}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "crates/herald-telemetry/src has no string literal for {missing:?}; deploy/ and the test's METRICS \
         expect them (counters are registered without _total)"
    );
}

//! Hostile templates against real processes: a recursive macro, an `include`, a billion-iteration
//! loop and a chained-replace memory bomb, each forced into a live version behind the review's
//! back (the review refuses them all; `tests/api/template_sandbox.rs` shows that). Each message
//! of theirs must end `failed` / `rendering-error` without a provider call, while a normal load
//! is sent exactly once; no process may die (same pids) and none may grow past 200 MiB.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use herald_tests::fixtures;
use herald_tests::force_live;

use crate::accounting::{Expect, Report};
use crate::run::{Env, Run, Spec};

/// Peak resident memory allowed to any herald process while hostile templates are rendered.
const PEAK_RSS_LIMIT_KIB: u64 = 200 * 1024;
/// Executions per hostile template.
const EXECUTIONS_EACH: usize = 5;

/// The process's peak resident set (VmHWM) in KiB, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (status, reason, last error) of each execution's delivery, once none is pending.
async fn decided(run: &Run, executions: &[String], within: Duration) -> Option<Vec<(String, String, String)>> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Some(client) = run.probe.database().await
            && let Ok(rows) = client
                .query(
                    "SELECT status, coalesce(reason, ''), coalesce(last_error, '') FROM deliveries
                      WHERE execution_id::text = ANY($1) AND status NOT IN ('sending', 'retrying')",
                    &[&executions],
                )
                .await
            && rows.len() == executions.len()
        {
            return Some(rows.iter().map(|row| (row.get(0), row.get(1), row.get(2))).collect());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

pub(crate) async fn hostile_templates(env: &Env) -> Report {
    let spec = Spec::new("hostile-templates", env.messages(300));
    let mut run = Run::begin(env, spec).await;
    let mut pids: Vec<(String, Option<u32>)> = vec![("api".into(), run.stack.api.pid())];
    pids.extend(run.stack.workers.iter_mut().map(|worker| (worker.name.clone(), worker.pid())));

    let mut executions = Vec::new();
    for (name, text, _) in fixtures::hostile_templates() {
        let campaign = run.api.create_campaign(&format!("hostile {name}")).await;
        // Forced before its first execution, so no cache can hold the reviewed text.
        let forced = match run.probe.database().await {
            Some(client) => force_live(&client, &campaign, &["content", "text"], Value::String(text))
                .await
                .err()
                .map(|error| error.to_string()),
            None => Some("no database connection".to_string()),
        };
        if let Some(error) = forced {
            run.report.violate("could not force a hostile template live", format!("{name}: {error}"));
            continue;
        }
        match run.api.post_json(&format!("/campaigns/{campaign}/preview?version=live"), &json!({})).await {
            Some((StatusCode::UNPROCESSABLE_ENTITY, _)) => {}
            other => run.report.violate("a hostile live version's preview is not a 422", format!("{name}: {other:?}")),
        }
        for n in 0..EXECUTIONS_EACH {
            let marker = format!("bomb-{name}-{n}");
            executions.push((name, run.api.execute_once(&campaign, &marker, &marker).await));
        }
    }
    // Judged while the normal load is still being sent: the hostile renders compete with it.
    let hostile_accepted = Instant::now();
    let ids: Vec<String> = executions.iter().map(|(_, id)| id.clone()).collect();
    match decided(&run, &ids, Duration::from_secs(30)).await {
        None => run.report.violate("hostile messages not decided within 30 s", format!("{} messages", ids.len())),
        Some(rows) => {
            run.report.notes.push(format!(
                "hostile_messages={} decided_in={:.1}s",
                rows.len(),
                hostile_accepted.elapsed().as_secs_f64()
            ));
            for (status, reason, last_error) in rows {
                if (status.as_str(), reason.as_str()) != ("failed", "rendering-error") {
                    run.report.violate("a hostile message not failed/rendering-error", format!("{status} {reason}"));
                } else if last_error.is_empty() {
                    run.report.violate("a rendering-error without its cause", status);
                }
            }
        }
    }
    let records = run.end_load().await;
    // Every email the provider saw is one of the load's: its text is exactly a load marker.
    let strays: Vec<String> =
        env.fake.snapshot().into_keys().filter(|marker| !run.spec.markers.contains(marker)).take(3).collect();
    if !strays.is_empty() {
        run.report.violate("a hostile message reached the provider", format!("{strays:?}"));
    }

    let mut peaks = Vec::new();
    let mut now: Vec<(String, Option<u32>)> = vec![("api".into(), run.stack.api.pid())];
    now.extend(run.stack.workers.iter_mut().map(|worker| (worker.name.clone(), worker.pid())));
    for ((name, before), (_, after)) in pids.iter().zip(&now) {
        if before.is_none() || before != after {
            run.report.violate("a herald process died or restarted", format!("{name}: pid {before:?} → {after:?}"));
            continue;
        }
        let peak = before.and_then(peak_rss_kib).unwrap_or(u64::MAX);
        peaks.push(format!("{name}={}MiB", peak / 1024));
        if peak > PEAK_RSS_LIMIT_KIB {
            run.report.violate("a herald process grew past 200 MiB", format!("{name}: {} KiB", peak));
        }
    }
    run.report.notes.push(format!("peak_rss {}", peaks.join(" ")));
    run.finish(env, records, 0, &|_, _| Expect::SENT_AND_RECORDED).await
}

//! `herald loadtest CAMPAIGN`: executions at a constant rate (open loop) or as fast as N
//! connections go (closed loop), then, with `--provider URL` (a `herald fake-provider`), what
//! the provider received: sent, lost, duplicated, and latencies.
//!
//! The open loop does not suffer from coordinated omission: call `seq` is due at
//! `start + seq / rate` whether or not earlier calls have been answered, and every latency is
//! measured from that due time (as wrk2 does), so a stall shows as the latency every call behind
//! it would have seen. Each call carries one recipient whose context has `marker` =
//! `hlm.<run>.<seq>.<due µs since the epoch>`; the campaign's content must render
//! `{{ context.marker }}` so the fake provider can count each message.

pub mod args;
pub(crate) mod fake_provider;
mod provider;
mod results;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;

use crate::api_client::{find_campaign, human_problem};
use args::LoadtestArgs;
use results::Call;

/// One finished call.
struct Answer {
    seq: u64,
    due_us: i64,
    /// HTTP status, or 0 for a transport error or timeout.
    status: u16,
    answered_us: i64,
}

pub(crate) async fn loadtest(args: LoadtestArgs) -> anyhow::Result<()> {
    let base = args.api.api_url.trim_end_matches('/').to_string();
    let key = args.api.key()?.to_string();
    // Many connections at once: the pool keeps one per call in flight.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_seconds))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()?;
    let campaign = match uuid::Uuid::parse_str(&args.campaign) {
        Ok(id) => id.to_string(),
        Err(_) => find_campaign(&crate::api_client::client()?, &base, &key, &args.campaign)
            .await?
            .and_then(|found| found["id"].as_str().map(str::to_string))
            .with_context(|| format!("no campaign named {} (give its name or id)", args.campaign))?,
    };
    let context = crate::execute::context(&args.context)?;
    if context.contains_key("marker") {
        bail!("--context marker is the load test's own");
    }
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let fake = match &args.provider {
        Some(url) => Some(provider::FakeProvider::connect(&http, url).await?),
        None => None,
    };
    let template = Arc::new(Template {
        key,
        campaign,
        run: run.clone(),
        to: args.to.clone(),
        context,
        platform: args.platform.clone(),
        endpoint: format!("{base}/im/executions/{}", args.endpoint.path()),
    });
    // One call first, outside the measurement: a campaign that is not live, a key without the
    // scope or a template error stops here with the API's answer instead of N failures.
    template.check(&http).await?;
    if let Some(fake) = &fake {
        fake.wait_for_first(&run, Duration::from_secs(args.drain_seconds.max(5))).await?;
    }

    let started_us = chrono::Utc::now().timestamp_micros();
    let answers = if args.rate == 0 {
        closed_loop(&http, &template, args.connections, Duration::from_secs(args.duration_seconds)).await
    } else {
        open_loop(&http, &template, args.rate, args.max_in_flight, Duration::from_secs(args.duration_seconds)).await
    };
    let calls: Vec<Call> = answers
        .into_iter()
        .map(|a| Call { seq: a.seq, due_us: a.due_us, status: a.status, answered_us: a.answered_us })
        .collect();
    let accepted: HashSet<u64> = calls.iter().filter(|call| call.status == 202).map(|call| call.seq).collect();
    // A provider that cannot be read at the end still leaves the calls' own figures.
    let (received, provider_error) = match &fake {
        Some(fake) => match fake.received(&run, &accepted, Duration::from_secs(args.drain_seconds)).await {
            Ok(received) => (Some(received), None),
            Err(error) => (None, Some(error)),
        },
        None => (None, None),
    };
    let summary = results::summarise(&args, &run, started_us, &calls, received.as_ref());
    println!("{}", results::human(&summary));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(error) = provider_error {
        return Err(error.context("reading what the fake provider received"));
    }
    // A load test that lost or duplicated a message failed, whatever its throughput; so did one
    // whose calls were refused (a rate limit, a quota) or failed.
    let (lost, duplicated) = (summary["lost"].as_u64().unwrap_or(0), summary["duplicated"].as_u64().unwrap_or(0));
    if lost > 0 || duplicated > 0 {
        bail!(
            "{lost} accepted message(s) had not reached the provider within --drain-seconds and {duplicated} reached \
             it more than once"
        );
    }
    let refused = calls.len() - accepted.len();
    if refused > 0 {
        bail!("{refused} of {} calls were not accepted (statuses {})", calls.len(), summary["statuses"]);
    }
    Ok(())
}

/// What every call has in common.
struct Template {
    key: String,
    campaign: String,
    run: String,
    to: String,
    context: Map<String, Value>,
    platform: Option<String>,
    /// `…/im/executions/unitary` or `…/highthroughput`.
    endpoint: String,
}

impl Template {
    fn body(&self, seq: u64, due_us: i64) -> Value {
        let mut context = self.context.clone();
        context.insert("marker".into(), Value::String(format!("hlm.{}.{seq}.{due_us}", self.run)));
        let mut recipient =
            json!({ "type": "external", "userId": self.to.replace("{seq}", &seq.to_string()), "context": context });
        if let Some(platform) = &self.platform {
            recipient["channelData"] = json!({ "pushPlatform": platform });
        }
        json!({
            "requestId": format!("lt-{}-{seq}", self.run),
            "campaignId": self.campaign,
            "recipients": [recipient],
        })
    }

    async fn call(&self, http: &reqwest::Client, seq: u64, due_us: i64) -> Answer {
        let response = http.post(&self.endpoint).bearer_auth(&self.key).json(&self.body(seq, due_us)).send().await;
        let status = match response {
            // The body is read so the connection goes back to the pool.
            Ok(response) => {
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                status
            }
            Err(_) => 0,
        };
        Answer { seq, due_us, status, answered_us: chrono::Utc::now().timestamp_micros() }
    }

    /// A first call, with a marker outside the run's (not counted); fails with the API's own
    /// words unless it is accepted.
    async fn check(&self, http: &reqwest::Client) -> anyhow::Result<()> {
        let mut body = self.body(0, 0);
        body["requestId"] = Value::String(format!("lt-{}-check", self.run));
        body["recipients"][0]["context"]["marker"] = Value::String(format!("hlm.{}check", self.run));
        let (status, answer) =
            crate::api_client::call(http.post(&self.endpoint).bearer_auth(&self.key).json(&body)).await?;
        if status != 202 {
            bail!("the first call was refused: {}", human_problem(status, &answer));
        }
        Ok(())
    }
}

/// Call `seq` (from 1) is due at `start + (seq - 1) / rate`, whatever happened to the others; at
/// most `max_in_flight` are outstanding (a call over that waits, and the wait counts in its
/// latency).
async fn open_loop(
    http: &reqwest::Client,
    template: &Arc<Template>,
    rate: u32,
    max_in_flight: u32,
    duration: Duration,
) -> Vec<Answer> {
    let total = u64::from(rate) * duration.as_secs();
    let period_ns = 1_000_000_000 / u64::from(rate);
    let in_flight = Arc::new(Semaphore::new(max_in_flight as usize));
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let (start, start_us) = (Instant::now(), chrono::Utc::now().timestamp_micros());
    let scheduler = async {
        for seq in 1..=total {
            let offset = Duration::from_nanos((seq - 1) * period_ns);
            tokio::time::sleep_until(start + offset).await;
            let permit = Arc::clone(&in_flight).acquire_owned().await.expect("the semaphore is never closed");
            let due_us = start_us + offset.as_micros() as i64;
            let (http, template, sender) = (http.clone(), Arc::clone(template), sender.clone());
            tokio::spawn(async move {
                let answer = template.call(&http, seq, due_us).await;
                drop(permit);
                let _ = sender.send(answer);
            });
        }
        drop(sender);
    };
    // Not `total`: a typo'd rate must not reserve terabytes up front.
    let mut answers = Vec::with_capacity(total.min(1 << 20) as usize);
    let collect = async {
        while let Some(answer) = receiver.recv().await {
            answers.push(answer);
        }
    };
    tokio::join!(scheduler, collect);
    answers
}

/// `connections` clients each call again as soon as answered, until `duration` has passed: the
/// saturation figure. Each call is due when it is sent.
async fn closed_loop(http: &reqwest::Client, template: &Template, connections: u32, duration: Duration) -> Vec<Answer> {
    let next = AtomicU64::new(1);
    let until = Instant::now() + duration;
    let client = |_| async {
        let mut answers = Vec::new();
        while Instant::now() < until {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            answers.push(template.call(http, seq, chrono::Utc::now().timestamp_micros()).await);
        }
        answers
    };
    let all = futures_util::future::join_all((0..connections).map(client)).await;
    all.into_iter().flatten().collect()
}

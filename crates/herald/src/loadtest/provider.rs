//! What a load test asks the fake provider: whether it is there, whether the run's first message
//! reached it, and, once the calls are done, what it received.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::time::Instant;

use super::results::Received;

/// The fake provider of a run, and the instance that answered at its start.
pub(super) struct FakeProvider<'a> {
    http: &'a reqwest::Client,
    base: String,
    instance: String,
}

impl<'a> FakeProvider<'a> {
    /// Checks a fake answers at `url` (nothing is reset: each run's markers are its own, and how
    /// the fake behaves is its operator's choice).
    pub(super) async fn connect(http: &'a reqwest::Client, url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        let mut fake = Self { http, base, instance: String::new() };
        let answer = fake.read("none", true).await.context("no herald fake-provider answers at the --provider URL")?;
        fake.instance = answer["instance"].as_str().unwrap_or_default().to_string();
        Ok(fake)
    }

    /// `GET /_fake/markers`; errors name what failed, never the URL (it may hold a password).
    async fn read(&self, prefix: &str, count_only: bool) -> anyhow::Result<Value> {
        let url = format!("{}/_fake/markers?prefix={prefix}&countOnly={count_only}", self.base);
        let answer = self.http.get(&url).send().await.map_err(reqwest::Error::without_url)?;
        if !answer.status().is_success() {
            bail!("the fake provider answered {}", answer.status());
        }
        let body: Value = answer.json().await.map_err(reqwest::Error::without_url)?;
        if body["count"].as_u64().is_none() {
            bail!("the --provider URL answered, but not as a herald fake-provider of this version");
        }
        Ok(body)
    }

    /// Waits up to `within` for the run's first message: a campaign that does not render
    /// `{{ context.marker }}`, or workers that send elsewhere (a real provider, no AWS region or
    /// credentials), fail here rather than as a run where everything is "lost".
    pub(super) async fn wait_for_first(&self, run: &str, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if self.read(&format!("hlm.{run}check"), true).await?["count"].as_u64() > Some(0) {
                return Ok(());
            }
            if started.elapsed() >= within {
                bail!(
                    "the first message was accepted but had not reached the fake provider after {}s: the campaign \
                     must render {{{{ context.marker }}}}, and the workers must send to this fake (AWS_ENDPOINT_URL, \
                     with AWS_REGION and credentials set) and be running",
                    within.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads the fake until every accepted call's message has arrived, or nothing new has
    /// arrived for `drain`; then has the fake forget the run. Counts are polled while many are
    /// missing (a run's list can be megabytes), the list once they could all be there.
    pub(super) async fn received(
        &self,
        run: &str,
        accepted: &HashSet<u64>,
        drain: Duration,
    ) -> anyhow::Result<Received> {
        let prefix = format!("hlm.{run}.");
        let (mut last_count, mut last_progress) = (0u64, Instant::now());
        let received = loop {
            let count = self.read(&prefix, true).await?["count"].as_u64().unwrap_or(0);
            let mut list = None;
            let mut progress = count;
            if count >= accepted.len() as u64 {
                // Calls answered with an error may have been sent too: count only accepted ones.
                let received = Received::from_answer(&self.read(&prefix, false).await?, &prefix);
                let arrived = received.arrived_of(accepted);
                if arrived == accepted.len() {
                    break received;
                }
                progress = count + arrived as u64;
                list = Some(received);
            }
            if progress > last_count {
                (last_count, last_progress) = (progress, Instant::now());
            } else if last_progress.elapsed() >= drain {
                break match list {
                    Some(received) => received,
                    None => Received::from_answer(&self.read(&prefix, false).await?, &prefix),
                };
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let now = self.read("none", true).await?;
        if now["instance"].as_str().unwrap_or_default() != self.instance {
            bail!("the fake provider was restarted or reset during the run: what it received before is gone");
        }
        // The run's markers (its first call's too) are of no more use to the fake.
        let _ = self.http.delete(format!("{}/_fake/markers?prefix=hlm.{run}", self.base)).send().await;
        Ok(received)
    }
}

//! Execution limits, counted in recipients (the unit that costs money) and shared by every API
//! process through PostgreSQL:
//!
//! - a recipient rate per sandbox and one per API key (a key's rate below its sandbox's keeps one
//!   runaway client from starving the sandbox's other keys);
//! - a daily recipient quota per sandbox and channel (the SMS budget).
//!
//! The hot path stays local: a process leases a block of tokens from PostgreSQL (one statement,
//! see migration 0011) and spends it in memory, so most requests make no database round trip.
//! What a block costs in precision: a process may hold up to one block per bucket unspent, which
//! other processes cannot use meanwhile (the limit is never exceeded by more than that). A refusal
//! is remembered locally with the bucket's level, so a client hammering after its 429 is answered
//! from memory until tokens can have come back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use herald_core::Channel;
use herald_core::execution::MAX_RECIPIENTS;
use herald_store::{Store, StoreError};

/// Limits per sandbox and per key; 0 means none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Recipients per second per sandbox, across all API processes.
    pub sandbox_per_sec: u32,
    /// Recipients per second per API key, across all API processes.
    pub key_per_sec: u32,
    /// Recipients per UTC day per sandbox, by channel.
    pub daily_email: u64,
    pub daily_sms: u64,
    pub daily_push: u64,
}

impl Default for Limits {
    /// The defaults of `herald api` (see cli.rs).
    fn default() -> Self {
        Self { sandbox_per_sec: 1_000, key_per_sec: 500, daily_email: 200_000, daily_sms: 10_000, daily_push: 0 }
    }
}

impl Limits {
    pub fn none() -> Self {
        Self { sandbox_per_sec: 0, key_per_sec: 0, daily_email: 0, daily_sms: 0, daily_push: 0 }
    }

    pub fn daily(&self, channel: Channel) -> u64 {
        match channel {
            Channel::Email => self.daily_email,
            Channel::Sms => self.daily_sms,
            Channel::Push => self.daily_push,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    SandboxRate,
    KeyRate,
    DailyQuota(Channel),
}

impl Limit {
    /// The stable name clients see (the `limit` member of the 429).
    pub fn name(self) -> &'static str {
        match self {
            Limit::SandboxRate => "sandbox-rate",
            Limit::KeyRate => "key-rate",
            Limit::DailyQuota(_) => "daily-quota",
        }
    }
}

/// A refusal: the limit, its value (per second, or per day), and when to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    pub limit: Limit,
    pub allowed: u64,
    pub retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("limit exceeded: {}", .0.limit.name())]
    Exceeded(LimitExceeded),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A rate bucket's share held by this process.
#[derive(Debug, Default)]
struct RateBucket {
    tokens: u32,
    /// The bucket's level in PostgreSQL at the last refusal: until it can have refilled enough,
    /// refusals are answered from here.
    refused: Option<(Instant, f64)>,
}

/// A quota's share held by this process, for one day.
#[derive(Debug)]
struct QuotaBucket {
    day: NaiveDate,
    tokens: u64,
    /// What PostgreSQL had left when last asked; it only goes down (others spend too).
    remaining: Option<u64>,
}

/// The limiter of one API process.
#[derive(Debug)]
pub struct Limiter {
    store: Store,
    limits: Limits,
    rates: Mutex<HashMap<String, Shared<RateBucket>>>,
    quotas: Mutex<HashMap<(String, Channel), Shared<QuotaBucket>>>,
}

/// A bucket share, locked across a lease (an async lock: the lease awaits the database).
type Shared<T> = Arc<tokio::sync::Mutex<T>>;

/// Blocks are leased a tenth of a second's rate at a time, or a hundredth of a day's quota:
/// few enough database statements, little held back from other processes.
const RATE_BLOCK_SECONDS: f64 = 0.1;
const QUOTA_BLOCK_SHARE: u64 = 100;

/// A request always counts at least one recipient (an empty one is refused later, but it cost
/// work) and at most the most a valid one has, so that every bucket can hold a whole request.
fn recipients_counted(recipients: usize) -> u32 {
    u32::try_from(recipients.clamp(1, MAX_RECIPIENTS)).unwrap_or(u32::MAX)
}

/// A bucket banks one second's rate, and at least one whole request.
fn burst_of(rate: u32) -> u32 {
    rate.max(recipients_counted(MAX_RECIPIENTS))
}

/// When `need` tokens are back in a bucket at `level` refilling at `rate` a second.
fn wait_for(need: u32, level: f64, rate: u32) -> Duration {
    Duration::from_secs_f64(((f64::from(need) - level) / f64::from(rate.max(1))).max(0.0))
}

/// Time left until the next UTC midnight after `now`.
pub fn until_midnight(now: DateTime<Utc>) -> Duration {
    let tomorrow = now.date_naive().succ_opt().unwrap_or(now.date_naive()).and_time(chrono::NaiveTime::MIN).and_utc();
    (tomorrow - now).to_std().unwrap_or(Duration::ZERO)
}

impl Limiter {
    pub fn new(store: Store, limits: Limits) -> Self {
        Self { store, limits, rates: Mutex::default(), quotas: Mutex::default() }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn rate_bucket(&self, name: String) -> Shared<RateBucket> {
        let mut rates = self.rates.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(rates.entry(name).or_default())
    }

    /// Takes one token per recipient from the key's bucket and the sandbox's, both or neither.
    /// The key is checked first: when both are exhausted, the client's own rate is the one named.
    pub async fn admit(&self, sandbox: &str, key: &str, recipients: usize) -> Result<(), LimitError> {
        let need = recipients_counted(recipients);
        let buckets: Vec<(Limit, u32, String)> = [
            (Limit::KeyRate, self.limits.key_per_sec, format!("ingest:key:{key}")),
            (Limit::SandboxRate, self.limits.sandbox_per_sec, format!("ingest:sandbox:{sandbox}")),
        ]
        .into_iter()
        .filter(|(_, rate, _)| *rate > 0)
        .collect();
        let locals: Vec<_> = buckets.iter().map(|(_, _, name)| self.rate_bucket(name.clone())).collect();
        // Always in the same order (key, then sandbox), so two requests never wait on each other
        // in a cycle. Held across the lease: a refill is one statement for all waiting requests.
        let mut guards = Vec::with_capacity(locals.len());
        for local in &locals {
            guards.push(local.lock().await);
        }
        for ((limit, rate, name), bucket) in buckets.iter().zip(guards.iter_mut()) {
            if bucket.tokens >= need {
                continue;
            }
            let missing = need - bucket.tokens;
            let now = Instant::now();
            if let Some((at, level)) = bucket.refused {
                let level = level + now.duration_since(at).as_secs_f64() * f64::from(*rate);
                if level < f64::from(missing) {
                    return Err(exceeded(*limit, u64::from(*rate), wait_for(missing, level, *rate)));
                }
            }
            let burst = burst_of(*rate);
            let block = ((f64::from(*rate) * RATE_BLOCK_SECONDS) as u32).clamp(missing, burst);
            let lease = self.store.lease_tokens(name, f64::from(*rate), f64::from(burst), missing, block).await?;
            if lease.granted == 0 {
                bucket.refused = Some((now, lease.available));
                return Err(exceeded(*limit, u64::from(*rate), wait_for(missing, lease.available, *rate)));
            }
            bucket.refused = None;
            bucket.tokens += lease.granted;
        }
        for bucket in &mut guards {
            bucket.tokens -= need;
        }
        Ok(())
    }

    /// Takes `recipients` of `sandbox`'s daily quota on `channel` for the day of `now`. The
    /// returned hold gives them back unless committed: only accepted recipients count.
    pub async fn take_quota(
        &self,
        sandbox: &str,
        channel: Channel,
        now: DateTime<Utc>,
        recipients: usize,
    ) -> Result<QuotaHold, LimitError> {
        let quota = self.limits.daily(channel);
        // Not capped at a request's 20: an audience fan-out takes a page at a time.
        let need = u64::try_from(recipients.max(1)).unwrap_or(u64::MAX);
        let day = now.date_naive();
        if quota == 0 {
            return Ok(QuotaHold { bucket: None, day, taken: 0 });
        }
        let local = {
            let mut quotas = self.quotas.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let key = (sandbox.to_string(), channel);
            match quotas.get(&key) {
                Some(bucket) => Arc::clone(bucket),
                None => {
                    // Earlier days' shares are void: forgetting them keeps the map small.
                    quotas.retain(|_, bucket| bucket.try_lock().map_or(true, |bucket| bucket.day >= day));
                    let bucket = Arc::new(tokio::sync::Mutex::new(QuotaBucket { day, tokens: 0, remaining: None }));
                    Arc::clone(quotas.entry(key).or_insert(bucket))
                }
            }
        };
        let mut bucket = local.lock().await;
        if bucket.day != day {
            *bucket = QuotaBucket { day, tokens: 0, remaining: None };
        }
        if bucket.tokens < need {
            let missing = need - bucket.tokens;
            let refused = || exceeded(Limit::DailyQuota(channel), quota, until_midnight(now));
            if bucket.remaining.is_some_and(|remaining| remaining < missing) {
                return Err(refused());
            }
            let block = (quota / QUOTA_BLOCK_SHARE).max(missing);
            let lease = self.store.lease_daily_quota(sandbox, channel.as_str(), day, quota, missing, block).await?;
            bucket.remaining = Some(lease.remaining);
            if lease.granted == 0 {
                return Err(refused());
            }
            bucket.tokens += lease.granted;
        }
        bucket.tokens -= need;
        drop(bucket);
        Ok(QuotaHold { bucket: Some(local), day, taken: need })
    }

    /// Forgets buckets and quotas nobody has used for a day or two, every ten minutes.
    pub async fn purge_forever(store: Store) {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let now = Utc::now();
            if let Err(error) = store.purge_rate_limits(now - chrono::Duration::days(1)).await {
                tracing::warn!(%error, "could not purge idle rate limit buckets");
            }
            if let Err(error) = store.purge_daily_quotas(now.date_naive() - chrono::Duration::days(2)).await {
                tracing::warn!(%error, "could not purge old daily quotas");
            }
        }
    }
}

fn exceeded(limit: Limit, allowed: u64, retry_after: Duration) -> LimitError {
    LimitError::Exceeded(LimitExceeded { limit, allowed, retry_after })
}

/// Recipients taken from a daily quota, given back when dropped uncommitted (the request failed,
/// or answered a replay that sends nothing new). The give-back is local: it goes to this
/// process's share, which the next request spends.
#[derive(Debug)]
pub struct QuotaHold {
    bucket: Option<Shared<QuotaBucket>>,
    day: NaiveDate,
    taken: u64,
}

impl QuotaHold {
    /// The recipients were accepted: they count.
    pub fn commit(mut self) {
        self.bucket = None;
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        let Some(bucket) = self.bucket.take() else { return };
        let (day, taken) = (self.day, self.taken);
        let give_back = move |bucket: &mut QuotaBucket| {
            if bucket.day == day {
                bucket.tokens += taken;
            }
        };
        if let Ok(mut held) = bucket.try_lock() {
            give_back(&mut held);
            return;
        }
        // Someone is refilling this share: give back once they are done.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { give_back(&mut *bucket.lock().await) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_its_recipients_within_the_bounds_of_a_valid_one() {
        assert_eq!(recipients_counted(0), 1);
        assert_eq!(recipients_counted(7), 7);
        assert_eq!(recipients_counted(5_000), 20);
        assert_eq!(burst_of(3), 20, "a bucket always holds one whole request");
        assert_eq!(burst_of(1_000), 1_000);
    }

    #[test]
    fn the_wait_is_the_time_to_refill_what_is_missing() {
        assert_eq!(wait_for(10, 4.0, 2), Duration::from_secs(3));
        assert_eq!(wait_for(1, 5.0, 2), Duration::ZERO);
    }

    #[test]
    fn a_daily_quota_resets_at_utc_midnight() {
        let now: DateTime<Utc> = "2026-11-28T23:59:30Z".parse().unwrap();
        assert_eq!(until_midnight(now), Duration::from_secs(30));
        let midnight: DateTime<Utc> = "2026-11-29T00:00:00Z".parse().unwrap();
        assert_eq!(until_midnight(midnight), Duration::from_secs(86_400));
    }
}

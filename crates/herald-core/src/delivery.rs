//! What can happen to one delivery, and the retry policy that decides what happens next. Pure
//! rules: the worker supplies provider results and counters, these functions say ack, retry in a
//! tier, dead-letter or pause the channel.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The recorded state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Claimed by a worker that is calling the provider.
    Sending,
    /// A transient failure; the message waits in a retry tier.
    Retrying,
    Sent,
    Failed,
    Excluded,
    /// The worker died between calling the provider and recording the answer: maybe sent.
    Unknown,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 6] = [
        DeliveryStatus::Sending,
        DeliveryStatus::Retrying,
        DeliveryStatus::Sent,
        DeliveryStatus::Failed,
        DeliveryStatus::Excluded,
        DeliveryStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Excluded => "excluded",
            DeliveryStatus::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Whether the delivery has its final outcome.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Sending | DeliveryStatus::Retrying)
    }
}

/// How a provider failure is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Throttling, 5xx, timeouts, connection errors: try again later.
    Transient,
    /// The message itself is refused: one call, recorded failed, never retried.
    Permanent,
    /// The account or application cannot send at all: pause the channel, keep the message.
    AccountWide,
    /// The request left the process but no answer came back (timeout, unreadable answer, a
    /// connection lost after the request was written): the provider may have sent it. Recorded
    /// `unknown` and not resent, unless the campaign opts into resending.
    MaybeDelivered,
}

/// A classified provider failure. `code` is the provider's error code (e.g. `MessageRejected`);
/// `message` never contains addresses or content (classifiers build it from codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// A push endpoint reported disabled: the token is dead.
    pub token_dead: bool,
}

impl ProviderError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { class, code: code.into(), message: message.into(), token_dead: false }
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}: {}", self.class, self.code, self.message)
    }
}

/// Exclusion and failure reasons recorded on deliveries (AJO's vocabulary where it has one).
pub mod reasons {
    pub const CAMPAIGN_NOT_LIVE: &str = "campaign-not-live";
    pub const EXPIRED: &str = "expired";
    pub const NO_ADDRESS: &str = "no-address";
    pub const MALFORMED_ADDRESS: &str = "malformed-address";
    pub const RENDERING_ERROR: &str = "rendering-error";
    pub const MAX_ATTEMPTS: &str = "max-attempts";
    pub const INVALID_MESSAGE: &str = "invalid-message";
    pub const MAYBE_SENT: &str = "worker-died-during-send";
    /// The address is on the sandbox's suppression list (AJO's EmailSuppressed).
    pub const SUPPRESSED: &str = "suppressed";
}

/// What happens to a delivery after a failed provider call: the one decision table of the
/// worker, kept here without IO so it can be tested exhaustively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Call again within this delivery, after the in-process delay.
    CallAgain { delay: Duration },
    /// Record `retrying` (the calls counted) and republish to this retry tier.
    Retry { tier: Duration },
    /// Record `failed` with this reason; `dead_letter` when the message goes to the dead-letter
    /// queue (out of attempts) rather than being acknowledged (refused by the provider).
    Fail { reason: String, dead_letter: bool },
    /// Record `unknown` (maybe sent) with the error code as reason, and acknowledge.
    MaybeSent,
    /// Account-wide: record `retrying` without counting the calls, and pause the channel.
    PauseChannel,
}

/// What the delivery loop does with a message. The pipeline decides; only the loop acts on it
/// (acks and republishes), after the broker confirmed any republish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Outcome recorded (or nothing to do): acknowledge.
    Ack,
    /// Transient failure: republish to the retry tier `tier`, counting `tiers_used`.
    Retry { tier: Duration, tiers_used: u32 },
    /// Out of attempts or unreadable: publish to the dead-letter queue, then acknowledge.
    DeadLetter { reason: String, last_error: String },
    /// The channel cannot send (account-wide failure) or the database is away: put the message
    /// back without counting an attempt, and stop consuming the channel for `pause` (none: the
    /// account-wide back-off, 5 s doubling per consecutive pause).
    Pause { pause: Option<Duration>, reason: String },
}

/// The whole consequence of a failed call that ends the delivery's attempt: the delivery row to
/// write and what becomes of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureOutcome {
    pub status: DeliveryStatus,
    pub reason: String,
    /// Provider calls counted against the delivery (none for an account-wide failure: not the
    /// message's fault).
    pub calls: u32,
    /// When a retry may claim it (the tier's delay).
    pub retry_after: Option<Duration>,
    pub decision: Decision,
}

impl AfterFailure {
    /// The row and the decision for this step, after a failed call with provider code `code`
    /// at `attempt`; `None` for [`AfterFailure::CallAgain`], which records nothing yet.
    /// `last_error` is the (redacted) error text a dead letter carries; `first_tier` is where
    /// a paused channel's message waits.
    pub fn outcome(
        self,
        code: &str,
        attempt: Attempt,
        first_tier: Duration,
        last_error: &str,
    ) -> Option<FailureOutcome> {
        let row = |status, reason: &str, calls, retry_after, decision| {
            Some(FailureOutcome { status, reason: reason.to_string(), calls, retry_after, decision })
        };
        match self {
            AfterFailure::CallAgain { .. } => None,
            AfterFailure::Retry { tier } => row(
                DeliveryStatus::Retrying,
                code,
                attempt.calls,
                Some(tier),
                Decision::Retry { tier, tiers_used: attempt.tiers_used + 1 },
            ),
            AfterFailure::Fail { reason, dead_letter } => {
                let decision = if dead_letter {
                    Decision::DeadLetter { reason: reason.clone(), last_error: last_error.to_string() }
                } else {
                    Decision::Ack
                };
                row(DeliveryStatus::Failed, &reason, attempt.calls, None, decision)
            }
            AfterFailure::MaybeSent => row(DeliveryStatus::Unknown, code, attempt.calls, None, Decision::Ack),
            AfterFailure::PauseChannel => row(
                DeliveryStatus::Retrying,
                code,
                0,
                Some(first_tier),
                Decision::Pause { pause: None, reason: code.to_string() },
            ),
        }
    }
}

/// The counters a retry decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Provider calls made for this delivery by earlier claims (the stored `attempts`).
    pub earlier_calls: u32,
    /// Calls made under the current claim, including the one that just failed.
    pub calls: u32,
    /// Retry tiers the message has been through.
    pub tiers_used: u32,
}

/// Retry parameters. Named presets rather than numbers in code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Provider calls within one delivery of the message before it goes to a retry tier.
    pub in_process_attempts: u32,
    pub in_process_base_delay: Duration,
    pub in_process_max_delay: Duration,
    /// Delays of the broker retry tiers, in the order they are used.
    pub tiers: Vec<Duration>,
    /// Provider calls in all before the message is dead-lettered.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The production preset: three quick tries, then 5 s, 30 s, 5 min, at most 12 calls.
    pub fn standard(tiers: Vec<Duration>) -> Self {
        Self {
            in_process_attempts: 3,
            in_process_base_delay: Duration::from_millis(100),
            in_process_max_delay: Duration::from_secs(2),
            tiers,
            max_attempts: 12,
        }
    }

    /// Delay before in-process attempt `attempt` (1-based, the retry after the first call),
    /// exponential with full jitter: `jitter` in [0, 1) scales the capped delay.
    pub fn in_process_delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let capped = self.in_process_base_delay.saturating_mul(1 << exponent).min(self.in_process_max_delay);
        capped.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// Decides what follows a failed call of class `class` (with provider code `code`). A
    /// maybe-delivered failure is retried like a transient one only when `resend_maybe_sent`.
    /// `jitter` in [0, 1) scales the in-process delay.
    pub fn after_failure(
        &self,
        class: ErrorClass,
        code: &str,
        attempt: Attempt,
        resend_maybe_sent: bool,
        jitter: f64,
    ) -> AfterFailure {
        match class {
            ErrorClass::Permanent => AfterFailure::Fail { reason: code.to_string(), dead_letter: false },
            ErrorClass::AccountWide => AfterFailure::PauseChannel,
            ErrorClass::MaybeDelivered if !resend_maybe_sent => AfterFailure::MaybeSent,
            ErrorClass::Transient | ErrorClass::MaybeDelivered => {
                let total = attempt.earlier_calls.saturating_add(attempt.calls);
                if attempt.calls < self.in_process_attempts && total < self.max_attempts {
                    return AfterFailure::CallAgain { delay: self.in_process_delay(attempt.calls, jitter) };
                }
                match self.next_tier(total, attempt.tiers_used) {
                    Some(tier) => AfterFailure::Retry { tier },
                    None => AfterFailure::Fail { reason: reasons::MAX_ATTEMPTS.to_string(), dead_letter: true },
                }
            }
        }
    }

    /// After a transient failure, with `attempts` provider calls made in all and the message
    /// having been through `tiers_used` retry tiers: the next tier, or `None` to dead-letter.
    pub fn next_tier(&self, attempts: u32, tiers_used: u32) -> Option<Duration> {
        if attempts >= self.max_attempts {
            return None;
        }
        self.tiers.get(usize::try_from(tiers_used).ok()?).copied()
    }
}

/// Growing pause of a channel after account-wide failures: 5 s, 10 s, ... capped at 5 minutes.
pub fn channel_pause(consecutive_pauses: u32) -> Duration {
    Duration::from_secs(5).saturating_mul(1 << consecutive_pauses.min(6)).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::standard(vec![Duration::from_secs(5), Duration::from_secs(30), Duration::from_secs(300)])
    }

    #[test]
    fn in_process_delays_grow_exponentially_under_a_cap_with_jitter() {
        let policy = policy();
        assert_eq!(policy.in_process_delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(policy.in_process_delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(policy.in_process_delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(policy.in_process_delay(30, 1.0), Duration::from_secs(2));
        assert_eq!(policy.in_process_delay(2, 0.0), Duration::ZERO);
    }

    #[test]
    fn tiers_are_taken_in_order_then_the_message_is_dead_lettered() {
        let policy = policy();
        assert_eq!(policy.next_tier(3, 0), Some(Duration::from_secs(5)));
        assert_eq!(policy.next_tier(6, 1), Some(Duration::from_secs(30)));
        assert_eq!(policy.next_tier(9, 2), Some(Duration::from_secs(300)));
        assert_eq!(policy.next_tier(12, 3), None, "out of attempts");
        assert_eq!(policy.next_tier(10, 3), None, "out of tiers");
    }

    /// Every error class at the first, a middle and the last attempt, for a campaign that does
    /// and one that does not resend maybe-delivered messages.
    #[test]
    fn the_decision_after_a_failure_covers_every_class_and_attempt() {
        use AfterFailure::*;
        let policy = policy();
        let first = Attempt { earlier_calls: 0, calls: 1, tiers_used: 0 };
        let end_of_burst = Attempt { earlier_calls: 3, calls: 3, tiers_used: 1 };
        let last = Attempt { earlier_calls: 9, calls: 3, tiers_used: 3 };
        let quick = CallAgain { delay: Duration::from_millis(50) };
        let dead = Fail { reason: reasons::MAX_ATTEMPTS.into(), dead_letter: true };
        let rejected = Fail { reason: "MessageRejected".into(), dead_letter: false };
        let cases = [
            (ErrorClass::Transient, first, false, quick.clone()),
            (ErrorClass::Transient, end_of_burst, false, Retry { tier: Duration::from_secs(30) }),
            (ErrorClass::Transient, last, false, dead.clone()),
            (ErrorClass::Permanent, first, false, rejected.clone()),
            (ErrorClass::Permanent, end_of_burst, true, rejected.clone()),
            (ErrorClass::Permanent, last, false, rejected),
            (ErrorClass::AccountWide, first, false, PauseChannel),
            (ErrorClass::AccountWide, end_of_burst, true, PauseChannel),
            (ErrorClass::AccountWide, last, false, PauseChannel),
            (ErrorClass::MaybeDelivered, first, false, MaybeSent),
            (ErrorClass::MaybeDelivered, end_of_burst, false, MaybeSent),
            (ErrorClass::MaybeDelivered, last, false, MaybeSent),
            (ErrorClass::MaybeDelivered, first, true, quick),
            (ErrorClass::MaybeDelivered, end_of_burst, true, Retry { tier: Duration::from_secs(30) }),
            (ErrorClass::MaybeDelivered, last, true, dead),
        ];
        for (class, attempt, resend, expected) in cases {
            let code = if class == ErrorClass::Permanent { "MessageRejected" } else { "Timeout" };
            assert_eq!(
                policy.after_failure(class, code, attempt, resend, 0.5),
                expected,
                "{class:?} {attempt:?} {resend}"
            );
        }
        // The same table, through to what is recorded and what becomes of the message.
        let first_tier = Duration::from_secs(5);
        let row = |status, reason: &str, calls, retry_after, decision| {
            Some(FailureOutcome { status, reason: reason.into(), calls, retry_after, decision })
        };
        let dead = |calls| {
            let decision = Decision::DeadLetter { reason: reasons::MAX_ATTEMPTS.into(), last_error: "err".into() };
            row(DeliveryStatus::Failed, reasons::MAX_ATTEMPTS, calls, None, decision)
        };
        let retry = |calls, tier: u64, tiers_used| {
            let tier = Duration::from_secs(tier);
            row(DeliveryStatus::Retrying, "Timeout", calls, Some(tier), Decision::Retry { tier, tiers_used })
        };
        let rejected = |calls| row(DeliveryStatus::Failed, "MessageRejected", calls, None, Decision::Ack);
        let paused = row(
            DeliveryStatus::Retrying,
            "Timeout",
            0,
            Some(first_tier),
            Decision::Pause { pause: None, reason: "Timeout".into() },
        );
        let maybe = |calls| row(DeliveryStatus::Unknown, "Timeout", calls, None, Decision::Ack);
        let outcomes = [
            (ErrorClass::Transient, first, false, None),
            (ErrorClass::Transient, end_of_burst, false, retry(3, 30, 2)),
            (ErrorClass::Transient, last, false, dead(3)),
            (ErrorClass::Permanent, first, false, rejected(1)),
            (ErrorClass::Permanent, end_of_burst, true, rejected(3)),
            (ErrorClass::Permanent, last, false, rejected(3)),
            (ErrorClass::AccountWide, first, false, paused.clone()),
            (ErrorClass::AccountWide, end_of_burst, true, paused.clone()),
            (ErrorClass::AccountWide, last, false, paused),
            (ErrorClass::MaybeDelivered, first, false, maybe(1)),
            (ErrorClass::MaybeDelivered, end_of_burst, false, maybe(3)),
            (ErrorClass::MaybeDelivered, last, false, maybe(3)),
            (ErrorClass::MaybeDelivered, first, true, None),
            (ErrorClass::MaybeDelivered, end_of_burst, true, retry(3, 30, 2)),
            (ErrorClass::MaybeDelivered, last, true, dead(3)),
        ];
        for (class, attempt, resend, expected) in outcomes {
            let code = if class == ErrorClass::Permanent { "MessageRejected" } else { "Timeout" };
            let after = policy.after_failure(class, code, attempt, resend, 0.5);
            assert_eq!(after.outcome(code, attempt, first_tier, "err"), expected, "{class:?} {attempt:?} {resend}");
        }
        // A delivery whose earlier claims used up the attempts is not called again in-process.
        let spent = Attempt { earlier_calls: 11, calls: 1, tiers_used: 2 };
        let out_of_attempts = Fail { reason: reasons::MAX_ATTEMPTS.into(), dead_letter: true };
        assert_eq!(policy.after_failure(ErrorClass::Transient, "Throttling", spent, false, 0.5), out_of_attempts);
    }

    #[test]
    fn channel_pauses_grow_to_a_cap() {
        assert_eq!(channel_pause(0), Duration::from_secs(5));
        assert_eq!(channel_pause(1), Duration::from_secs(10));
        assert_eq!(channel_pause(10), Duration::from_secs(300));
    }

    #[test]
    fn statuses_round_trip() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(DeliveryStatus::parse("snet"), None);
        assert!(!DeliveryStatus::Sending.is_final());
    }
}

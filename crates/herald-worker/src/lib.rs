//! Herald's worker: consumes the per-channel queues, re-checks the campaign, renders with tera,
//! sends through SES v2 / SNS, retries transient failures and dead-letters permanent ones.
//!
//! Not built yet: the consumers arrive with issue #4; `herald worker` says so and exits.

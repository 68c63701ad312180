//! Herald's worker: consumes the per-channel queues, re-checks the campaign, renders with tera,
//! sends through SES v2 / SNS, retries transient failures and dead-letters permanent ones.
//!
//! Built so far: the AWS client configuration ([`providers::aws`]). The consumers arrive with
//! issue #4; until then `herald worker` says so and exits.

pub mod providers;

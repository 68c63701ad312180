//! Herald's worker: consumes the per-channel queues, re-checks the campaign, renders with tera,
//! sends through SES v2 / SNS, retries transient failures and dead-letters permanent ones.
//!
//! [`pipeline`] decides what happens to one message (no broker access); [`consumer`] is the
//! delivery loop that consumes, runs the pipeline and settles every message (ack, retry tier,
//! dead letter). [`providers`] hold the SES/SNS clients and their error classifiers; [`feedback`]
//! takes SES events in from SQS.

pub mod consumer;
pub mod dead_letters;
pub mod feedback;
mod observe;
mod pause;
pub mod pipeline;
pub mod providers;
pub mod render;
pub mod resolve;
pub mod webhooks;

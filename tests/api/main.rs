//! Integration tests of the HTTP API against a real PostgreSQL, one database per test.

mod auth;
mod campaign_tools;
mod delivery_faults;
mod errors;
mod executions;
mod idempotency;
mod lifecycle;
mod metrics;
mod migrations;
mod moto;
mod profiles;
mod report_page;
mod reports;
mod review;
mod schedule;
mod templates;
mod worker;

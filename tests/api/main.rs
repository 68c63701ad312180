//! Integration tests of the HTTP API against a real PostgreSQL, one database per test.

mod auth;
mod batch_isolation;
mod campaign_tools;
mod delivery_faults;
mod errors;
mod executions;
mod fuzz;
mod hostile_input;
mod idempotency;
mod keys;
mod lifecycle;
mod limits;
mod metrics;
mod migrations;
mod moto;
mod newcomer;
mod ownership;
mod profiles;
mod report_page;
mod reports;
mod review;
mod schedule;
mod template_sandbox;
mod templates;
mod typed_states;
mod worker;

//! Herald's domain, free of IO: campaign definitions and their review, the campaign lifecycle,
//! addresses, the clock, and the tera templates that personalise content.
//!
//! Everything here is deterministic given its inputs (the clock is injected), so the rules that
//! decide what may be sent are unit-tested without a database or a broker.

pub mod address;
pub mod audience;
pub mod campaign;
pub mod clock;
pub mod delivery;
pub mod execution;
pub mod feedback;
pub mod lifecycle;
pub mod report;
pub mod review;
pub mod scope;
#[cfg(feature = "sql")]
mod sql;
pub mod template;

pub use campaign::{CampaignDefinition, Category, Channel, Content, Schedule, Surface};
pub use clock::{Clock, ManualClock, SystemClock};
pub use lifecycle::{Action, CampaignStatus, IllegalTransition, StoredState};
pub use scope::Scope;

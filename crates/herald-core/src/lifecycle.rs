//! The campaign lifecycle: Draft → (review) → Live, or Scheduled until its start date →
//! Stopped (manual, terminal) or Completed (end date passed) → Archived.
//!
//! Only four states are stored (`draft`, `active`, `stopped`, `archived`); `scheduled`, `live`
//! and `completed` are computed from the live version's schedule and the clock. So a campaign
//! goes live at its start date and completes at its end date with nothing running to flip it,
//! and every process that reads the campaign agrees on its status at a given instant.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::campaign::Schedule;

/// The state kept in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredState {
    /// Never activated.
    Draft,
    /// Activated: scheduled, live or completed depending on the live version's schedule.
    Active,
    Stopped,
    Archived,
}

impl StoredState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoredState::Draft => "draft",
            StoredState::Active => "active",
            StoredState::Stopped => "stopped",
            StoredState::Archived => "archived",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [StoredState::Draft, StoredState::Active, StoredState::Stopped, StoredState::Archived]
            .into_iter()
            .find(|state| state.as_str() == s)
    }
}

/// The status a campaign shows at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CampaignStatus {
    Draft,
    Scheduled,
    Live,
    Completed,
    Stopped,
    Archived,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 6] = [
        CampaignStatus::Draft,
        CampaignStatus::Scheduled,
        CampaignStatus::Live,
        CampaignStatus::Completed,
        CampaignStatus::Stopped,
        CampaignStatus::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Draft => "draft",
            CampaignStatus::Scheduled => "scheduled",
            CampaignStatus::Live => "live",
            CampaignStatus::Completed => "completed",
            CampaignStatus::Stopped => "stopped",
            CampaignStatus::Archived => "archived",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }

    /// Computes the status of a campaign in `state` whose live version has `schedule`, at `now`.
    pub fn at(state: StoredState, schedule: Option<&Schedule>, now: DateTime<Utc>) -> Self {
        match state {
            StoredState::Draft => CampaignStatus::Draft,
            StoredState::Stopped => CampaignStatus::Stopped,
            StoredState::Archived => CampaignStatus::Archived,
            StoredState::Active => {
                let schedule = schedule.cloned().unwrap_or_default();
                if schedule.end_date.is_some_and(|end| now >= end) {
                    CampaignStatus::Completed
                } else if schedule.start_date.is_some_and(|start| now < start) {
                    CampaignStatus::Scheduled
                } else {
                    CampaignStatus::Live
                }
            }
        }
    }
}

impl fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator can ask of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Patch,
    Delete,
    Activate,
    Stop,
    Archive,
    Duplicate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Patch => "patch",
            Action::Delete => "delete",
            Action::Activate => "activate",
            Action::Stop => "stop",
            Action::Archive => "archive",
            Action::Duplicate => "duplicate",
        }
    }
}

/// An action the campaign's status does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a campaign that is {status}: {reason}", action = .action.as_str())]
pub struct IllegalTransition {
    pub action: Action,
    pub status: CampaignStatus,
    pub reason: &'static str,
}

/// Decides whether `action` is allowed on a campaign with `status`; `has_draft` tells whether an
/// active campaign has a pending draft version (the only thing activation of an active campaign
/// can promote).
pub fn check(action: Action, status: CampaignStatus, has_draft: bool) -> Result<(), IllegalTransition> {
    use CampaignStatus as S;
    let refuse = |reason| Err(IllegalTransition { action, status, reason });
    match (action, status) {
        (Action::Duplicate, _) => Ok(()),
        (Action::Patch | Action::Delete | Action::Activate, S::Draft) => Ok(()),
        (Action::Patch | Action::Stop, S::Scheduled | S::Live) => Ok(()),
        (Action::Activate, S::Scheduled | S::Live) if has_draft => Ok(()),
        (Action::Activate, S::Scheduled | S::Live) => refuse("it has no draft version to activate"),
        (Action::Archive, S::Stopped | S::Completed) => Ok(()),
        (Action::Delete, _) => refuse("only drafts can be deleted; stop or archive it instead"),
        (Action::Stop | Action::Archive, S::Draft) => refuse("a draft was never activated; delete it instead"),
        (Action::Archive, S::Scheduled | S::Live) => refuse("stop it before archiving it"),
        (_, S::Stopped) => refuse("a stopped campaign is final; duplicate it to send again"),
        (_, S::Completed) => refuse("its end date has passed; duplicate it to send again"),
        (_, S::Archived) => refuse("an archived campaign is read-only; duplicate it to send again"),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, hour, 0, 0).unwrap()
    }

    #[test]
    fn an_active_campaign_is_scheduled_then_live_then_completed_as_time_passes() {
        let schedule = Schedule { start_date: Some(at(10)), end_date: Some(at(12)) };
        let status = |now| CampaignStatus::at(StoredState::Active, Some(&schedule), now);
        assert_eq!(status(at(9)), CampaignStatus::Scheduled);
        assert_eq!(status(at(10)), CampaignStatus::Live);
        assert_eq!(status(at(11)), CampaignStatus::Live);
        assert_eq!(status(at(12)), CampaignStatus::Completed);
    }

    #[test]
    fn an_active_campaign_without_dates_is_always_live() {
        assert_eq!(CampaignStatus::at(StoredState::Active, None, at(1)), CampaignStatus::Live);
    }

    #[test]
    fn every_action_is_decided_for_every_status() {
        use Action::*;
        use CampaignStatus::*;
        let allowed = [
            (Draft, vec![Patch, Delete, Activate, Duplicate]),
            (Scheduled, vec![Patch, Stop, Duplicate]),
            (Live, vec![Patch, Stop, Duplicate]),
            (Completed, vec![Archive, Duplicate]),
            (Stopped, vec![Archive, Duplicate]),
            (Archived, vec![Duplicate]),
        ];
        for (status, actions) in allowed {
            for action in [Patch, Delete, Activate, Stop, Archive, Duplicate] {
                let result = check(action, status, false);
                assert_eq!(result.is_ok(), actions.contains(&action), "{action:?} on {status:?}: {result:?}");
            }
        }
    }

    #[test]
    fn activating_a_live_campaign_needs_a_draft() {
        assert!(check(Action::Activate, CampaignStatus::Live, true).is_ok());
        let refused = check(Action::Activate, CampaignStatus::Live, false).unwrap_err();
        assert_eq!(refused.status, CampaignStatus::Live);
    }
}

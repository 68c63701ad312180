//! A channel's pause after account-wide failures or a database outage, shared by the consumers
//! of all its shard queues.

use std::time::Duration;

use herald_core::delivery::channel_pause;

/// Per-channel pause after account-wide failures or a database outage. Many in-flight messages
/// fail together when the account is paused: they join the running pause instead of each
/// starting (and lengthening) one of their own.
#[derive(Debug, Default)]
pub(crate) struct PauseState(std::sync::Mutex<Pauses>);

#[derive(Debug, Default)]
struct Pauses {
    until: Option<tokio::time::Instant>,
    /// Pauses in a row, without a normally handled message after the last one ended.
    consecutive: u32,
}

impl PauseState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pauses> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the running pause ends, if one is running.
    pub(crate) fn until(&self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        self.lock().until.filter(|until| *until > now)
    }

    /// Starts a pause of `wait` (none: the growing account-wide back-off) unless one is running;
    /// returns its length when it started one.
    pub(crate) fn start(&self, wait: Option<Duration>, now: tokio::time::Instant) -> Option<Duration> {
        let mut pauses = self.lock();
        if pauses.until.is_some_and(|until| until > now) {
            return None;
        }
        let wait = wait.unwrap_or_else(|| channel_pause(pauses.consecutive));
        pauses.consecutive += 1;
        pauses.until = Some(now + wait);
        Some(wait)
    }

    /// A message was handled normally: once no pause is running, the run of pauses is over.
    /// Returns whether this ended a run.
    pub(crate) fn resume(&self, now: tokio::time::Instant) -> bool {
        let mut pauses = self.lock();
        if pauses.until.is_some_and(|until| until > now) || pauses.consecutive == 0 {
            return false;
        }
        pauses.consecutive = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_during_a_pause_join_it_and_the_back_off_grows_only_between_pauses() {
        let pause = PauseState::default();
        let start = tokio::time::Instant::now();
        assert_eq!(pause.start(None, start), Some(Duration::from_secs(5)));
        // 63 more in-flight messages fail account-wide at once: same pause, same length.
        for _ in 0..63 {
            assert_eq!(pause.start(None, start + Duration::from_millis(10)), None);
        }
        assert_eq!(pause.until(start + Duration::from_secs(1)), Some(start + Duration::from_secs(5)));
        // A message handled normally while paused (say, excluded) does not end the run.
        assert!(!pause.resume(start + Duration::from_secs(2)));
        // Failing again right after the pause: the next one is twice as long.
        let later = start + Duration::from_secs(6);
        assert_eq!(pause.until(later), None);
        assert_eq!(pause.start(None, later), Some(Duration::from_secs(10)));
        // A message sent after that pause ends the run: back to 5 s.
        let after = later + Duration::from_secs(11);
        assert!(pause.resume(after));
        assert!(!pause.resume(after), "already over");
        assert_eq!(pause.start(None, after), Some(Duration::from_secs(5)));
        // A database pause has its own length.
        let much_later = after + Duration::from_secs(6);
        assert_eq!(pause.start(Some(Duration::from_secs(2)), much_later), Some(Duration::from_secs(2)));
    }
}

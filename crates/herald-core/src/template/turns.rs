//! Turns to compile or render on the blocking pool: a bounded number at once, and at most half
//! of them (at least one) for one sandbox, so a tenant whose templates are slow (up to their
//! budget) slows down its own messages and previews, not everyone's.
//!
//! The worker and the API's preview both use it, each with its own bound. An instance belongs to
//! its owner (a `Pipeline`, an `AppState`), not to the process, so two of them in one process
//! (`herald dev`, tests) do not share turns. This is the one piece of tokio in the domain crate:
//! semaphores, no IO.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub struct RenderTurns {
    all: Arc<Semaphore>,
    per_sandbox: usize,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A turn: the sandbox's share and one of the whole; released when dropped.
#[derive(Debug)]
pub struct RenderTurn {
    _sandbox: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

impl RenderTurns {
    /// `total` turns at once (at least one), half of them (at least one) per sandbox.
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        Self { all: Arc::new(Semaphore::new(total)), per_sandbox: (total / 2).max(1), shares: Mutex::default() }
    }

    fn share(&self, sandbox: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before inserting: no key allocation per message once the sandbox is known.
        if let Some(share) = shares.get(sandbox) {
            return Arc::clone(share);
        }
        // A new sandbox: forget first the shares nobody holds or waits on, so the map stays as
        // small as the sandboxes rendering right now.
        shares.retain(|_, share| Arc::strong_count(share) > 1 || share.available_permits() < self.per_sandbox);
        let share = Arc::new(Semaphore::new(self.per_sandbox));
        shares.insert(sandbox.to_string(), Arc::clone(&share));
        share
    }

    /// Waits for a turn of `sandbox`; waiting is the back-pressure of a busy process.
    pub async fn acquire(&self, sandbox: &str) -> RenderTurn {
        let closed = "render semaphores are never closed";
        let own = self.share(sandbox).acquire_owned().await.expect(closed);
        let all = Arc::clone(&self.all).acquire_owned().await.expect(closed);
        RenderTurn { _sandbox: own, _all: all }
    }

    /// A turn of `sandbox`, or `None` when `deadline` passes first.
    pub async fn acquire_until(&self, sandbox: &str, deadline: Instant) -> Option<RenderTurn> {
        tokio::time::timeout_at(deadline, self.acquire(sandbox)).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    #[tokio::test]
    async fn one_sandbox_cannot_hold_every_turn() {
        let turns = RenderTurns::new(4);
        let first = turns.acquire_until("a", soon()).await;
        let second = turns.acquire_until("a", soon()).await;
        assert!(first.is_some() && second.is_some());
        assert!(turns.acquire_until("a", soon()).await.is_none(), "a third turn for sandbox a");
        assert!(turns.acquire_until("b", soon()).await.is_some(), "sandbox b waits behind a");
    }

    #[tokio::test]
    async fn the_whole_bound_holds_across_sandboxes() {
        let turns = RenderTurns::new(2);
        let _a = turns.acquire("a").await;
        let _b = turns.acquire("b").await;
        assert!(turns.acquire_until("c", soon()).await.is_none());
    }

    #[tokio::test]
    async fn released_shares_are_forgotten_when_a_new_sandbox_comes() {
        let turns = RenderTurns::new(2);
        for sandbox in ["a", "b", "c"] {
            drop(turns.acquire_until(sandbox, soon()).await.expect("a turn"));
        }
        let held = turns.acquire("d").await;
        assert_eq!(turns.shares.lock().unwrap().len(), 1);
        drop(held);
    }
}

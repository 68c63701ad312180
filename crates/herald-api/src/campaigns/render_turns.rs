//! Turns on the blocking pool for previews and cURL samples, owned by one API's state.
//!
//! At most as many compiles and renders run at once as there are CPUs, and one sandbox holds at
//! most half of them (at least one), so one tenant's expensive previews queue behind each other
//! and never take every turn from another's. The turns belong to the `AppState`, not to the
//! process, so two APIs in one process (tests, `herald dev`) do not share them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct RenderTurns {
    all: Arc<Semaphore>,
    per_sandbox: usize,
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Default for RenderTurns {
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get))
    }
}

impl RenderTurns {
    pub(crate) fn new(total: usize) -> Self {
        let total = total.max(1);
        Self { all: Arc::new(Semaphore::new(total)), per_sandbox: (total / 2).max(1), shares: Mutex::default() }
    }

    fn share(&self, sandbox: &str) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the shares nobody holds or waits on, so the map stays as small as the sandboxes
        // previewing right now.
        shares.retain(|_, share| Arc::strong_count(share) > 1 || share.available_permits() < self.per_sandbox);
        Arc::clone(shares.entry(sandbox.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_sandbox))))
    }

    /// The sandbox's share and then a turn of the whole, or `None` when `deadline` passes first.
    pub(crate) async fn acquire(
        &self,
        sandbox: &str,
        deadline: Instant,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let own = tokio::time::timeout_at(deadline, self.share(sandbox).acquire_owned()).await.ok()?.ok()?;
        let turn = tokio::time::timeout_at(deadline, Arc::clone(&self.all).acquire_owned()).await.ok()?.ok()?;
        Some((own, turn))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_sandbox_cannot_hold_every_turn() {
        let turns = RenderTurns::new(4);
        let soon = || Instant::now() + Duration::from_millis(50);
        let first = turns.acquire("a", soon()).await;
        let second = turns.acquire("a", soon()).await;
        assert!(first.is_some() && second.is_some());
        assert!(turns.acquire("a", soon()).await.is_none(), "a third turn for sandbox a");
        assert!(turns.acquire("b", soon()).await.is_some(), "sandbox b waits behind a");
    }

    #[tokio::test]
    async fn released_shares_are_forgotten() {
        let turns = RenderTurns::new(2);
        for sandbox in ["a", "b", "c"] {
            drop(turns.acquire(sandbox, Instant::now() + Duration::from_millis(50)).await.expect("a turn"));
        }
        turns.share("d");
        assert_eq!(turns.shares.lock().unwrap().len(), 1);
    }
}

//! Micro-batching of database writes: concurrent requests hand their row to a batcher, which
//! writes whatever has queued up in one statement. Under load a batch holds about as many rows
//! as there are requests in flight; alone, a request is written at once, so batching adds no
//! latency at concurrency 1.
//!
//! Batching must not make requests share a fate: a batch whose statement fails for a reason
//! other than "database unavailable" is written again item by item, so an item the database
//! refuses fails alone and its neighbours — possibly another tenant's — get their own answers.
//! (A write that failed as a whole wrote nothing, so running each item again is safe; an
//! unavailable database would fail each item again, so that error is shared at once.)

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::StoreError;

type Reply<O> = oneshot::Sender<Result<O, Arc<StoreError>>>;

/// A batched writer. It owns its writer tasks: they stop when it is dropped.
#[derive(Debug)]
pub struct Batcher<I, O> {
    sender: mpsc::Sender<(I, Reply<O>)>,
    _writers: JoinSet<()>,
}

/// Runs `write` over `inputs` and checks it returned one output per input.
async fn write_all<I, O, F, Fut>(write: &F, inputs: Arc<[I]>) -> Result<Vec<O>, StoreError>
where
    F: Fn(Arc<[I]>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, StoreError>>,
{
    let expected = inputs.len();
    let outputs = write(inputs).await?;
    if outputs.len() == expected {
        Ok(outputs)
    } else {
        Err(StoreError::Corrupt("batch write returned the wrong number of rows".into()))
    }
}

impl<I: Clone + Send + Sync + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `workers` tasks, each writing batches of up to `max_batch` items with `write`,
    /// which must return one output per input, in order. The batch is shared with `write`, not
    /// copied: only the item-by-item rerun of a failed batch clones items.
    pub fn start<F, Fut>(workers: usize, max_batch: usize, write: F) -> Self
    where
        F: Fn(Arc<[I]>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send,
    {
        let (sender, receiver) = mpsc::channel::<(I, Reply<O>)>(max_batch * workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let write = Arc::new(write);
        let mut writers = JoinSet::new();
        for _ in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let write = Arc::clone(&write);
            writers.spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        batch.push(first);
                        while batch.len() < max_batch {
                            match receiver.try_recv() {
                                Ok(item) => batch.push(item),
                                Err(_) => break,
                            }
                        }
                    }
                    let (inputs, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
                    let inputs: Arc<[I]> = inputs.into();
                    match write_all(write.as_ref(), Arc::clone(&inputs)).await {
                        Ok(outputs) => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(output));
                            }
                        }
                        // Neighbours to isolate from: each item again, alone.
                        Err(error) if inputs.len() > 1 && !matches!(error, StoreError::Unavailable(_)) => {
                            tracing::warn!(%error, items = inputs.len(), "batched write failed; writing its items one by one");
                            for (input, reply) in inputs.iter().zip(replies) {
                                let result = write_all(write.as_ref(), Arc::from([input.clone()])).await;
                                let _ = reply.send(result.map(|mut outputs| outputs.remove(0)).map_err(Arc::new));
                            }
                        }
                        Err(error) => {
                            let error = Arc::new(error);
                            replies.into_iter().for_each(|reply| drop(reply.send(Err(Arc::clone(&error)))));
                        }
                    }
                }
            });
        }
        Self { sender, _writers: writers }
    }

    /// Queues `item` and waits for its batch to be written.
    pub async fn submit(&self, item: I) -> Result<O, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(StoreError::Unavailable("the batch writer stopped".into()));
        self.sender.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A batcher whose write takes a while (so concurrent items queue into one batch), fails
    /// any batch holding a negative item with `error`, and counts the items of each call.
    fn poisoned(error: fn() -> StoreError) -> (Batcher<i64, i64>, Arc<std::sync::Mutex<Vec<usize>>>) {
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let batcher = Batcher::start(1, 256, move |items: Arc<[i64]>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if items.iter().any(|item| *item < 0) { Err(error()) } else { Ok(items.to_vec()) }
            }
        });
        (batcher, calls)
    }

    async fn submit_all(batcher: Batcher<i64, i64>, items: Vec<i64>) -> Vec<Result<i64, Arc<StoreError>>> {
        let batcher = Arc::new(batcher);
        let tasks: Vec<_> = items
            .into_iter()
            .map(|item| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.submit(item).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    #[tokio::test]
    async fn one_item_the_database_refuses_fails_alone_and_its_batch_neighbours_are_written() {
        let (batcher, calls) = poisoned(|| StoreError::Corrupt("refused".into()));
        // The first item is written alone while the others queue up behind it, poison among them.
        let mut items: Vec<i64> = (1..=50).collect();
        items.insert(25, -1);
        let results = submit_all(batcher, items.clone()).await;
        for (item, result) in items.iter().zip(&results) {
            match result {
                Ok(written) => assert_eq!(written, item),
                Err(error) => assert!(*item < 0, "item {item} failed with its neighbour: {error}"),
            }
        }
        assert_eq!(results.iter().filter(|result| result.is_err()).count(), 1);
        let calls = calls.lock().unwrap().clone();
        assert!(calls.iter().any(|items| *items > 1), "the poison shared a batch: {calls:?}");
    }

    #[tokio::test]
    async fn an_unavailable_database_fails_the_whole_batch_without_writing_each_item_again() {
        let (batcher, calls) = poisoned(|| StoreError::Unavailable("down".into()));
        let items: Vec<i64> = std::iter::once(1).chain(std::iter::repeat_n(-1, 20)).collect();
        let results = submit_all(batcher, items).await;
        assert!(
            results[1..]
                .iter()
                .all(|result| matches!(result, Err(error) if matches!(**error, StoreError::Unavailable(_))))
        );
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.iter().sum::<usize>(), 21, "each item was written once: {calls:?}");
    }
}

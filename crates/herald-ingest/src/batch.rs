//! Micro-batching of database writes: concurrent requests hand their row to a batcher, which
//! writes whatever has queued up in one statement. Under load a batch holds about as many rows
//! as there are requests in flight; alone, a request is written at once, so batching adds no
//! latency at concurrency 1.

use std::future::Future;
use std::sync::Arc;

use herald_store::StoreError;
use tokio::sync::{Mutex, mpsc, oneshot};

type Reply<O> = oneshot::Sender<Result<O, Arc<StoreError>>>;

#[derive(Debug)]
pub struct Batcher<I, O> {
    sender: mpsc::Sender<(I, Reply<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts `workers` tasks, each writing batches of up to `max_batch` items with `write`,
    /// which must return one output per input, in order.
    pub fn start<F, Fut>(workers: usize, max_batch: usize, write: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<O>, StoreError>> + Send,
    {
        let (sender, receiver) = mpsc::channel::<(I, Reply<O>)>(max_batch * workers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let write = Arc::new(write);
        for _ in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            let write = Arc::clone(&write);
            tokio::spawn(async move {
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
                    let expected = inputs.len();
                    match write(inputs).await {
                        Ok(outputs) if outputs.len() == expected => {
                            for (reply, output) in replies.into_iter().zip(outputs) {
                                let _ = reply.send(Ok(output));
                            }
                        }
                        Ok(_) => {
                            let error =
                                Arc::new(StoreError::Corrupt("batch write returned the wrong number of rows".into()));
                            replies.into_iter().for_each(|reply| drop(reply.send(Err(Arc::clone(&error)))));
                        }
                        Err(error) => {
                            let error = Arc::new(error);
                            replies.into_iter().for_each(|reply| drop(reply.send(Err(Arc::clone(&error)))));
                        }
                    }
                }
            });
        }
        Self { sender }
    }

    /// Queues `item` and waits for its batch to be written.
    pub async fn submit(&self, item: I) -> Result<O, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let stopped = || Arc::new(StoreError::Unavailable("the batch writer stopped".into()));
        self.sender.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

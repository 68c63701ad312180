//! LISTEN on a channel over a dedicated connection, reconnecting with backoff when it breaks.
//! The campaign cache and the API key cache both trust their entries only while this is up:
//! [`Heard::Listening`] means every committed change is heard from now on, [`Heard::Lost`] that
//! changes may be missed until the next `Listening`.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::Store;

/// What the listener tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Heard<'a> {
    Listening,
    Lost,
    /// A notification's payload.
    Notification(&'a str),
}

/// Aborts a task when dropped: whoever holds it owns the task (a listener its connection
/// driver, a cache its listener).
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens on `channel` until the future is dropped, reporting to `on`; `what` names the
/// listener in logs.
pub(crate) async fn listen_forever(store: Store, channel: &'static str, what: &'static str, on: impl Fn(Heard<'_>)) {
    let mut delay = Duration::from_millis(100);
    loop {
        if let Err(error) = listen_once(&store, channel, what, &on).await {
            let error = crate::error::describe(&error);
            tracing::warn!(%error, listener = what, "change listener lost; its cache is bypassed until it is back");
        }
        on(Heard::Lost);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}

async fn listen_once(
    store: &Store,
    channel: &str,
    what: &'static str,
    on: &impl Fn(Heard<'_>),
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = store.connection_config().connect(tokio_postgres::NoTls).await?;
    let (notifications, mut received) = mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let _driver = AbortOnDrop(tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) => {
                    if notifications.send(notification.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    let error = crate::error::describe(&error);
                    tracing::warn!(%error, listener = what, "change listener connection failed");
                    return;
                }
            }
        }
    }));
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    on(Heard::Listening);
    tracing::info!(listener = what, "listening for changes");
    // Ends when the driver does (connection closed or failed): the sender is dropped with it.
    while let Some(payload) = received.recv().await {
        on(Heard::Notification(&payload));
    }
    Ok(())
}

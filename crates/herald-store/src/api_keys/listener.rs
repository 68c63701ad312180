//! Hearing key changes: a dedicated connection LISTENs on [`API_KEY_CHANGES_CHANNEL`] and
//! reconnects with backoff when it breaks. Callers (the API's key cache) decide what to trust from
//! the events; the connection lives exactly as long as the future of [`watch_changes`].

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::API_KEY_CHANGES_CHANNEL;
use crate::Store;

/// What the listener tells its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEvent {
    /// LISTEN is in place: from now on every committed change is heard.
    Listening,
    /// The connection is gone: changes may be missed until the next `Listening`.
    Lost,
    /// Key `id` changed (revoked, rotated, re-registered); `None`: some key, unknown which.
    Changed(Option<Uuid>),
}

/// Aborts a task when dropped, so the connection driver never outlives the listener.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Listens for key changes until dropped, reporting each through `on_event`.
pub async fn watch_changes(store: Store, on_event: impl Fn(KeyEvent) + Send + Sync) {
    let mut delay = Duration::from_millis(100);
    loop {
        if let Err(error) = listen_once(&store, &on_event).await {
            tracing::warn!(%error, "api key change listener lost; keys are read from the database until it is back");
        }
        on_event(KeyEvent::Lost);
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}

async fn listen_once(store: &Store, on_event: &impl Fn(KeyEvent)) -> Result<(), tokio_postgres::Error> {
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
                    tracing::warn!(%error, "api key change listener connection failed");
                    return;
                }
            }
        }
    }));
    client.batch_execute(&format!("LISTEN {API_KEY_CHANGES_CHANNEL}")).await?;
    on_event(KeyEvent::Listening);
    tracing::info!("listening for api key changes");
    // Ends when the driver does (connection closed or failed): the sender is dropped with it.
    while let Some(payload) = received.recv().await {
        on_event(KeyEvent::Changed(Uuid::parse_str(&payload).ok()));
    }
    Ok(())
}

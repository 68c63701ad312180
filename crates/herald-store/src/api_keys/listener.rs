//! Hearing key changes: a dedicated connection LISTENs on [`API_KEY_CHANGES_CHANNEL`] and
//! reconnects with backoff when it breaks. Callers (the API's key cache) decide what to trust from
//! the events; the connection lives exactly as long as the future of [`watch_changes`].

use uuid::Uuid;

use super::API_KEY_CHANGES_CHANNEL;
use crate::Store;
use crate::listen::Heard;

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

/// Listens for key changes until dropped, reporting each through `on_event`.
pub async fn watch_changes(store: Store, on_event: impl Fn(KeyEvent) + Send + Sync) {
    crate::listen::listen_forever(store, API_KEY_CHANGES_CHANNEL, "api keys", |heard| {
        on_event(match heard {
            Heard::Listening => KeyEvent::Listening,
            Heard::Lost => KeyEvent::Lost,
            Heard::Notification(payload) => KeyEvent::Changed(Uuid::parse_str(payload).ok()),
        });
    })
    .await;
}

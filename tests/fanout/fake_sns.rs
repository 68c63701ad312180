//! A stand-in for SNS `Publish`, served in the test process, that real `herald worker` processes
//! (with the real aws-sdk-sns client) reach through `AWS_ENDPOINT_URL`. It records every call's
//! phone number, so a test can tell per recipient how often it was sent to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

#[derive(Debug, Default)]
struct Calls {
    numbers: HashMap<String, u32>,
    total: usize,
}

#[derive(Debug)]
pub(crate) struct FakeSns {
    pub(crate) url: String,
    calls: Arc<Mutex<Calls>>,
    stop: tokio_util::sync::CancellationToken,
}

/// `PhoneNumber` of a form-encoded `Publish` body (`%2B336…` → `+336…`).
fn phone_number(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let value = text.split('&').find_map(|pair| pair.strip_prefix("PhoneNumber="))?;
    Some(value.replace("%2B", "+"))
}

async fn publish(State(calls): State<Arc<Mutex<Calls>>>, body: Bytes) -> Response {
    let Some(number) = phone_number(&body) else {
        let error = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidParameter</Code>\
                     <Message>the fake publishes to phone numbers only</Message></Error></ErrorResponse>";
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/xml")], error).into_response();
    };
    let sequence = {
        let mut calls = calls.lock().unwrap();
        *calls.numbers.entry(number).or_default() += 1;
        calls.total += 1;
        calls.total
    };
    let body = format!(
        "<PublishResponse xmlns=\"https://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
         <MessageId>fake-{sequence:012}</MessageId></PublishResult><ResponseMetadata>\
         <RequestId>fake-{sequence:012}</RequestId></ResponseMetadata></PublishResponse>"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

impl FakeSns {
    pub(crate) async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake SNS");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Calls::default()));
        let stop = tokio_util::sync::CancellationToken::new();
        let router = Router::new().route("/", post(publish)).with_state(Arc::clone(&calls));
        let shutdown = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        });
        Self { url, calls, stop }
    }

    pub(crate) fn total(&self) -> usize {
        self.calls.lock().unwrap().total
    }

    /// Calls per phone number.
    pub(crate) fn per_number(&self) -> HashMap<String, u32> {
        self.calls.lock().unwrap().numbers.clone()
    }
}

impl Drop for FakeSns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_phone_number_is_read_from_the_form() {
        let body = b"Action=Publish&Message=Your%20code&PhoneNumber=%2B33600000001&Version=2010-03-31";
        assert_eq!(super::phone_number(body).as_deref(), Some("+33600000001"));
        assert_eq!(super::phone_number(b"Action=Publish"), None);
    }
}

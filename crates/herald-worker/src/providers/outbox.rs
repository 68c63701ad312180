//! A provider for machines without AWS: every rendered message is appended to a file as one JSON
//! line. Only ever used when configured explicitly (`HERALD_PROVIDER=outbox`); it delivers
//! nothing, so it must never be a silent default.

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use herald_core::delivery::{ErrorClass, ProviderError};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use super::{
    ChannelBinding, EmailMessage, FeedbackSource, Operation, Provider, ProviderResult, PushMessage, Receipt, SmsMessage,
};

#[derive(Debug)]
pub struct OutboxProvider {
    path: PathBuf,
    /// One writer at a time, so lines never interleave.
    lock: Mutex<()>,
}

impl OutboxProvider {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), lock: Mutex::new(()) }
    }

    async fn append(&self, mut line: Value) -> ProviderResult<Receipt> {
        let id = uuid::Uuid::now_v7().to_string();
        line["providerMessageId"] = json!(id);
        line["at"] = json!(chrono::Utc::now());
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        let _guard = self.lock.lock().await;
        let io = |error: std::io::Error| {
            ProviderError::new(ErrorClass::Transient, "OutboxWrite", format!("outbox: {}", error.kind()))
        };
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&self.path).await.map_err(io)?;
        file.write_all(&bytes).await.map_err(io)?;
        file.flush().await.map_err(io)?;
        Ok(Receipt { provider_message_id: id })
    }
}

impl Provider for OutboxProvider {
    fn binding(&self, channel: herald_core::Channel) -> ChannelBinding {
        ChannelBinding {
            channel,
            operation: Operation { system: "herald", service: "outbox", method: "append" },
            classify: super::classify::generic,
            feedback: FeedbackSource::None,
            opted_out_code: None,
        }
    }

    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.append(json!({
            "channel": "email", "from": message.from, "replyTo": message.reply_to, "to": message.to,
            "subject": message.subject, "html": message.html, "text": message.text, "tags": message.tags,
        })))
    }

    fn send_sms<'a>(&'a self, message: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.append(json!({
            "channel": "sms", "to": message.to, "body": message.body, "senderId": message.sender_id,
            "originationNumber": message.origination_number,
        })))
    }

    fn create_push_endpoint<'a>(
        &'a self,
        application_arn: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(async move { Ok(format!("outbox:{application_arn}:{token}")) })
    }

    fn send_push<'a>(
        &'a self,
        endpoint_arn: &'a str,
        message: &'a PushMessage,
    ) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.append(json!({
            "channel": "push", "endpoint": endpoint_arn, "title": message.title, "body": message.body, "data": message.data,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_message_is_one_json_line() {
        let path = std::env::temp_dir().join(format!("herald-outbox-{}.jsonl", uuid::Uuid::new_v4()));
        let outbox = OutboxProvider::new(&path);
        let sms = SmsMessage {
            to: "+33612345678".into(),
            body: "Your code is 1".into(),
            sender_id: None,
            origination_number: None,
        };
        outbox.send_sms(&sms).await.unwrap();
        outbox.send_sms(&sms).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["body"], "Your code is 1");
        assert_ne!(lines[0]["providerMessageId"], lines[1]["providerMessageId"]);
        let _ = std::fs::remove_file(path);
    }
}

//! AWS SES v2 and SNS clients from the standard AWS configuration (`AWS_REGION`, credentials
//! chain, `AWS_ENDPOINT_URL` for an emulator) plus an explicit endpoint override.
//!
//! SDK-level retries are off: the SDK would resend a `SendEmail` whose response timed out, and
//! SES does not deduplicate, so a retry there can deliver twice. Herald's own retry logic, which
//! records each attempt, decides instead.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_sesv2::config::http::HttpResponse;
use aws_sdk_sesv2::error::{ProvideErrorMetadata, SdkError};
use futures_util::future::BoxFuture;
use herald_core::Channel;
use herald_core::delivery::{ErrorClass, ProviderError};

use super::classify::{self, Failure};
use super::{
    ChannelBinding, EmailMessage, FeedbackSource, Operation, Provider, ProviderResult, PushMessage, Receipt, SmsMessage,
};

/// Connection and call limits for provider calls: a send that hangs must fail and be retried by
/// Herald rather than hold a delivery forever.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// Overrides the endpoint of every AWS service (e.g. `http://127.0.0.1:5000` for moto).
    pub endpoint_url: Option<String>,
    /// Overrides the region from the environment.
    pub region: Option<String>,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// Fixed credentials instead of the standard chain (tests against an emulator).
    pub static_credentials: Option<(String, String)>,
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
            static_credentials: None,
        }
    }
}

/// Loads the shared AWS configuration with retries disabled and Herald's timeouts.
pub async fn load_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.call_timeout)
                .operation_timeout(settings.call_timeout)
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some((id, secret)) = &settings.static_credentials {
        loader =
            loader.credentials_provider(aws_sdk_sns::config::Credentials::new(id, secret, None, None, "herald-static"));
    }
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}

/// The send clients get the gated connector; the configuration's own (credential providers:
/// IMDS, ECS, STS) does not, so a credential refresh inside a send cannot write the call mark.
pub fn ses_client(config: &SdkConfig) -> aws_sdk_sesv2::Client {
    let config =
        aws_sdk_sesv2::config::Builder::from(config).http_client(super::transmit::gated_https_client()).build();
    aws_sdk_sesv2::Client::from_conf(config)
}

pub fn sns_client(config: &SdkConfig) -> aws_sdk_sns::Client {
    let config = aws_sdk_sns::config::Builder::from(config).http_client(super::transmit::gated_https_client()).build();
    aws_sdk_sns::Client::from_conf(config)
}

/// What the classifiers need of an SDK error. The SDK reports every transport failure as a
/// dispatch failure, "the request MAY have been sent"; only the causes that prove it was not
/// (DNS, refused or timed-out connection) are told apart, by walking the error's sources.
fn failure_of<E>(error: &SdkError<E, HttpResponse>) -> Failure<'_>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(context) => Failure::Service {
            code: context.err().code(),
            status: Some(context.raw().status().as_u16()),
            message: context.err().message(),
        },
        SdkError::DispatchFailure(_) if never_left(error) => Failure::Dispatch,
        SdkError::TimeoutError(_) => Failure::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => Failure::Timeout,
        SdkError::DispatchFailure(_) => Failure::Lost,
        SdkError::ResponseError(_) => Failure::Response,
        SdkError::ConstructionFailure(_) => Failure::Construction,
        _ => Failure::Response,
    }
}

/// Whether an error's causes show the request never left this process: the name did not resolve,
/// or the connection was refused or not established in time.
fn never_left(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::HostUnreachable
            )
        {
            return true;
        }
        // hyper-util's connect errors and the smithy connect timeout name themselves so.
        let text = current.to_string();
        if text.contains("client error (Connect)") || text.contains("connect timeout") || text.contains("dns error") {
            return true;
        }
        cause = current.source();
    }
    false
}

fn built<T, E: std::fmt::Display>(result: Result<T, E>) -> ProviderResult<T> {
    result
        .map_err(|error| ProviderError::new(ErrorClass::Permanent, "Construction", format!("invalid request: {error}")))
}

/// SES v2 for email, SNS for SMS and mobile push.
#[derive(Debug, Clone)]
pub struct AwsProvider {
    ses: aws_sdk_sesv2::Client,
    sns: aws_sdk_sns::Client,
}

impl AwsProvider {
    pub fn new(config: &SdkConfig) -> Self {
        Self { ses: ses_client(config), sns: sns_client(config) }
    }

    async fn email(&self, message: &EmailMessage) -> ProviderResult<Receipt> {
        use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message, MessageTag};
        let text = |data: &str| built(Content::builder().data(data).charset("UTF-8").build());
        let mut body = Body::builder();
        if let Some(html) = &message.html {
            body = body.html(text(html)?);
        }
        if let Some(plain) = &message.text {
            body = body.text(text(plain)?);
        }
        let content = EmailContent::builder()
            .simple(Message::builder().subject(text(&message.subject)?).body(body.build()).build())
            .build();
        let mut request = self
            .ses
            .send_email()
            .from_email_address(&message.from)
            .destination(Destination::builder().to_addresses(&message.to).build())
            .content(content)
            .set_reply_to_addresses(message.reply_to.clone().map(|address| vec![address]))
            .set_configuration_set_name(message.configuration_set.clone());
        for (name, value) in &message.tags {
            request = request.email_tags(built(MessageTag::builder().name(name).value(value).build())?);
        }
        let output = request.send().await.map_err(|error| (binding(Channel::Email).classify)(&failure_of(&error)))?;
        Ok(Receipt { provider_message_id: output.message_id().unwrap_or_default().to_string() })
    }

    async fn sms(&self, message: &SmsMessage) -> ProviderResult<Receipt> {
        use aws_sdk_sns::types::MessageAttributeValue;
        let attribute =
            |value: &str| built(MessageAttributeValue::builder().data_type("String").string_value(value).build());
        let mut request = self
            .sns
            .publish()
            .phone_number(&message.to)
            .message(&message.body)
            .message_attributes("AWS.SNS.SMS.SMSType", attribute("Transactional")?);
        if let Some(sender_id) = &message.sender_id {
            request = request.message_attributes("AWS.SNS.SMS.SenderID", attribute(sender_id)?);
        }
        if let Some(number) = &message.origination_number {
            request = request.message_attributes("AWS.MM.SMS.OriginationNumber", attribute(number)?);
        }
        let output = request.send().await.map_err(|error| (binding(Channel::Sms).classify)(&failure_of(&error)))?;
        Ok(Receipt { provider_message_id: output.message_id().unwrap_or_default().to_string() })
    }

    async fn endpoint(&self, application_arn: &str, token: &str) -> ProviderResult<String> {
        let output = self
            .sns
            .create_platform_endpoint()
            .platform_application_arn(application_arn)
            .token(token)
            .send()
            .await
            .map_err(|error| classify::sns(&failure_of(&error)))?;
        output
            .endpoint_arn()
            .map(str::to_string)
            .ok_or_else(|| ProviderError::new(ErrorClass::Transient, "NoEndpointArn", "sns returned no endpoint"))
    }

    async fn push(&self, endpoint_arn: &str, message: &PushMessage) -> ProviderResult<Receipt> {
        let output = self
            .sns
            .publish()
            .target_arn(endpoint_arn)
            .message_structure("json")
            .message(push_payload(message))
            .send()
            .await
            .map_err(|error| (binding(Channel::Push).classify)(&failure_of(&error)))?;
        Ok(Receipt { provider_message_id: output.message_id().unwrap_or_default().to_string() })
    }
}

/// What SES v2 and SNS are for each channel: the one place the AWS provider declares them.
pub fn binding(channel: Channel) -> ChannelBinding {
    let sns = Operation { system: "aws-api", service: "SNS", method: "Publish" };
    match channel {
        Channel::Email => ChannelBinding {
            channel,
            operation: Operation { system: "aws-api", service: "SESv2", method: "SendEmail" },
            classify: classify::ses,
            feedback: FeedbackSource::SesEvents,
            opted_out_code: None,
        },
        Channel::Sms => ChannelBinding {
            channel,
            operation: sns,
            classify: classify::sns,
            feedback: FeedbackSource::SendErrors,
            opted_out_code: Some("OptedOut"),
        },
        Channel::Push => ChannelBinding {
            channel,
            operation: sns,
            classify: classify::sns,
            feedback: FeedbackSource::None,
            opted_out_code: None,
        },
    }
}

/// The SNS `json` message structure: a default text and one payload per platform family.
pub fn push_payload(message: &PushMessage) -> String {
    let fcm = serde_json::json!({
        "notification": { "title": message.title, "body": message.body },
        "data": message.data,
    });
    let mut apns = serde_json::json!({ "aps": { "alert": { "title": message.title, "body": message.body } } });
    for (key, value) in &message.data {
        apns[key] = serde_json::Value::String(value.clone());
    }
    serde_json::json!({
        "default": message.body,
        "GCM": fcm.to_string(),
        "APNS": apns.to_string(),
        "APNS_SANDBOX": apns.to_string(),
    })
    .to_string()
}

impl Provider for AwsProvider {
    fn gates_transmission(&self) -> bool {
        true
    }

    fn binding(&self, channel: Channel) -> ChannelBinding {
        binding(channel)
    }

    fn send_email<'a>(&'a self, message: &'a EmailMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.email(message))
    }

    fn send_sms<'a>(&'a self, message: &'a SmsMessage) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.sms(message))
    }

    fn create_push_endpoint<'a>(
        &'a self,
        application_arn: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, ProviderResult<String>> {
        Box::pin(self.endpoint(application_arn, token))
    }

    fn send_push<'a>(
        &'a self,
        endpoint_arn: &'a str,
        message: &'a PushMessage,
    ) -> BoxFuture<'a, ProviderResult<Receipt>> {
        Box::pin(self.push(endpoint_arn, message))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn settings(endpoint: String) -> AwsSettings {
        AwsSettings {
            endpoint_url: Some(endpoint),
            region: Some("us-east-1".into()),
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_millis(500),
            static_credentials: Some(("test".into(), "test".into())),
        }
    }

    fn email() -> EmailMessage {
        EmailMessage {
            from: "no-reply@example.com".into(),
            reply_to: None,
            to: "jane@example.com".into(),
            subject: "s".into(),
            html: None,
            text: Some("t".into()),
            tags: Vec::new(),
            configuration_set: None,
        }
    }

    async fn send_to(endpoint: String) -> ProviderError {
        let provider = AwsProvider::new(&load_config(&settings(endpoint)).await);
        provider.send_email(&email()).await.expect_err("the call must fail")
    }

    /// A listener that counts the connections made to it and answers none.
    async fn counting_listener() -> (String, Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        (endpoint, count, task)
    }

    fn gate(answer: super::super::transmit::GateAnswer) -> super::super::transmit::TransmitGate {
        super::super::transmit::TransmitGate::new(Arc::new(move || {
            let answer = answer.clone();
            Box::pin(async move { answer })
        }))
    }

    #[tokio::test]
    async fn a_gate_that_does_not_open_keeps_the_request_in_the_process() {
        use super::super::transmit;
        let (endpoint, connections, server) = counting_listener().await;
        let provider = AwsProvider::new(&load_config(&settings(endpoint)).await);
        for answer in [Ok(false), Err("database unavailable".to_string())] {
            let gate = gate(answer.clone());
            let result = transmit::through(gate.clone(), provider.send_email(&email())).await;
            assert!(result.is_err());
            assert_eq!(gate.answer(), Some(answer), "the request reached the gate");
        }
        // The signed request got as far as the gate and no further.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
        server.abort();
    }

    #[tokio::test]
    async fn a_request_outside_the_gate_neither_waits_for_it_nor_opens_it() {
        use super::super::transmit;
        let (endpoint, connections, server) = counting_listener().await;
        let provider = AwsProvider::new(&load_config(&settings(endpoint)).await);
        // The delivery's gate would refuse; the endpoint request before the send goes out anyway.
        let gate = gate(Ok(false));
        let endpoint_call = transmit::outside_gate(provider.create_push_endpoint("arn:app", "token"));
        let _ = transmit::through(gate.clone(), endpoint_call).await;
        assert_eq!(gate.answer(), None, "the endpoint request did not set the call mark");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        server.abort();
    }

    #[tokio::test]
    async fn a_gate_that_opens_lets_the_request_out_once_written() {
        use super::super::transmit;
        let (endpoint, connections, server) = counting_listener().await;
        let provider = AwsProvider::new(&load_config(&settings(endpoint)).await);
        let gate = gate(Ok(true));
        let error = transmit::through(gate.clone(), provider.send_email(&email())).await.unwrap_err();
        assert_eq!(gate.answer(), Some(Ok(true)));
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(error.class, ErrorClass::MaybeDelivered, "sent, then no answer: {error}");
        server.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient_because_nothing_was_sent() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = send_to(format!("http://127.0.0.1:{port}")).await;
        assert_eq!((error.class, error.code.as_str()), (ErrorClass::Transient, "Dispatch"), "{error}");
    }

    #[tokio::test]
    async fn a_provider_that_never_answers_may_have_delivered() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        // Accepts, reads the request, never answers.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let error = send_to(endpoint).await;
        held.abort();
        assert_eq!(error.class, ErrorClass::MaybeDelivered, "{error}");
    }

    #[tokio::test]
    async fn a_connection_reset_after_the_request_may_have_delivered() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        // Reads the whole request, then closes the connection without a word.
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(100), socket.read(&mut buffer)).await;
                drop(socket);
            }
        });
        let error = send_to(endpoint).await;
        server.abort();
        assert_eq!(error.class, ErrorClass::MaybeDelivered, "{error}");
    }

    #[tokio::test]
    async fn clients_are_built_without_sdk_retries_and_with_the_endpoint_override() {
        let settings = AwsSettings {
            endpoint_url: Some("http://127.0.0.1:1".into()),
            region: Some("eu-west-1".into()),
            ..AwsSettings::default()
        };
        let config = load_config(&settings).await;
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:1"));
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(config.retry_config().map(|r| r.max_attempts()), Some(1));
        assert_eq!(config.timeout_config().and_then(|t| t.operation_timeout()), Some(Duration::from_secs(10)));
        let ses = ses_client(&config);
        assert_eq!(ses.config().retry_config().map(|r| r.max_attempts()), Some(1));
    }
}

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
}

impl Default for AwsSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            connect_timeout: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Loads the shared AWS configuration with retries disabled and Herald's timeouts.
pub async fn load_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.call_timeout)
                .operation_timeout(settings.call_timeout)
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    loader.load().await
}

pub fn ses_client(config: &SdkConfig) -> aws_sdk_sesv2::Client {
    aws_sdk_sesv2::Client::new(config)
}

pub fn sns_client(config: &SdkConfig) -> aws_sdk_sns::Client {
    aws_sdk_sns::Client::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            config.timeout_config().and_then(|t| t.operation_timeout()),
            Some(Duration::from_secs(10))
        );
        let ses = ses_client(&config);
        assert_eq!(
            ses.config().retry_config().map(|r| r.max_attempts()),
            Some(1)
        );
    }
}

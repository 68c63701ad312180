//! One classifier per provider: AWS error codes (as the SDK reports them, with or without the
//! `Exception` suffix) and transport failures mapped to transient, permanent, account-wide or
//! maybe-delivered. Only a failure before the request left the process is transient: after that,
//! neither SES nor SNS deduplicates, so a resend could deliver the message twice.
//! Messages are the code and the provider's own words, redacted (they can echo addresses) and cut
//! to [`MAX_PROVIDER_TEXT`] characters: "Email address is not verified" is what an operator needs.

use herald_core::delivery::{ErrorClass, ProviderError};

/// What is known of a failed call, independent of the SDK's error types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The service answered with an error code (and an HTTP status when known).
    Service { code: Option<&'a str>, status: Option<u16>, message: Option<&'a str> },
    /// No answer in time: the request may have been delivered.
    Timeout,
    /// The request never reached the service (DNS, connection refused, connect timeout).
    Dispatch,
    /// The connection failed after the request may have been written (reset, closed early).
    Lost,
    /// An answer that could not be read: the request was delivered, its outcome is unknown.
    Response,
    /// The SDK refused to build the request: a bug or bad input, not worth retrying.
    Construction,
}

/// The longest piece of a provider's message kept in an error.
const MAX_PROVIDER_TEXT: usize = 300;

/// `service answered CODE: message`, the message redacted and cut short.
fn answered(service: &str, code: &str, message: Option<&str>) -> String {
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(message) => {
            let short: String = message.chars().take(MAX_PROVIDER_TEXT).collect();
            format!("{service} answered {code}: {}", herald_telemetry::redact::redact(&short))
        }
        None => format!("{service} answered {code}"),
    }
}

fn strip(code: &str) -> &str {
    code.strip_suffix("Exception").unwrap_or(code)
}

fn transport(failure: &Failure<'_>) -> Option<ProviderError> {
    Some(match failure {
        Failure::Timeout => ProviderError::new(ErrorClass::MaybeDelivered, "Timeout", "no answer in time"),
        Failure::Dispatch => {
            ProviderError::new(ErrorClass::Transient, "Dispatch", "the request did not reach the provider")
        }
        Failure::Lost => ProviderError::new(
            ErrorClass::MaybeDelivered,
            "ConnectionLost",
            "the connection failed after the request was sent",
        ),
        Failure::Response => ProviderError::new(ErrorClass::MaybeDelivered, "Response", "unreadable answer"),
        Failure::Construction => {
            ProviderError::new(ErrorClass::Permanent, "Construction", "the request could not be built")
        }
        Failure::Service { .. } => return None,
    })
}

/// Unknown codes: 5xx and 429 are transient, anything else is permanent.
fn by_status(code: &str, status: Option<u16>) -> ErrorClass {
    match status {
        Some(429) | Some(500..=599) | None => ErrorClass::Transient,
        _ if code.contains("Throttl") || code.contains("Internal") || code.contains("Unavailable") => {
            ErrorClass::Transient
        }
        _ => ErrorClass::Permanent,
    }
}

/// A provider without its own codes (the outbox, test providers): transport failures as always,
/// a service answer by its status.
pub fn generic(failure: &Failure<'_>) -> ProviderError {
    if let Some(error) = transport(failure) {
        return error;
    }
    let Failure::Service { code, status, message } = failure else { unreachable_transport() };
    let code = code.unwrap_or("Unknown");
    ProviderError::new(by_status(code, *status), code, answered("provider", code, *message))
}

/// SES v2 (`SendEmail`).
pub fn ses(failure: &Failure<'_>) -> ProviderError {
    if let Some(error) = transport(failure) {
        return error;
    }
    let Failure::Service { code, status, message } = failure else { unreachable_transport() };
    let code = code.unwrap_or("Unknown");
    let class = match strip(code) {
        "TooManyRequests" | "Throttling" | "InternalFailure" | "ServiceUnavailable" => ErrorClass::Transient,
        // SES reports an exhausted daily quota as throttling; waiting seconds will not help.
        "LimitExceeded" => ErrorClass::AccountWide,
        "SendingPaused"
        | "AccountSuspended"
        | "MailFromDomainNotVerified"
        | "AccessDenied"
        | "UnrecognizedClient"
        | "InvalidClientTokenId"
        | "NotAuthorized" => ErrorClass::AccountWide,
        "MessageRejected" | "BadRequest" | "NotFound" | "InvalidParameterValue" => ErrorClass::Permanent,
        other => by_status(other, *status),
    };
    let class = if class == ErrorClass::Transient && message.is_some_and(|m| m.contains("Daily message quota")) {
        ErrorClass::AccountWide
    } else {
        class
    };
    ProviderError::new(class, code, answered("ses", code, *message))
}

/// SNS (`Publish`, `CreatePlatformEndpoint`).
pub fn sns(failure: &Failure<'_>) -> ProviderError {
    if let Some(error) = transport(failure) {
        return error;
    }
    let Failure::Service { code, status, message } = failure else { unreachable_transport() };
    let code = code.unwrap_or("Unknown");
    let class = match strip(code) {
        "Throttled" | "Throttling" | "InternalError" | "KMSThrottling" | "KmsThrottling" | "ServiceUnavailable" => {
            ErrorClass::Transient
        }
        "AuthorizationError"
        | "PlatformApplicationDisabled"
        | "InvalidSecurity"
        | "KMSAccessDenied"
        | "KmsAccessDenied"
        | "KMSDisabled"
        | "KmsDisabled"
        | "KMSOptInRequired"
        | "KmsOptInRequired"
        | "InvalidClientTokenId"
        | "AccessDenied" => ErrorClass::AccountWide,
        "EndpointDisabled"
        | "InvalidParameter"
        | "InvalidParameterValue"
        | "NotFound"
        | "Validation"
        | "OptedOut"
        | "KMSNotFound"
        | "KmsNotFound"
        | "KMSInvalidState"
        | "KmsInvalidState" => ErrorClass::Permanent,
        other => by_status(other, *status),
    };
    // The monthly SMS spend limit shows up as a throttling error; retrying within seconds burns attempts.
    let class = if message.is_some_and(|m| m.contains("spend limit") || m.contains("MonthlySpendLimit")) {
        ErrorClass::AccountWide
    } else {
        class
    };
    let mut error = ProviderError::new(class, code, answered("sns", code, *message));
    error.token_dead = strip(code) == "EndpointDisabled";
    error
}

fn unreachable_transport() -> ! {
    // `transport` returns Some for every non-service failure.
    panic!("transport failures are classified before service codes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(code: &str, status: u16) -> Failure<'_> {
        Failure::Service { code: Some(code), status: Some(status), message: None }
    }

    #[test]
    fn every_named_ses_error_has_its_class() {
        let cases = [
            ("TooManyRequestsException", 429, ErrorClass::Transient),
            ("MessageRejected", 400, ErrorClass::Permanent),
            ("BadRequestException", 400, ErrorClass::Permanent),
            ("NotFoundException", 404, ErrorClass::Permanent),
            ("SendingPausedException", 400, ErrorClass::AccountWide),
            ("AccountSuspendedException", 400, ErrorClass::AccountWide),
            ("MailFromDomainNotVerifiedException", 400, ErrorClass::AccountWide),
            ("LimitExceededException", 400, ErrorClass::AccountWide),
            ("AccessDeniedException", 403, ErrorClass::AccountWide),
            ("InternalFailure", 500, ErrorClass::Transient),
            ("SomethingNew", 503, ErrorClass::Transient),
            ("SomethingNew", 400, ErrorClass::Permanent),
        ];
        for (code, status, class) in cases {
            assert_eq!(ses(&service(code, status)).class, class, "{code}");
        }
    }

    #[test]
    fn every_named_sns_error_has_its_class() {
        let cases = [
            ("Throttled", 400, ErrorClass::Transient),
            ("ThrottledException", 400, ErrorClass::Transient),
            ("InternalError", 500, ErrorClass::Transient),
            ("KMSThrottling", 400, ErrorClass::Transient),
            ("EndpointDisabled", 400, ErrorClass::Permanent),
            ("InvalidParameter", 400, ErrorClass::Permanent),
            ("InvalidParameterValue", 400, ErrorClass::Permanent),
            ("NotFound", 404, ErrorClass::Permanent),
            ("OptedOut", 400, ErrorClass::Permanent),
            ("ValidationException", 400, ErrorClass::Permanent),
            ("AuthorizationError", 403, ErrorClass::AccountWide),
            ("PlatformApplicationDisabled", 400, ErrorClass::AccountWide),
            ("KMSDisabled", 400, ErrorClass::AccountWide),
        ];
        for (code, status, class) in cases {
            assert_eq!(sns(&service(code, status)).class, class, "{code}");
        }
    }

    #[test]
    fn only_failures_before_the_request_left_are_transient() {
        assert_eq!(ses(&Failure::Dispatch).class, ErrorClass::Transient);
        assert_eq!(sns(&Failure::Dispatch).class, ErrorClass::Transient);
        for failure in [Failure::Timeout, Failure::Lost, Failure::Response] {
            assert_eq!(ses(&failure).class, ErrorClass::MaybeDelivered, "{failure:?}");
            assert_eq!(sns(&failure).class, ErrorClass::MaybeDelivered, "{failure:?}");
        }
        assert_eq!(ses(&Failure::Construction).class, ErrorClass::Permanent);
    }

    #[test]
    fn a_disabled_endpoint_marks_the_token_dead() {
        assert!(sns(&service("EndpointDisabled", 400)).token_dead);
        assert!(!sns(&service("InvalidParameter", 400)).token_dead);
    }

    #[test]
    fn quota_and_spend_limits_pause_instead_of_retrying() {
        let quota = Failure::Service {
            code: Some("TooManyRequestsException"),
            status: Some(429),
            message: Some("Daily message quota exceeded"),
        };
        assert_eq!(ses(&quota).class, ErrorClass::AccountWide);
        let spend =
            Failure::Service { code: Some("Throttled"), status: Some(400), message: Some("SMS spend limit reached") };
        assert_eq!(sns(&spend).class, ErrorClass::AccountWide);
    }

    #[test]
    fn messages_carry_the_providers_words_with_addresses_redacted_and_cut_short() {
        let failure = Failure::Service {
            code: Some("MessageRejected"),
            status: Some(400),
            message: Some("Email address is not verified: jane@example.com"),
        };
        let message = ses(&failure).message;
        assert!(message.starts_with("ses answered MessageRejected: Email address is not verified"), "{message}");
        assert!(!message.contains("jane@example.com"), "{message}");
        let number = Failure::Service {
            code: Some("InvalidParameter"),
            status: Some(400),
            message: Some("Invalid parameter: PhoneNumber Reason: +33612345678 is not valid"),
        };
        assert!(!sns(&number).message.contains("+33612345678"), "{}", sns(&number).message);
        let long = "x".repeat(10_000);
        let failure = Failure::Service { code: Some("BadRequest"), status: Some(400), message: Some(&long) };
        assert!(ses(&failure).message.len() < MAX_PROVIDER_TEXT + 40);
        let silent = Failure::Service { code: Some("BadRequest"), status: Some(400), message: None };
        assert_eq!(ses(&silent).message, "ses answered BadRequest");
    }
}

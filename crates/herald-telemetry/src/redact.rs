//! Redaction of every log line and every exported span: email addresses, phone numbers and the
//! values of sensitive fields (context, OTPs, bodies, tokens, secrets) are masked, whoever wrote
//! the line — Herald, the AWS SDK, the database driver or the broker client.
//!
//! Herald's own code logs ids, never recipients; this is the net under that rule.

use std::borrow::Cow;
use std::io::Write;
use std::sync::LazyLock;

use regex::Regex;
use tracing_subscriber::fmt::MakeWriter;

pub const MASK: &str = "[redacted]";

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}").expect("valid"));
/// E.164 numbers, as Herald stores and sends them, with or without an URL-encoded plus.
static PHONE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?:\+|%2B)\d{6,15}").expect("valid"));
/// Field names whose values are recipient data, wherever they appear (log fields, span and event
/// attributes, keys of logged maps); compared case-insensitively with the last dotted segment.
pub const SENSITIVE_NAMES: [&str; 17] = [
    "context",
    "otp",
    "password",
    "secret",
    "body",
    "html",
    "text",
    "subject",
    "address",
    "email",
    "phone",
    "phone_number",
    "token",
    "api_key",
    "authorization",
    "profile",
    "attributes",
];

/// `"field": value` (JSON logs, debug output of maps) and `field=value` (text logs) of sensitive
/// fields. The value is a string, an object (nested one level deep), an array, or a bare token.
static SENSITIVE_FIELD: LazyLock<Regex> = LazyLock::new(|| {
    let names = SENSITIVE_NAMES.join("|");
    let value = r#""(?:[^"\\]|\\.)*"|\{(?:[^{}]|\{[^{}]*\})*\}|\[(?:[^\[\]]|\[[^\[\]]*\])*\]|[^\s,}\]]+"#;
    Regex::new(&format!(r#"(?i)(?P<key>"(?:{names})"\s*:\s*|\b(?:{names})=)(?:{value})"#)).expect("valid")
});

/// What a sensitive field's value becomes.
const MASKED_FIELD: &str = "${key}\"[redacted]\"";

/// Whether values of the field `name` (e.g. `context`, `herald.otp`) are recipient data.
pub fn is_sensitive_name(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    SENSITIVE_NAMES.iter().any(|sensitive| sensitive.eq_ignore_ascii_case(last))
}

/// `text` with addresses, phone numbers and sensitive field values masked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (pattern, replacement) in [(&*SENSITIVE_FIELD, MASKED_FIELD), (&*EMAIL, MASK), (&*PHONE, MASK)] {
        if let Cow::Owned(replaced) = pattern.replace_all(&out, replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// Wraps the log output: each event is formatted into a buffer, redacted, then written whole.
#[derive(Debug, Clone)]
pub struct RedactingMakeWriter<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter { inner: self.0.make_writer(), buffer: Vec::with_capacity(256) }
    }
}

/// Buffers one event and writes its redacted form when dropped (the formatter makes one writer
/// per event), so a pattern is never split across two writes.
#[derive(Debug)]
pub struct RedactingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let _ = self.inner.write_all(redact(&text).as_bytes());
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_phone_numbers_are_masked_wherever_they_appear() {
        let line = "MessageRejected: Email address is not verified: ada.lovelace+test@example.co.uk; to +33612345678 or %2B4915112345678";
        let redacted = redact(line);
        assert!(!redacted.contains("ada.lovelace") && !redacted.contains("example.co.uk"), "{redacted}");
        assert!(!redacted.contains("33612345678") && !redacted.contains("4915112345678"), "{redacted}");
        assert!(redacted.starts_with("MessageRejected: Email address is not verified: [redacted]"), "{redacted}");
    }

    #[test]
    fn sensitive_field_values_are_masked_in_json_and_text_logs() {
        let json = r#"{"message":"x","context":{"otp":"493027","resetUrl":"https://r.example/t"},"otp":"120394","execution_id":"0192"}"#;
        let redacted = redact(json);
        assert!(
            !redacted.contains("493027") && !redacted.contains("120394") && !redacted.contains("r.example"),
            "{redacted}"
        );
        assert!(redacted.contains(r#""execution_id":"0192""#), "ids are kept: {redacted}");
        let text = r#"sending body="Your code is 771204" otp=771204 campaign_id=c1"#;
        let redacted = redact(text);
        assert!(!redacted.contains("771204"), "{redacted}");
        assert!(redacted.contains("campaign_id=c1"), "{redacted}");
    }

    #[test]
    fn nested_objects_and_arrays_of_sensitive_fields_are_masked_whole() {
        let json = r#"{"context":{"code":"1","user":{"resetUrl":"https://r.example/tok-5eCr3t"}},"profile":{"tags":["vip","x"]},"n":1}"#;
        let redacted = redact(json);
        assert_eq!(redacted, r#"{"context":"[redacted]","profile":"[redacted]","n":1}"#);
        let text = r#"context=["482913", "771204"] execution_id=e1"#;
        assert_eq!(redact(text), r#"context="[redacted]" execution_id=e1"#);
    }

    #[test]
    fn sensitive_names_are_recognised_by_their_last_segment() {
        assert!(is_sensitive_name("otp") && is_sensitive_name("herald.Context") && is_sensitive_name("profile"));
        assert!(!is_sensitive_name("herald.execution_id") && !is_sensitive_name("error.type"));
    }

    #[test]
    fn lines_without_sensitive_data_are_left_alone() {
        let line =
            r#"{"timestamp":"2026-11-28T14:46:09.123+00:00","level":"INFO","message":"worker stopped","sent":12}"#;
        assert!(matches!(redact(line), Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_redacts_each_event_whole() {
        let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        #[derive(Clone)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let make = RedactingMakeWriter(move || Sink(sink.clone()));
        {
            let mut writer = make.make_writer();
            // Split mid-address, as a formatter writing piece by piece would.
            writer.write_all(b"to ada@exa").unwrap();
            writer.write_all(b"mple.com\n").unwrap();
        }
        let Sink(written) = make.0();
        assert_eq!(String::from_utf8(written.lock().unwrap().clone()).unwrap(), "to [redacted]\n");
    }
}

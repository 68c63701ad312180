//! Logs and traces. Logs go to stderr (text or JSON) through the redacting writer. With an OTLP
//! endpoint configured, spans are also exported (OTLP over HTTP, protobuf or JSON), redacted too,
//! and a message's span context travels in its AMQP `traceparent` header, so one trace covers the
//! API request, the publish, and the worker's consume, render and provider call.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::redact::{RedactingMakeWriter, is_sensitive_name, redact};

/// How a process logs and traces.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    /// An `EnvFilter` directive such as `info` or `herald=debug,info`.
    pub log: String,
    pub json_logs: bool,
    /// The OTLP/HTTP base URL (e.g. `http://collector:4318`); no traces are exported without it.
    pub otlp_endpoint: Option<String>,
    /// OTLP/HTTP with JSON bodies instead of protobuf.
    pub otlp_json: bool,
    /// Share of new traces recorded; a remote parent's sampling decision is followed.
    pub sample_ratio: f64,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// Whether spans are exported: without it, remote parents are not worth parsing.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Flushes and stops the span exporter when dropped (at the end of `main`).
#[derive(Debug)]
pub struct TelemetryGuard(Option<SdkTracerProvider>);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process-wide subscriber. An unusable OTLP endpoint leaves traces off, an invalid
/// filter logs at info; each is returned as a warning to report once logging works.
pub fn init(settings: &TelemetrySettings) -> (TelemetryGuard, Vec<String>) {
    let mut warnings = Vec::new();
    let filter = EnvFilter::try_new(&settings.log).unwrap_or_else(|error| {
        warnings.push(format!("HERALD_LOG `{}` is not a valid filter ({error}); logging at info", settings.log));
        EnvFilter::new("info")
    });
    let writer = RedactingMakeWriter(std::io::stderr);
    let (text, json) = if settings.json_logs {
        (None, Some(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(writer)))
    } else {
        (Some(tracing_subscriber::fmt::layer().with_writer(writer)), None)
    };
    let provider = match settings.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => tracer_provider(endpoint, settings)
            .map_err(|error| warnings.push(format!("traces are not exported: {error}")))
            .ok(),
        None => None,
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("herald")));
    EXPORTING.store(otel.is_some(), std::sync::atomic::Ordering::Relaxed);
    let _ = tracing_subscriber::registry().with(filter).with(text).with(json).with(otel).try_init();
    (TelemetryGuard(provider), warnings)
}

fn tracer_provider(endpoint: &str, settings: &TelemetrySettings) -> Result<SdkTracerProvider, String> {
    let endpoint = endpoint.trim_end_matches('/');
    let url = if endpoint.ends_with("/v1/traces") { endpoint.to_string() } else { format!("{endpoint}/v1/traces") };
    let protocol = if settings.otlp_json { Protocol::HttpJson } else { Protocol::HttpBinary };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .with_protocol(protocol)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| format!("OTLP exporter: {error}"))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(RedactingExporter { inner: exporter, failing: Default::default() })
        .with_resource(resource)
        .build())
}

/// Masks addresses, phone numbers and sensitive values in span names, attributes and events
/// before they leave the process.
#[derive(Debug)]
struct RedactingExporter<E> {
    inner: E,
    /// Whether the last export failed.
    failing: std::sync::atomic::AtomicBool,
}

/// A sensitive attribute's value is masked whole; any other string (or array of strings) has its
/// addresses and phone numbers masked.
fn redact_attribute(attribute: &mut opentelemetry::KeyValue) {
    use opentelemetry::{Array, Value};
    if is_sensitive_name(attribute.key.as_str()) {
        attribute.value = Value::from(crate::redact::MASK);
        return;
    }
    match &mut attribute.value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(owned) = redact(text.as_str()) {
                *text = owned.into();
            }
        }
        Value::Array(Array::String(items)) => {
            for item in items {
                if let std::borrow::Cow::Owned(owned) = redact(item.as_str()) {
                    *item = owned.into();
                }
            }
        }
        _ => {}
    }
}

impl<E: SpanExporter> SpanExporter for RedactingExporter<E> {
    fn export(&self, mut batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        for span in &mut batch {
            if let std::borrow::Cow::Owned(name) = redact(&span.name) {
                span.name = name.into();
            }
            span.attributes.iter_mut().for_each(redact_attribute);
            for event in &mut span.events.events {
                if let std::borrow::Cow::Owned(name) = redact(&event.name) {
                    event.name = name.into();
                }
                event.attributes.iter_mut().for_each(redact_attribute);
            }
            if let opentelemetry::trace::Status::Error { description } = &mut span.status
                && let std::borrow::Cow::Owned(text) = redact(description)
            {
                *description = text.into();
            }
        }
        let exported = self.inner.export(batch);
        let failing = &self.failing;
        async move {
            let outcome = exported.await;
            // Reported once per change between working and failing, not per batch; this event
            // is outside any span, so it is not exported itself.
            let failed = outcome.is_err();
            if failing.swap(failed, std::sync::atomic::Ordering::Relaxed) != failed {
                match &outcome {
                    Err(error) => tracing::warn!(%error, "trace export failing; spans are dropped"),
                    Ok(()) => tracing::info!("trace export working again"),
                }
            }
            outcome
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The W3C `traceparent` of `span`, when spans are being traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// Makes `span` a child of the remote span named by a W3C `traceparent` (from an HTTP request
/// or an AMQP message header). An invalid value is ignored: the span starts a new trace.
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    if !EXPORTING.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if context.span().span_context().is_valid() {
        let _ = span.set_parent(context);
    }
}

/// A W3C `traceparent` for a request that arrived without one (and without tracing on).
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}

/// Accepts only a well-formed W3C `traceparent` from a caller.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1] != "0".repeat(32)
        && hex(parts[2], 16)
        && parts[2] != "0".repeat(16)
        && hex(parts[3], 2)
}

#[cfg(test)]
mod tests {
    use opentelemetry::{Array, KeyValue, Value};

    use super::{new_traceparent, redact_attribute, valid_traceparent};

    #[test]
    fn span_attributes_are_masked_by_name_and_by_content() {
        let mut attributes = [
            KeyValue::new("otp", "771204"),
            KeyValue::new("herald.context", "{\"resetUrl\": \"https://r.example/t\"}"),
            KeyValue::new("exception.message", "rejected: ada@example.com, +33612345678"),
            KeyValue::new("recipients", Value::Array(Array::String(vec!["grace@example.com".into(), "ok".into()]))),
            KeyValue::new("herald.execution_id", "0192"),
            KeyValue::new("http.response.status_code", 202),
        ];
        attributes.iter_mut().for_each(redact_attribute);
        let shown: Vec<String> = attributes.iter().map(|kv| kv.value.to_string()).collect();
        assert_eq!(shown[0], "[redacted]");
        assert_eq!(shown[1], "[redacted]");
        assert_eq!(shown[2], "rejected: [redacted], [redacted]");
        assert!(!shown[3].contains("grace") && shown[3].contains("ok"), "{}", shown[3]);
        assert_eq!((shown[4].as_str(), shown[5].as_str()), ("0192", "202"));
    }

    #[test]
    fn generated_traceparents_are_valid_and_bad_ones_are_refused() {
        assert!(valid_traceparent(&new_traceparent()));
        assert!(valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"));
        assert!(!valid_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
        assert!(!valid_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
    }
}

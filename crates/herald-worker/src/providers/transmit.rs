//! The moment a provider request leaves the process.
//!
//! A worker that dies after that moment may have sent the message (it is recorded `unknown`);
//! one that dies before it has sent nothing (the message is sent again). So the "call started"
//! mark must be written as late as possible: here it is written by the SDK's own HTTP connector,
//! after the request is built and signed, just before it is handed to a connection. The worker
//! passes its mark as a [`TransmitGate`] in a task-local around the provider call; the
//! connector awaits the gate and refuses to send when it does not open (the claim was taken
//! over, or the database is away). Afterwards the gate tells whether any request reached the
//! connection at all: an error without that is proof nothing was sent.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use futures_util::future::BoxFuture;

/// What opening the gate answered: `Ok(true)` open (the mark is written), `Ok(false)` refused
/// (the claim is no longer held), `Err` the mark could not be written.
pub type GateAnswer = Result<bool, String>;

/// Writes the mark; called at most until it opens once.
pub type OpenGate = Arc<dyn Fn() -> BoxFuture<'static, GateAnswer> + Send + Sync>;

/// One delivery's gate, shared by the requests of its provider call.
#[derive(Clone)]
pub struct TransmitGate {
    open: OpenGate,
    answer: Arc<Mutex<Option<GateAnswer>>>,
}

impl std::fmt::Debug for TransmitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransmitGate").field("answer", &self.answer()).finish_non_exhaustive()
    }
}

impl TransmitGate {
    pub fn new(open: OpenGate) -> Self {
        Self { open, answer: Arc::default() }
    }

    /// What the gate answered the last request that reached it; `None`: no request did.
    pub fn answer(&self) -> Option<GateAnswer> {
        self.answer.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Opens the gate from the caller's side, for providers that do not open it themselves.
    pub async fn open_here(&self) -> GateAnswer {
        self.pass().await
    }

    async fn pass(&self) -> GateAnswer {
        // Open once: the later requests of the same call (an endpoint, then the publish) pass.
        if matches!(self.answer(), Some(Ok(true))) {
            return Ok(true);
        }
        let answer = (self.open)().await;
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer.clone());
        answer
    }
}

tokio::task_local! {
    static GATE: TransmitGate;
}

/// Runs `call` (a provider call on this task) with `gate` in front of every request it sends.
pub async fn through<F: Future>(gate: TransmitGate, call: F) -> F::Output {
    GATE.scope(gate, call).await
}

/// Runs `call` with a gate that opens without writing anything: for a request that comes before
/// the send proper (an SNS platform endpoint), which must neither set the mark nor count as the
/// send having left.
pub async fn outside_gate<F: Future>(call: F) -> F::Output {
    let open: OpenGate = Arc::new(|| Box::pin(async { Ok(true) }));
    GATE.scope(TransmitGate::new(open), call).await
}

/// An HTTP client whose connectors wait for the current task's gate before sending.
#[derive(Debug)]
struct GatedClient {
    inner: SharedHttpClient,
}

impl HttpClient for GatedClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(GatedConnector { inner: self.inner.http_connector(settings, components) })
    }
}

#[derive(Debug)]
struct GatedConnector {
    inner: SharedHttpConnector,
}

impl HttpConnector for GatedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let gate = GATE.try_with(Clone::clone).ok();
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            if let Some(gate) = gate {
                match gate.pass().await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ConnectorError::other("the delivery's claim is no longer held".into(), None));
                    }
                    Err(error) => {
                        return Err(ConnectorError::other(format!("call mark not written: {error}").into(), None));
                    }
                }
            }
            inner.call(request).await
        })
    }
}

/// The SDK's default HTTPS client (hyper 1, rustls with aws-lc, proxy settings from the
/// environment), with the gate in front of its connectors.
pub fn gated_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::proxy::ProxyConfig;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder};
    let inner = Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    });
    SharedHttpClient::new(GatedClient { inner })
}

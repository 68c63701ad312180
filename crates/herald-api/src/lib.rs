//! Herald's HTTP process (`herald api`): authentication, problem+json errors, the campaign and
//! profile management API, health endpoints, and — from the ingest crate — the execution API.

mod audience_executions;
pub mod audiences;
mod auth;
mod campaigns;
pub mod dead_letters;
pub mod edge;
mod executions;
pub mod feedback;
mod health;
pub mod json;
pub mod keys;
mod observe;
pub mod problem;
mod profiles;
mod reports;
pub mod request_id;
mod suppressions;
pub mod webhooks;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::from_fn;
use axum::routing::{get, post};
use herald_core::Clock;
use herald_store::Store;
use tokio::net::TcpListener;

pub use auth::Caller;
use problem::Problem;

/// Settings of the HTTP process that handlers need.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body (413 beyond).
    pub max_body_bytes: usize,
    /// The base URL clients reach this API at, used in generated cURL samples.
    pub public_url: String,
    /// `POST /feedback/sns`: the topics taken in and the SNS URLs trusted (off without topics).
    pub sns: Option<feedback::SnsPushSettings>,
    /// Non-public networks a customer webhook may point into (`HERALD_WEBHOOK_ALLOWED_NETWORKS`).
    pub webhook_allowed_networks: Vec<ipnet::IpNet>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            public_url: "http://127.0.0.1:8080".into(),
            sns: None,
            webhook_allowed_networks: Vec::new(),
        }
    }
}

/// What every handler can reach; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ApiConfig>,
    keys: Arc<auth::KeyCache>,
    /// The execution API; without it (no broker configured) executions answer 503.
    pub ingest: Option<Arc<herald_ingest::Ingest>>,
    /// The process's metrics, served at `/metrics` (shared with ingest and, in `herald dev`, the worker).
    pub metrics: Arc<herald_telemetry::Metrics>,
    /// Turns on the blocking pool for previews and cURL samples.
    render_turns: Arc<herald_core::template::RenderTurns>,
    /// The SNS push endpoint's topics and certificate cache, when configured.
    sns: Option<Arc<feedback::SnsPush>>,
    /// Turns for audience member uploads (each holds a database connection throughout).
    uploads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn with_ingest(mut self, ingest: Arc<herald_ingest::Ingest>) -> Self {
        self.ingest = Some(ingest);
        self
    }

    pub fn new(store: Store, clock: Arc<dyn Clock>, config: ApiConfig) -> Self {
        // Its listener task stops when the last clone of the state is dropped.
        let keys = Arc::new(auth::KeyCache::start(store.clone()));
        Self {
            store,
            clock,
            keys,
            ingest: None,
            metrics: Arc::default(),
            // As many previews at once as there are CPUs.
            render_turns: Arc::new(herald_core::template::RenderTurns::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            )),
            sns: config.sns.as_ref().and_then(feedback::SnsPush::new).map(Arc::new),
            uploads: Arc::new(tokio::sync::Semaphore::new(audiences::CONCURRENT_UPLOADS)),
            config: Arc::new(config),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<herald_telemetry::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    let max_body_bytes = state.config.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/im/health", get(health::readyz))
        .route("/im/executions/unitary", post(executions::execute))
        .route("/im/executions/highthroughput", post(executions::execute_high_throughput))
        .route("/im/executions/{execution_id}", get(executions::status))
        .route("/im/executions/audience", post(audience_executions::execute))
        .route("/im/executions/audience/{execution_id}", get(audience_executions::status))
        .route(
            "/im/executions/schedules/{schedule_id}",
            get(audience_executions::schedule).delete(audience_executions::cancel),
        )
        .route("/campaigns/{id}/schedules", get(audience_executions::campaign_schedules))
        .route("/audiences", get(audiences::list).post(audiences::create))
        .route("/audiences/{id}", get(audiences::read).delete(audiences::delete))
        .route("/audiences/{id}/members", axum::routing::put(audiences::upload).layer(DefaultBodyLimit::disable()))
        .route("/feedback/sns", post(feedback::sns))
        .route("/campaigns", get(campaigns::list).post(campaigns::create))
        .route("/campaigns/{id}", get(campaigns::read).patch(campaigns::patch).delete(campaigns::delete))
        .route("/campaigns/{id}/activate", post(campaigns::actions::activate))
        .route("/campaigns/{id}/stop", post(campaigns::actions::stop))
        .route("/campaigns/{id}/archive", post(campaigns::actions::archive))
        .route("/campaigns/{id}/duplicate", post(campaigns::actions::duplicate))
        .route("/campaigns/{id}/curl", get(campaigns::tools::curl))
        .route("/campaigns/{id}/preview", post(campaigns::tools::preview))
        .route("/campaigns/{id}/report", get(reports::campaign))
        .route("/campaigns/{id}/report.html", get(reports::campaign_page))
        .route("/reports", get(reports::global))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/profiles/{namespace}/{user_id}", get(profiles::read).put(profiles::put))
        .route("/suppressions", get(suppressions::list))
        .route(
            "/suppressions/{channel}/{address}",
            get(suppressions::read).put(suppressions::put).delete(suppressions::delete),
        )
        .route("/webhooks/feedback", get(webhooks::read).put(webhooks::put).delete(webhooks::delete))
        .route("/api-keys", get(keys::list).post(keys::create))
        .route("/api-keys/{id}", axum::routing::delete(keys::revoke))
        .route("/api-keys/{id}/rotate", post(keys::rotate))
        // Inside the telemetry layer, so refused requests are counted under their route.
        .route_layer(from_fn(edge::path_and_query))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), observe::layer))
        .route("/metrics", get(observe::metrics))
        .fallback(|| async { Problem::not_found("not-found", "No such resource") })
        .method_not_allowed_fallback(|| async {
            Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed on this resource")
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Inside the request id layer, so the problems they build carry the id.
        .layer(from_fn(edge::problems_only))
        .layer(from_fn(edge::uri))
        .layer(from_fn(request_id::layer))
        // Outermost: also the answer to a contained panic gets the headers.
        .layer(from_fn(edge::headers))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

/// Serves only `GET /metrics` for `metrics` (a worker process, which has no API).
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<herald_telemetry::Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router =
        Router::new().route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    ([(axum::http::header::CONTENT_TYPE, herald_telemetry::metrics::CONTENT_TYPE)], metrics.encode())
                }
            }),
        );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

//! Liveness and readiness. `/healthz` says the process answers; `/readyz` says its dependencies
//! do, so a load balancer stops sending work to an instance that could only answer 503.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::problem::Problem;

pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and, if the execution API is on, the broker is connected.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    state.store.ping().await.map_err(|error| Problem::unavailable(format!("database: {error}")))?;
    let broker = match &state.ingest {
        None => "not configured",
        Some(ingest) if ingest.broker().is_connected() => "ok",
        Some(_) => return Err(Problem::unavailable("broker: not connected")),
    };
    Ok(Json(json!({ "status": "ready", "database": "ok", "broker": broker })))
}

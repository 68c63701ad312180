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

pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, Problem> {
    state
        .store
        .ping()
        .await
        .map_err(|error| Problem::unavailable(format!("database: {error}")))?;
    Ok(Json(json!({ "status": "ready", "database": "ok" })))
}

//! `/api/v1/webhooks`: where service events are posted (admin tokens only), their delivery log,
//! and a test delivery.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_core::Action;
use berth_notify::{NotifyError, WebhookSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/webhooks", get(list).post(create))
        .route("/api/v1/webhooks/{name}", get(show).delete(delete))
        .route("/api/v1/webhooks/{name}/deliveries", get(deliveries))
        .route("/api/v1/webhooks/{name}/ping", post(ping))
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Invalid(_) => ApiError::invalid(e.to_string()),
            NotifyError::NotFound(_) => ApiError::not_found(e.to_string()),
            NotifyError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string()),
            NotifyError::Store(s) => s.into(),
        }
    }
}

async fn list(State(s): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    Ok(Json(json!({ "webhooks": s.webhooks.list().await? })))
}

async fn create(
    State(s): State<AppState>,
    caller: Caller,
    Json(spec): Json<WebhookSpec>,
) -> Result<(StatusCode, Json<WebhookSpec>), ApiError> {
    caller.require(Action::Admin)?;
    Ok((StatusCode::CREATED, Json(s.webhooks.create(spec).await?)))
}

async fn show(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<WebhookSpec>, ApiError> {
    caller.require(Action::Admin)?;
    Ok(Json(s.webhooks.get(&name).await?))
}

async fn delete(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    s.webhooks.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// The newest deliveries first.
async fn deliveries(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    let list = s.webhooks.deliveries(&name, q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(json!({ "webhook": name, "deliveries": list })))
}

async fn ping(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    s.webhooks.ping(&name).await?;
    Ok(StatusCode::ACCEPTED)
}

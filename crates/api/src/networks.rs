//! `/api/v1/networks`: private networks. Creating and deleting one is immediate (no operation):
//! it changes what services may name, not what runs.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use berth_core::{Action, NetworkSpec};
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::services::controller;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/networks", get(list).post(create)).route("/api/v1/networks/{name}", get(show).delete(delete))
}

async fn create(State(s): State<AppState>, caller: Caller, Json(spec): Json<NetworkSpec>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Action::Admin)?;
    let view = controller(&s)?.create_network(spec).await?;
    Ok((StatusCode::CREATED, Json(serde_json::to_value(view).unwrap_or_default())))
}

/// Networks in name order; the cursor is a network name.
async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let (networks, next) = page.slice(controller(&s)?.list_networks().await?, |n| n.spec.name.clone())?;
    Ok(Json(json!({ "networks": networks, "next": next })))
}

async fn show(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(serde_json::to_value(controller(&s)?.get_network(&name).await?).unwrap_or_default()))
}

async fn delete(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    controller(&s)?.delete_network(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `/api/v1/services` and `/api/v1/operations`: the service resource. Every mutation answers
//! `202 Accepted` with the Operation carrying it out; a mutation while another runs on the same
//! service is refused with `409` naming the one in progress.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_controller::{Controller, ControllerError, Operation};
use berth_core::{Action, ServiceSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/services", get(list).post(create))
        .route("/api/v1/services/{name}", get(show).put(update).delete(delete))
        .route("/api/v1/services/{name}/deployments", post(deploy))
        .route("/api/v1/services/{name}/rollback", post(rollback))
        .route("/api/v1/services/{name}/pause", post(pause))
        .route("/api/v1/services/{name}/resume", post(resume))
        .route("/api/v1/services/{name}/revisions", get(revisions))
        .route("/api/v1/services/{name}/operations", get(operations))
        .route("/api/v1/services/{name}/events", get(events))
        .route("/api/v1/services/{name}/logs", get(logs))
        .route("/api/v1/services/{name}/metrics", get(metrics))
        .route("/api/v1/operations/{id}", get(operation))
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::NotFound(_) | ControllerError::OperationNotFound(_) | ControllerError::NetworkNotFound(_) => {
                ApiError::not_found(e.to_string())
            }
            ControllerError::Invalid(_) | ControllerError::BadRequest(_) => ApiError::invalid(e.to_string()),
            ControllerError::Exists(_) | ControllerError::NetworkExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            ControllerError::Busy { .. } | ControllerError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "failed_precondition", e.to_string())
            }
            ControllerError::Store(s) => s.into(),
            ControllerError::Corrupt(_) => {
                tracing::error!(error = %e, "controller state");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

pub(crate) fn controller(s: &AppState) -> Result<&Controller, ApiError> {
    s.controller.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "services need the embedded runtime, which is off: run `berth server` as root (it needs namespaces, cgroups and mounts)",
        )
    })
}

fn accepted(op: Operation) -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({ "operation": op })))
}

async fn create(State(s): State<AppState>, caller: Caller, Json(spec): Json<ServiceSpec>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).create(spec).await?))
}

async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(spec): Json<ServiceSpec>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    if spec.name != name {
        return Err(ApiError::invalid(format!("the spec names `{}` but the path `{name}`; a service cannot be renamed", spec.name)));
    }
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).update(spec).await?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeployBody {
    /// `repo:tag` or `repo@sha256:…`; default: the service's source, resolved anew.
    image: Option<String>,
}

async fn deploy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Option<Json<DeployBody>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    let body = body.map(|b| b.0).unwrap_or_default();
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).deploy(&name, body.image.as_deref()).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    /// A revision id (`web-0001`) or number.
    revision: String,
}

async fn rollback(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<RollbackBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).rollback(&name, &body.revision).await?))
}

async fn pause(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).pause(&name).await?))
}

async fn resume(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).resume(&name).await?))
}

async fn delete(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let who = caller.require(Action::Admin)?;
    Ok(accepted(controller(&s)?.acting_as(&who.token_name).delete(&name).await?))
}

/// What a caller sees of a service or revision document: environment values only when it may
/// change the service (they often hold credentials); the names always.
fn redacted(mut v: Value, caller: &Caller) -> Value {
    if caller.require(Action::Admin).is_ok() {
        return v;
    }
    /// Hides the environment values of the spec inside `doc` (a service or a revision).
    fn hide(doc: Option<&mut Value>) {
        let env = doc.and_then(|d| d.pointer_mut("/spec/image_config/env")).and_then(Value::as_object_mut);
        for value in env.into_iter().flat_map(|e| e.values_mut()) {
            *value = Value::String(REDACTED.into());
        }
    }
    hide(Some(&mut v));
    hide(v.get_mut("current_revision"));
    for r in v.get_mut("revisions").and_then(Value::as_array_mut).into_iter().flatten() {
        hide(Some(r));
    }
    v
}

/// What environment values read as for callers who may not change the service.
const REDACTED: &str = "(hidden: needs a token that may change this service)";

/// Services in name order; the cursor is a service name.
async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let after: Option<String> = page.after()?;
    let (services, next) = page.finish(controller(&s)?.list(after.as_deref(), page.limit() + 1).await?, |v| v.name.clone());
    let services: Vec<Value> = services.into_iter().map(|v| redacted(serde_json::to_value(v).unwrap_or_default(), &caller)).collect();
    Ok(Json(json!({ "services": services, "next": next })))
}

async fn show(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(redacted(serde_json::to_value(controller(&s)?.get(&name).await?).unwrap_or_default(), &caller)))
}

/// Revisions in number order; the cursor is a revision number.
async fn revisions(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let c = controller(&s)?;
    let current = c.get(&name).await?.current_revision.map(|r| r.number);
    let (revs, next) = page.slice(c.revisions(&name).await?, |r| r.number)?;
    Ok(Json(redacted(json!({ "current": current, "revisions": revs, "next": next }), &caller)))
}

/// Operations, newest first; the cursor is an operation id.
async fn operations(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let after: Option<String> = page.after()?;
    let ops = controller(&s)?.operations(&name, after.as_deref(), page.limit() + 1).await?;
    let (ops, next) = page.finish(ops, |o| o.id.clone());
    Ok(Json(json!({ "operations": ops, "next": next })))
}

/// Events, newest first; the cursor is an event id.
async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let c = controller(&s)?;
    // Events stay readable after the service is deleted; a name that never had any is unknown.
    let (events, next) = page.finish(c.events(&name, page.after()?, page.limit() + 1).await?, |e| e.id);
    if events.is_empty() && page.after::<i64>()?.is_none() {
        c.get(&name).await?;
    }
    Ok(Json(json!({ "events": events, "next": next })))
}

#[derive(Deserialize)]
struct Span {
    from: Option<u64>,
    to: Option<u64>,
    step: Option<u64>,
}

/// The metrics history: `from`/`to` in seconds since the Unix epoch (the last hour by default),
/// `step` in seconds (about 360 slots by default).
async fn metrics(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<Span>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to.saturating_sub(3600));
    let view = controller(&s)?.metrics(&name, from, to, q.step).await?;
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

#[derive(Deserialize)]
struct Tail {
    tail: Option<usize>,
}

async fn logs(State(s): State<AppState>, caller: Caller, Path(name): Path<String>, Query(q): Query<Tail>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let lines = controller(&s)?.logs(&name, q.tail.unwrap_or(100).min(10_000)).await?;
    let lines: Vec<Value> =
        lines.into_iter().map(|(instance, index, line)| json!({"instance": instance, "index": index, "line": line})).collect();
    Ok(Json(json!({ "lines": lines })))
}

async fn operation(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    Ok(Json(serde_json::to_value(controller(&s)?.operation(&id).await?).unwrap_or_default()))
}

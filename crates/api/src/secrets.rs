//! `/api/v1/secrets`: secrets, their versions and staging labels. A name with `/` is sent
//! percent-encoded (`db%2Fcreds`). Only `GET …/value` answers with a value, and only to a token
//! with `secrets-read` for the name; every read and change is in the secret's audit trail under
//! the token's name.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use berth_core::Action;
use berth_secrets::rotation::RotationConfig;
use berth_secrets::{Reference, SecretError, Selector};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::{now, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/secrets", get(list).post(create))
        .route("/api/v1/secrets/{name}", get(describe).delete(remove))
        .route("/api/v1/secrets/{name}/versions", post(put))
        .route("/api/v1/secrets/{name}/value", get(value))
        .route("/api/v1/secrets/{name}/labels", post(label))
        .route("/api/v1/secrets/{name}/labels/{label}", delete(unlabel))
        .route("/api/v1/secrets/{name}/restore", post(restore))
        .route("/api/v1/secrets/{name}/audit", get(audit))
        .route("/api/v1/secrets/{name}/rotate", post(rotate))
        .route("/api/v1/secrets/{name}/cancel-rotation", post(cancel_rotation))
}

impl From<SecretError> for ApiError {
    fn from(e: SecretError) -> Self {
        let e = match e {
            SecretError::Store(s) => return s.into(),
            e => e,
        };
        let status = match &e {
            SecretError::NotFound(_) => StatusCode::NOT_FOUND,
            SecretError::Exists(_) | SecretError::VersionExists { .. } => StatusCode::CONFLICT,
            SecretError::Deleted { .. } | SecretError::NotDeleted(_) | SecretError::LabelNeeded { .. } | SecretError::RotationBusy(_) => {
                StatusCode::CONFLICT
            }
            SecretError::NoVersion { .. } | SecretError::NoKey { .. } => StatusCode::NOT_FOUND,
            SecretError::InvalidName(_)
            | SecretError::InvalidVersionId(_)
            | SecretError::InvalidLabel(_)
            | SecretError::TooLarge(_)
            | SecretError::Empty
            | SecretError::NotJson { .. }
            | SecretError::Rotation(_)
            | SecretError::RecoveryWindow(_) => StatusCode::BAD_REQUEST,
            // Key and sealing failures never carry a value; they are the operator's to fix.
            SecretError::KeySource(_)
            | SecretError::WrongMasterKey
            | SecretError::Crypto(_)
            | SecretError::Corrupt(_)
            | SecretError::Store(_) => {
                tracing::error!(error = %e, "secret request failed");
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log");
            }
        };
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT if matches!(e, SecretError::Exists(_)) => "already_exists",
            StatusCode::CONFLICT => "failed_precondition",
            _ => "invalid_argument",
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSecret {
    name: String,
    #[serde(default)]
    description: String,
    value: String,
}

async fn create(State(s): State<AppState>, caller: Caller, Json(body): Json<NewSecret>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = caller.require(Action::WriteSecret(&body.name))?;
    let version = s.secrets.create(&body.name, &body.description, &body.value, &p.token_name, now()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": body.name, "version": version }))))
}

/// Secrets in name order, without values; the cursor is a name.
async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let (secrets, next) = page.slice(s.secrets.list().await?, |i| i.name.clone())?;
    Ok(Json(json!({ "secrets": secrets, "next": next })))
}

/// The secret as `describe` shows it, without values.
async fn shown(s: &AppState, name: &str) -> Result<Json<Value>, ApiError> {
    Ok(Json(serde_json::to_value(s.secrets.describe(name).await?).unwrap_or_default()))
}

/// The secret without values, and who uses which of its versions.
async fn describe(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let mut v = serde_json::to_value(s.secrets.describe(&name).await?).unwrap_or_default();
    if let Some(c) = &s.controller {
        v["consumers"] = serde_json::to_value(c.secret_consumers(&name).await?).unwrap_or_default();
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    value: String,
    /// `CURRENT` when empty.
    #[serde(default)]
    labels: Vec<String>,
}

async fn put(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<NewVersion>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    let version = s.secrets.put(&name, &body.value, &body.labels, &p.token_name, now()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "name": name, "version": version }))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueQuery {
    /// A key of a JSON value.
    key: Option<String>,
    label: Option<String>,
    version: Option<String>,
}

async fn value(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ValueQuery>,
) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::ReadSecret(&name))?;
    let selector = match (q.label, q.version) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("name a label or a version, not both")),
        (Some(l), None) => Selector::Label(l),
        (None, Some(v)) => Selector::Version(v),
        (None, None) => Selector::default(),
    };
    let reference = match &q.key {
        Some(k) => format!("{name}#{k}").parse::<Reference>()?,
        None => name.parse::<Reference>()?,
    };
    let (plain, version) = s.secrets.read(&reference, &selector, &p.token_name, now()).await?;
    Ok(Json(json!({ "name": name, "version": version, "value": plain.expose() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveLabel {
    label: String,
    version: String,
}

async fn label(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<MoveLabel>,
) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    s.secrets.label(&name, &body.label, &body.version, &p.token_name, now()).await?;
    shown(&s, &name).await
}

async fn unlabel(State(s): State<AppState>, caller: Caller, Path((name, label)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    s.secrets.unlabel(&name, &label, &p.token_name, now()).await?;
    shown(&s, &name).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    /// Days before the secret is purged; 7–30, default 30.
    recovery_days: Option<u32>,
}

async fn remove(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    // A secret a service runs with is not deleted from under it: its next instance could not start.
    if let Some(c) = &s.controller {
        let mut users: Vec<String> = c.secret_consumers(&name).await?.into_iter().map(|u| u.service).collect();
        users.dedup();
        if !users.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "failed_precondition",
                format!(
                    "secret `{name}` is used by {}; take it out of their settings first",
                    users.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    let purge_at = s.secrets.delete(&name, q.recovery_days.unwrap_or(30), &p.token_name, now()).await?;
    Ok(Json(json!({ "name": name, "purge_at": purge_at })))
}

async fn restore(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    s.secrets.restore(&name, &p.token_name, now()).await?;
    shown(&s, &name).await
}

/// Who read or changed the secret, newest first (at most `limit`, default 100).
async fn audit(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    s.secrets.describe(&name).await?;
    Ok(Json(json!({ "entries": s.secrets.audit_trail(&name, page.limit()).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How to rotate; none: as set before.
    rotation: Option<RotationConfig>,
    /// Start a rotation now (default), or only set how and when.
    #[serde(default = "yes")]
    rotate_now: bool,
}

fn yes() -> bool {
    true
}

/// Sets how the secret is rotated and (unless `rotate_now` is false) rotates it now.
async fn rotate(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<Rotate>,
) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    if let Some(admin) = body.rotation.as_ref().and_then(|r| r.admin_secret.as_deref()) {
        // Rotation reads the admin secret's value for the caller: they must be able to.
        caller.require(Action::ReadSecret(admin))?;
    }
    s.secrets.rotate(&name, body.rotation, body.rotate_now, &p.token_name, now()).await?;
    shown(&s, &name).await
}

/// Stops the rotation in progress (when that is safe) and the schedule.
async fn cancel_rotation(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let p = caller.require(Action::WriteSecret(&name))?;
    s.secrets.cancel_rotation(&name, &p.token_name, now()).await?;
    shown(&s, &name).await
}

//! `/api/v1/instances`: one-off instances of an image on the runtime (`berth run`), a debugging
//! aid until services manage instances themselves.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_core::{Action, Reference};
use berth_runtime::{ImageRef, InstanceId, InstanceSpec, InstanceStatus, Resources, Runtime, RuntimeError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/instances", get(list).post(run))
        .route("/api/v1/instances/{id}", get(show).delete(delete))
        .route("/api/v1/instances/{id}/stop", post(stop))
        .route("/api/v1/instances/{id}/logs", get(logs))
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::NotFound(_) => ApiError::not_found(e.to_string()),
            RuntimeError::InvalidSpec(_) | RuntimeError::Image(..) => ApiError::invalid(e.to_string()),
            RuntimeError::InvalidState { .. } | RuntimeError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "failed_precondition", e.to_string())
            }
            RuntimeError::Backend(_) => {
                tracing::error!(error = %e, "runtime failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

fn runtime(s: &AppState) -> Result<&dyn Runtime, ApiError> {
    s.runtime.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the embedded runtime is off: run `berth server` as root (it needs namespaces, cgroups and mounts)",
        )
    })
}

fn status_json(s: &InstanceStatus) -> Value {
    let labels: serde_json::Map<String, Value> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    json!({
        "id": s.id,
        "image": format!("{}@{}", s.image.repository, s.image.digest),
        "state": s.state,
        "address": s.address.map(|a| a.to_string()),
        "labels": labels,
    })
}

/// The instance's status, or 404.
async fn existing(rt: &dyn Runtime, id: &InstanceId) -> Result<InstanceStatus, ApiError> {
    rt.inspect(id).await?.ok_or_else(|| ApiError::not_found(format!("instance `{id}` does not exist")))
}

fn id(raw: &str) -> Result<InstanceId, ApiError> {
    InstanceId::new(raw).map_err(|e| ApiError::invalid(e.to_string()))
}

#[derive(Deserialize)]
struct RunBody {
    /// `repository:tag` or `repository@sha256:…` in berth's registry, or with a registry host
    /// (`registry.example.com/team/web:v1`) from that registry.
    image: String,
    name: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Replaces the image's entrypoint and command.
    command: Option<Vec<String>>,
    cpu_millis: Option<u32>,
    memory_mb: Option<u64>,
    /// Run the app under berth's init as PID 1.
    #[serde(default)]
    init: bool,
}

async fn run(State(s): State<AppState>, caller: Caller, Json(body): Json<RunBody>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Action::Admin)?;
    let rt = runtime(&s)?;
    let (repo, reference) = match body.image.rsplit_once('@') {
        Some((r, d)) => (r.to_owned(), d.to_owned()),
        None => match body.image.rsplit_once(':') {
            // A `:` inside the last path component starts the tag; one before it is a port.
            Some((r, t)) if !t.contains('/') => (r.to_owned(), t.to_owned()),
            _ => (body.image.clone(), "latest".to_owned()),
        },
    };
    let reference: Reference = reference.parse().map_err(|e: berth_core::NameError| ApiError::invalid(e.to_string()))?;
    let digest = match reference {
        Reference::Digest(d) => d,
        // An image of another registry: its tag resolves there.
        Reference::Tag(t) if berth_image::split_registry(&repo).is_some() => {
            let (_, bytes) =
                s.images.manifest(&repo, t.as_str()).await.map_err(|e| ApiError::invalid(format!("resolving {repo}:{t}: {e}")))?;
            berth_core::Digest::sha256_of(&bytes)
        }
        Reference::Tag(t) => s
            .store
            .resolve_tag(&repo, t.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found(format!("tag `{t}` is not in repository `{repo}`; push it first")))?,
    };
    let name = body.name.unwrap_or_else(|| format!("run-{}", hex::encode(rand::random::<[u8; 4]>())));
    let defaults = Resources::default();
    let spec = InstanceSpec {
        id: id(&name)?,
        labels: vec![("run".into(), "true".into())],
        image: ImageRef { repository: repo, digest },
        entrypoint: body.command,
        cmd: None,
        env: body.env.into_iter().collect(),
        port: body.port.unwrap_or(8080),
        resources: Resources {
            cpu_millis: body.cpu_millis.unwrap_or(defaults.cpu_millis),
            memory_bytes: body.memory_mb.map(|m| m.saturating_mul(1 << 20)).unwrap_or(defaults.memory_bytes),
            pids: defaults.pids,
        },
        user: None,
        read_only_rootfs: false,
        files: Vec::new(),
        init: body.init,
        network: Default::default(),
    };
    spec.resources.validate().map_err(ApiError::invalid)?;
    rt.create(spec.clone()).await?;
    let status = rt.start(&spec.id).await?;
    Ok((StatusCode::CREATED, Json(status_json(&status))))
}

/// Instances in id order; the cursor is an instance id.
async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let mut all = runtime(&s)?.list().await?;
    all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let (page, next) = page.slice(all, |i| i.id.to_string())?;
    Ok(Json(json!({ "instances": page.iter().map(status_json).collect::<Vec<_>>(), "next": next })))
}

async fn show(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let i = id(&raw)?;
    Ok(Json(status_json(&existing(runtime(&s)?, &i).await?)))
}

#[derive(Deserialize, Default)]
struct StopBody {
    grace_secs: Option<u64>,
}

async fn stop(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    body: Option<Json<StopBody>>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    let grace = body.and_then(|b| b.grace_secs).map(Duration::from_secs).unwrap_or(berth_runtime::DEFAULT_STOP_GRACE);
    let st = runtime(&s)?.stop(&id(&raw)?, grace).await?;
    Ok(Json(status_json(&st)))
}

async fn delete(State(s): State<AppState>, caller: Caller, Path(raw): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    let i = id(&raw)?;
    let rt = runtime(&s)?;
    existing(rt, &i).await?;
    rt.delete(&i).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct LogsQuery {
    since: Option<usize>,
    limit: Option<usize>,
}

async fn logs(
    State(s): State<AppState>,
    caller: Caller,
    Path(raw): Path<String>,
    Query(q): Query<LogsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let since = q.since.unwrap_or(0);
    let mut lines = runtime(&s)?.logs(&id(&raw)?, since).await?;
    lines.truncate(q.limit.unwrap_or(1000).clamp(1, 10_000));
    Ok(Json(json!({ "next": since + lines.len(), "lines": lines })))
}

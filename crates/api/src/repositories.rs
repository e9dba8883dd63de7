//! `/api/v1/repositories` and `/api/v1/registry/gc`: repositories as objects of their own, with
//! tag policies, lifecycle rules, tags and push events.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use berth_core::{Action, LifecycleRule, Pattern, TagMutability, TagPolicy};
use berth_store::{PushEvent, RepositoryRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/repositories", get(list).post(create))
        .route("/api/v1/repositories/{name}", get(show).delete(delete))
        .route("/api/v1/repositories/{name}/policy", put(set_policy))
        .route("/api/v1/repositories/{name}/lifecycle", put(set_lifecycle))
        .route("/api/v1/repositories/{name}/tags", get(tags))
        .route("/api/v1/repositories/{name}/events", get(events))
        .route("/api/v1/registry/gc", post(gc))
}

pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn repository_json(r: &RepositoryRecord) -> Value {
    json!({
        "name": r.name,
        "created_at": rfc3339(r.created_at),
        "tag_mutability": r.tag_policy.mutability,
        "exclusions": r.tag_policy.exclusions,
        "lifecycle": r.lifecycle,
    })
}

fn event_json(e: &PushEvent) -> Value {
    json!({
        "id": e.id,
        "repository": e.repository,
        "tag": e.tag,
        "digest": e.digest,
        "previous_digest": e.previous_digest,
        "at": rfc3339(e.at),
    })
}

async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    // Any caller may list; each sees the repositories it may pull.
    let p = caller.authenticated()?;
    let after: Option<String> = page.after()?;
    let repos = s.registry.repositories(after.as_deref(), page.limit() + 1).await?;
    let (repos, next) = page.finish(repos, |r| r.name.clone());
    let visible: Vec<Value> = repos.iter().filter(|r| p.allows(Action::Pull(&r.name))).map(repository_json).collect();
    Ok(Json(json!({ "repositories": visible, "next": next })))
}

#[derive(Deserialize)]
struct PolicyBody {
    tag_mutability: Option<String>,
    #[serde(default)]
    exclusions: Vec<String>,
}

impl PolicyBody {
    fn policy(&self) -> Result<TagPolicy, ApiError> {
        let m: TagMutability = match &self.tag_mutability {
            Some(m) => m.parse().map_err(|e: berth_core::PolicyError| ApiError::invalid(e.to_string()))?,
            None if self.exclusions.is_empty() => TagMutability::Mutable,
            None => TagMutability::ImmutableWithExclusion,
        };
        TagPolicy::new(m, self.exclusions.iter().map(Pattern::new).collect()).map_err(|e| ApiError::invalid(e.to_string()))
    }
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    #[serde(flatten)]
    policy: PolicyBody,
}

async fn create(State(s): State<AppState>, caller: Caller, Json(body): Json<CreateBody>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Action::Push(&body.name))?;
    let rec = s.registry.create_repository(&body.name, body.policy.policy()?).await?;
    Ok((StatusCode::CREATED, Json(repository_json(&rec))))
}

async fn show(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Pull(&name))?;
    let rec = s.registry.repository(&name).await?;
    let mut v = repository_json(&rec);
    v["tag_count"] = s.registry.tag_count(&name).await?.into();
    Ok(Json(v))
}

async fn delete(State(s): State<AppState>, caller: Caller, Path(name): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    s.registry.delete_repository(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<PolicyBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    s.registry.set_tag_policy(&name, &body.policy()?).await?;
    Ok(Json(repository_json(&s.registry.repository(&name).await?)))
}

#[derive(Deserialize)]
struct LifecycleBody {
    rules: Vec<LifecycleRule>,
}

async fn set_lifecycle(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<LifecycleBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    for r in &body.rules {
        match r {
            LifecycleRule::KeepNewestTags { count: 0, .. } => {
                return Err(ApiError::invalid("keep_newest_tags needs a count of at least 1"))
            }
            LifecycleRule::ExpireUntagged { days: 0 } => return Err(ApiError::invalid("expire_untagged needs at least 1 day")),
            _ => {}
        }
    }
    s.registry.set_lifecycle(&name, &body.rules).await?;
    Ok(Json(repository_json(&s.registry.repository(&name).await?)))
}

async fn tags(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Pull(&name))?;
    let after: Option<String> = page.after()?;
    let tags = s.registry.tags(&name, after.as_deref(), page.limit() + 1).await?;
    let (tags, next) = page.finish(tags, |t| t.tag.clone());
    let list: Vec<Value> = tags.iter().map(|t| json!({ "tag": t.tag, "digest": t.digest, "updated_at": rfc3339(t.updated_at) })).collect();
    Ok(Json(json!({ "repository": name, "tags": list, "next": next })))
}

/// Push events, oldest first; the cursor is an event id.
async fn events(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Pull(&name))?;
    s.registry.repository(&name).await?;
    let list = s.registry.events(Some(&name), page.after()?.unwrap_or(0), page.limit() + 1).await?;
    let (list, next) = page.finish(list, |e| e.id);
    Ok(Json(json!({ "repository": name, "events": list.iter().map(event_json).collect::<Vec<_>>(), "next": next })))
}

#[derive(Deserialize)]
struct GcBody {
    #[serde(default)]
    dry_run: bool,
}

async fn gc(State(s): State<AppState>, caller: Caller, body: Option<Json<GcBody>>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    let dry_run = body.is_some_and(|b| b.dry_run);
    let report = s.registry.collect_garbage(dry_run).await?;
    Ok(Json(serde_json::to_value(report).map_err(|e| ApiError::invalid(e.to_string()))?))
}

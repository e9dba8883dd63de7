//! `/api/v1/tokens` and `/api/v1/whoami`: creating, listing and revoking API tokens. A token's
//! secret is returned once, at creation, and stored only as a hash. A token made with `aws`
//! also signs AWS requests: its access key id is shown with it, its secret access key once.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use berth_core::{Action, Scope};
use berth_store::TokenRecord;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::page::Page;
use crate::repositories::rfc3339;
use crate::{issue_token, ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tokens", get(list).post(create))
        .route("/api/v1/tokens/{id}", delete(revoke))
        .route("/api/v1/whoami", get(whoami))
}

fn token_json(s: &AppState, t: &TokenRecord) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scopes": t.scopes,
        "created_at": rfc3339(t.created_at),
        "last_used_at": t.last_used_at.map(rfc3339),
        "revoked_at": t.revoked_at.map(rfc3339),
        "aws_access_key_id": t.aws.then(|| s.auth.aws_key(&t.id)),
    })
}

/// Tokens in id order; the cursor is a token id.
async fn list(State(s): State<AppState>, caller: Caller, Query(page): Query<Page>) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Admin)?;
    let mut tokens = s.store.list_tokens().await?;
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
    let (tokens, next) = page.slice(tokens, |t| t.id.clone())?;
    Ok(Json(json!({ "tokens": tokens.iter().map(|t| token_json(&s, t)).collect::<Vec<_>>(), "next": next })))
}

#[derive(Deserialize)]
struct CreateBody {
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    aws: bool,
}

async fn create(State(s): State<AppState>, caller: Caller, Json(body): Json<CreateBody>) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Action::Admin)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::invalid("a token name is 1 to 64 characters"));
    }
    if body.scopes.is_empty() {
        return Err(ApiError::invalid("a token needs at least one scope: admin, read-only, pull:<repo pattern> or push:<repo pattern>"));
    }
    let scopes =
        body.scopes.iter().map(|s| s.parse::<Scope>().map_err(|e| ApiError::invalid(e.to_string()))).collect::<Result<Vec<_>, _>>()?;
    let issued = issue_token(&s.store, name, scopes, body.aws).await?;
    tracing::info!(token = %issued.record.id, name = %issued.record.name, aws = body.aws, "token created");
    let mut v = token_json(&s, &issued.record);
    v["token"] = issued.secret.into();
    if body.aws {
        v["aws_secret_access_key"] = s.auth.aws_secret(&s.auth.aws_key(&issued.record.id)).into();
    }
    Ok((StatusCode::CREATED, Json(v)))
}

async fn revoke(State(s): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    caller.require(Action::Admin)?;
    if s.store.revoke_token(&id, crate::now()).await? {
        tracing::info!(token = %id, "token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("token `{id}` does not exist or is already revoked; see `berth token list`")))
    }
}

async fn whoami(caller: Caller) -> Result<Json<Value>, ApiError> {
    let p = caller.authenticated()?;
    Ok(Json(json!({ "token_id": p.token_id, "name": p.token_name, "scopes": p.scopes })))
}

//! berth's HTTP surface on the API listener: authentication, the REST API under `/api/v1` (with
//! its OpenAPI document), the registry under `/v2/`, the Docker token endpoint `/token`, the
//! AWS-compatible APIs (`POST /` with `X-Amz-Target`), `/healthz` and `/metrics`.
//!
//! Invariants: this crate holds no business rules — it authenticates, authorizes, translates
//! HTTP to calls on the domain crates and their errors back to statuses with stable codes.
//! Every route but `/healthz` needs a credential.

pub mod access;
pub mod auth;
pub mod aws;
pub mod caller;
mod error;
mod instances;
mod metrics;
mod networks;
mod page;
mod repositories;
mod secrets;
mod services;
mod tokens;
mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use berth_registry::Registry;
use berth_store::SharedStore;

pub use auth::{issue_token, Authenticator, IssuedToken, Session};
pub use caller::Caller;
pub use error::ApiError;
pub use metrics::Metrics;

/// The OpenAPI document of `/api/v1`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub registry: Arc<Registry>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The runtime, when this server can run containers.
    pub runtime: Option<Arc<dyn berth_runtime::Runtime>>,
    /// Where images come from (berth's registry, or the registry an image name names).
    pub images: Arc<dyn berth_image::ImageSource>,
    /// The local CA's certificate (PEM), which clients trust for the router's HTTPS.
    pub ca_pem: Arc<str>,
    /// The services' controllers, when this server can run containers.
    pub controller: Option<berth_controller::Controller>,
    pub secrets: Arc<berth_secrets::Secrets>,
    /// The router's access log (JSON lines), when it is on.
    pub access_log: Option<std::path::PathBuf>,
    /// Where service events are posted.
    pub webhooks: berth_notify::Webhooks,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The whole API listener's router.
pub fn app(state: AppState) -> Router {
    app_with(state, Router::new())
}

/// The API listener's router with `pages` (the console) beside the API, behind the same
/// authentication: a page's handlers find the caller (from a session cookie) as [`Caller`], and
/// the session as [`Session`].
pub fn app_with(state: AppState, pages: Router<AppState>) -> Router {
    let pages = pages.with_state(state.clone());
    let api = Router::new()
        .merge(repositories::routes())
        .merge(tokens::routes())
        .merge(instances::routes())
        .merge(services::routes())
        .merge(networks::routes())
        .merge(secrets::routes())
        .merge(access::routes())
        .merge(webhooks::routes())
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/ca", get(ca))
        .route("/token", get(auth::token_endpoint))
        .route("/metrics", get(metrics::render))
        .layer(axum::middleware::map_response(error::envelope))
        .with_state(state.clone());
    Router::new()
        .merge(api)
        .merge(pages)
        .merge(aws::routes().with_state(state.clone()))
        .merge(berth_registry::router(state.registry.clone()))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(state, metrics::track))
        .route("/healthz", get(|| async { "ok\n" }))
}

/// `GET /api/v1/ca`: the local CA certificate (`berth ca export`).
async fn ca(axum::extract::State(s): axum::extract::State<AppState>, caller: caller::Caller) -> Result<impl IntoResponse, ApiError> {
    caller.authenticated()?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/x-pem-file")], s.ca_pem.to_string()))
}

async fn openapi() -> impl IntoResponse {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

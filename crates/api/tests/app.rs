//! The API router called in-process (`oneshot`, no socket): every operation of the OpenAPI
//! document is routed, authentication is enforced, errors have stable codes.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use berth_api::{app, issue_token, AppState, Authenticator, Metrics};
use berth_core::Scope;
use berth_registry::{FsBlobStore, Registry, RegistryConfig};
use berth_store::{SharedStore, SqliteStore};
use http_body_util::BodyExt;
use tower::ServiceExt;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Fixture {
    _dir: tempfile::TempDir,
    router: axum::Router,
    admin: String,
    reader: String,
}

async fn fixture() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
    let blobs = Arc::new(FsBlobStore::open(&dir.path().join("registry"))?);
    let registry = Arc::new(Registry::new(store.clone(), blobs, RegistryConfig::default()));
    let registry_source: Arc<dyn berth_image::ImageSource> = registry.clone();
    let admin = issue_token(&store, "admin", vec![Scope::Admin]).await.map_err(|e| e.message)?.secret;
    let reader = issue_token(&store, "reader", vec![Scope::ReadOnly]).await.map_err(|e| e.message)?.secret;
    let state = AppState {
        store,
        registry,
        auth: Arc::new(Authenticator::new([1; 32])),
        metrics: Arc::new(Metrics::new()),
        runtime: Some(Arc::new(berth_runtime::FakeRuntime::new())),
        images: registry_source,
        ca_pem: Arc::from("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
    };
    Ok(Fixture { _dir: dir, router: app(state), admin, reader })
}

async fn call(f: &Fixture, method: &str, path: &str, token: Option<&str>, body: &str) -> Result<(StatusCode, serde_json::Value, String)> {
    let mut req = Request::builder().method(method).uri(path).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = f.router.clone().oneshot(req.body(Body::from(body.to_owned()))?).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok((status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null), text))
}

#[tokio::test]
async fn every_documented_operation_is_routed() -> Result {
    let f = fixture().await?;
    let doc: serde_json::Value = serde_json::from_str(berth_api::OPENAPI)?;
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    let mut checked = 0;
    for (path, ops) in paths {
        for method in ops.as_object().ok_or("bad path item")?.keys() {
            let uri = path.replace("{name}", "team%2Fweb").replace("{id}", "nope");
            let body_for_run = r#"{"image":"team/web:latest"}"#;
            let body = match (method.as_str(), path.as_str()) {
                ("post", "/api/v1/repositories") => r#"{"name":"team/web"}"#,
                ("post", "/api/v1/instances") => body_for_run,
                _ => "{}",
            };
            let (status, json, text) = call(&f, &method.to_uppercase(), &uri, Some(&f.admin), body).await?;
            // A router miss is 404/405 without our error body; a handler's error always has one.
            let routed =
                !matches!(status, StatusCode::METHOD_NOT_ALLOWED) && (status != StatusCode::NOT_FOUND || json["error"]["code"].is_string());
            assert!(routed, "{method} {path}: {status} {text}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations documented");
    Ok(())
}

#[tokio::test]
async fn authentication_and_scopes() -> Result {
    let f = fixture().await?;
    let (s, j, _) = call(&f, "GET", "/api/v1/repositories", None, "").await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")));
    let (s, j, _) = call(&f, "GET", "/api/v1/repositories", Some("berth_nope_nope"), "").await?;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(j["error"]["message"].as_str().unwrap_or("").contains("invalid, expired or revoked"));
    let (s, _, _) = call(&f, "GET", "/healthz", None, "").await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(call(&f, "GET", "/metrics", None, "").await?.0, StatusCode::UNAUTHORIZED);
    let (s, _, text) = call(&f, "GET", "/metrics", Some(&f.reader), "").await?;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("berth_http_requests_total"), "{text}");
    // read-only may read but not change or mint tokens.
    assert_eq!(call(&f, "GET", "/api/v1/repositories", Some(&f.reader), "").await?.0, StatusCode::OK);
    let (s, j, _) = call(&f, "POST", "/api/v1/tokens", Some(&f.reader), r#"{"name":"x","scopes":["admin"]}"#).await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("permission_denied")));
    Ok(())
}

#[tokio::test]
async fn repositories_and_tokens_round_trip() -> Result {
    let f = fixture().await?;
    let (s, j, _) = call(
        &f,
        "POST",
        "/api/v1/repositories",
        Some(&f.admin),
        r#"{"name":"web","tag_mutability":"IMMUTABLE_WITH_EXCLUSION","exclusions":["latest"]}"#,
    )
    .await?;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(j["tag_mutability"], "IMMUTABLE_WITH_EXCLUSION");
    let (s, j, _) = call(&f, "POST", "/api/v1/repositories", Some(&f.admin), r#"{"name":"web"}"#).await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")));
    let (s, j, _) = call(&f, "POST", "/api/v1/repositories", Some(&f.admin), r#"{"name":"Bad Name"}"#).await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_argument")));
    let (s, j, _) =
        call(&f, "PUT", "/api/v1/repositories/web/policy", Some(&f.admin), r#"{"tag_mutability":"IMMUTABLE","exclusions":["latest"]}"#)
            .await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"]["message"].as_str().unwrap_or("").contains("IMMUTABLE takes no exclusion filters"));
    let (s, j, _) =
        call(&f, "PUT", "/api/v1/repositories/web/lifecycle", Some(&f.admin), r#"{"rules":[{"type":"expire_untagged","days":7}]}"#).await?;
    assert_eq!((s, j["lifecycle"][0]["days"].as_u64()), (StatusCode::OK, Some(7)));
    let (s, _, _) = call(&f, "GET", "/api/v1/repositories/missing", Some(&f.admin), "").await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, j, _) = call(&f, "POST", "/api/v1/tokens", Some(&f.admin), r#"{"name":"ci","scopes":["push:web","pull:*"]}"#).await?;
    assert_eq!(s, StatusCode::CREATED);
    let secret = j["token"].as_str().ok_or("no secret")?.to_owned();
    let (s, j, _) = call(&f, "GET", "/api/v1/whoami", Some(&secret), "").await?;
    assert_eq!((s, j["name"].as_str()), (StatusCode::OK, Some("ci")));
    let (_, list, _) = call(&f, "GET", "/api/v1/tokens", Some(&f.admin), "").await?;
    assert!(!list.to_string().contains(&secret), "token list must not show secrets");
    let (s, j, _) = call(&f, "POST", "/api/v1/tokens", Some(&f.admin), r#"{"name":"x","scopes":["root"]}"#).await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"]["message"].as_str().unwrap_or("").contains("scope `root` is unknown"));
    Ok(())
}

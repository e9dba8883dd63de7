//! The API router called in-process (`oneshot`, no socket): every operation of the OpenAPI
//! document is routed, authentication is enforced, errors have stable codes, services answer
//! with operations.

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
    store: SharedStore,
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
    let admin = issue_token(&store, "admin", vec![Scope::Admin], false).await.map_err(|e| e.message)?.secret;
    let reader = issue_token(&store, "reader", vec![Scope::ReadOnly], false).await.map_err(|e| e.message)?.secret;
    /// Every instance is healthy: the fake runtime's addresses are never dialled.
    struct AllHealthy;
    #[async_trait::async_trait]
    impl berth_controller::Prober for AllHealthy {
        async fn probe(&self, _: &str, _: std::net::SocketAddr, _: &berth_core::service::HealthCheck) -> berth_controller::Probe {
            berth_controller::Probe::Pass
        }
    }
    let runtime: Arc<dyn berth_runtime::Runtime> = Arc::new(berth_runtime::FakeRuntime::new());
    let key = berth_secrets::KeySource::File { path: dir.path().join("master.key"), create: true };
    let secrets = Arc::new(berth_secrets::Secrets::open(store.clone(), &key).await?);
    let controller = berth_controller::Controller::start(berth_controller::Deps {
        secrets: Some(secrets.clone()),
        store: store.clone(),
        runtime: runtime.clone(),
        book: Arc::new(berth_router::RouteBook::new(Arc::new(berth_router::RoutingTable::new()))),
        prober: Arc::new(AllHealthy),
        pushes: None,
        settings: berth_controller::ControllerSettings {
            startup_probe_every: std::time::Duration::from_millis(10),
            stop_grace: std::time::Duration::from_millis(10),
            ..Default::default()
        },
    })
    .await?;
    let state = AppState {
        store: store.clone(),
        registry,
        auth: Arc::new(Authenticator::new([1; 32])),
        metrics: Arc::new(Metrics::new()),
        runtime: Some(runtime),
        images: registry_source,
        ca_pem: Arc::from("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"),
        controller: Some(controller),
        webhooks: berth_notify::Webhooks::new(store.clone(), secrets.clone()),
        secrets,
        access_log: None,
    };
    Ok(Fixture { _dir: dir, store, router: app(state), admin, reader })
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
async fn secrets_are_written_read_and_audited_by_scope() -> Result {
    let f = fixture().await?;
    let token = |name: &'static str, scopes: &'static [&'static str]| {
        let store = f.store.clone();
        async move {
            let scopes = scopes.iter().map(|s| s.parse()).collect::<std::result::Result<Vec<Scope>, _>>()?;
            Ok::<String, Box<dyn std::error::Error>>(issue_token(&store, name, scopes, false).await.map_err(|e| e.message)?.secret)
        }
    };
    let writer = token("ci-writer", &["secrets-write:db/*"]).await?;
    let app = token("app", &["secrets-read:db/*"]).await?;
    let body = r#"{"name":"db/creds","description":"guestbook","value":"{\"user\":\"gb\",\"password\":\"s3cret-one\"}"}"#;
    let (s, j, text) = call(&f, "POST", "/api/v1/secrets", Some(&writer), body).await?;
    assert_eq!(s, StatusCode::CREATED, "{text}");
    assert!(!text.contains("s3cret"), "the answer shows the value: {text}");
    let v1 = j["version"]["id"].as_str().ok_or("no version id")?.to_owned();
    assert_eq!(j["version"]["labels"], serde_json::json!(["CURRENT"]));
    assert_eq!(call(&f, "POST", "/api/v1/secrets", Some(&writer), body).await?.1["error"]["code"], "already_exists");
    let (s, _, _) = call(&f, "POST", "/api/v1/secrets", Some(&writer), r#"{"name":"other","value":"x"}"#).await?;
    assert_eq!(s, StatusCode::FORBIDDEN, "secrets-write:db/* wrote outside db/");

    // Values: only secrets-read, never read-only or the writer; listings never show them.
    let (s, j, _) = call(&f, "GET", "/api/v1/secrets/db%2Fcreds/value?key=password", Some(&app), "").await?;
    assert_eq!((s, j["value"].as_str(), j["version"].as_str()), (StatusCode::OK, Some("s3cret-one"), Some(v1.as_str())));
    for who in [&f.reader, &writer] {
        assert_eq!(call(&f, "GET", "/api/v1/secrets/db%2Fcreds/value", Some(who), "").await?.0, StatusCode::FORBIDDEN);
    }
    for path in ["/api/v1/secrets", "/api/v1/secrets/db%2Fcreds", "/api/v1/secrets/db%2Fcreds/audit"] {
        let (s, _, text) = call(&f, "GET", path, Some(&f.reader), "").await?;
        assert_eq!(s, StatusCode::OK, "{path}: {text}");
        assert!(!text.contains("s3cret"), "{path} shows the value: {text}");
    }

    // A pending version, CURRENT moved to it, the old one PREVIOUS.
    let (s, j, _) = call(
        &f,
        "POST",
        "/api/v1/secrets/db%2Fcreds/versions",
        Some(&writer),
        r#"{"value":"{\"password\":\"two\"}","labels":["PENDING"]}"#,
    )
    .await?;
    assert_eq!(s, StatusCode::CREATED);
    let v2 = j["version"]["id"].as_str().ok_or("no version id")?.to_owned();
    let moved = format!(r#"{{"label":"CURRENT","version":"{v2}"}}"#);
    let (s, j, _) = call(&f, "POST", "/api/v1/secrets/db%2Fcreds/labels", Some(&writer), &moved).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["versions"][1]["labels"], serde_json::json!(["PREVIOUS"]));
    let (_, j, _) = call(&f, "GET", "/api/v1/secrets/db%2Fcreds/value?label=PREVIOUS&key=password", Some(&app), "").await?;
    assert_eq!(j["value"], "s3cret-one");
    let (s, j, _) = call(&f, "GET", "/api/v1/secrets/db%2Fcreds/value?key=user", Some(&app), "").await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    // Deleted: unreadable until restored.
    let (s, _, _) = call(&f, "DELETE", "/api/v1/secrets/db%2Fcreds?recovery_days=3", Some(&writer), "").await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, j, _) = call(&f, "DELETE", "/api/v1/secrets/db%2Fcreds?recovery_days=7", Some(&writer), "").await?;
    assert_eq!((s, j["purge_at"].is_i64()), (StatusCode::OK, true));
    let (s, j, _) = call(&f, "GET", "/api/v1/secrets/db%2Fcreds/value", Some(&app), "").await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("failed_precondition")));
    assert_eq!(call(&f, "POST", "/api/v1/secrets/db%2Fcreds/restore", Some(&writer), "").await?.0, StatusCode::OK);

    // A secret a service runs with cannot be deleted; the refusal names the service.
    f.store.ensure_repository("web", &Default::default(), 0).await?;
    f.store.put_manifest(&manifest("web", b"m"), Some(berth_store::TagWrite { tag: "latest", immutable: false }), 0).await?;
    let svc = r#"{"name":"web-app","source":{"image":"web:latest"},"image_config":{"secret_env":{"DB_PASSWORD":"db/creds#password"}}}"#;
    let (s, _, text) = call(&f, "POST", "/api/v1/services", Some(&f.admin), svc).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{text}");
    let mut refused = None;
    for _ in 0..100 {
        let (s, j, _) = call(&f, "DELETE", "/api/v1/secrets/db%2Fcreds?recovery_days=7", Some(&writer), "").await?;
        if s == StatusCode::CONFLICT {
            refused = j["error"]["message"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = refused.ok_or("a secret in use was deleted")?;
    assert!(refused.contains("`web-app`"), "{refused}");

    // The audit trail names who did what to which version.
    let (_, j, _) = call(&f, "GET", "/api/v1/secrets/db%2Fcreds/audit", Some(&f.reader), "").await?;
    let entries: Vec<(String, String)> = j["entries"]
        .as_array()
        .ok_or("no entries")?
        .iter()
        .map(|e| (e["actor"].as_str().unwrap_or("").to_owned(), e["action"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert!(entries.contains(&("app".into(), "read".into())), "{entries:?}");
    assert!(entries.contains(&("ci-writer".into(), "label CURRENT".into())), "{entries:?}");
    assert_eq!(entries.last(), Some(&("ci-writer".to_owned(), "create".to_owned())));
    Ok(())
}

/// Rotation through the API: set up and started by a writer that may read the admin secret;
/// one at a time; bad configurations refused with what to change; cancelled before CURRENT moves.
#[tokio::test]
async fn secret_rotation_is_set_up_started_and_cancelled() -> Result {
    let f = fixture().await?;
    let scopes = ["secrets-write:db/*".parse()?];
    let writer = issue_token(&f.store, "ci-writer", scopes.to_vec(), false).await.map_err(|e| e.message)?.secret;
    let both = issue_token(&f.store, "rotator", vec!["secrets-write:db/*".parse()?, "secrets-read:db/*".parse()?], false)
        .await
        .map_err(|e| e.message)?
        .secret;
    for body in [
        r#"{"name":"db/creds","value":"{\"username\":\"gb\",\"password\":\"pw\"}"}"#,
        r#"{"name":"db/admin","value":"{\"username\":\"root\",\"password\":\"rootpw\"}"}"#,
    ] {
        assert_eq!(call(&f, "POST", "/api/v1/secrets", Some(&both), body).await?.0, StatusCode::CREATED);
    }
    let rotate = "/api/v1/secrets/db%2Fcreds/rotate";
    let (s, j, _) = call(&f, "POST", rotate, Some(&writer), "{}").await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"]["message"].as_str().unwrap_or("").contains("no rotation set up"), "{j}");
    let config = r#"{"rotation":{"rotator":"mariadb","strategy":"alternating-users","admin_secret":"db/admin","schedule":"every 4h"}}"#;
    assert_eq!(call(&f, "POST", rotate, Some(&writer), config).await?.0, StatusCode::FORBIDDEN, "the writer cannot read the admin secret");
    for (bad, status, says) in [
        (r#"{"rotation":{"rotator":"mysql","strategy":"alternating-users"}}"#, StatusCode::BAD_REQUEST, "needs an admin secret"),
        (r#"{"rotation":{"rotator":"mysql","schedule":"every 5s"}}"#, StatusCode::BAD_REQUEST, "shortest interval is 1 minute"),
        (r#"{"rotation":{"rotator":"oracle"}}"#, StatusCode::UNPROCESSABLE_ENTITY, "unknown variant `oracle`"),
    ] {
        let (s, j, text) = call(&f, "POST", rotate, Some(&both), bad).await?;
        assert_eq!(s, status, "{bad}: {text}");
        assert!(j["error"]["message"].as_str().unwrap_or("").contains(says), "{bad}: {text}");
    }
    let (s, j, text) = call(&f, "POST", rotate, Some(&both), config).await?;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert_eq!(j["rotation"]["config"]["rotator"], "mysql");
    assert_eq!(j["rotation"]["enabled"], true);
    assert_eq!(j["rotation"]["status"]["step"], "create_secret");
    assert!(j["rotation"]["status"]["next_at"].is_i64(), "{j}");
    assert!(!text.contains("rootpw") && !text.contains("\"pw"), "{text}");
    let (s, j, _) = call(&f, "POST", rotate, Some(&both), "{}").await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("failed_precondition")), "one rotation at a time");
    let (s, j, _) = call(&f, "POST", "/api/v1/secrets/db%2Fcreds/cancel-rotation", Some(&writer), "").await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((j["rotation"]["enabled"].as_bool(), j["rotation"]["status"].get("step")), (Some(false), None));
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
    // Nothing reads a body before the caller is known: no schema details for strangers.
    for (method, path, body) in
        [("POST", "/api/v1/repositories", "{not json"), ("POST", "/api/v1/services", r#"{"name":1}"#), ("PUT", "/api/v1/services/x", "")]
    {
        let (s, j, _) = call(&f, method, path, None, body).await?;
        assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthenticated")), "{method} {path}");
    }
    assert_eq!(call(&f, "GET", "/api/v1/openapi.json", None, "").await?.0, StatusCode::UNAUTHORIZED);
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

/// A manifest record of `repository` whose digest is that of `seed`.
fn manifest(repository: &str, seed: &[u8]) -> berth_store::ManifestRecord {
    berth_store::ManifestRecord {
        repository: repository.into(),
        digest: berth_core::Digest::sha256_of(seed),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 1,
        artifact_type: None,
        subject: None,
        annotations: None,
        references: vec![],
        created_at: 0,
    }
}

/// Follows `next` from page to page and returns every item under `key`.
async fn all_pages(f: &Fixture, path: &str, key: &str, limit: usize) -> Result<Vec<serde_json::Value>> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100 {
        let cursor = after.as_deref().map(|a| format!("&after={a}")).unwrap_or_default();
        let (s, page, text) = call(f, "GET", &format!("{path}?limit={limit}{cursor}"), Some(&f.admin), "").await?;
        assert_eq!(s, StatusCode::OK, "{text}");
        let got = page[key].as_array().ok_or("no items")?;
        assert!(got.len() <= limit, "a page holds more than its limit");
        items.extend(got.iter().cloned());
        after = match &page["next"] {
            serde_json::Value::Null => return Ok(items),
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
    }
    Err("pagination did not end".into())
}

#[tokio::test]
async fn every_list_is_paginated() -> Result {
    let f = fixture().await?;
    f.store.ensure_repository("web", &Default::default(), 0).await?;
    for i in 0..7u8 {
        f.store.put_manifest(&manifest("web", &[i]), Some(berth_store::TagWrite { tag: &format!("v{i}"), immutable: false }), 0).await?;
    }
    let tags: Vec<_> = all_pages(&f, "/api/v1/repositories/web/tags", "tags", 3).await?.iter().map(|t| t["tag"].to_string()).collect();
    assert_eq!(tags.len(), 7);
    let events = all_pages(&f, "/api/v1/repositories/web/events", "events", 2).await?;
    assert_eq!(events.len(), 7);
    for i in 0..3 {
        call(&f, "POST", "/api/v1/tokens", Some(&f.admin), &format!(r#"{{"name":"t{i}","scopes":["read-only"]}}"#)).await?;
    }
    let tokens = all_pages(&f, "/api/v1/tokens", "tokens", 2).await?;
    let mut ids: Vec<_> = tokens.iter().map(|t| t["id"].to_string()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every token once");
    let (s, j, _) = call(&f, "GET", "/api/v1/tokens?after=zz&limit=5000", Some(&f.admin), "").await?;
    assert_eq!((s, j["tokens"].as_array().map(Vec::len), &j["next"]), (StatusCode::OK, Some(0), &serde_json::Value::Null));
    Ok(())
}

#[tokio::test]
async fn services_answer_with_operations() -> Result {
    let f = fixture().await?;
    f.store.ensure_repository("web", &Default::default(), 0).await?;
    f.store.put_manifest(&manifest("web", b"m"), Some(berth_store::TagWrite { tag: "latest", immutable: false }), 0).await?;

    // Invalid specs name every problem; unknown fields are refused.
    let (s, j, _) = call(
        &f,
        "POST",
        "/api/v1/services",
        Some(&f.admin),
        r#"{"name":"ab","source":{"image":"web:latest"},"autoscaling":{"max_size":99}}"#,
    )
    .await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_argument")));
    let msg = j["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("name `ab`") && msg.contains("autoscaling.max_size must be 1–25 (got 99)"), "{msg}");
    let (s, j, _) =
        call(&f, "POST", "/api/v1/services", Some(&f.admin), r#"{"name":"web-app","source":{"image":"web:latest"},"color":1}"#).await?;
    assert!(s.is_client_error());
    // Every error has the envelope, with the parser's own words.
    assert_eq!(j["error"]["code"], "invalid_argument");
    assert!(j["error"]["message"].as_str().is_some_and(|m| m.contains("unknown field `color`")), "{j}");
    // Read-only tokens cannot create.
    let body = r#"{"name":"web-app","source":{"image":"web:latest"},"health_check":{"protocol":"HTTP","path":"/healthz"},"image_config":{"env":{"DB_PASSWORD":"s3cret"}}}"#;
    assert_eq!(call(&f, "POST", "/api/v1/services", Some(&f.reader), body).await?.0, StatusCode::FORBIDDEN);

    let (s, j, text) = call(&f, "POST", "/api/v1/services", Some(&f.admin), body).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{text}");
    assert_eq!(j["operation"]["type"], "CREATE_SERVICE");
    let id = j["operation"]["id"].as_str().ok_or("no id")?.to_owned();
    let mut status = String::new();
    for _ in 0..200 {
        let (_, op, _) = call(&f, "GET", &format!("/api/v1/operations/{id}"), Some(&f.reader), "").await?;
        status = op["status"].as_str().unwrap_or("").to_owned();
        if status == "SUCCEEDED" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "SUCCEEDED");
    let (s, svc, _) = call(&f, "GET", "/api/v1/services/web-app", Some(&f.reader), "").await?;
    assert_eq!((s, svc["status"].as_str(), svc["url"].as_str()), (StatusCode::OK, Some("RUNNING"), Some("https://web-app.localhost:8443")));
    assert_eq!(svc["current_revision"]["id"], "web-app-0001");
    assert_eq!(svc["current_revision"]["tags"], serde_json::json!(["latest"]));
    assert_eq!(svc["spec"]["health_check"]["interval"], 5, "defaults are filled in");
    // Environment values are for tokens that may change the service.
    assert!(!svc.to_string().contains("s3cret"), "a read-only token read an env value");
    assert!(svc["spec"]["image_config"]["env"]["DB_PASSWORD"].as_str().is_some_and(|v| v.starts_with("(hidden")));
    let (_, revs, _) = call(&f, "GET", "/api/v1/services/web-app/revisions", Some(&f.reader), "").await?;
    assert!(!revs.to_string().contains("s3cret"));
    let (_, all, _) = call(&f, "GET", "/api/v1/services", Some(&f.reader), "").await?;
    assert!(!all.to_string().contains("s3cret"));
    let (_, svc_admin, _) = call(&f, "GET", "/api/v1/services/web-app", Some(&f.admin), "").await?;
    assert_eq!(svc_admin["spec"]["image_config"]["env"]["DB_PASSWORD"], "s3cret");
    let (_, revs, _) = call(&f, "GET", "/api/v1/services/web-app/revisions", Some(&f.reader), "").await?;
    assert_eq!(revs["current"], 1);
    assert_eq!(call(&f, "POST", "/api/v1/services", Some(&f.admin), body).await?.0, StatusCode::CONFLICT);

    // A second mutation while one runs is refused with 409 naming it.
    let (s, j, _) = call(&f, "POST", "/api/v1/services/web-app/pause", Some(&f.admin), "").await?;
    assert_eq!(s, StatusCode::ACCEPTED);
    let pausing = j["operation"]["id"].as_str().unwrap_or("").to_owned();
    let (s, j, _) = call(&f, "POST", "/api/v1/services/web-app/deployments", Some(&f.admin), "{}").await?;
    assert_eq!(s, StatusCode::CONFLICT);
    let msg = j["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(&pausing) || msg.contains("paused"), "{msg}");
    let (s, j, _) = call(&f, "POST", "/api/v1/services/web-app/rollback", Some(&f.admin), r#"{"revision":"web-app-0009"}"#).await?;
    assert!(s == StatusCode::BAD_REQUEST || s == StatusCode::CONFLICT, "{s} {j}");
    let (_, events, _) = call(&f, "GET", "/api/v1/services/web-app/events", Some(&f.reader), "").await?;
    assert!(events["events"].as_array().is_some_and(|e| !e.is_empty()));
    assert_eq!(call(&f, "GET", "/api/v1/services/nope", Some(&f.reader), "").await?.0, StatusCode::NOT_FOUND);
    Ok(())
}

/// Waits until operation `id` has ended; its final status.
async fn finished(f: &Fixture, id: &str) -> Result<String> {
    for _ in 0..300 {
        let (_, op, _) = call(f, "GET", &format!("/api/v1/operations/{id}"), Some(&f.reader), "").await?;
        let status = op["status"].as_str().unwrap_or("").to_owned();
        if !matches!(status.as_str(), "PENDING" | "IN_PROGRESS") {
            return Ok(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(format!("operation {id} did not end").into())
}

#[tokio::test]
async fn networks_are_checked_named_by_services_and_kept_while_used() -> Result {
    let f = fixture().await?;
    f.store.ensure_repository("web", &Default::default(), 0).await?;
    f.store.put_manifest(&manifest("web", b"m"), Some(berth_store::TagWrite { tag: "latest", immutable: false }), 0).await?;
    let post = |body: &'static str| call(&f, "POST", "/api/v1/networks", Some(&f.admin), body);

    let (s, j, text) =
        post(r#"{"name":"db","cidr":"10.90.0.0/24","host_endpoints":{"mysql":"127.0.0.1:3306"},"hosts":{"mariadb":"10.90.0.10"}}"#).await?;
    assert_eq!(s, StatusCode::CREATED, "{text}");
    assert_eq!((j["cidr"].as_str(), j["host_endpoints"]["mysql"].as_str()), (Some("10.90.0.0/24"), Some("127.0.0.1:3306")));
    // Read-only tokens cannot create; names are unique; every problem is named.
    assert_eq!(
        call(&f, "POST", "/api/v1/networks", Some(&f.reader), r#"{"name":"x1","cidr":"10.91.0.0/24"}"#).await?.0,
        StatusCode::FORBIDDEN
    );
    let (s, j, _) = post(r#"{"name":"db","cidr":"10.95.0.0/24"}"#).await?;
    assert_eq!((s, j["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("already_exists")));
    let (s, j, _) = post(r#"{"name":"Bad!","cidr":"10.95.0.0/24","hosts":{"x":"10.1.1.1"}}"#).await?;
    let msg = j["error"]["message"].as_str().unwrap_or("");
    assert!(s == StatusCode::BAD_REQUEST && msg.contains("name `Bad!`") && msg.contains("not in the network's CIDR"), "{s} {msg}");
    let (s, j, _) = post(r#"{"name":"db2","cidr":"10.99.0.0/33"}"#).await?;
    assert!(s.is_client_error() && j["error"]["message"].as_str().is_some_and(|m| m.contains("not an IPv4 CIDR")), "{j}");
    // Overlaps with another network, the instance CIDR and a host endpoint's port are refused, named.
    let (s, j, _) = post(r#"{"name":"db2","cidr":"10.90.0.128/25","host_endpoints":{"pg":"127.0.0.1:3306"}}"#).await?;
    let msg = j["error"]["message"].as_str().unwrap_or("");
    assert_eq!(s, StatusCode::CONFLICT, "{msg}");
    assert!(msg.contains("overlaps network `db` (10.90.0.0/24)") && msg.contains("port 3306"), "{msg}");
    let (s, j, _) = post(r#"{"name":"inst","cidr":"10.88.4.0/24"}"#).await?;
    assert!(s == StatusCode::CONFLICT && j["error"]["message"].as_str().is_some_and(|m| m.contains("instance CIDR")), "{j}");

    // A service may name only networks that exist.
    let spec = |nets: &str| {
        format!(
            r#"{{"name":"guestbook","source":{{"image":"web:latest"}},"network":{{"networks":[{nets}],"egress":"networks","visibility":"private","allow_from":["web-app"]}}}}"#
        )
    };
    let (s, j, _) = call(&f, "POST", "/api/v1/services", Some(&f.admin), &spec(r#""db","cache""#)).await?;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(j["error"]["message"].as_str().is_some_and(|m| m.contains("no network named `cache`")), "{j}");
    let (s, j, text) = call(&f, "POST", "/api/v1/services", Some(&f.admin), &spec(r#""db""#)).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{text}");
    assert_eq!(finished(&f, j["operation"]["id"].as_str().unwrap_or("")).await?, "SUCCEEDED");
    let (_, svc, _) = call(&f, "GET", "/api/v1/services/guestbook", Some(&f.reader), "").await?;
    assert_eq!(
        (svc["spec"]["network"]["egress"].as_str(), svc["spec"]["network"]["visibility"].as_str()),
        (Some("networks"), Some("private"))
    );

    // In use: not deleted, and the services are named.
    let (_, j, _) = call(&f, "GET", "/api/v1/networks/db", Some(&f.reader), "").await?;
    assert_eq!(j["services"], serde_json::json!(["guestbook"]));
    let (s, j, _) = call(&f, "DELETE", "/api/v1/networks/db", Some(&f.admin), "").await?;
    assert!(s == StatusCode::CONFLICT && j["error"]["message"].as_str().is_some_and(|m| m.contains("in use by `guestbook`")), "{j}");
    let (_, j, _) = call(&f, "GET", "/api/v1/networks", Some(&f.reader), "").await?;
    assert_eq!(j["networks"].as_array().map(Vec::len), Some(1));

    // Detached by an update, it can go.
    let detached = r#"{"name":"guestbook","source":{"image":"web:latest"}}"#;
    let (s, j, text) = call(&f, "PUT", "/api/v1/services/guestbook", Some(&f.admin), detached).await?;
    assert_eq!(s, StatusCode::ACCEPTED, "{text}");
    assert_eq!(finished(&f, j["operation"]["id"].as_str().unwrap_or("")).await?, "SUCCEEDED");
    assert_eq!(call(&f, "DELETE", "/api/v1/networks/db", Some(&f.admin), "").await?.0, StatusCode::NO_CONTENT);
    let (s, j, _) = call(&f, "GET", "/api/v1/networks/db", Some(&f.reader), "").await?;
    assert_eq!((s, j["error"]["message"].as_str()), (StatusCode::NOT_FOUND, Some("network `db` does not exist")));
    Ok(())
}

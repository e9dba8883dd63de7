//! berth's web console: pages rendered on the server (maud, compiled in; the stylesheet is
//! embedded, nothing is fetched at run time) on the API listener under `/console`. A person logs
//! in with an API token and gets a session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS);
//! every form carries the session's anti-forgery value; the pages act with the token's scopes — a
//! read-only token sees no control that changes anything, and the server refuses such changes.
//! Pages work without JavaScript.
//!
//! Invariant: the console calls the api crate's services (the controller and store it holds) and
//! nothing else; every rule stays there.

mod chart;
mod pages;
mod settings;

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use berth_api::auth::{session_cookie, SESSION_COOKIE, SESSION_TTL_SECS};
use berth_api::{AppState, Caller, Session};
use berth_core::{Action, Principal};
use maud::Markup;
use serde::Deserialize;

/// The console's routes, for [`berth_api::app_with`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(|| async { Redirect::to("/console/services") }))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/services", get(services))
        .route("/console/new", get(new_page).post(create))
        .route("/console/registry", get(registry))
        .route("/console/registry/{*name}", get(repository))
        .route("/console/tokens", get(tokens).post(create_token))
        .route("/console/secrets", get(secrets))
        .route("/console/networks", get(networks))
        .route("/console/webhooks", get(webhooks).post(create_webhook))
        .route("/console/webhooks/{name}/{action}", post(webhook_action))
        .route("/console/tokens/{id}/revoke", post(revoke_token))
        .route("/console/services/{name}", get(service))
        .route("/console/services/{name}/settings", get(settings_page).post(save_settings))
        .route("/console/services/{name}/logs", get(logs))
        .route("/console/services/{name}/logs/live", get(live_logs))
        .route("/console/services/{name}/requests", get(requests))
        .route("/console/operations/{id}", get(operation))
        .route("/console/services/{name}/{action}", post(act))
        .layer(axum::middleware::from_fn(gzip))
}

/// Compresses pages, the stylesheet and the script for browsers that take gzip (the live log
/// stream stays as it is).
async fn gzip(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let takes_gzip = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|e| e.split(';').next().is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"))));
    let resp = next.run(req).await;
    let kind = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let compressible = ["text/html", "text/css", "text/javascript"].iter().any(|k| kind.starts_with(k));
    if !takes_gzip || !compressible || resp.headers().contains_key(header::CONTENT_ENCODING) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be read").into_response();
    };
    let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(bytes.len() / 4), flate2::Compression::fast());
    let zipped = std::io::Write::write_all(&mut z, &bytes).and_then(|()| z.finish());
    let Ok(zipped) = zipped else { return Response::from_parts(parts, axum::body::Body::from(bytes)) };
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts.headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(zipped))
}

const STYLESHEET: &str = include_str!("../assets/console.css");
/// The one script: it follows live logs. Every page works without it.
const SCRIPT: &str = include_str!("../assets/console.js");

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript"), (header::CACHE_CONTROL, "max-age=3600")], SCRIPT).into_response()
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css"), (header::CACHE_CONTROL, "max-age=3600")], STYLESHEET).into_response()
}

/// An HTML page with the console's security headers: nothing but its own stylesheet loads, it
/// is never framed, and it is not cached.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Who is logged in, or the way to the login page.
struct Viewer {
    principal: Principal,
    session: Session,
}

/// Pages and forms take a [`Viewer`]: without a session, the browser goes to the login page.
impl axum::extract::FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await.map_err(IntoResponse::into_response)?;
        let session = parts.extensions.get::<Session>().cloned().map(Extension);
        Viewer::of(&caller, session).ok_or_else(to_login)
    }
}

impl Viewer {
    fn of(caller: &Caller, session: Option<Extension<Session>>) -> Option<Viewer> {
        match (caller.authenticated(), session) {
            (Ok(principal), Some(Extension(session))) => Some(Viewer { principal, session }),
            _ => None,
        }
    }

    /// Whether the token may change services (and so sees the controls that do).
    fn may_change(&self) -> bool {
        self.principal.allows(Action::Admin)
    }
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

/// Whether the request came over HTTPS (directly or through a proxy that says so).
fn https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"))
}

fn cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("berth_session=; Max-Age=0"))
}

async fn login_page(caller: Caller, session: Option<Extension<Session>>) -> Response {
    if Viewer::of(&caller, session).is_some() {
        return Redirect::to("/console/services").into_response();
    }
    page(StatusCode::OK, pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): State<AppState>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    match s.auth.open_session(&s.store, &form.token).await {
        Ok(Some((secret, principal, _))) => {
            tracing::info!(token = %principal.token_name, "console login");
            let mut resp = Redirect::to("/console/services").into_response();
            resp.headers_mut().insert(header::SET_COOKIE, cookie(&secret, SESSION_TTL_SECS, https(&headers)));
            resp
        }
        Ok(None) => page(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("That token is not valid: it is mistyped, revoked, or of another server. `berth token create` makes one.")),
        ),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(s): State<AppState>, headers: HeaderMap, viewer: Viewer, Form(form): Form<CsrfForm>) -> Response {
    if !viewer.session.csrf_matches(&form.csrf) {
        return forbidden_form();
    }
    if let Some(value) = session_cookie(&headers) {
        if let Err(e) = s.auth.close_session(&s.store, &value).await {
            return e.into_response();
        }
    }
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie("", 0, https(&headers)));
    resp
}

fn forbidden_form() -> Response {
    page(
        StatusCode::FORBIDDEN,
        pages::message(
            "Form refused",
            "This form did not come from your console session (or the session changed). Reload the page and try again.",
        ),
    )
}

async fn services(State(s): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::message("Services are off", "Services need the embedded runtime: run `berth server` as root."),
        );
    };
    let list = match c.list(None, 1000).await {
        Ok(l) => l,
        Err(e) => return berth_api::ApiError::from(e).into_response(),
    };
    // Requests per second and p99 over the last five minutes, from the history kept in memory.
    let rows: Vec<_> = list
        .into_iter()
        .map(|v| {
            let slot = c.recent(&v.name, 300);
            (v, slot)
        })
        .collect();
    page(StatusCode::OK, pages::services(&viewer.principal, &viewer.session, &rows))
}

async fn service(State(s): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    let view = match c.get(&name).await {
        Ok(v) => v,
        Err(berth_controller::ControllerError::NotFound(_)) => {
            return page(StatusCode::NOT_FOUND, pages::message("No such service", &format!("There is no service named `{name}`.")));
        }
        Err(e) => return berth_api::ApiError::from(e).into_response(),
    };
    let now = berth_api::now().max(0) as u64;
    let metrics = c.metrics(&name, now.saturating_sub(3600), now, Some(60)).await.ok();
    let revisions = c.revisions(&name).await.unwrap_or_default();
    let operations = c.operations(&name, None, 10).await.unwrap_or_default();
    let events = c.events(&name, None, 20).await.unwrap_or_default();
    let data = pages::ServicePage {
        view: &view,
        metrics: metrics.as_ref(),
        revisions: &revisions,
        operations: &operations,
        events: &events,
        may_change: viewer.may_change(),
    };
    page(StatusCode::OK, pages::service(&viewer.principal, &viewer.session, &data))
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    /// For a rollback: the revision to go back to.
    revision: Option<String>,
    /// For a delete: the service's name typed again.
    confirm: Option<String>,
}

/// A change from a service page's buttons: deploy (the watched tag again), rollback, pause,
/// resume, delete.
async fn act(
    State(s): State<AppState>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let viewer = match changer(viewer, Some(&form.csrf)) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    let c = &c.acting_as(&viewer.principal.token_name);
    // Pausing and resuming change what clients get: a page asks first (the form then says so).
    if matches!(action.as_str(), "pause" | "resume") && form.confirm.as_deref() != Some("yes") {
        return page(StatusCode::OK, pages::confirm(&viewer.principal, &viewer.session, &name, &action));
    }
    let done = match action.as_str() {
        "deploy" => c.deploy(&name, None).await,
        "rollback" => c.rollback(&name, form.revision.as_deref().unwrap_or_default()).await,
        "pause" => c.pause(&name).await,
        "resume" => c.resume(&name).await,
        "delete" if form.confirm.as_deref() == Some(name.as_str()) => c.delete(&name).await,
        "delete" => {
            let why = format!("To delete `{name}`, type its name in the box next to the button.");
            return page(StatusCode::UNPROCESSABLE_ENTITY, pages::message("Not deleted", &why));
        }
        _ => return page(StatusCode::NOT_FOUND, pages::message("No such action", &format!("`{action}` is not something a service does."))),
    };
    match done {
        Ok(op) => {
            tracing::info!(service = %name, operation = %op.id, token = %viewer.principal.token_name, "console: {action}");
            let to = if action == "delete" { "/console/services".to_owned() } else { format!("/console/services/{name}") };
            Redirect::to(&to).into_response()
        }
        Err(e) => page(StatusCode::CONFLICT, pages::message("Not done", &e.to_string())),
    }
}

async fn settings_page(State(s): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    let view = match c.get(&name).await {
        Ok(v) => v,
        Err(e) => return page(StatusCode::NOT_FOUND, pages::message("No such service", &e.to_string())),
    };
    let values = settings::Values::of(&view.spec, !viewer.may_change());
    let p = pages::SettingsPage { name: Some(&name), values: &values, errors: &[], may_change: viewer.may_change() };
    page(StatusCode::OK, pages::settings(&viewer.principal, &viewer.session, &p))
}

/// The validation messages of a refused spec, each with the field it names.
fn spec_errors(e: &berth_controller::ControllerError) -> Vec<(String, String)> {
    match e {
        berth_controller::ControllerError::Invalid(spec) => {
            spec.0.iter().map(|m| (settings::field_of(m).unwrap_or("").to_owned(), m.clone())).collect()
        }
        other => vec![(String::new(), other.to_string())],
    }
}

async fn save_settings(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(mut form): Form<HashMap<String, String>>,
) -> Response {
    let viewer = match changer(viewer, form.remove("csrf").as_deref()) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    let current = match c.get(&name).await {
        Ok(v) => v.spec,
        Err(e) => return page(StatusCode::NOT_FOUND, pages::message("No such service", &e.to_string())),
    };
    let label = name.clone();
    let c = &c.acting_as(&viewer.principal.token_name);
    save_form(&viewer, Some(&name), settings::Values(form), &current, |spec| async move { c.update(spec).await }, &label).await
}

/// A page a token that may not read services asked for (a push-only CI token, say).
fn not_reader(viewer: &Viewer) -> Response {
    let why = format!("Token `{}` may not read services; the registry pages show what it may pull.", viewer.principal.token_name);
    page(StatusCode::FORBIDDEN, pages::message("Not allowed", &why))
}

fn read_only(viewer: &Viewer) -> Response {
    Refused::ReadOnly(viewer.principal.token_name.clone()).into_response()
}

/// Why a form that changes something is not carried out.
enum Refused {
    /// The form did not carry the session's anti-forgery value.
    Forged,
    /// The token (named) may only read.
    ReadOnly(String),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Forged => forbidden_form(),
            Refused::ReadOnly(token) => {
                let why = format!("Token `{token}` may only read; changing services needs an admin token.");
                page(StatusCode::FORBIDDEN, pages::message("Not allowed", &why))
            }
        }
    }
}

/// The viewer behind a form that changes something: logged in, the form from their session
/// (`csrf`), and a token that may change services.
fn changer(viewer: Viewer, csrf: Option<&str>) -> Result<Viewer, Refused> {
    if !csrf.is_some_and(|c| viewer.session.csrf_matches(c)) {
        return Err(Refused::Forged);
    }
    if !viewer.may_change() {
        return Err(Refused::ReadOnly(viewer.principal.token_name.clone()));
    }
    Ok(viewer)
}

#[derive(Deserialize)]
struct NewQuery {
    image: Option<String>,
}

/// The spec a new service starts from: App Runner's defaults, with `image`.
fn new_spec(name: &str, image: &str) -> Option<berth_core::ServiceSpec> {
    serde_json::from_value(serde_json::json!({ "name": name, "source": { "image": image } })).ok()
}

async fn new_page(viewer: Viewer, Query(q): Query<NewQuery>) -> Response {
    if !viewer.may_change() {
        return read_only(&viewer);
    }
    let Some(spec) = new_spec("", q.image.as_deref().unwrap_or_default()) else { return to_login() };
    let values = settings::Values::of(&spec, false);
    let p = pages::SettingsPage { name: None, values: &values, errors: &[], may_change: true };
    page(StatusCode::OK, pages::settings(&viewer.principal, &viewer.session, &p))
}

async fn create(State(s): State<AppState>, viewer: Viewer, Form(mut form): Form<HashMap<String, String>>) -> Response {
    let viewer = match changer(viewer, form.remove("csrf").as_deref()) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    let name = form.get("name").map(|n| n.trim().to_owned()).unwrap_or_default();
    let Some(base) = new_spec(&name, "") else { return forbidden_form() };
    let c = &c.acting_as(&viewer.principal.token_name);
    save_form(&viewer, None, settings::Values(form), &base, |spec| async move { c.create(spec).await }, &name).await
}

/// Applies a settings form to `base` and hands the spec to `save` (create or update): on to the
/// service's page, or the form again with the errors next to their fields.
async fn save_form<F, Fut>(
    viewer: &Viewer,
    name: Option<&str>,
    values: settings::Values,
    base: &berth_core::ServiceSpec,
    save: F,
    service: &str,
) -> Response
where
    F: FnOnce(berth_core::ServiceSpec) -> Fut,
    Fut: std::future::Future<Output = Result<berth_controller::Operation, berth_controller::ControllerError>>,
{
    let refused = |errors: Vec<(String, String)>| {
        let p = pages::SettingsPage { name, values: &values, errors: &errors, may_change: true };
        page(StatusCode::UNPROCESSABLE_ENTITY, pages::settings(&viewer.principal, &viewer.session, &p))
    };
    let spec = match values.apply(base) {
        Ok(spec) => spec,
        Err(errors) => return refused(errors),
    };
    match save(spec).await {
        Ok(op) => {
            tracing::info!(service = %service, operation = %op.id, token = %viewer.principal.token_name, "console: settings saved");
            Redirect::to(&format!("/console/services/{service}")).into_response()
        }
        Err(e) => refused(spec_errors(&e)),
    }
}

async fn registry(State(s): State<AppState>, viewer: Viewer) -> Response {
    let repos = match s.registry.repositories(None, 10_000).await {
        Ok(r) => r,
        Err(e) => return page(StatusCode::INTERNAL_SERVER_ERROR, pages::message("Registry unavailable", &e.to_string())),
    };
    let mut rows = Vec::new();
    for r in repos.into_iter().filter(|r| viewer.principal.allows(Action::Pull(&r.name))) {
        let tags = s.registry.tag_count(&r.name).await.unwrap_or(0);
        rows.push((r, tags));
    }
    page(StatusCode::OK, pages::registry(&viewer.principal, &viewer.session, &rows))
}

async fn repository(State(s): State<AppState>, viewer: Viewer, Path(name): Path<String>) -> Response {
    let missing =
        || page(StatusCode::NOT_FOUND, pages::message("No such repository", &format!("There is no repository `{name}` you may read.")));
    if !viewer.principal.allows(Action::Pull(&name)) {
        return missing();
    }
    let Ok(repo) = s.registry.repository(&name).await else { return missing() };
    let mut tags = Vec::new();
    for tag in s.registry.tags(&name, None, 1000).await.unwrap_or_default() {
        let size = image_size(&s, &name, &tag.digest).await;
        tags.push(pages::TagRow { tag, size });
    }
    tags.sort_by_key(|t| std::cmp::Reverse(t.tag.updated_at));
    let events = s.registry.events(Some(&name), 0, 10_000).await.unwrap_or_default();
    let recent = &events[events.len().saturating_sub(50)..];
    page(StatusCode::OK, pages::repository(&viewer.principal, &viewer.session, &repo, &tags, recent, viewer.may_change()))
}

/// A manifest's size with the blobs it references (config and layers, or child manifests).
async fn image_size(s: &AppState, repository: &str, digest: &berth_core::Digest) -> u64 {
    let Ok(Some(m)) = s.store.get_manifest(repository, digest).await else { return 0 };
    let mut total = m.size;
    for r in &m.references {
        total += s.store.linked_blob(repository, r).await.ok().flatten().unwrap_or(0);
    }
    total
}

async fn tokens(State(s): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.may_change() {
        return read_only(&viewer);
    }
    token_page(&s, &viewer, StatusCode::OK, None, None).await
}

async fn token_page(s: &AppState, viewer: &Viewer, status: StatusCode, created: Option<(&str, &str)>, error: Option<&str>) -> Response {
    let mut list = s.store.list_tokens().await.unwrap_or_default();
    list.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    page(status, pages::tokens(&viewer.principal, &viewer.session, &list, created, error))
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
    scopes: String,
}

async fn create_token(State(s): State<AppState>, viewer: Viewer, Form(form): Form<TokenForm>) -> Response {
    let viewer = match changer(viewer, Some(&form.csrf)) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let name = form.name.trim();
    let scopes: Result<Vec<berth_core::Scope>, String> = form
        .scopes
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e: berth_core::ScopeError| e.to_string()))
        .collect();
    let problem = match &scopes {
        _ if name.is_empty() || name.len() > 64 => Some("A token name is 1 to 64 characters.".to_owned()),
        Ok(list) if list.is_empty() => Some("A token needs at least one scope.".to_owned()),
        Err(e) => Some(e.clone()),
        Ok(_) => None,
    };
    if let Some(why) = problem {
        return token_page(&s, &viewer, StatusCode::UNPROCESSABLE_ENTITY, None, Some(&why)).await;
    }
    match berth_api::issue_token(&s.store, name, scopes.unwrap_or_default(), false).await {
        Ok(issued) => {
            tracing::info!(token = %issued.record.id, by = %viewer.principal.token_name, "console: token created");
            token_page(&s, &viewer, StatusCode::CREATED, Some((name, &issued.secret)), None).await
        }
        Err(e) => e.into_response(),
    }
}

async fn revoke_token(State(s): State<AppState>, viewer: Viewer, Path(id): Path<String>, Form(form): Form<CsrfForm>) -> Response {
    let viewer = match changer(viewer, Some(&form.csrf)) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    if id == viewer.principal.token_id {
        return token_page(
            &s,
            &viewer,
            StatusCode::CONFLICT,
            None,
            Some("This session's own token is not revoked from here; log in with another first."),
        )
        .await;
    }
    match s.store.revoke_token(&id, berth_api::now()).await {
        Ok(_) => {
            tracing::info!(token = %id, by = %viewer.principal.token_name, "console: token revoked");
            Redirect::to("/console/tokens").into_response()
        }
        Err(e) => berth_api::ApiError::from(e).into_response(),
    }
}

/// The lines the logs page shows at most.
const LOG_LINES: usize = 2000;

/// The service's log lines that `filter` asks for, oldest first, each with its instance, and
/// every instance that has lines.
async fn filtered_logs(
    c: &berth_controller::Controller,
    name: &str,
    filter: &pages::LogFilter,
) -> berth_controller::Result<(Vec<(String, String)>, Vec<String>)> {
    let all = c.logs(name, 10_000).await?;
    let mut instances: Vec<String> = all.iter().map(|(i, _, _)| i.clone()).collect();
    instances.sort();
    instances.dedup();
    let lines: Vec<(String, String)> = all.into_iter().filter(|(i, _, l)| filter.matches(i, l)).map(|(i, _, l)| (i, l)).collect();
    let skip = lines.len().saturating_sub(LOG_LINES);
    Ok((lines.into_iter().skip(skip).collect(), instances))
}

async fn logs(State(s): State<AppState>, viewer: Viewer, Path(name): Path<String>, Query(filter): Query<pages::LogFilter>) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    match filtered_logs(c, &name, &filter).await {
        Ok((lines, instances)) => page(StatusCode::OK, pages::logs(&viewer.principal, &viewer.session, &name, &filter, &lines, &instances)),
        Err(e) => page(StatusCode::NOT_FOUND, pages::message("No logs", &e.to_string())),
    }
}

/// New log lines as they come (server-sent events, one `line` event per line: its instance, a
/// space, the line), for the logs page's script.
async fn live_logs(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(filter): Query<pages::LogFilter>,
) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Some(c) = s.controller.clone() else { return StatusCode::SERVICE_UNAVAILABLE.into_response() };
    // Where each instance's log stood when the stream began: only later lines are sent.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, index, _) in c.logs(&name, 1).await.unwrap_or_default() {
        seen.insert(i, index);
    }
    let stream = futures_util::stream::unfold((c, name, filter, seen), |(c, name, filter, mut seen)| async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let Ok(lines) = c.logs(&name, 1000).await else { return None };
            let mut events = Vec::new();
            for (instance, index, line) in lines {
                if seen.get(&instance).is_some_and(|&at| index <= at) {
                    continue;
                }
                seen.insert(instance.clone(), index);
                if filter.matches(&instance, &line) {
                    events.push(format!("{instance} {line}"));
                }
            }
            if !events.is_empty() {
                let batch: Vec<Result<Event, std::convert::Infallible>> =
                    events.into_iter().map(|e| Ok(Event::default().event("line").data(e))).collect();
                return Some((futures_util::stream::iter(batch), (c, name, filter, seen)));
            }
        }
    });
    use futures_util::StreamExt;
    Sse::new(stream.flatten()).keep_alive(KeepAlive::default()).into_response()
}

async fn requests(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<berth_api::access::AccessQuery>,
) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let records = match s.access_log.clone() {
        None => None,
        Some(path) => {
            let (service, query) = (name.clone(), q.clone());
            match tokio::task::spawn_blocking(move || berth_api::access::search_log(&path, &service, &query)).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    return page(StatusCode::INTERNAL_SERVER_ERROR, pages::message("The access log", &format!("reading it failed: {e}")))
                }
                Err(e) => return page(StatusCode::INTERNAL_SERVER_ERROR, pages::message("The access log", &e.to_string())),
            }
        }
    };
    page(StatusCode::OK, pages::requests(&viewer.principal, &viewer.session, &name, &q, records.as_deref()))
}

async fn operation(State(s): State<AppState>, viewer: Viewer, Path(id): Path<String>) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    match c.operation(&id).await {
        Ok(op) => page(StatusCode::OK, pages::operation(&viewer.principal, &viewer.session, &op)),
        Err(e) => page(StatusCode::NOT_FOUND, pages::message("No such operation", &e.to_string())),
    }
}

async fn webhooks(State(s): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.may_change() {
        return read_only(&viewer);
    }
    webhook_page(&s, &viewer, StatusCode::OK, None).await
}

async fn webhook_page(s: &AppState, viewer: &Viewer, status: StatusCode, error: Option<&str>) -> Response {
    let mut hooks = Vec::new();
    for h in s.webhooks.list().await.unwrap_or_default() {
        let log = s.webhooks.deliveries(&h.name, 20).await.unwrap_or_default();
        hooks.push((h, log));
    }
    page(status, pages::webhooks(&viewer.principal, &viewer.session, &hooks, error))
}

async fn create_webhook(State(s): State<AppState>, viewer: Viewer, Form(form): Form<Vec<(String, String)>>) -> Response {
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).unwrap_or_default();
    let viewer = match changer(viewer, Some(&field("csrf"))) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let spec = berth_notify::WebhookSpec {
        name: field("name"),
        url: field("url"),
        secret: field("secret"),
        events: form.iter().filter(|(k, _)| k == "events").map(|(_, v)| v.clone()).collect(),
        services: field("services").split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect(),
    };
    match s.webhooks.create(spec).await {
        Ok(h) => {
            tracing::info!(webhook = %h.name, by = %viewer.principal.token_name, "console: webhook created");
            Redirect::to("/console/webhooks").into_response()
        }
        Err(e) => webhook_page(&s, &viewer, StatusCode::UNPROCESSABLE_ENTITY, Some(&e.to_string())).await,
    }
}

async fn webhook_action(
    State(s): State<AppState>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let viewer = match changer(viewer, Some(&form.csrf)) {
        Ok(v) => v,
        Err(refused) => return refused.into_response(),
    };
    let done = match action.as_str() {
        "ping" => s.webhooks.ping(&name).await,
        "delete" => s.webhooks.delete(&name).await,
        _ => return page(StatusCode::NOT_FOUND, pages::message("No such action", &format!("`{action}` is not something a webhook does."))),
    };
    match done {
        Ok(()) => Redirect::to("/console/webhooks").into_response(),
        Err(e) => webhook_page(&s, &viewer, StatusCode::NOT_FOUND, Some(&e.to_string())).await,
    }
}

async fn secrets(State(s): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    match s.secrets.list().await {
        Ok(list) => page(StatusCode::OK, pages::secrets(&viewer.principal, &viewer.session, &list)),
        Err(e) => page(StatusCode::INTERNAL_SERVER_ERROR, pages::message("Secrets unavailable", &e.to_string())),
    }
}

async fn networks(State(s): State<AppState>, viewer: Viewer) -> Response {
    if !viewer.principal.allows(Action::Read) {
        return not_reader(&viewer);
    }
    let Some(c) = s.controller.as_ref() else { return Redirect::to("/console/services").into_response() };
    match c.list_networks().await {
        Ok(list) => page(StatusCode::OK, pages::networks(&viewer.principal, &viewer.session, &list)),
        Err(e) => page(StatusCode::INTERNAL_SERVER_ERROR, pages::message("Networks unavailable", &e.to_string())),
    }
}

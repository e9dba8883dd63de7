//! The HTTP face of the registry: the OCI Distribution Spec v1.1 endpoints under `/v2/`.
//! Repository names contain slashes, so one handler parses the path into a [`Route`] and
//! dispatches on it; each endpoint family lives in its own module.

mod blobs;
mod listing;
mod manifests;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use berth_core::{Action, Principal};

use crate::{Code, Registry, RegistryError};

pub(crate) const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub(crate) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub(crate) const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");

/// The `/v2/` routes, to be merged into the server's router. Expects the API layer to have put
/// the caller's [`Principal`] in the request extensions when it authenticated one.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route("/v2", any(dispatch)).route("/v2/", any(dispatch)).route("/v2/{*rest}", any(dispatch)).with_state(registry)
}

/// A parsed `/v2/` path.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Blob(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

fn parse_route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some(i) = rest.rfind("/blobs/uploads") {
        let (name, tail) = (&rest[..i], &rest[i + "/blobs/uploads".len()..]);
        return match tail {
            "" | "/" => Some(Route::UploadStart(name)),
            t => t.strip_prefix('/').filter(|id| !id.contains('/')).map(|id| Route::Upload(name, id)),
        };
    }
    for marker in ["/manifests/", "/referrers/", "/blobs/"] {
        if let Some(i) = rest.rfind(marker) {
            let (name, arg) = (&rest[..i], &rest[i + marker.len()..]);
            if !name.is_empty() && !arg.is_empty() && !arg.contains('/') {
                return Some(match marker {
                    "/manifests/" => Route::Manifest(name, arg),
                    "/referrers/" => Route::Referrers(name, arg),
                    _ => Route::Blob(name, arg),
                });
            }
        }
    }
    None
}

async fn dispatch(State(reg): State<Arc<Registry>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut resp = match route(&reg, &parts, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(method = %parts.method, path = parts.uri.path(), code = e.code.as_str(), "registry request failed");
            }
            e.into_response()
        }
    };
    resp.headers_mut().insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

async fn route(reg: &Registry, parts: &Parts, body: Body) -> Result<Response, RegistryError> {
    let path = parts.uri.path();
    let Some(route) = parse_route(path) else {
        return Err(RegistryError::new(Code::NameUnknown, format!("no registry endpoint at `{path}`")).with_status(StatusCode::NOT_FOUND));
    };
    let m = &parts.method;
    let get = m == Method::GET || m == Method::HEAD;
    match route {
        Route::Base if get => {
            authorize(reg, parts, Need::Login)?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        Route::Catalog if get => listing::catalog(reg, parts).await,
        Route::Tags(name) if get => listing::tags(reg, parts, name).await,
        Route::Referrers(name, d) if get => listing::referrers(reg, parts, name, d).await,
        Route::Manifest(name, r) if get => manifests::get(reg, parts, name, r).await,
        Route::Manifest(name, r) if m == Method::PUT => manifests::put(reg, parts, name, r, body).await,
        Route::Manifest(name, r) if m == Method::DELETE => manifests::delete(reg, parts, name, r).await,
        Route::Blob(name, d) if get => blobs::get(reg, parts, name, d).await,
        Route::Blob(name, d) if m == Method::DELETE => blobs::delete(reg, parts, name, d).await,
        Route::UploadStart(name) if m == Method::POST => blobs::start_upload(reg, parts, name, body).await,
        Route::Upload(name, id) if get => blobs::upload_status(reg, parts, name, id).await,
        Route::Upload(name, id) if m == Method::PATCH => blobs::patch_upload(reg, parts, name, id, body).await,
        Route::Upload(name, id) if m == Method::PUT => blobs::finish_upload(reg, parts, name, id, body).await,
        Route::Upload(name, id) if m == Method::DELETE => blobs::cancel_upload(reg, parts, name, id).await,
        _ => Err(RegistryError::new(Code::Unsupported, format!("method {m} is not supported at `{path}`"))),
    }
}

/// What a request needs from its caller.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Any valid credential.
    Login,
    Pull(&'a str),
    Push(&'a str),
}

/// Whether a Host header is a plain `host[:port]` (a DNS name, an IPv4 address or a bracketed
/// IPv6 address): nothing that could end the challenge's quoted parameter or add one.
fn is_host_and_port(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, Some(port)),
        _ => (h, None),
    };
    let host_ok = match host.strip_prefix('[').and_then(|v6| v6.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.len() <= 253 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks the caller, answering 401 with a challenge when there is none (or when its bearer
/// token was issued for less than this needs) and 403 DENIED when its token does not allow it.
pub(crate) fn authorize<'p>(reg: &Registry, parts: &'p Parts, need: Need<'_>) -> Result<&'p Principal, RegistryError> {
    let principal = parts.extensions.get::<Principal>();
    let (action, scope) = match need {
        Need::Login => (None, None),
        Need::Pull(n) => (Some(Action::Pull(n)), Some(format!("repository:{n}:pull"))),
        Need::Push(n) => (Some(Action::Push(n)), Some(format!("repository:{n}:pull,push"))),
    };
    let challenge = |insufficient: bool| {
        let realm = reg.config.token_realm.clone().unwrap_or_else(|| {
            let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).filter(|h| is_host_and_port(h)).unwrap_or("localhost");
            format!("http://{host}/token")
        });
        let mut v = format!("Bearer realm=\"{realm}\",service=\"{}\"", reg.config.service);
        if let Some(s) = &scope {
            v.push_str(&format!(",scope=\"{s}\""));
        }
        if insufficient {
            v.push_str(",error=\"insufficient_scope\"");
        }
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
    };
    let Some(p) = principal else {
        return Err(RegistryError::new(Code::Unauthorized, "authentication required; log in with a berth token")
            .with_header(header::WWW_AUTHENTICATE, challenge(false)));
    };
    let Some(action) = action else { return Ok(p) };
    if p.allows(action) {
        return Ok(p);
    }
    if p.token_allows(action) {
        return Err(RegistryError::new(Code::Unauthorized, "the bearer token was issued for less access than this needs")
            .with_header(header::WWW_AUTHENTICATE, challenge(true)));
    }
    let (verb, name) = match action {
        Action::Pull(n) => ("pull from", n),
        Action::Push(n) => ("push to", n),
        _ => ("use", ""),
    };
    let scope_hint = if matches!(action, Action::Pull(_)) { "pull" } else { "push" };
    Err(RegistryError::new(
        Code::Denied,
        format!("token `{}` may not {verb} repository `{name}`; use a token with scope {scope_hint}:{name}", p.token_name),
    ))
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}

/// A decoded query parameter.
pub(crate) fn query_param(parts: &Parts, key: &str) -> Option<String> {
    berth_core::query::query_value(parts.uri.query(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts_make_the_token_realm() {
        for ok in ["127.0.0.1:7070", "berth.example.com", "registry-1.internal:443", "[::1]:7070", "[fe80::1]"] {
            assert!(is_host_and_port(ok), "{ok}");
        }
        for bad in ["evil\",scope=\"x", "a b", "h:port", "[::1", "user@host", "", "host:", "x:123456", "a/b"] {
            assert!(!is_host_and_port(bad), "{bad}");
        }
    }
    use expect_test::expect;

    #[test]
    fn routes() {
        let paths = [
            "/v2/",
            "/v2",
            "/v2/_catalog",
            "/v2/team/web/tags/list",
            "/v2/team/web/manifests/latest",
            "/v2/a/blobs/sha256:00",
            "/v2/a/blobs/uploads/",
            "/v2/a/b/blobs/uploads/0123",
            "/v2/a/referrers/sha256:00",
            "/v2/blobs/blobs/x",
            "/v2/a/manifests/",
            "/v2/a/unknown",
        ];
        let out: Vec<String> = paths.iter().map(|p| format!("{p} => {:?}", parse_route(p))).collect();
        expect![[r#"
            /v2/ => Some(Base)
            /v2 => Some(Base)
            /v2/_catalog => Some(Catalog)
            /v2/team/web/tags/list => Some(Tags("team/web"))
            /v2/team/web/manifests/latest => Some(Manifest("team/web", "latest"))
            /v2/a/blobs/sha256:00 => Some(Blob("a", "sha256:00"))
            /v2/a/blobs/uploads/ => Some(UploadStart("a"))
            /v2/a/b/blobs/uploads/0123 => Some(Upload("a/b", "0123"))
            /v2/a/referrers/sha256:00 => Some(Referrers("a", "sha256:00"))
            /v2/blobs/blobs/x => Some(Blob("blobs", "x"))
            /v2/a/manifests/ => None
            /v2/a/unknown => None"#]]
        .assert_eq(&out.join("\n"));
    }
}

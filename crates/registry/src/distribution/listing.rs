//! Listing endpoints: tags and `_catalog` with `n`/`last` pagination and `Link` headers, and the
//! referrers API with its `artifactType` filter.

use axum::http::request::Parts;
use axum::http::{header, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::{Action, Digest};

use super::{authorize, hv, query_param, Need};
use crate::manifest::OCI_INDEX;
use crate::{unknown_repository, Code, Registry, RegistryError};

/// Most entries one page returns.
const MAX_PAGE: usize = 10_000;

fn page_size(parts: &Parts) -> Result<Option<usize>, RegistryError> {
    match query_param(parts, "n") {
        None => Ok(None),
        Some(n) => n
            .parse::<usize>()
            .map(|n| Some(n.min(MAX_PAGE)))
            .map_err(|_| RegistryError::new(Code::Unsupported, format!("`n={n}` is not a number")).with_status(StatusCode::BAD_REQUEST)),
    }
}

fn with_link(mut resp: Response, path: &str, n: usize, last: Option<&str>) -> Response {
    if let Some(last) = last {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        resp.headers_mut().insert(header::LINK, hv(&link));
    }
    resp
}

fn json(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

pub(super) async fn tags(reg: &Registry, parts: &Parts, name: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Pull(name))?;
    if reg.store.get_repository(name).await?.is_none() {
        return Err(unknown_repository(name));
    }
    let n = page_size(parts)?;
    let last = query_param(parts, "last");
    let limit = n.unwrap_or(MAX_PAGE);
    let mut tags = reg.store.list_tag_names(name, last.as_deref(), limit + 1).await?;
    let more = tags.len() > limit;
    tags.truncate(limit);
    let resp = json(serde_json::json!({ "name": name, "tags": tags }));
    let next = more.then(|| tags.last().map(String::as_str)).flatten();
    Ok(with_link(resp, &format!("/v2/{name}/tags/list"), limit, next))
}

pub(super) async fn catalog(reg: &Registry, parts: &Parts) -> Result<Response, RegistryError> {
    let principal = authorize(reg, parts, Need::Login)?;
    let n = page_size(parts)?;
    let limit = n.unwrap_or(MAX_PAGE);
    let mut after = query_param(parts, "last");
    let mut names: Vec<String> = Vec::new();
    let mut more = false;
    // The catalog lists only what the caller may pull.
    'pages: loop {
        let page = reg.store.list_repositories(after.as_deref(), 500).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            if principal.allows(Action::Pull(&r.name)) {
                if names.len() == limit {
                    more = true;
                    break 'pages;
                }
                names.push(r.name.clone());
            }
        }
        after = page.last().map(|r| r.name.clone());
    }
    let resp = json(serde_json::json!({ "repositories": names }));
    let next = more.then(|| names.last().map(String::as_str)).flatten();
    Ok(with_link(resp, "/v2/_catalog", limit, next))
}

pub(super) async fn referrers(reg: &Registry, parts: &Parts, name: &str, digest: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Pull(name))?;
    let subject: Digest = digest.parse().map_err(|e: berth_core::DigestError| RegistryError::new(Code::DigestInvalid, e.to_string()))?;
    let filter = query_param(parts, "artifactType");
    let list = reg.store.referrers(name, &subject).await?;
    let manifests: Vec<serde_json::Value> = list
        .iter()
        .filter(|m| filter.as_ref().is_none_or(|f| m.artifact_type.as_deref() == Some(f.as_str())))
        .map(|m| {
            let mut d = serde_json::json!({ "mediaType": m.media_type, "digest": m.digest.to_string(), "size": m.size });
            if let Some(t) = &m.artifact_type {
                d["artifactType"] = t.clone().into();
            }
            if let Some(a) = &m.annotations {
                d["annotations"] = a.clone();
            }
            d
        })
        .collect();
    let body = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut resp = ([(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
    if filter.is_some() {
        resp.headers_mut().insert(HeaderName::from_static("oci-filters-applied"), hv("artifactType"));
    }
    Ok(resp)
}

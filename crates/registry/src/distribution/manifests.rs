//! Manifest endpoints: GET/HEAD with content negotiation on `Accept`, PUT with validation, tag
//! policy and push events, DELETE by tag or digest.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::Reference;

use super::{authorize, hv, Need, CONTENT_DIGEST};
use crate::manifest::{self, MAX_MANIFEST_BYTES};
use crate::{parse_name, Code, Registry, RegistryError, StoredManifest};

const OCI_SUBJECT: header::HeaderName = header::HeaderName::from_static("oci-subject");

fn parse_reference(r: &str) -> Result<Reference, RegistryError> {
    r.parse().map_err(|e: berth_core::NameError| {
        let code = if matches!(e, berth_core::NameError::Digest(_)) { Code::DigestInvalid } else { Code::TagInvalid };
        RegistryError::new(code, e.to_string())
    })
}

pub(super) async fn get(reg: &Registry, parts: &Parts, name: &str, reference: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Pull(name))?;
    let reference = parse_reference(reference).map_err(|e| RegistryError::new(Code::ManifestUnknown, e.message))?;
    let mut found = reg.manifest(name, &reference).await?;
    let accept: Vec<&str> = parts.headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    if matches!(reference, Reference::Tag(_)) && !manifest::accepts(&accept, &found.record.media_type) {
        found = negotiate(reg, name, found, &accept).await?;
    }
    let m = &found.record;
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, hv(&m.media_type))
        .header(CONTENT_DIGEST, hv(&m.digest.to_string()))
        .header(header::CONTENT_LENGTH, m.size)
        .header(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    let body = if parts.method == Method::HEAD { Body::empty() } else { Body::from(found.content.clone()) };
    resp.body(body).map_err(|e| RegistryError::internal("building manifest response", e))
}

/// A client that does not accept an index gets the entry for this host's platform, when it
/// accepts that; anything else is not found for it.
async fn negotiate(reg: &Registry, name: &str, found: StoredManifest, accept: &[&str]) -> Result<StoredManifest, RegistryError> {
    let media_type = found.record.media_type.clone();
    if manifest::is_index(&media_type) {
        let parsed =
            manifest::parse(Some(&media_type), &found.content).map_err(|e| RegistryError::internal("stored index is invalid", e))?;
        let (os, arch) = berth_image::pull::host_platform();
        if let Some((d, _)) = parsed.manifests.iter().find(|(_, p)| p.as_ref().is_some_and(|p| p.os == os && p.architecture == arch)) {
            let child = reg.manifest(name, &Reference::Digest(d.clone())).await?;
            if manifest::accepts(accept, &child.record.media_type) {
                return Ok(child);
            }
        }
    }
    Err(RegistryError::new(
        Code::ManifestUnknown,
        format!("the manifest is `{media_type}`, which the request's Accept header does not list; add it to Accept or fetch by digest"),
    ))
}

pub(super) async fn put(reg: &Registry, parts: &Parts, name: &str, reference: &str, body: Body) -> Result<Response, RegistryError> {
    parse_name(name)?;
    authorize(reg, parts, Need::Push(name))?;
    let reference = parse_reference(reference)?;
    let too_large = || {
        RegistryError::new(Code::SizeInvalid, format!("manifest is larger than {} MiB", MAX_MANIFEST_BYTES >> 20))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if super::header_str(&parts.headers, &header::CONTENT_LENGTH)
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_MANIFEST_BYTES)
    {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_MANIFEST_BYTES).await.map_err(|_| too_large())?;
    let content_type = super::header_str(&parts.headers, &header::CONTENT_TYPE);
    let record = reg.put_manifest(name, &reference, content_type, bytes).await?;
    let mut resp = (
        StatusCode::CREATED,
        [
            (header::LOCATION, hv(&format!("/v2/{name}/manifests/{}", record.digest))),
            (CONTENT_DIGEST, hv(&record.digest.to_string())),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response();
    if let Some(s) = &record.subject {
        resp.headers_mut().insert(OCI_SUBJECT, hv(&s.to_string()));
    }
    Ok(resp)
}

pub(super) async fn delete(reg: &Registry, parts: &Parts, name: &str, reference: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    let reference = parse_reference(reference)?;
    reg.delete_manifest(name, &reference).await?;
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, HeaderValue::from_static("0"))]).into_response())
}

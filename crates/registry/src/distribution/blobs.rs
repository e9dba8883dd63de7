//! Blob endpoints: HEAD/GET (with `Range`) and DELETE, and the upload protocol — monolithic
//! POST+PUT, single-request POST `?digest=`, chunked POST/PATCH/PUT with `Content-Range`,
//! status GET, cancel DELETE — and cross-repository mount.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use berth_core::Digest;
use futures_util::TryStreamExt;

use super::{authorize, header_str, hv, query_param, Need, CONTENT_DIGEST, UPLOAD_UUID};
use crate::blob_store::ByteStream;
use crate::{parse_name, Code, Registry, RegistryError};

fn parse_digest(s: &str) -> Result<Digest, RegistryError> {
    s.parse().map_err(|e: berth_core::DigestError| RegistryError::new(Code::DigestInvalid, e.to_string()))
}

fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(std::io::Error::other))
}

fn blob_unknown(name: &str, d: &Digest) -> RegistryError {
    RegistryError::new(Code::BlobUnknown, format!("blob {d} is not in repository `{name}`"))
        .with_detail(serde_json::json!({ "digest": d.to_string() }))
}

/// Parses `Range: bytes=a-b`, `bytes=a-` or `bytes=-n` against a blob of `size` bytes into
/// (offset, length); `None` when unsatisfiable.
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (size.saturating_sub(n), size.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, size.checked_sub(1)?),
        (s, e) => (s.parse().ok()?, e.parse::<u64>().ok()?.min(size.checked_sub(1)?)),
    };
    (start <= end && start < size).then(|| (start, end - start + 1))
}

pub(super) async fn get(reg: &Registry, parts: &Parts, name: &str, digest: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Pull(name))?;
    let d = parse_digest(digest)?;
    let size = reg.store.linked_blob(name, &d).await?.ok_or_else(|| blob_unknown(name, &d))?;
    if reg.blobs.stat(&d).await?.is_none() {
        return Err(blob_unknown(name, &d));
    }
    let mut builder = Response::builder()
        .header(CONTENT_DIGEST, hv(&d.to_string()))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, hv(&format!("\"{d}\"")))
        .header(header::CACHE_CONTROL, "max-age=31536000");
    let range = header_str(&parts.headers, &header::RANGE);
    let (status, offset, len) = match range {
        Some(r) if parts.method == Method::GET => match parse_range(r, size) {
            Some((o, l)) => {
                builder = builder.header(header::CONTENT_RANGE, hv(&format!("bytes {o}-{}/{size}", o + l - 1)));
                (StatusCode::PARTIAL_CONTENT, o, l)
            }
            None => {
                return Ok((StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, hv(&format!("bytes */{size}")))]).into_response())
            }
        },
        _ => (StatusCode::OK, 0, size),
    };
    builder = builder.status(status).header(header::CONTENT_LENGTH, len);
    let body = if parts.method == Method::HEAD { Body::empty() } else { Body::from_stream(reg.blobs.read(&d, offset, len).await?) };
    builder.body(body).map_err(|e| RegistryError::internal("building blob response", e))
}

pub(super) async fn delete(reg: &Registry, parts: &Parts, name: &str, digest: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    let d = parse_digest(digest)?;
    if !reg.store.unlink_blob(name, &d).await? {
        return Err(blob_unknown(name, &d));
    }
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, HeaderValue::from_static("0"))]).into_response())
}

fn upload_location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn range_header(size: u64) -> HeaderValue {
    hv(&format!("0-{}", size.saturating_sub(1)))
}

fn upload_accepted(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    (
        status,
        [
            (header::LOCATION, hv(&upload_location(name, id))),
            (header::RANGE, range_header(size)),
            (UPLOAD_UUID, hv(id)),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response()
}

fn blob_created(name: &str, d: &Digest) -> Response {
    (
        StatusCode::CREATED,
        [
            (header::LOCATION, hv(&format!("/v2/{name}/blobs/{d}"))),
            (CONTENT_DIGEST, hv(&d.to_string())),
            (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
        ],
    )
        .into_response()
}

/// The declared body length, when the request has one.
fn content_length(parts: &Parts) -> Option<u64> {
    header_str(&parts.headers, &header::CONTENT_LENGTH).and_then(|v| v.parse().ok())
}

fn has_body(parts: &Parts) -> bool {
    content_length(parts).is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING)
}

pub(super) async fn start_upload(reg: &Registry, parts: &Parts, name: &str, body: Body) -> Result<Response, RegistryError> {
    parse_name(name)?;
    let principal = authorize(reg, parts, Need::Push(name))?;
    if let Some(mount) = query_param(parts, "mount") {
        let d = parse_digest(&mount)?;
        let from = query_param(parts, "from");
        // Mount only from a repository the caller may pull; otherwise fall back to an upload.
        let source = match &from {
            Some(f) if principal.allows(berth_core::Action::Pull(f)) => reg.store.linked_blob(f, &d).await?,
            Some(_) => None,
            None => reg.store.linked_blob(name, &d).await?,
        };
        if let Some(size) = source {
            if reg.blobs.stat(&d).await?.is_some() {
                reg.link_blob(name, &d, size).await?;
                return Ok(blob_created(name, &d));
            }
        }
    }
    reg.store.ensure_repository(name, &reg.config.default_policy, crate::now()).await?;
    let id = reg.open_upload(name, &principal.token_id, &principal.token_name).await?;
    if let Some(digest) = query_param(parts, "digest") {
        let d = parse_digest(&digest)?;
        let res = async {
            reg.blobs.append(&id, Some(0), body_stream(body)).await?;
            reg.blobs.finish(&id, &d, content_length(parts)).await
        }
        .await;
        if res.is_err() {
            let _ = reg.blobs.cancel(&id).await;
        }
        reg.close_uploads([id.as_str()]).await;
        return match res {
            Ok(size) => {
                reg.link_blob(name, &d, size).await?;
                Ok(blob_created(name, &d))
            }
            Err(e) => Err(e.into()),
        };
    }
    Ok(upload_accepted(StatusCode::ACCEPTED, name, &id, 0))
}

/// Checks that the upload exists and belongs to `name`, returning its size.
async fn upload_of(reg: &Registry, name: &str, id: &str) -> Result<u64, RegistryError> {
    match reg.blobs.upload_info(id).await? {
        Some(u) if u.repository == name => Ok(u.size),
        _ => Err(RegistryError::new(
            Code::BlobUploadUnknown,
            format!("upload `{id}` is not in progress for repository `{name}`; start a new upload"),
        )),
    }
}

/// Parses `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>`).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v.strip_prefix("bytes ").unwrap_or(v);
    let v = v.split('/').next()?;
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

pub(super) async fn patch_upload(reg: &Registry, parts: &Parts, name: &str, id: &str, body: Body) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    let size = upload_of(reg, name, id).await?;
    let offset = match header_str(&parts.headers, &header::CONTENT_RANGE) {
        Some(v) => {
            let (start, end) = parse_content_range(v).ok_or_else(|| {
                RegistryError::new(Code::BlobUploadInvalid, format!("Content-Range `{v}` is malformed; send `<start>-<end>`"))
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::RANGE, range_header(size))
            })?;
            if let Some(len) = content_length(parts) {
                let covered = (end - start).checked_add(1);
                if covered != Some(len) {
                    return Err(RegistryError::new(
                        Code::BlobUploadInvalid,
                        format!("Content-Range `{v}` does not cover the {len} bytes of Content-Length"),
                    )
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(header::RANGE, range_header(size)));
                }
            }
            Some(start)
        }
        None => None,
    };
    let new_size = reg.blobs.append(id, offset, body_stream(body)).await?;
    Ok(upload_accepted(StatusCode::ACCEPTED, name, id, new_size))
}

pub(super) async fn finish_upload(reg: &Registry, parts: &Parts, name: &str, id: &str, body: Body) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    let size = upload_of(reg, name, id).await?;
    let Some(digest) = query_param(parts, "digest") else {
        return Err(RegistryError::new(Code::DigestInvalid, "the closing PUT needs a `digest` query parameter"));
    };
    let d = parse_digest(&digest)?;
    if has_body(parts) {
        let offset = match header_str(&parts.headers, &header::CONTENT_RANGE).and_then(parse_content_range) {
            Some((start, _)) => Some(start),
            None => Some(size),
        };
        reg.blobs.append(id, offset, body_stream(body)).await?;
    }
    let finished = reg.blobs.finish(id, &d, None).await;
    reg.close_uploads([id]).await;
    reg.link_blob(name, &d, finished?).await?;
    Ok(blob_created(name, &d))
}

pub(super) async fn upload_status(reg: &Registry, parts: &Parts, name: &str, id: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    let size = upload_of(reg, name, id).await?;
    Ok(upload_accepted(StatusCode::NO_CONTENT, name, id, size))
}

pub(super) async fn cancel_upload(reg: &Registry, parts: &Parts, name: &str, id: &str) -> Result<Response, RegistryError> {
    authorize(reg, parts, Need::Push(name))?;
    upload_of(reg, name, id).await?;
    reg.blobs.cancel(id).await?;
    reg.close_uploads([id]).await;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, HeaderValue::from_static("0")), (UPLOAD_UUID, hv(id))]).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 10)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 5)));
        assert_eq!(parse_range("bytes=50-1000", 100), Some((50, 50)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
    }
}

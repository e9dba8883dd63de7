//! Registry errors with the OCI distribution spec's codes, HTTP statuses and JSON bodies
//! (`{"errors":[{"code":…,"message":…,"detail":…}]}`).

use std::io;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::blob_store::BlobStoreError;

/// A spec error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A failure of the registry itself (as the reference registry names it).
    Unknown,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unknown => "UNKNOWN",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown | Code::BlobUploadUnknown | Code::ManifestUnknown | Code::NameUnknown => StatusCode::NOT_FOUND,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error a registry request ends with.
#[derive(Debug)]
pub struct RegistryError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Extra response headers (the auth challenge, `Range` on 416).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> RegistryError {
        RegistryError { code, status: code.status(), message: message.into(), detail: None, headers: Vec::new() }
    }

    pub fn with_status(mut self, status: StatusCode) -> RegistryError {
        self.status = status;
        self
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> RegistryError {
        self.detail = Some(detail);
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> RegistryError {
        self.headers.push((name, value));
        self
    }

    /// An internal failure: logged in full, reported to the client without internals.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> RegistryError {
        tracing::error!(error = %err, "{context}");
        RegistryError::new(Code::Unknown, format!("{context}; see the server log"))
    }

    /// The disk holding the registry's data is full: 507, saying so and what frees space.
    pub fn storage_full(what: &str) -> RegistryError {
        tracing::error!("{what}: the disk is full");
        RegistryError::new(
            Code::Unknown,
            format!(
                "{what}: the disk holding berth's data is full; free space on it (`berth registry gc` removes unused blobs) and try again"
            ),
        )
        .with_status(StatusCode::INSUFFICIENT_STORAGE)
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for RegistryError {}

impl From<berth_store::StoreError> for RegistryError {
    fn from(e: berth_store::StoreError) -> Self {
        match e {
            berth_store::StoreError::StorageFull => RegistryError::storage_full("saving the registry's state failed"),
            e => RegistryError::internal("state store failed", e),
        }
    }
}

impl From<BlobStoreError> for RegistryError {
    fn from(e: BlobStoreError) -> Self {
        match e {
            BlobStoreError::UploadUnknown(id) => {
                RegistryError::new(Code::BlobUploadUnknown, format!("upload `{id}` is unknown or finished; start a new upload"))
            }
            BlobStoreError::DigestMismatch { expected, actual } => RegistryError::new(
                Code::DigestInvalid,
                format!("uploaded content has digest {actual}, not {expected}; the upload was discarded, push again"),
            ),
            BlobStoreError::OffsetMismatch { expected, actual } => RegistryError::new(
                Code::BlobUploadInvalid,
                format!("chunk starts at byte {actual} but the upload has {expected} bytes; resume from byte {expected}"),
            )
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_header(
                header::RANGE,
                HeaderValue::from_str(&format!("0-{}", expected.saturating_sub(1))).unwrap_or(HeaderValue::from_static("0-0")),
            ),
            BlobStoreError::SizeMismatch { expected, actual } => {
                RegistryError::new(Code::SizeInvalid, format!("upload has {actual} bytes but the request declared {expected}"))
            }
            BlobStoreError::Body(e) => {
                RegistryError::new(Code::BlobUploadInvalid, format!("request body ended early: {e}; resume or retry the upload"))
            }
            BlobStoreError::Io(what, e) if matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => {
                RegistryError::storage_full(&format!("{what} failed"))
            }
            e @ BlobStoreError::Io(..) => RegistryError::internal("blob storage failed", e),
        }
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code.as_str(), "message": self.message });
        if let Some(d) = self.detail {
            error["detail"] = d;
        }
        let body = serde_json::json!({ "errors": [error] }).to_string();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}

//! API errors: an HTTP status, a stable machine code and a message that says what to do, as
//! `{"error":{"code":…,"message":…}}`. Internal failures are logged, never leaked.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_registry::{Code, RegistryError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %err, "api request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
    }
}

impl From<berth_store::StoreError> for ApiError {
    fn from(e: berth_store::StoreError) -> Self {
        match e {
            berth_store::StoreError::StorageFull => {
                tracing::error!(error = %e, "api request failed");
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", e.to_string())
            }
            e => ApiError::internal(e),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        if e.status == StatusCode::INSUFFICIENT_STORAGE {
            return ApiError::new(e.status, "storage_full", e.message);
        }
        if e.status.is_server_error() {
            return ApiError::new(e.status, "internal", e.message);
        }
        let code = match (e.code, e.status) {
            (_, StatusCode::CONFLICT) => "already_exists",
            (Code::NameUnknown | Code::ManifestUnknown | Code::BlobUnknown, _) => "not_found",
            (Code::Denied, _) => "permission_denied",
            (Code::Unauthorized, _) => "unauthenticated",
            _ => "invalid_argument",
        };
        ApiError::new(e.status, code, e.message)
    }
}

/// Middleware for the REST API: an error answered without the JSON envelope (a body the framework
/// could not parse: a wrong field, a wrong content type, too large) gets it, with the text it came
/// with as the message, so every client sees one error shape.
pub async fn envelope(resp: Response) -> Response {
    let status = resp.status();
    let json = resp.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_owned(),
        Err(_) => String::new(),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::INSUFFICIENT_STORAGE => "storage_full",
        s if s.is_server_error() => "internal",
        _ => "invalid_argument",
    };
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in
        parts.headers.iter().filter(|(n, _)| *n != axum::http::header::CONTENT_TYPE && *n != axum::http::header::CONTENT_LENGTH)
    {
        out.headers_mut().insert(name, value.clone());
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

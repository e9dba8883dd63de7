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
        ApiError::internal(e)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, axum::Json(body)).into_response()
    }
}

//! The [`Caller`] extractor: the request's authenticated principal, if any, checked per handler
//! against the action it performs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use berth_core::{Action, Principal};

use crate::auth::InvalidCredentials;
use crate::ApiError;

pub struct Caller {
    principal: Option<Principal>,
    invalid: Option<InvalidCredentials>,
}

impl Caller {
    /// The principal, whatever it may do; 401 when there is none.
    pub fn authenticated(&self) -> Result<Principal, ApiError> {
        self.principal.clone().ok_or_else(|| {
            let msg = self
                .invalid
                .as_ref()
                .map(|i| i.0)
                .unwrap_or("authentication required; pass a berth token as `Authorization: Bearer <token>`");
            ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "unauthenticated", msg)
        })
    }

    /// The principal, when it may do `action`; 401 or 403 otherwise.
    pub fn require(&self, action: Action<'_>) -> Result<Principal, ApiError> {
        let p = self.authenticated()?;
        if p.allows(action) {
            Ok(p)
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "permission_denied",
                format!("token `{}` is not allowed to do this; use a token with a wider scope", p.token_name),
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            principal: parts.extensions.get::<Principal>().cloned(),
            invalid: parts.extensions.get::<InvalidCredentials>().cloned(),
        })
    }
}

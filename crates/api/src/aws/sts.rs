//! STS's GetCallerIdentity, the one STS call pipelines make: `aws sts get-caller-identity` to
//! check their credentials, or `--query Account` to build ECR image names from. AWS's query
//! protocol: a form-encoded `POST /` (`Action=GetCallerIdentity&Version=2011-06-15`) answered
//! in XML, errors included.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Api, AwsError, ACCOUNT};
use crate::AppState;

const XMLNS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn xml(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    resp
}

/// An error as STS sends it; the JSON APIs' authentication errors under STS's codes.
fn error(e: &AwsError, request_id: &str) -> Response {
    let code = match e.kind {
        "MissingAuthenticationTokenException" => "MissingAuthenticationToken",
        "UnrecognizedClientException" => "InvalidClientTokenId",
        "InvalidSignatureException" => "SignatureDoesNotMatch",
        "IncompleteSignatureException" => "IncompleteSignature",
        other => other,
    };
    let kind = if e.status.is_server_error() { "Receiver" } else { "Sender" };
    xml(
        e.status,
        format!(
            "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
            escape(&e.message)
        ),
    )
}

/// Answers one STS request (already read: its parts, host and body).
pub async fn answer(s: &AppState, parts: &axum::http::request::Parts, host: &str, body: &[u8], request_id: &str) -> Response {
    let form = std::str::from_utf8(body).unwrap_or_default();
    let action = berth_core::query::query_value(Some(form), "Action").unwrap_or_default();
    if action != "GetCallerIdentity" {
        let e = AwsError::new(
            "InvalidAction",
            if action.is_empty() {
                "a form-encoded POST / is an STS call: Action names it (berth answers GetCallerIdentity)".to_owned()
            } else {
                format!("berth answers STS's GetCallerIdentity only, not `{action}`")
            },
        );
        return error(&e, request_id);
    }
    let (principal, key) = match super::authenticate(s, Api::Sts, parts, host, body).await {
        Ok((principal, _, key)) => (principal, key),
        Err(e) => return error(&e, request_id),
    };
    let arn = format!("arn:aws:iam::{ACCOUNT}:user/berth/{}", principal.token_name);
    xml(
        StatusCode::OK,
        format!(
            "<GetCallerIdentityResponse xmlns=\"{XMLNS}\"><GetCallerIdentityResult><Arn>{}</Arn><UserId>{}</UserId><Account>{ACCOUNT}</Account></GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
            escape(&arn),
            escape(&key)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_use_sts_codes_in_xml() {
        let e = AwsError::new("UnrecognizedClientException", "no <such> key").with_status(StatusCode::FORBIDDEN);
        let r = error(&e, "r-1");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()), Some("text/xml"));
        assert_eq!(escape("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}

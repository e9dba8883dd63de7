//! The AWS-compatible APIs on the API listener: ECR, App Runner and Secrets Manager as AWS
//! clients (the aws CLI, boto3, the SDKs behind Terraform) speak them, so a pipeline written for
//! AWS deploys on berth by pointing its endpoint here.
//!
//! Every call is `POST /` with the operation in `X-Amz-Target` (awsJson 1.0 for App Runner, 1.1
//! for the others) and a SigV4 signature by an access key of a berth token made with `--aws`
//! ([`crate::Authenticator::aws_key`]); the token's scopes decide what the call may do, exactly as
//! on the REST API. Answers are the services' own shapes: timestamps as epoch numbers, ARNs of
//! account [`ACCOUNT`] in the region the client signed for, errors with `__type` and
//! `x-amzn-ErrorType`. Nothing here is a rule of its own: each operation maps onto the
//! registry, the controller or the secret store, and keeps only what AWS has and berth does not
//! (resource tags, ids, ECR policy texts) in the store's AWS documents.

mod apprunner;
mod ecr;
mod input;
mod secretsmanager;
pub mod sigv4;
mod sts;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use berth_core::{Action, Principal};
use serde_json::{json, Value};

use crate::{now, AppState};
use input::Input;

pub use berth_core::aws::ACCOUNT;
/// The largest request body read.
const MAX_BODY: usize = 1 << 20;

pub fn routes() -> Router<AppState> {
    Router::new().route("/", post(handle))
}

/// One of the AWS APIs berth answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    AppRunner,
    Ecr,
    SecretsManager,
    /// GetCallerIdentity only, in STS's query protocol ([`sts`]).
    Sts,
}

impl Api {
    /// The API and operation an `X-Amz-Target` names.
    fn from_target(target: &str) -> Option<(Api, &str)> {
        let (prefix, op) = target.split_once('.')?;
        let api = match prefix {
            "AppRunner" => Api::AppRunner,
            "AmazonEC2ContainerRegistry_V20150921" => Api::Ecr,
            "secretsmanager" => Api::SecretsManager,
            _ => return None,
        };
        Some((api, op))
    }

    /// The service name requests are signed for.
    pub fn signing_name(self) -> &'static str {
        match self {
            Api::AppRunner => "apprunner",
            Api::Ecr => "ecr",
            Api::SecretsManager => "secretsmanager",
            Api::Sts => "sts",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Api::AppRunner => "application/x-amz-json-1.0",
            Api::Ecr | Api::SecretsManager => "application/x-amz-json-1.1",
            Api::Sts => "text/xml",
        }
    }

    /// The member an error's message is in.
    fn message_key(self) -> &'static str {
        match self {
            Api::Ecr => "message",
            Api::AppRunner | Api::SecretsManager | Api::Sts => "Message",
        }
    }

    /// The error type of a value that breaks the model's rules.
    fn invalid(self) -> &'static str {
        match self {
            Api::AppRunner => "InvalidRequestException",
            Api::Ecr | Api::SecretsManager => "InvalidParameterException",
            Api::Sts => "InvalidParameterValue",
        }
    }
}

/// An AWS error: its type, message and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl AwsError {
    /// A client error (400).
    pub fn new(kind: &'static str, message: impl Into<String>) -> AwsError {
        AwsError { status: StatusCode::BAD_REQUEST, kind, message: message.into() }
    }

    fn with_status(mut self, status: StatusCode) -> AwsError {
        self.status = status;
        self
    }

    /// A failure of berth's own, logged; the client learns only that one happened.
    pub fn internal(api: Api, err: impl std::fmt::Display) -> AwsError {
        tracing::error!(error = %err, api = ?api, "AWS request failed");
        let kind = match api {
            Api::AppRunner => "InternalServiceErrorException",
            Api::Ecr => "ServerException",
            Api::SecretsManager => "InternalServiceError",
            Api::Sts => "InternalFailure",
        };
        AwsError::new(kind, "internal error; see the server log").with_status(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// One authenticated call: who makes it, where it was sent, in which region.
pub struct Call<'a> {
    pub state: &'a AppState,
    pub api: Api,
    pub principal: Principal,
    /// The region the client signed for; ARNs name it.
    pub region: String,
    /// The `Host` the client reached berth at (the registry is on the same listener).
    pub host: String,
    pub https: bool,
}

impl Call<'_> {
    /// Refuses unless the caller's token may do `action`.
    pub fn require(&self, action: Action<'_>) -> Result<(), AwsError> {
        if self.principal.allows(action) {
            Ok(())
        } else {
            Err(AwsError::new(
                "AccessDeniedException",
                format!("token `{}` is not allowed to do this; use a token with a wider scope", self.principal.token_name),
            ))
        }
    }

    pub fn arn(&self, resource: &str) -> String {
        berth_core::aws::arn(self.api.signing_name(), &self.region, resource)
    }

    pub fn input<'v>(&self, v: &'v Value) -> Input<'v> {
        Input::new(v, self.api.invalid())
    }

    pub fn internal(&self, err: impl std::fmt::Display) -> AwsError {
        AwsError::internal(self.api, err)
    }

    /// The resource tags kept for `resource` (a key of berth's, not an ARN), as AWS lists them.
    pub async fn tags(&self, resource: &str) -> Result<Vec<(String, String)>, AwsError> {
        let doc = self.state.store.get_aws_resource("tags", resource).await.map_err(|e| self.internal(e))?;
        let map: std::collections::BTreeMap<String, String> = doc.and_then(|d| serde_json::from_value(d.doc).ok()).unwrap_or_default();
        Ok(map.into_iter().collect())
    }

    /// Adds (or replaces) tags of `resource`; AWS's limit of 50 holds.
    pub async fn add_tags(&self, resource: &str, tags: &[(String, String)]) -> Result<(), AwsError> {
        if tags.is_empty() {
            return Ok(());
        }
        let mut map: std::collections::BTreeMap<String, String> = self.tags(resource).await?.into_iter().collect();
        map.extend(tags.iter().cloned());
        if map.len() > 50 {
            return Err(AwsError::new(self.too_many_tags(), "a resource has at most 50 tags"));
        }
        self.state.store.put_aws_resource("tags", resource, &json!(map), now()).await.map_err(|e| self.internal(e))
    }

    pub async fn remove_tags(&self, resource: &str, keys: &[&str]) -> Result<(), AwsError> {
        let mut map: std::collections::BTreeMap<String, String> = self.tags(resource).await?.into_iter().collect();
        map.retain(|k, _| !keys.contains(&k.as_str()));
        let store = &self.state.store;
        let done = if map.is_empty() {
            store.delete_aws_resource("tags", resource).await.map(|_| ())
        } else {
            store.put_aws_resource("tags", resource, &json!(map), now()).await
        };
        done.map_err(|e| self.internal(e))
    }

    fn too_many_tags(&self) -> &'static str {
        match self.api {
            Api::Ecr => "TooManyTagsException",
            Api::AppRunner => "InvalidRequestException",
            Api::SecretsManager | Api::Sts => "LimitExceededException",
        }
    }

    /// Tags as given in a request: `[{<key>: …, <value>: …}]` (member names differ by service).
    pub fn read_tags(&self, input: &Input<'_>, member: &str, key: &str, value: &str) -> Result<Vec<(String, String)>, AwsError> {
        let mut out = Vec::new();
        for t in input.structures(member, 0, 200)? {
            let k = t.str_len(key, 1, 128)?;
            let v = t.opt_str_len(value, 0, 256)?.unwrap_or_default();
            if k.to_ascii_lowercase().starts_with("aws:") {
                return Err(input.invalid(format!("tag key `{k}`: the prefix `aws:` is reserved")));
            }
            out.push((k.to_owned(), v.to_owned()));
        }
        Ok(out)
    }
}

/// Tags as AWS lists them: `[{<key>: …, <value>: …}]`.
pub fn tags_json(tags: &[(String, String)], key: &str, value: &str) -> Value {
    Value::Array(tags.iter().map(|(k, v)| json!({ key: k, value: v })).collect())
}

/// One page of `items` from offset `start`, and the next page's token when there is more.
pub fn page<T>(items: Vec<T>, start: usize, max: usize) -> (Vec<T>, Option<String>) {
    let more = items.len() > start + max;
    let page: Vec<T> = items.into_iter().skip(start).take(max).collect();
    (page, more.then(|| (start + max).to_string()))
}

/// A random id in the UUID text form (request and operation ids).
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-{:x}{}-{}", &h[..8], &h[8..12], &h[13..16], 8 | (b[8] & 3), &h[17..20], &h[20..])
}

/// Seconds since the epoch as AWS sends timestamps: a JSON number.
pub fn timestamp(unix: i64) -> Value {
    Value::from(unix)
}

fn error_response(api: Option<Api>, e: &AwsError) -> Response {
    let api = api.unwrap_or(Api::Ecr);
    let body = json!({ "__type": e.kind, api.message_key(): e.message });
    let mut resp = (e.status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(api.content_type()));
    if let Ok(v) = HeaderValue::from_str(e.kind) {
        h.insert("x-amzn-errortype", v);
    }
    resp
}

/// Checks the request's signature and finds its token: the principal, the credential's region
/// and its access key id.
async fn authenticate(
    s: &AppState,
    api: Api,
    parts: &axum::http::request::Parts,
    host: &str,
    body: &[u8],
) -> Result<(Principal, String, String), AwsError> {
    let forbidden = |kind: &'static str, msg: String| AwsError::new(kind, msg).with_status(StatusCode::FORBIDDEN);
    let Some(value) = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token: sign requests with the AWS access key of a berth token (`berth token create NAME --scope … --aws`)".into(),
        ));
    };
    let auth = sigv4::Authorization::parse(value).map_err(|r| forbidden(r.kind, r.message))?;
    if auth.service != api.signing_name() {
        return Err(forbidden(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{}', not '{}'.", api.signing_name(), auth.service),
        ));
    }
    let record = s.auth.aws_token(&s.store, &auth.access_key).await.map_err(|e| AwsError::internal(api, e.message))?;
    let Some(record) = record else {
        return Err(forbidden(
            "UnrecognizedClientException",
            "The security token included in the request is invalid: the access key is unknown, or its token was revoked".into(),
        ));
    };
    let secret = s.auth.aws_secret(&auth.access_key);
    let signed = sigv4::Signed {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        host,
        body,
    };
    s.auth.aws_verifier.verify(&auth, &signed, &secret, now()).map_err(|r| forbidden(r.kind, r.message))?;
    let principal = Principal { token_id: record.id, token_name: record.name, scopes: record.scopes, grants: None };
    Ok((principal, auth.region, auth.access_key))
}

async fn dispatch(call: &Call<'_>, op: &str, input: &Value) -> Result<Value, AwsError> {
    let unknown =
        || AwsError::new("UnknownOperationException", format!("operation `{op}` is not one berth answers for {}", call.api.signing_name()));
    match call.api {
        Api::Ecr => ecr::call(call, op, input).await.unwrap_or_else(|| Err(unknown())),
        Api::SecretsManager => secretsmanager::call(call, op, input).await.unwrap_or_else(|| Err(unknown())),
        Api::AppRunner => apprunner::call(call, op, input).await.unwrap_or_else(|| Err(unknown())),
        Api::Sts => Err(unknown()),
    }
}

fn host_of(headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// `POST /`: one AWS call.
async fn handle(State(s): State<AppState>, req: Request) -> Response {
    let request_id = uuid();
    let target = req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
    let routed = Api::from_target(&target);
    let form = target.is_empty()
        && req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
    let (parts, body) = req.into_parts();
    if form {
        let mut resp = match axum::body::to_bytes(body, MAX_BODY).await {
            Ok(body) => sts::answer(&s, &parts, &host_of(&parts.headers, &parts.uri), &body, &request_id).await,
            Err(_) => (StatusCode::PAYLOAD_TOO_LARGE, "").into_response(),
        };
        stamp(&mut resp, &request_id);
        return resp;
    }
    let result = async {
        let Some((api, op)) = routed else {
            return Err(AwsError::new(
                "UnknownOperationException",
                if target.is_empty() {
                    "POST / takes AWS calls: X-Amz-Target names the operation".to_owned()
                } else {
                    format!("`{target}` is not an operation of ECR, App Runner or Secrets Manager")
                },
            ));
        };
        let body: Bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| AwsError::new("SerializationException", format!("the request body is larger than {MAX_BODY} bytes")))?;
        let host = host_of(&parts.headers, &parts.uri);
        let (principal, region, _) = authenticate(&s, api, &parts, &host, &body).await?;
        let input: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            serde_json::from_slice(&body).map_err(|e| AwsError::new("SerializationException", format!("the body is not JSON: {e}")))?
        };
        if !input.is_object() {
            return Err(AwsError::new("SerializationException", "the body must be a JSON object"));
        }
        let https = parts.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|p| p.eq_ignore_ascii_case("https"));
        let call = Call { state: &s, api, principal, region, host, https };
        tracing::debug!(target = %target, token = %call.principal.token_name, "AWS call");
        dispatch(&call, op, &input).await
    }
    .await;
    let api = routed.map(|(a, _)| a);
    let mut resp = match result {
        Ok(v) => {
            let mut r = (StatusCode::OK, v.to_string()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(api.unwrap_or(Api::Ecr).content_type()));
            r
        }
        Err(e) => error_response(api, &e),
    };
    stamp(&mut resp, &request_id);
    resp
}

/// The headers every answer carries: its request id, and the date (SDKs correct their clock
/// skew from it).
fn stamp(resp: &mut Response, request_id: &str) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    if let Ok(v) = HeaderValue::from_str(&httpdate(now())) {
        h.insert(header::DATE, v);
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate).
fn httpdate(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let day = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][t.weekday().number_days_from_monday() as usize];
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][u8::from(t.month()) as usize - 1];
    format!("{day}, {:02} {month} {} {:02}:{:02}:{:02} GMT", t.day(), t.year(), t.hour(), t.minute(), t.second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_dates_have_aws_shapes() {
        let id = uuid();
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(httpdate(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(httpdate(1_795_000_000), "Wed, 18 Nov 2026 11:06:40 GMT");
    }

    #[test]
    fn targets_name_an_api_and_an_operation() {
        assert_eq!(Api::from_target("AppRunner.CreateService"), Some((Api::AppRunner, "CreateService")));
        assert_eq!(Api::from_target("AmazonEC2ContainerRegistry_V20150921.ListImages"), Some((Api::Ecr, "ListImages")));
        assert_eq!(Api::from_target("secretsmanager.GetSecretValue"), Some((Api::SecretsManager, "GetSecretValue")));
        assert_eq!(Api::from_target("DynamoDB_20120810.GetItem"), None);
        assert_eq!(Api::from_target(""), None);
    }
}

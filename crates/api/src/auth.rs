//! Authentication: API tokens (`berth_<id>_<secret>`, stored as a sha256 of the secret), the
//! short-lived registry bearer tokens of the Docker token flow (HMAC-signed, scoped to
//! repositories), the middleware that turns a request's credentials into a [`Principal`], and
//! the `/token` endpoint.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use berth_core::{Action, Grant, Principal, Scope};
use berth_store::{SharedStore, TokenRecord};
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use crate::{now, ApiError, AppState};

/// Lifetime of a registry bearer token.
pub const BEARER_TTL_SECS: i64 = 300;
const API_TOKEN_PREFIX: &str = "berth_";
const BEARER_PREFIX: &str = "brt.";
/// Registry passwords handed out by ECR's GetAuthorizationToken.
const LOGIN_PREFIX: &str = "brl.";
/// How long a registry password from GetAuthorizationToken lasts (as ECR's).
pub const REGISTRY_LOGIN_TTL_SECS: i64 = 12 * 3600;
/// AWS access key ids: this prefix, the token's id in capitals, four check characters.
const ACCESS_KEY_PREFIX: &str = "AKIA";

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "berth_session";
/// How long a console session lasts from login.
pub const SESSION_TTL_SECS: i64 = 8 * 3600;
const SESSION_PREFIX: &str = "bss_";

/// A console session, attached (with its [`Principal`]) to requests that present its cookie.
#[derive(Debug, Clone)]
pub struct Session {
    /// The anti-forgery value its forms carry.
    pub csrf: String,
    pub expires_at: i64,
}

impl Session {
    /// Whether a form's anti-forgery value is this session's.
    pub fn csrf_matches(&self, given: &str) -> bool {
        constant_time_eq(given.as_bytes(), self.csrf.as_bytes())
    }
}

/// Marks a request whose credentials were present but not valid, so errors can say so.
#[derive(Debug, Clone)]
pub struct InvalidCredentials(pub &'static str);

/// A new API token: its record and the secret string shown once to its creator.
#[derive(Debug)]
pub struct IssuedToken {
    pub record: TokenRecord,
    pub secret: String,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Creates and stores a token with `scopes`; with `aws`, it also signs AWS requests as an access
/// key ([`Authenticator::aws_key`]).
pub async fn issue_token(store: &SharedStore, name: &str, scopes: Vec<Scope>, aws: bool) -> Result<IssuedToken, ApiError> {
    let id = hex::encode(rand::random::<[u8; 6]>());
    let secret = hex::encode(rand::random::<[u8; 20]>());
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        secret_sha256: sha256_hex(&secret),
        scopes,
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        aws,
    };
    store.create_token(&record).await?;
    Ok(IssuedToken { record, secret: format!("{API_TOKEN_PREFIX}{id}_{secret}") })
}

/// Signs and checks registry bearer tokens, and remembers when tokens were last used.
pub struct Authenticator {
    key: [u8; 32],
    /// Checks AWS signatures (keeping derived signing keys a while).
    pub(crate) aws_verifier: crate::aws::sigv4::Verifier,
    last_touch: Mutex<HashMap<String, i64>>,
}

/// A registry password from ECR's GetAuthorizationToken: the token's own rights, for a while.
#[derive(serde::Serialize, serde::Deserialize)]
struct LoginClaims {
    tid: String,
    exp: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BearerClaims {
    tid: String,
    exp: i64,
    grants: Vec<Grant>,
}

impl Authenticator {
    pub fn new(key: [u8; 32]) -> Authenticator {
        Authenticator { key, aws_verifier: Default::default(), last_touch: Mutex::new(HashMap::new()) }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("hmac accepts any key length"))
    }

    /// `prefix`, the claims and their signature.
    fn sign_claims(&self, prefix: &str, claims: &impl serde::Serialize) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{prefix}{payload}.{sig}")
    }

    /// The claims of a value [`Self::sign_claims`] made with `prefix`, if its signature holds.
    fn verify_claims<T: serde::de::DeserializeOwned>(&self, prefix: &str, value: &str) -> Option<T> {
        let rest = value.strip_prefix(prefix)?;
        let (payload, sig) = rest.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = self.mac();
        mac.update(prefix.as_bytes());
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    fn sign_bearer(&self, claims: &BearerClaims) -> String {
        self.sign_claims(BEARER_PREFIX, claims)
    }

    fn verify_bearer(&self, token: &str) -> Option<BearerClaims> {
        self.verify_claims::<BearerClaims>(BEARER_PREFIX, token).filter(|c| c.exp > now())
    }

    /// A registry password (no `:` in it, as `docker login` needs) standing for token `token_id`
    /// until `expires_at`; revoking the token ends it too.
    pub fn registry_login(&self, token_id: &str, expires_at: i64) -> String {
        self.sign_claims(LOGIN_PREFIX, &LoginClaims { tid: token_id.to_owned(), exp: expires_at })
    }

    fn check(&self, what: &str) -> String {
        let mut mac = self.mac();
        mac.update(what.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The AWS access key id of token `token_id`.
    pub fn aws_key(&self, token_id: &str) -> String {
        let check = self.check(&format!("aws key id {token_id}"));
        format!("{ACCESS_KEY_PREFIX}{}{}", token_id.to_ascii_uppercase(), check[..4].to_ascii_uppercase())
    }

    /// The secret access key of access key id `key`. berth stores no copy: it is derived from the
    /// key id under the server's signing key whenever a signature is checked (SigV4 is symmetric,
    /// so the server must be able to compute it; a database alone reveals none).
    pub fn aws_secret(&self, key: &str) -> String {
        let mut mac = self.mac();
        mac.update(b"aws secret access key ");
        mac.update(key.as_bytes());
        STANDARD.encode(&mac.finalize().into_bytes()[..30])
    }

    /// The live token behind AWS access key id `key`, when the key is one of this server's and
    /// its token signs AWS requests.
    pub async fn aws_token(&self, store: &SharedStore, key: &str) -> Result<Option<TokenRecord>, ApiError> {
        let Some(id) = key.strip_prefix(ACCESS_KEY_PREFIX).filter(|rest| rest.len() == 16).map(|rest| rest[..12].to_ascii_lowercase())
        else {
            return Ok(None);
        };
        if !constant_time_eq(self.aws_key(&id).as_bytes(), key.as_bytes()) {
            return Ok(None);
        }
        let Some(record) = self.live_token(store, &id).await?.filter(|t| t.aws) else { return Ok(None) };
        self.touch(store, &record.id).await;
        Ok(Some(record))
    }

    /// Resolves an API token string to its live record.
    async fn api_token(&self, store: &SharedStore, token: &str) -> Result<Option<TokenRecord>, ApiError> {
        let Some((id, secret)) = token.strip_prefix(API_TOKEN_PREFIX).and_then(|t| t.split_once('_')) else {
            return Ok(None);
        };
        let Some(rec) = store.get_token(id).await? else { return Ok(None) };
        let good = constant_time_eq(sha256_hex(secret).as_bytes(), rec.secret_sha256.as_bytes());
        Ok((good && rec.revoked_at.is_none()).then_some(rec))
    }

    async fn live_token(&self, store: &SharedStore, id: &str) -> Result<Option<TokenRecord>, ApiError> {
        Ok(store.get_token(id).await?.filter(|t| t.revoked_at.is_none()))
    }

    /// The principal behind an `Authorization` header value, if its credentials are valid.
    pub async fn principal(&self, store: &SharedStore, authorization: &str) -> Result<Option<Principal>, ApiError> {
        let (scheme, value) = authorization.split_once(' ').unwrap_or((authorization, ""));
        let value = value.trim();
        let (record, grants) = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = STANDARD.decode(value).ok().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
            let password = decoded.split_once(':').map(|(_, p)| p).unwrap_or("");
            if password.starts_with(LOGIN_PREFIX) {
                match self.verify_claims::<LoginClaims>(LOGIN_PREFIX, password).filter(|c| c.exp > now()) {
                    Some(c) => (self.live_token(store, &c.tid).await?, None),
                    None => (None, None),
                }
            } else {
                (self.api_token(store, password).await?, None)
            }
        } else if scheme.eq_ignore_ascii_case("bearer") && value.starts_with(BEARER_PREFIX) {
            match self.verify_bearer(value) {
                Some(c) => (self.live_token(store, &c.tid).await?, Some(c.grants)),
                None => (None, None),
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            (self.api_token(store, value).await?, None)
        } else {
            (None, None)
        };
        let Some(record) = record else { return Ok(None) };
        self.touch(store, &record.id).await;
        Ok(Some(Principal { token_id: record.id, token_name: record.name, scopes: record.scopes, grants }))
    }

    /// Opens a console session for the API token `token` (as pasted at login): the cookie value
    /// to set, and the session's principal and session; `None` when the token is not valid.
    pub async fn open_session(&self, store: &SharedStore, token: &str) -> Result<Option<(String, Principal, Session)>, ApiError> {
        let Some(record) = self.api_token(store, token.trim()).await? else { return Ok(None) };
        let secret = format!("{SESSION_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
        let session = Session { csrf: hex::encode(rand::random::<[u8; 16]>()), expires_at: now() + SESSION_TTL_SECS };
        let _ = store.prune_sessions(now()).await;
        store
            .create_session(&berth_store::SessionRecord {
                id_sha256: sha256_hex(&secret),
                token_id: record.id.clone(),
                csrf: session.csrf.clone(),
                created_at: now(),
                expires_at: session.expires_at,
            })
            .await?;
        self.touch(store, &record.id).await;
        let principal = Principal { token_id: record.id, token_name: record.name, scopes: record.scopes, grants: None };
        Ok(Some((secret, principal, session)))
    }

    /// The session a cookie value names, while it lasts and its token is not revoked.
    pub async fn session(&self, store: &SharedStore, cookie: &str) -> Result<Option<(Principal, Session)>, ApiError> {
        if !cookie.starts_with(SESSION_PREFIX) {
            return Ok(None);
        }
        let Some(rec) = store.get_session(&sha256_hex(cookie)).await? else { return Ok(None) };
        if rec.expires_at <= now() {
            return Ok(None);
        }
        let Some(token) = self.live_token(store, &rec.token_id).await? else { return Ok(None) };
        self.touch(store, &token.id).await;
        let principal = Principal { token_id: token.id, token_name: token.name, scopes: token.scopes, grants: None };
        Ok(Some((principal, Session { csrf: rec.csrf, expires_at: rec.expires_at })))
    }

    /// Ends the session a cookie value names.
    pub async fn close_session(&self, store: &SharedStore, cookie: &str) -> Result<(), ApiError> {
        store.delete_session(&sha256_hex(cookie)).await?;
        Ok(())
    }

    async fn touch(&self, store: &SharedStore, id: &str) {
        let t = now();
        {
            let mut last = self.last_touch.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(id).is_some_and(|&at| t - at < 60) {
                return;
            }
            last.insert(id.to_owned(), t);
        }
        if let Err(e) = store.touch_token(id, t).await {
            tracing::warn!(error = %e, token = id, "recording token use failed");
        }
    }
}

/// The value of the console's session cookie in a request's `Cookie` headers.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: attaches the caller's [`Principal`] to the request when its credentials are valid.
/// The REST API and `/metrics` answer a caller without valid credentials here, before anything
/// reads the request's body; the registry and `/token` answer with their own challenges.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let mut invalid = None;
    if let Some(auth) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned) {
        match state.auth.principal(&state.store, &auth).await {
            Ok(Some(p)) => {
                req.extensions_mut().insert(p);
            }
            Ok(None) => {
                let i = InvalidCredentials("the presented token is invalid, expired or revoked");
                invalid = Some(i.clone());
                req.extensions_mut().insert(i);
            }
            Err(e) => return e.into_response(),
        }
    }
    let path = req.uri().path().to_owned();
    let api = path.starts_with("/api/") || path == "/metrics" || path.starts_with("/v2") || path == "/token";
    // The console's pages take a session cookie instead; the API never does (a page of another
    // site cannot make a browser call it with the user's rights).
    if !api && req.extensions().get::<Principal>().is_none() {
        if let Some(cookie) = session_cookie(req.headers()) {
            match state.auth.session(&state.store, &cookie).await {
                Ok(Some((principal, session))) => {
                    req.extensions_mut().insert(principal);
                    req.extensions_mut().insert(session);
                }
                Ok(None) => {}
                Err(e) => return e.into_response(),
            }
        }
    }
    if (path.starts_with("/api/") || path == "/metrics") && req.extensions().get::<Principal>().is_none() {
        let msg = invalid.map(|i| i.0).unwrap_or("authentication required; pass a berth token as `Authorization: Bearer <token>`");
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", msg).into_response();
    }
    next.run(req).await
}

/// `GET /token`: the Docker token flow. Basic credentials in, a bearer token out, granting what
/// was asked for within what the API token allows.
pub async fn token_endpoint(State(state): State<AppState>, req: Request) -> Response {
    let principal = req.extensions().get::<Principal>().cloned();
    let Some(principal) = principal else {
        let mut resp =
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "log in with any user name and a berth token as the password")
                .into_response();
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"berth\""));
        return resp;
    };
    let scopes: Vec<String> = berth_core::query::query_values(req.uri().query(), "scope").collect();
    let grants = scopes.iter().filter_map(|s| grant_for(&principal, s)).collect();
    let claims = BearerClaims { tid: principal.token_id.clone(), exp: now() + BEARER_TTL_SECS, grants };
    let token = state.auth.sign_bearer(&claims);
    let issued = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    axum::Json(serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": BEARER_TTL_SECS,
        "issued_at": issued,
    }))
    .into_response()
}

/// The grant a requested scope `repository:<name>:<actions>` yields for the principal.
fn grant_for(p: &Principal, scope: &str) -> Option<Grant> {
    let rest = scope.strip_prefix("repository:")?;
    let (name, actions) = rest.rsplit_once(':')?;
    let mut g = Grant { repository: name.to_owned(), pull: false, push: false };
    for a in actions.split(',') {
        match a {
            "pull" => g.pull = p.allows(Action::Pull(name)),
            "push" | "delete" | "*" => {
                g.push = p.allows(Action::Push(name));
                g.pull |= p.allows(Action::Pull(name));
            }
            _ => {}
        }
    }
    (g.pull || g.push).then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_end_when_they_expire_are_closed_or_their_token_is_revoked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: SharedStore = std::sync::Arc::new(berth_store::SqliteStore::open(&dir.path().join("state.db"))?);
        let a = Authenticator::new([7; 32]);
        let issued = issue_token(&store, "web", vec![Scope::ReadOnly], false).await.map_err(|e| e.message)?;
        assert!(a.open_session(&store, "berth_nope_nope").await.map_err(|e| e.message)?.is_none());
        let (cookie, principal, session) = a.open_session(&store, &issued.secret).await.map_err(|e| e.message)?.ok_or("no session")?;
        assert_eq!(principal.token_name, "web");
        assert!(session.csrf_matches(&session.csrf) && !session.csrf_matches("x") && !session.csrf_matches(""));
        assert!(a.session(&store, &cookie).await.map_err(|e| e.message)?.is_some());
        assert!(a.session(&store, "bss_other").await.map_err(|e| e.message)?.is_none());
        // Expired: as if it had been opened SESSION_TTL_SECS ago.
        let expired = berth_store::SessionRecord {
            id_sha256: sha256_hex("bss_old"),
            token_id: issued.record.id.clone(),
            csrf: "c".into(),
            created_at: now() - SESSION_TTL_SECS,
            expires_at: now(),
        };
        store.create_session(&expired).await?;
        assert!(a.session(&store, "bss_old").await.map_err(|e| e.message)?.is_none(), "an expired session still works");
        a.close_session(&store, &cookie).await.map_err(|e| e.message)?;
        assert!(a.session(&store, &cookie).await.map_err(|e| e.message)?.is_none(), "a closed session still works");
        let (cookie, _, _) = a.open_session(&store, &issued.secret).await.map_err(|e| e.message)?.ok_or("no session")?;
        store.revoke_token(&issued.record.id, now()).await?;
        assert!(a.session(&store, &cookie).await.map_err(|e| e.message)?.is_none(), "a revoked token's session still works");
        Ok(())
    }

    #[test]
    fn bearer_tokens_are_signed_and_expire() {
        let a = Authenticator::new([7; 32]);
        let t = a.sign_bearer(&BearerClaims { tid: "x".into(), exp: now() + 60, grants: vec![] });
        assert!(a.verify_bearer(&t).is_some());
        let forged = t.replace("brt.", "brt.A");
        assert!(a.verify_bearer(&forged).is_none());
        assert!(Authenticator::new([8; 32]).verify_bearer(&t).is_none());
        let old = a.sign_bearer(&BearerClaims { tid: "x".into(), exp: now() - 1, grants: vec![] });
        assert!(a.verify_bearer(&old).is_none());
    }

    #[test]
    fn grants_are_within_the_token() {
        let p = Principal {
            token_id: "t".into(),
            token_name: "t".into(),
            scopes: vec!["push:web".parse().unwrap_or(Scope::ReadOnly)],
            grants: None,
        };
        assert_eq!(grant_for(&p, "repository:web:pull,push"), Some(Grant { repository: "web".into(), pull: true, push: true }));
        assert_eq!(grant_for(&p, "repository:other:pull,push"), None);
        assert_eq!(grant_for(&p, "registry:catalog:*"), None);
    }
}

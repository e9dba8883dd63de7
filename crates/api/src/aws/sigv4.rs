//! AWS Signature Version 4, checked on the server: the `Authorization` header parsed, the
//! canonical request rebuilt from what was sent (the headers the client says it signed, in its
//! order), the signing key derived (and kept a while per key, day, region and service), and the
//! signature compared in constant time. The request's date must be within [`MAX_SKEW_SECS`] of
//! the server's clock and name the same day as the credential scope.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use berth_core::query::percent_decode;
use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

/// How far a request's date may be from the server's clock, either way (AWS allows 5 minutes
/// for API calls).
pub const MAX_SKEW_SECS: i64 = 5 * 60;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Signing keys kept for reuse; the cache starts over when it holds this many.
const KEY_CACHE: usize = 1024;

/// Why a request's signature was not accepted: the AWS error type and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: &'static str,
    pub message: String,
}

fn refuse(kind: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { kind, message: message.into() }
}

fn incomplete(message: impl Into<String>) -> Refusal {
    refuse("IncompleteSignatureException", message)
}

/// The parts of an `Authorization: AWS4-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key: String,
    /// `yyyymmdd`.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case header names, as the client listed them.
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl Authorization {
    /// Parses the header's value; a value of another scheme, or one missing a part, is refused
    /// with the message AWS gives.
    pub fn parse(value: &str) -> Result<Authorization, Refusal> {
        let Some(rest) = value.strip_prefix(ALGORITHM).filter(|r| r.starts_with(' ')) else {
            return Err(incomplete(format!(
                "Authorization header requires the {ALGORITHM} algorithm (Signature Version 4); got `{}`",
                value.split_whitespace().next().unwrap_or("")
            )));
        };
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').ok_or_else(|| incomplete(format!("Authorization header part `{part}` is not key=value")))?;
            fields.insert(k.trim(), v.trim());
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| incomplete(format!("Authorization header requires '{k}' parameter. Authorization={}", value)))
        };
        let credential = get("Credential")?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [key, date, region, service, terminator] = scope[..] else {
            return Err(incomplete(format!(
                "Credential should be scoped to a valid region, service and date: `{credential}` is not <key>/<yyyymmdd>/<region>/<service>/aws4_request"
            )));
        };
        if terminator != "aws4_request" {
            return Err(incomplete(format!("Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'")));
        }
        if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
            return Err(incomplete(format!("Credential date `{date}` is not yyyymmdd")));
        }
        if key.is_empty() || region.is_empty() || service.is_empty() {
            return Err(incomplete(format!("Credential `{credential}` lacks a key, region or service")));
        }
        let signed_headers: Vec<String> = get("SignedHeaders")?.split(';').map(|h| h.trim().to_ascii_lowercase()).collect();
        let signature = get("Signature")?;
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(incomplete("Signature is not 64 hexadecimal digits"));
        }
        if !signed_headers.iter().any(|h| h == "host") {
            return Err(incomplete("SignedHeaders must include `host`"));
        }
        Ok(Authorization {
            access_key: key.to_owned(),
            date: date.to_owned(),
            region: region.to_owned(),
            service: service.to_owned(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// What was sent, as the signature covers it.
pub struct Signed<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// The `Host` (or HTTP/2 `:authority`) the client sent.
    pub host: &'a str,
    pub body: &'a [u8],
}

/// RFC 3986 unreserved characters stay; everything else is `%XX`.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// A header value as signed: trimmed, runs of spaces made one.
fn canonical_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v).split_whitespace().collect::<Vec<_>>().join(" ")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The canonical request of `req` for `auth`, and the date it carries (`X-Amz-Date`).
pub fn canonical_request(auth: &Authorization, req: &Signed<'_>) -> Result<String, Refusal> {
    // Paths are encoded once more (every service but S3 does so), segment by segment.
    let path = if req.path.is_empty() { "/" } else { req.path };
    let mut out = format!("{}\n{}\n{}\n", req.method, uri_encode(path, true), canonical_query(req.query));
    for name in &auth.signed_headers {
        let value = if name == "host" {
            req.host.to_owned()
        } else {
            let values: Vec<String> = req.headers.get_all(name.as_str()).iter().map(|v| canonical_value(v.as_bytes())).collect();
            if values.is_empty() {
                return Err(refuse(
                    "InvalidSignatureException",
                    format!("The request signature we calculated does not match the signature you provided: signed header `{name}` was not sent"),
                ));
            }
            values.join(",")
        };
        out.push_str(&format!("{name}:{value}\n"));
    }
    out.push('\n');
    out.push_str(&auth.signed_headers.join(";"));
    out.push('\n');
    let body_hash = sha256_hex(req.body);
    match req.headers.get("x-amz-content-sha256").map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned()) {
        Some(v) if v == "UNSIGNED-PAYLOAD" => out.push_str(&v),
        Some(v) if !v.eq_ignore_ascii_case(&body_hash) => {
            return Err(refuse("InvalidSignatureException", "The provided 'x-amz-content-sha256' header does not match what was computed."))
        }
        Some(v) => out.push_str(&v.to_ascii_lowercase()),
        None => out.push_str(&body_hash),
    }
    Ok(out)
}

/// Seconds since the epoch of an `X-Amz-Date` (`yyyymmddThhmmssZ`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r).filter(|d| d.bytes().all(|c| c.is_ascii_digit()))?.parse::<u32>().ok();
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(i32::try_from(num(0..4)?).ok()?, month, u8::try_from(num(6..8)?).ok()?).ok()?;
    let t =
        time::Time::from_hms(u8::try_from(num(9..11)?).ok()?, u8::try_from(num(11..13)?).ok()?, u8::try_from(num(13..15)?).ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp())
}

fn amz_date(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}{:02}{:02}T{:02}{:02}{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// What a signing key is derived from: secret, access key, day, region, service.
type KeyScope = (String, String, String, String, String);

/// Checks signatures, keeping derived signing keys for reuse.
#[derive(Default)]
pub struct Verifier {
    keys: Mutex<HashMap<KeyScope, [u8; 32]>>,
}

impl Verifier {
    fn signing_key(&self, secret: &str, auth: &Authorization) -> [u8; 32] {
        let id = (secret.to_owned(), auth.access_key.clone(), auth.date.clone(), auth.region.clone(), auth.service.clone());
        if let Some(k) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return *k;
        }
        let k_date = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
        let k_region = hmac(&k_date, auth.region.as_bytes());
        let k_service = hmac(&k_region, auth.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= KEY_CACHE {
            keys.clear();
        }
        keys.insert(id, key);
        key
    }

    /// Whether `req` was signed as `auth` says with `secret`, at a time within the skew of `now`.
    pub fn verify(&self, auth: &Authorization, req: &Signed<'_>, secret: &str, now: i64) -> Result<(), Refusal> {
        let date_header = req.headers.get("x-amz-date").map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned());
        let Some(date) = date_header else {
            return Err(incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header; send X-Amz-Date"));
        };
        if !auth.signed_headers.iter().any(|h| h == "x-amz-date") {
            return Err(incomplete("SignedHeaders must include `x-amz-date`"));
        }
        let at = parse_amz_date(&date).ok_or_else(|| incomplete(format!("X-Amz-Date `{date}` is not yyyymmddThhmmssZ")))?;
        if !date.starts_with(&auth.date) {
            return Err(refuse(
                "InvalidSignatureException",
                format!(
                    "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                    auth.date,
                    &date[..8]
                ),
            ));
        }
        if at < now - MAX_SKEW_SECS {
            return Err(refuse(
                "InvalidSignatureException",
                format!("Signature expired: {date} is now earlier than {} ({} - 5 min.)", amz_date(now - MAX_SKEW_SECS), amz_date(now)),
            ));
        }
        if at > now + MAX_SKEW_SECS {
            return Err(refuse(
                "InvalidSignatureException",
                format!(
                    "Signature not yet current: {date} is still later than {} ({} + 5 min.)",
                    amz_date(now + MAX_SKEW_SECS),
                    amz_date(now)
                ),
            ));
        }
        let canonical = canonical_request(auth, req)?;
        let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
        let to_sign = format!("{ALGORITHM}\n{date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
        let expected = hex::encode(hmac(&self.signing_key(secret, auth), to_sign.as_bytes()));
        if crate::auth::constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
            Ok(())
        } else {
            Err(refuse(
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            ))
        }
    }
}

/// Signs a request as an AWS SDK would (the tests' and the benchmark's client): the
/// `Authorization` value for `headers` (which must hold `x-amz-date`), signing every header given
/// plus `host`.
pub fn sign(key: &str, secret: &str, region: &str, service: &str, req: &Signed<'_>) -> String {
    let date = req.headers.get("x-amz-date").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
    let mut names: Vec<String> = req.headers.keys().map(|k| k.as_str().to_owned()).chain(["host".to_owned()]).collect();
    names.sort();
    names.dedup();
    let auth = Authorization {
        access_key: key.into(),
        date: date.get(..8).unwrap_or_default().into(),
        region: region.into(),
        service: service.into(),
        signed_headers: names,
        signature: String::new(),
    };
    let canonical = canonical_request(&auth, req).unwrap_or_default();
    let scope = format!("{}/{region}/{service}/aws4_request", auth.date);
    let to_sign = format!("{ALGORITHM}\n{date}\n{scope}\n{}", sha256_hex(canonical.as_bytes()));
    let signature = hex::encode(hmac(&Verifier::default().signing_key(secret, &auth), to_sign.as_bytes()));
    format!("{ALGORITHM} Credential={key}/{scope}, SignedHeaders={}, Signature={signature}", auth.signed_headers.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")));
        }
        h
    }

    /// AWS's own example (the IAM ListUsers request of the SigV4 documentation): its published
    /// canonical request hash and signature.
    #[test]
    fn the_documented_example_verifies() -> Result<(), Refusal> {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded; charset=utf-8"), ("x-amz-date", "20150830T123600Z")]);
        let auth = Authorization::parse(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        )?;
        let req = Signed {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &h,
            host: "iam.amazonaws.com",
            body: b"",
        };
        let canonical = canonical_request(&auth, &req)?;
        assert_eq!(sha256_hex(canonical.as_bytes()), "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
        let now = parse_amz_date("20150830T123600Z").unwrap_or_default();
        let v = Verifier::default();
        v.verify(&auth, &req, SECRET, now)?;
        // Again from the cached key.
        v.verify(&auth, &req, SECRET, now + 60)?;
        assert_eq!(v.verify(&auth, &req, "another secret", now).map_err(|r| r.kind), Err("InvalidSignatureException"));
        let late = v.verify(&auth, &req, SECRET, now + MAX_SKEW_SECS + 1).map_err(|r| r.message).err().unwrap_or_default();
        assert!(late.starts_with("Signature expired: 20150830T123600Z is now earlier than"), "{late}");
        let early = v.verify(&auth, &req, SECRET, now - MAX_SKEW_SECS - 1).map_err(|r| r.message).err().unwrap_or_default();
        assert!(early.starts_with("Signature not yet current"), "{early}");
        // A changed body, header or host breaks it.
        for changed in [
            Signed { body: b"x", ..req },
            Signed { host: "iam.amazonaws.com:443", ..req },
            Signed { query: "Action=ListUsers&Version=2010-05-09", ..req },
        ] {
            assert_eq!(v.verify(&auth, &changed, SECRET, now).map_err(|r| r.kind), Err("InvalidSignatureException"));
        }
        Ok(())
    }

    #[test]
    fn what_sign_signs_verifies() -> Result<(), Refusal> {
        let h = headers(&[
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-date", "20261126T101010Z"),
            ("x-amz-target", "AmazonEC2ContainerRegistry_V20150921.DescribeRepositories"),
            ("x-amz-content-sha256", &sha256_hex(b"{}")),
        ]);
        let req = Signed { method: "POST", path: "/", query: "", headers: &h, host: "127.0.0.1:7080", body: b"{}" };
        let value = sign("AKIAEXAMPLE", SECRET, "local-1", "ecr", &req);
        let auth = Authorization::parse(&value)?;
        assert_eq!((auth.region.as_str(), auth.service.as_str(), auth.date.as_str()), ("local-1", "ecr", "20261126"));
        let now = parse_amz_date("20261126T101010Z").unwrap_or_default();
        Verifier::default().verify(&auth, &req, SECRET, now)?;
        // A payload hash that is not the body's.
        let other = Signed { body: b"{\"a\":1}", ..req };
        assert_eq!(Verifier::default().verify(&auth, &other, SECRET, now).map_err(|r| r.kind), Err("InvalidSignatureException"));
        Ok(())
    }

    #[test]
    fn malformed_headers_say_what_is_missing() {
        let cases = [
            ("Bearer abc", "IncompleteSignatureException"),
            ("AWS4-HMAC-SHA256 Credential=AKID/20261126/r/s/aws4_request, SignedHeaders=host", "IncompleteSignatureException"),
            ("AWS4-HMAC-SHA256 Credential=AKID/2026/r/s/aws4_request, SignedHeaders=host, Signature=00", "IncompleteSignatureException"),
            ("AWS4-HMAC-SHA256 Credential=AKID/20261126/r/aws4_request, SignedHeaders=host, Signature=00", "IncompleteSignatureException"),
            ("AWS4-HMAC-SHA256 garbage", "IncompleteSignatureException"),
        ];
        for (value, kind) in cases {
            assert_eq!(Authorization::parse(value).map_err(|r| r.kind).err(), Some(kind), "{value}");
        }
        assert!(parse_amz_date("20261126T250000Z").is_none());
        assert!(parse_amz_date("2026-11-26T10:00:00Z").is_none());
        assert_eq!(parse_amz_date("19700101T000001Z"), Some(1));
    }
}

//! `GET /api/v1/services/{name}/access-log`: the router's access log (JSON lines), searched for
//! one service's requests: by text (in the method, path, host, client or request id), status
//! (a code or a class such as `5xx`) and time range. The newest [`SCANNED_BYTES`] of the log
//! (and of its rotated file, when the log is shorter) are searched, newest records last.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use axum::extract::{Path as UrlPath, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use berth_core::Action;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::caller::Caller;
use crate::{ApiError, AppState};

/// How much of the log's end is searched.
pub const SCANNED_BYTES: u64 = 16 << 20;
/// The most records one answer has.
const MAX_LIMIT: usize = 5000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/services/{name}/access-log", get(search))
}

/// What to look for.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AccessQuery {
    /// Text in the method, path, host, client address or request id.
    pub q: Option<String>,
    /// A status code (`404`) or class (`5xx`).
    pub status: Option<String>,
    /// The instance (its id) or revision (its number) that answered.
    pub instance: Option<String>,
    pub revision: Option<String>,
    /// RFC 3339 times (or their prefixes, `2026-11-30T16:05`): records that ended in the range.
    pub from: Option<String>,
    pub to: Option<String>,
    /// The newest this many records (default 200).
    pub limit: Option<usize>,
}

impl AccessQuery {
    fn matches(&self, r: &Value) -> bool {
        let text = |k: &str| r[k].as_str().unwrap_or("");
        if let Some(q) = self.q.as_deref().filter(|q| !q.is_empty()) {
            let q = q.to_lowercase();
            if !["method", "path", "host", "client", "request_id"].iter().any(|k| text(k).to_lowercase().contains(&q)) {
                return false;
            }
        }
        if let Some(status) = self.status.as_deref().filter(|s| !s.is_empty()) {
            let code = r["status"].as_u64().unwrap_or(0);
            let ok = match status.strip_suffix("xx") {
                Some(class) => class.parse::<u64>().is_ok_and(|c| code / 100 == c),
                None => status.parse::<u64>().is_ok_and(|c| c == code),
            };
            if !ok {
                return false;
            }
        }
        if let Some(i) = self.instance.as_deref().filter(|i| !i.is_empty()) {
            if text("instance") != i {
                return false;
            }
        }
        if let Some(rev) = self.revision.as_deref().map(str::trim).filter(|r| !r.is_empty()) {
            if r["revision"].as_u64().map(|n| n.to_string()).as_deref() != Some(rev) {
                return false;
            }
        }
        let ts = text("ts");
        let after_from = self.from.as_deref().is_none_or(|f| f.is_empty() || ts >= f);
        let before_to = self.to.as_deref().is_none_or(|t| t.is_empty() || ts[..t.len().min(ts.len())] <= *t);
        after_from && before_to
    }
}

/// The newest records of `service` in the access log at `path` that match `query`, oldest first.
pub fn search_log(path: &Path, service: &str, query: &AccessQuery) -> std::io::Result<Vec<Value>> {
    let limit = query.limit.unwrap_or(200).clamp(1, MAX_LIMIT);
    let mut text = tail(path, SCANNED_BYTES)?;
    if (text.len() as u64) < SCANNED_BYTES {
        let mut rotated = path.as_os_str().to_owned();
        rotated.push(".1");
        let older = tail(Path::new(&rotated), SCANNED_BYTES - text.len() as u64).unwrap_or_default();
        text = older + &text;
    }
    let mut found: Vec<Value> = text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["service"].as_str() == Some(service) && query.matches(r))
        .take(limit)
        .collect();
    found.reverse();
    Ok(found)
}

/// The last `bytes` of a file (from its first whole line), or nothing when it does not exist.
fn tail(path: &Path, bytes: u64) -> std::io::Result<String> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(bytes);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(bytes).read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    Ok(match start {
        0 => text,
        _ => text.split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default(),
    })
}

async fn search(
    State(s): State<AppState>,
    caller: Caller,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<AccessQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Action::Read)?;
    let Some(path) = s.access_log.clone() else {
        return Err(ApiError::invalid("the access log is off (router.access_log = \"off\"); turn it on to search it"));
    };
    let service = name.clone();
    let records = tokio::task::spawn_blocking(move || search_log(&path, &service, &q))
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("reading the access log: {e}")))?;
    Ok(Json(json!({ "service": name, "records": records })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_searched_by_service_text_status_and_time() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("access.log");
        let record = |ts: &str, service: &str, path: &str, status: u16| {
            json!({"ts": ts, "service": service, "method": "GET", "path": path, "host": "h", "client": "127.0.0.1", "request_id": "r", "status": status, "instance": format!("{service}-{}-abc", status / 100), "revision": status / 100}).to_string()
        };
        let old = [record("2026-11-30T10:00:00Z", "web", "/old", 200)].join("\n") + "\n";
        std::fs::write(dir.path().join("access.log.1"), old)?;
        let lines = [
            record("2026-11-30T11:00:00Z", "web", "/a", 200),
            record("2026-11-30T11:00:01Z", "api", "/a", 500),
            record("2026-11-30T11:00:02Z", "web", "/b", 503),
            "not json".to_owned(),
            record("2026-11-30T11:05:00Z", "web", "/c", 404),
        ];
        std::fs::write(&path, lines.join("\n") + "\n")?;
        let paths = |q: AccessQuery| -> Result<Vec<String>, std::io::Error> {
            Ok(search_log(&path, "web", &q)?.iter().map(|r| r["path"].as_str().unwrap_or("").to_owned()).collect())
        };
        assert_eq!(paths(AccessQuery::default())?, ["/old", "/a", "/b", "/c"]);
        assert_eq!(paths(AccessQuery { status: Some("5xx".into()), ..Default::default() })?, ["/b"]);
        assert_eq!(paths(AccessQuery { status: Some("404".into()), ..Default::default() })?, ["/c"]);
        assert_eq!(paths(AccessQuery { q: Some("/B".into()), ..Default::default() })?, ["/b"]);
        let window = AccessQuery { from: Some("2026-11-30T11".into()), to: Some("2026-11-30T11:00".into()), ..Default::default() };
        assert_eq!(paths(window)?, ["/a", "/b"]);
        assert_eq!(paths(AccessQuery { limit: Some(1), ..Default::default() })?, ["/c"]);
        assert_eq!(paths(AccessQuery { revision: Some("5".into()), ..Default::default() })?, ["/b"]);
        assert_eq!(paths(AccessQuery { instance: Some("web-4-abc".into()), ..Default::default() })?, ["/c"]);
        assert!(search_log(&dir.path().join("none.log"), "web", &AccessQuery::default())?.is_empty());
        Ok(())
    }
}

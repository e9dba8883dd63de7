//! A small blocking HTTP client for the berth API: finds the server and token, sends JSON and
//! turns API errors into messages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::GlobalArgs;

/// Where `berth login` keeps the server and token.
pub fn login_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("berth").join("login.json"))
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// Encodes one path segment (a repository name keeps its `/` as `%2F`).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).timeout(Duration::from_secs(600)).build();
        Client { agent, base: base.trim_end_matches('/').to_owned(), token }
    }

    /// The client the global options, the login file or the local data directory point at.
    pub fn from_args(g: &GlobalArgs) -> anyhow::Result<Client> {
        let saved: Option<Value> = login_file().and_then(|f| std::fs::read(f).ok()).and_then(|b| serde_json::from_slice(&b).ok());
        let saved_str = |k: &str| saved.as_ref().and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_owned);
        let data_dir = g.data_dir.clone().unwrap_or_else(|| PathBuf::from(".berth"));
        let local_server = read_trimmed(&data_dir.join("api-address"));
        let local_token = read_trimmed(&data_dir.join("admin-token"));
        let local = (local_server, local_token);
        let login = (saved_str("server"), saved_str("token"));
        let (server, token) = match &g.server {
            // An explicit server: its token is the flag, or whichever saved token belongs to it.
            Some(s) => {
                let known = [&login, &local].into_iter().find(|(srv, _)| srv.as_deref() == Some(s.as_str())).and_then(|(_, t)| t.clone());
                (s.clone(), g.token.clone().or(known))
            }
            // An explicit data directory, or no login: the server on this host.
            None if g.data_dir.is_some() && local.0.is_some() || login.0.is_none() => {
                (local.0.unwrap_or_else(|| "http://127.0.0.1:7070".into()), g.token.clone().or(local.1))
            }
            None => (login.0.unwrap_or_default(), g.token.clone().or(login.1)),
        };
        Ok(Client::new(&server, token))
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let mut r = self.agent.request(method, &format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        r
    }

    fn finish(&self, res: Result<ureq::Response, ureq::Error>) -> anyhow::Result<Value> {
        match res {
            Ok(resp) => {
                let text = resp.into_string().context("reading the server's response")?;
                if text.trim().is_empty() {
                    Ok(Value::Null)
                } else {
                    serde_json::from_str(&text).context("the server's response is not JSON")
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // The API's envelope, or the registry's (`{"errors":[{"code","message"}]}`).
                let message = body.pointer("/error/message").or_else(|| body.pointer("/errors/0/message"));
                let msg = message.and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| match text.trim() {
                    "" => format!("HTTP {code}"),
                    t => format!("HTTP {code}: {}", t.chars().take(500).collect::<String>()),
                });
                if code == 401 && self.token.is_none() {
                    bail!("{msg}\nno token found: run `berth login {}`, pass --token, or run on the server host", self.base);
                }
                Err(anyhow!("{msg}"))
            }
            Err(ureq::Error::Transport(t)) if matches!(t.kind(), ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed) => {
                Err(anyhow!("cannot reach the berth server at {}: {t}\nis `berth server` running? pass --server to use another", self.base))
            }
            Err(ureq::Error::Transport(t)) => {
                Err(anyhow!("the connection to the berth server at {} broke: {t}\nsee the server's log", self.base))
            }
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(self.request("GET", path).call())
    }

    /// Every page of a list endpoint, following `next`: the first page's answer with the items
    /// of all pages under `key`.
    pub fn get_all(&self, path: &str, key: &str) -> anyhow::Result<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut first: Option<Value> = None;
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let cursor = after.as_deref().map(|a| format!("&after={}", segment(a))).unwrap_or_default();
            let mut page = self.get(&format!("{path}{sep}limit=1000{cursor}"))?;
            items.extend(page.get_mut(key).and_then(Value::as_array_mut).map(std::mem::take).unwrap_or_default());
            after = match page.get("next") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            first.get_or_insert(page);
            if after.is_none() {
                break;
            }
        }
        let mut whole = first.unwrap_or_else(|| Value::Object(Default::default()));
        whole[key] = Value::Array(items);
        whole["next"] = Value::Null;
        Ok(whole)
    }

    /// A GET whose answer is text, not JSON.
    pub fn get_text(&self, path: &str) -> anyhow::Result<String> {
        match self.request("GET", path).call() {
            Ok(r) => Ok(r.into_string()?),
            Err(e) => self.finish(Err(e)).map(|_| String::new()),
        }
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.finish(self.request("DELETE", path).call())
    }

    /// Whether a registry path answers 200 to HEAD.
    pub fn exists(&self, path: &str) -> anyhow::Result<bool> {
        match self.request("HEAD", path).call() {
            Ok(r) => Ok(r.status() == 200),
            Err(ureq::Error::Status(404, _)) => Ok(false),
            Err(e) => self.finish(Err(e)).map(|_| false),
        }
    }

    /// Sends raw bytes to a registry endpoint, returning the response's `Docker-Content-Digest`.
    pub fn put_bytes(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> anyhow::Result<Option<String>> {
        match self.request(method, path).set("Content-Type", content_type).send_bytes(body) {
            Ok(r) => Ok(r.header("Docker-Content-Digest").map(str::to_owned)),
            Err(ureq::Error::Status(code, resp)) => {
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                let msg =
                    body.pointer("/errors/0/message").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| format!("HTTP {code}"));
                Err(anyhow!("{msg}"))
            }
            Err(e) => self.finish(Err(e)).map(|_| None),
        }
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.finish(self.request(method, path).send_json(body.clone()))
    }
}

//! A small W3C WebDriver client over HTTP for the browser tests: Debian's chromedriver driving
//! headless Chromium. Only what the tests use: navigation, elements, typing and clicking, key
//! presses, scripts, cookies and screenshots.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::Result;

/// The key WebDriver names an element reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";

/// chromedriver, started for a test and stopped (with its browser) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

/// A reference to an element of the page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium with a profile of its own; `None` when
    /// Chromium or chromedriver is not installed (`cargo xtask test` installs them).
    pub fn start() -> Result<Option<Browser>> {
        let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chromium).exists() || !std::path::Path::new(driver).exists() {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(driver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let profile = tempfile::tempdir()?;
        let mut b = Browser { driver: child, base: format!("http://127.0.0.1:{port}"), session: String::new(), _profile: profile };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{}/status", b.base)).call().is_err() {
            if Instant::now() > deadline {
                return Err("chromedriver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags keep Chromium from reaching out to the network on its own.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", b._profile.path().display()),
        ];
        let caps =
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}}}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"].as_str().ok_or_else(|| format!("no session: {v}"))?.to_owned();
        Ok(Some(b))
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let resp = match body {
            Some(b) => req.send_json(b),
            None if method == "POST" => req.send_json(json!({})),
            None => req.call(),
        };
        let v: Value = match resp {
            Ok(r) => r.into_json()?,
            Err(ureq::Error::Status(_, r)) => {
                let v: Value = r.into_json()?;
                return Err(format!("webdriver {method} {path}: {}", v["value"]["message"]).into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(v["value"].clone())
    }

    fn s(&self, path: &str) -> String {
        format!("/session/{}{path}", self.session)
    }

    pub fn goto(&self, url: &str) -> Result {
        self.call("POST", &self.s("/url"), Some(json!({"url": url})))?;
        Ok(())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self.call("GET", &self.s("/url"), None)?.as_str().unwrap_or("").to_owned())
    }

    pub fn source(&self) -> Result<String> {
        Ok(self.call("GET", &self.s("/source"), None)?.as_str().unwrap_or("").to_owned())
    }

    /// The elements matching a CSS selector.
    pub fn all(&self, css: &str) -> Result<Vec<Element>> {
        let v = self.call("POST", &self.s("/elements"), Some(json!({"using": "css selector", "value": css})))?;
        Ok(v.as_array().into_iter().flatten().filter_map(|e| e[ELEMENT].as_str().map(|id| Element(id.to_owned()))).collect())
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<Element> {
        self.all(css)?.into_iter().next().ok_or_else(|| format!("no element `{css}` on {}", self.url().unwrap_or_default()).into())
    }

    pub fn click(&self, e: &Element) -> Result {
        self.call("POST", &self.s(&format!("/element/{}/click", e.0)), None)?;
        Ok(())
    }

    /// Types into an element (keyboard input to it).
    pub fn type_into(&self, e: &Element, text: &str) -> Result {
        self.call("POST", &self.s(&format!("/element/{}/value", e.0)), Some(json!({"text": text})))?;
        Ok(())
    }

    pub fn clear(&self, e: &Element) -> Result {
        self.call("POST", &self.s(&format!("/element/{}/clear", e.0)), None)?;
        Ok(())
    }

    pub fn text(&self, e: &Element) -> Result<String> {
        Ok(self.call("GET", &self.s(&format!("/element/{}/text", e.0)), None)?.as_str().unwrap_or("").to_owned())
    }

    /// Presses keys on whatever has the focus.
    pub fn keys(&self, keys: &str) -> Result {
        let mut actions = Vec::new();
        for k in keys.chars() {
            actions.push(json!({"type": "keyDown", "value": k.to_string()}));
            actions.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.call("POST", &self.s("/actions"), Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})))?;
        Ok(())
    }

    /// Replaces the text of the focused field with the keyboard: select all, then type.
    pub fn retype(&self, text: &str) -> Result {
        let ctrl = "\u{E009}";
        let mut actions = vec![
            json!({"type": "keyDown", "value": ctrl}),
            json!({"type": "keyDown", "value": "a"}),
            json!({"type": "keyUp", "value": "a"}),
            json!({"type": "keyUp", "value": ctrl}),
        ];
        for k in text.chars() {
            actions.push(json!({"type": "keyDown", "value": k.to_string()}));
            actions.push(json!({"type": "keyUp", "value": k.to_string()}));
        }
        self.call("POST", &self.s("/actions"), Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})))?;
        Ok(())
    }

    /// Runs a script in the page; returns what it returns.
    pub fn script(&self, script: &str, args: Value) -> Result<Value> {
        self.call("POST", &self.s("/execute/sync"), Some(json!({"script": script, "args": args})))
    }

    /// Runs a script that calls its last argument with its result.
    pub fn script_async(&self, script: &str, args: Value) -> Result<Value> {
        self.call("POST", &self.s("/execute/async"), Some(json!({"script": script, "args": args})))
    }

    pub fn delete_cookies(&self) -> Result {
        self.call("DELETE", &self.s("/cookie"), None)?;
        Ok(())
    }

    /// The page as a PNG, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) -> Result {
        use base64::Engine;
        let png = self.call("GET", &self.s("/screenshot"), None)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap_or(""))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, bytes)?;
        Ok(())
    }

    /// Waits until the page source holds `text`.
    pub fn wait_for_text(&self, text: &str, within: Duration) -> Result {
        let deadline = Instant::now() + within;
        loop {
            if self.source()?.contains(text) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("`{text}` did not appear on {} within {within:?}", self.url()?).into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Presses Tab until the focused element's text (or value, or label) holds `label`, at most
    /// `limit` times: keyboard navigation reaching it.
    pub fn tab_to(&self, label: &str, limit: usize) -> Result {
        for _ in 0..limit {
            self.keys(TAB)?;
            let focused = self.script(
                "const e = document.activeElement; return (e.innerText || '') + ' ' + (e.value || '') + ' ' + (e.getAttribute('aria-label') || '') + ' ' + (e.id || '');",
                json!([]),
            )?;
            if focused.as_str().is_some_and(|t| t.contains(label)) {
                return Ok(());
            }
        }
        Err(format!("{limit} presses of Tab did not reach `{label}` on {}", self.url()?).into())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &self.s(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

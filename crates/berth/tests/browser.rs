//! The web console in a real browser (as root, real containers; headless Chromium driven by
//! chromedriver): log in, create a service with an HTTP health check through the form, watch it
//! reach RUNNING, push a new image and follow its deployment live to the end, roll back from the
//! revisions, see the markers on the charts and a request made during the test in the live logs;
//! a read-only token sees no control; a forged form is refused and an expired session goes back
//! to the login page. Log in, create and deploy are done with the keyboard alone.
//! Every page gets a screenshot (`<target tmp>/console-screenshots/`) and an accessibility check
//! with axe-core, which must report no serious or critical violation.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use berth_testkit::hello_binary;
use serde_json::json;
use support::webdriver::{Browser, ENTER};
use support::*;

/// The axe-core release the checks run.
const AXE_VERSION: &str = "4.14.1";

/// axe-core's script, fetched once with npm into the target directory.
fn axe_script() -> Result<String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("axe-core-{AXE_VERSION}"));
    let script = dir.join("node_modules/axe-core/axe.min.js");
    if !script.exists() {
        let ok = std::process::Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(format!("axe-core@{AXE_VERSION}"))
            .status()?
            .success();
        if !ok {
            return Err(format!("npm could not install axe-core@{AXE_VERSION}").into());
        }
    }
    Ok(std::fs::read_to_string(script)?)
}

fn shots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// A screenshot of the page, and axe-core's serious and critical violations on it (none allowed).
fn check_page(b: &Browser, axe: &str, name: &str) -> Result {
    b.screenshot(&shots().join(format!("{name}.png")))?;
    b.script(&format!("{axe}\nreturn true;"), json!([]))?;
    let result = b.script_async(
        "const done = arguments[arguments.length - 1]; axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.html).slice(0, 3)})))).catch(e => done([{id: 'axe failed', impact: 'critical', help: String(e)}]));",
        json!([]),
    )?;
    let serious: Vec<&serde_json::Value> =
        result.as_array().into_iter().flatten().filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical"))).collect();
    assert!(serious.is_empty(), "accessibility violations on {name}: {serious:#?}");
    Ok(())
}

#[test]
fn the_console_in_a_browser() -> Result {
    let Some(b) = Browser::start()? else {
        return Err("chromium and chromium-driver are not installed; `cargo xtask test` installs them".into());
    };
    let axe = axe_script()?;
    let s = Server::start_with_runtime("b", 236, "br-app-")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "--env", "HELLO_VERSION=v1", "-t", "web:v1", "-t", "web:latest"])?;
    let admin = s.creds().split_once(':').map(|(_, t)| t.to_owned()).ok_or("no admin token")?;

    // Log in with the keyboard: the token field has the focus; Enter submits.
    b.goto(&s.url("/console"))?;
    b.wait_for_text("Log in to berth", Duration::from_secs(10))?;
    check_page(&b, &axe, "login")?;
    b.keys(&format!("{admin}{ENTER}"))?;
    b.wait_for_text("<h1>Services</h1>", Duration::from_secs(10))?;
    check_page(&b, &axe, "services-empty")?;

    // Create a service through the form, with the keyboard alone: Tab to the link, Enter, type
    // into each field reached by Tab, Enter on the submit button.
    b.tab_to("New service", 20)?;
    b.keys(ENTER)?;
    b.wait_for_text("New service", Duration::from_secs(10))?;
    check_page(&b, &axe, "new-service")?;
    b.tab_to("name", 20)?;
    b.keys("br-app")?;
    b.tab_to("source-image", 5)?;
    b.retype("web:latest")?;
    b.tab_to("instance-memory", 20)?;
    b.retype("128")?;
    b.tab_to("health-check-protocol", 5)?;
    // A select takes the first letter typed.
    b.keys("H")?;
    b.tab_to("health-check-path", 5)?;
    b.retype("/healthz")?;
    b.tab_to("Create and deploy", 60)?;
    b.keys(ENTER)?;
    b.wait_for_text("<h1>br-app", Duration::from_secs(20))?;
    // The page shows the status it was rendered with: it is loaded again until RUNNING.
    let running = wait_until("the service page to say RUNNING", Duration::from_secs(90), || {
        b.goto(&s.url("/console/services/br-app"))?;
        Ok(b.source()?.contains("RUNNING"))
    });
    if running.is_err() {
        b.screenshot(&shots().join("not-running.png"))?;
        let ops: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "operations", "br-app"])?)?;
        let id = ops["operations"][0]["id"].as_str().unwrap_or_default().to_owned();
        eprintln!("{}", s.cli_ok(&["service", "operation", &id]).unwrap_or_default());
        eprintln!("{}", s.cli_ok(&["-o", "json", "service", "show", "br-app"]).unwrap_or_default());
    }
    running?;
    let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "br-app"])?)?;
    assert_eq!(
        (v["spec"]["health_check"]["protocol"].as_str(), v["spec"]["health_check"]["path"].as_str()),
        (Some("HTTP"), Some("/healthz"))
    );

    // Traffic, then a push: the deployment appears on the page, and its own page follows it live.
    let router = s.router_http()?;
    for _ in 0..30 {
        http("GET", &format!("http://{router}/"), None, &[("Host", "br-app.localhost")], b"")?;
    }
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "--env", "HELLO_VERSION=v2", "-t", "web:latest"])?;
    wait_until("the deployment to show on the service page", Duration::from_secs(60), || {
        b.goto(&s.url("/console/services/br-app"))?;
        Ok(b.source()?.contains("br-app-0002"))
    })?;
    let ops = b.all("table a[href^='/console/operations/']")?;
    b.click(ops.first().ok_or("no operation link")?)?;
    b.wait_for_text("SUCCEEDED", Duration::from_secs(90))?;
    check_page(&b, &axe, "operation")?;

    // Roll back to revision 1 from the revisions table (by keyboard: Tab to its button, Enter).
    b.goto(&s.url("/console/services/br-app"))?;
    b.tab_to("Roll back to this", 80)?;
    b.keys(ENTER)?;
    let first: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "revisions", "br-app"])?)?;
    let first_digest = first["revisions"][0]["digest"].clone();
    wait_until("the rollback to serve revision 1's image", Duration::from_secs(90), || {
        let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "br-app"])?)?;
        Ok(v["status"] == "RUNNING" && v["current_revision"]["digest"] == first_digest)
    })?;

    // The charts mark the deployments.
    wait_until("the charts to mark the deployments", Duration::from_secs(60), || {
        b.goto(&s.url("/console/services/br-app"))?;
        Ok(b.all("svg line.mark.deployed")?.len() >= 2)
    })?;
    check_page(&b, &axe, "service")?;

    // A request made now appears in the live logs without a reload.
    b.goto(&s.url("/console/services/br-app/logs"))?;
    b.wait_for_text("Follow new lines", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(800));
    http("GET", &format!("http://{router}/browser-probe"), None, &[("Host", "br-app.localhost")], b"")?;
    let live = wait_until("the request in the live logs", Duration::from_secs(20), || {
        Ok(b.script("return document.getElementById('log-lines').innerText.includes('/browser-probe');", json!([]))? == json!(true))
    });
    if live.is_err() {
        let state = b.script("const p = document.querySelector('p.live'); return [p && p.hidden, p && p.dataset.source, typeof EventSource, document.scripts.length];", json!([]))?;
        eprintln!("live logs: {state}");
        b.screenshot(&shots().join("logs-not-live.png"))?;
    }
    live?;
    check_page(&b, &axe, "logs")?;
    for (path, name) in [
        ("/console/services/br-app/requests", "requests"),
        ("/console/services/br-app/settings", "settings"),
        ("/console/registry", "registry"),
        ("/console/registry/web", "repository"),
        ("/console/tokens", "tokens"),
        ("/console/webhooks", "webhooks"),
        ("/console/secrets", "secrets"),
        ("/console/networks", "networks"),
        ("/console/services", "services"),
    ] {
        b.goto(&s.url(path))?;
        check_page(&b, &axe, name)?;
    }

    // A form posted from the page without the session's anti-forgery value is refused (the
    // browser sends the cookie; the value is what a forging page cannot know).
    let forged = b.script_async(
        "const done = arguments[0]; fetch('/console/services/br-app/pause', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'csrf=forged&confirm=yes'}).then(r => r.text().then(t => done([r.status, t.includes('Form refused')]))).catch(e => done(String(e)));",
        json!([]),
    )?;
    assert_eq!(forged, json!([403, true]), "a forged form went through");
    assert!(s.cli_ok(&["service", "show", "br-app"])?.contains("RUNNING"));

    // An expired session sends the browser back to the login page. (Eight hours pass: the
    // session's end is moved to now in the state database.)
    let db = s.dir.join("state.db");
    let expired = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10); c.execute('UPDATE console_sessions SET expires_at = 0'); c.commit()")
        .arg(&db)
        .status()?;
    assert!(expired.success());
    b.goto(&s.url("/console/services"))?;
    b.wait_for_text("Log in to berth", Duration::from_secs(10))?;

    // A read-only token: the same pages, no control.
    let viewer: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "viewer", "--scope", "read-only"])?)?;
    b.delete_cookies()?;
    b.goto(&s.url("/console/login"))?;
    b.type_into(&b.find("#token")?, &format!("{}{ENTER}", viewer["token"].as_str().ok_or("no token")?))?;
    b.wait_for_text("<h1>Services</h1>", Duration::from_secs(10))?;
    b.goto(&s.url("/console/services/br-app"))?;
    b.wait_for_text("br-app-0001", Duration::from_secs(10))?;
    let controls = b.all("form[action^='/console/services/br-app/']")?;
    assert!(controls.is_empty(), "a read-only token sees {} controls", controls.len());
    check_page(&b, &axe, "service-read-only")?;
    eprintln!("screenshots in {}", shots().display());
    Ok(())
}

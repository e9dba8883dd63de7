//! The web console over HTTP (as root, real containers): login with a token gives a session
//! cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS) and never works on the API; pages
//! list the service with its traffic and chart the last hour; forms without the session's
//! anti-forgery value are refused; the settings form shows every field, answers bad values next
//! to their fields and deploys good ones; a service is created from the form; a read-only token
//! sees no control that changes anything, nor environment values, and its changes are refused;
//! a webhook made in the console gets a test event and the service's events, signed; logout and a
//! revoked token end the session.

mod support;

use std::time::Duration;

use berth_testkit::hello_binary;
use support::*;

/// The session cookie's value from a login answer.
fn session_of(r: &Resp) -> Option<String> {
    let set = r.header("set-cookie")?;
    let value = set.split(';').next()?.strip_prefix("berth_session=")?;
    Some(value.to_owned())
}

/// The anti-forgery value on a page.
fn csrf_of(page: &str) -> Option<String> {
    let at = page.find(r#"name="csrf" value=""#)? + r#"name="csrf" value=""#.len();
    page[at..].split('"').next().map(str::to_owned)
}

fn get(s: &Server, path: &str, cookie: &str) -> Result<Resp> {
    http("GET", &s.url(path), None, &[("Cookie", &format!("berth_session={cookie}"))], b"")
}

fn post(s: &Server, path: &str, cookie: &str, form: &str) -> Result<Resp> {
    let headers = [("Cookie", format!("berth_session={cookie}")), ("Content-Type", "application/x-www-form-urlencoded".to_owned())];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http("POST", &s.url(path), None, &headers, form.as_bytes())
}

fn login(s: &Server, token: &str, headers: &[(&str, &str)]) -> Result<Resp> {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    http("POST", &s.url("/console/login"), None, &all, format!("token={token}").as_bytes())
}

/// What a receiver got: each request's head and body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// A webhook receiver on loopback: answers 200 to every request and keeps (head, body).
fn receiver() -> Result<(String, Received)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(std::result::Result::ok) {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = conn.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()))
                        .unwrap_or(0);
                    if body.len() >= len {
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((head.to_owned(), body.to_owned()));
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                        break;
                    }
                }
            }
        }
    });
    Ok((url, got))
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn console_sessions_pages_and_scopes() -> Result {
    let s = Server::start_with_runtime("k", 237, "con-")?;
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?.display().to_string();
    s.cli_ok(&["image", "build", "--binary", &bin, "--port", "8080", "-t", "web:v1"])?;
    s.cli_ok(&[
        "service",
        "create",
        "con-app",
        "--image",
        "web:v1",
        "--health-check",
        "http",
        "--health-path",
        "/healthz",
        "--memory",
        "128",
        "--wait",
    ])?;
    let admin = s.creds().split_once(':').map(|(_, t)| t.to_owned()).ok_or("no admin token")?;

    // Without a session: to the login page; a wrong token is refused there.
    let r = http("GET", &s.url("/console/services"), None, &[], b"")?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/login")));
    let r = login(&s, "berth_0000_nope", &[])?;
    assert_eq!(r.status, 401);
    assert!(text(&r).contains("not valid") && session_of(&r).is_none());

    // Login: a session cookie only scripts cannot read and other sites cannot send.
    let r = login(&s, &admin, &[])?;
    assert_eq!(r.status, 303);
    let set = r.header("set-cookie").unwrap_or_default().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/") && !set.contains("Secure"), "{set}");
    let cookie = session_of(&r).ok_or("no session cookie")?;
    let behind_https = login(&s, &admin, &[("X-Forwarded-Proto", "https")])?;
    assert!(behind_https.header("set-cookie").unwrap_or_default().contains("; Secure"), "{:?}", behind_https.headers);
    // The API takes tokens, never the cookie.
    assert_eq!(get(&s, "/api/v1/services", &cookie)?.status, 401);

    // The services page, with the console's security headers; the service page with its
    // controls for an admin token.
    let r = get(&s, "/console/services", &cookie)?;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-security-policy").is_some_and(|p| p.contains("default-src 'none'"))
            && r.header("x-frame-options") == Some("DENY")
    );
    let page = text(&r);
    assert!(page.contains("con-app") && page.contains("RUNNING") && page.contains("https://con-app.localhost"), "{page}");
    // Compressed for a browser that takes gzip.
    let zipped = http(
        "GET",
        &s.url("/console/services"),
        None,
        &[("Cookie", &format!("berth_session={cookie}")), ("Accept-Encoding", "gzip, br")],
        b"",
    )?;
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    let mut unzipped = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(zipped.body.as_slice()), &mut unzipped)?;
    assert!(
        unzipped.contains("https://con-app.localhost") && zipped.body.len() < unzipped.len(),
        "{} bytes gzipped of {}",
        zipped.body.len(),
        unzipped.len()
    );
    let router = s.router_http()?;
    for _ in 0..20 {
        http("GET", &format!("http://{router}/"), None, &[("Host", "con-app.localhost")], b"")?;
    }
    wait_until("the service page to chart the requests", Duration::from_secs(40), || {
        Ok(text(&get(&s, "/console/services/con-app", &cookie)?).contains("<figcaption>Requests (per second)</figcaption>"))
    })?;
    // The list shows the last five minutes' traffic (from memory, not the store), once the
    // router's interval with the requests has closed and been taken.
    wait_until("the services list to show the requests' p99", Duration::from_secs(40), || {
        Ok(text(&get(&s, "/console/services", &cookie)?).contains(" ms</td>"))
    })?;
    let page = text(&get(&s, "/console/services/con-app", &cookie)?);
    assert!(page.contains("con-app-0001") && page.contains(r#"action="/console/services/con-app/pause""#), "{page}");
    let csrf = csrf_of(&page).ok_or("no csrf value")?;

    // Logs: the instances' lines, searchable; new lines live as server-sent events.
    let page = text(&get(&s, "/console/services/con-app/logs", &cookie)?);
    assert!(page.contains("GET / 200") && page.contains("con-app-1-"), "{page}");
    let page = text(&get(&s, "/console/services/con-app/logs?q=no-such-line", &cookie)?);
    assert!(page.contains("0 lines") && !page.contains("GET / 200"), "{page}");
    let (tx, rx) = std::sync::mpsc::channel();
    let live_url = s.url("/console/services/con-app/logs/live?q=live-probe");
    let live_cookie = format!("berth_session={cookie}");
    std::thread::spawn(move || {
        let Ok(resp) = ureq::get(&live_url).set("Cookie", &live_cookie).call() else { return };
        for line in std::io::BufRead::lines(std::io::BufReader::new(resp.into_reader())).map_while(std::result::Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(700));
    http("GET", &format!("http://{router}/live-probe"), None, &[("Host", "con-app.localhost")], b"")?;
    let event =
        (0..20).find_map(|_| rx.recv_timeout(Duration::from_secs(1)).ok().filter(|l| l.starts_with("data:") && l.contains("/live-probe")));
    assert!(event.is_some(), "no live line for the request");
    // The access log: the same requests as the router saw them.
    let page = text(&get(&s, "/console/services/con-app/requests?q=live-probe", &cookie)?);
    assert!(page.contains("GET /live-probe") && page.contains("1 requests"), "{page}");
    // … by the instance and revision that answered.
    let page = text(&get(&s, "/console/services/con-app/requests?q=live-probe&revision=1", &cookie)?);
    assert!(page.contains("GET /live-probe") && page.contains("con-app-1-"), "{page}");
    let page = text(&get(&s, "/console/services/con-app/requests?q=live-probe&revision=2", &cookie)?);
    assert!(page.contains("0 requests"), "{page}");
    // An operation with its log.
    let op = s.cli_ok(&["-o", "json", "service", "operations", "con-app"])?;
    let op: serde_json::Value = serde_json::from_str(&op)?;
    let id = op["operations"][0]["id"].as_str().ok_or("no operation")?.to_owned();
    let page = text(&get(&s, &format!("/console/operations/{id}"), &cookie)?);
    assert!(page.contains("SUCCEEDED") && page.contains("<ol class=\"oplog\">"), "{page}");

    // The settings form: every field; bad values answered next to their fields, and nothing
    // saved; good ones deploy a new revision.
    let form = text(&get(&s, "/console/services/con-app/settings", &cookie)?);
    for field in [
        "source.image",
        "image_config.env",
        "instance.cpu",
        "health_check.protocol",
        "health_check.unhealthy_threshold",
        "autoscaling.min_size",
        "traffic.h2c",
        "network.allow_from",
    ] {
        assert!(form.contains(&format!(r#"name="{field}""#)), "no field {field} in the settings form");
    }
    let settings = |extra: &str| {
        let base = "source.image=web%3Av1&source.auto_deploy=default&image_config.port=8080&image_config.env=&image_config.secret_env=&image_config.secret_files=&image_config.start_command=&instance.memory=128&health_check.protocol=HTTP&health_check.path=%2Fhealthz&health_check.interval=5&health_check.timeout=2&health_check.healthy_threshold=1&autoscaling.max_concurrency=100&autoscaling.min_size=1&autoscaling.max_size=25&traffic.request_timeout=120&traffic.max_body_mb=64&network.networks=&network.egress=public&network.visibility=public&network.allow_from=";
        post(&s, "/console/services/con-app/settings", &cookie, &format!("csrf={csrf}&{base}&{extra}"))
    };
    let r = settings("instance.cpu=300&health_check.unhealthy_threshold=lots")?;
    assert_eq!(r.status, 422);
    let page = text(&r);
    assert!(page.contains(r#"id="health-check-unhealthy-threshold-error""#) && page.contains("`lots` is not a whole number"), "{page}");
    let r = settings("instance.cpu=300&health_check.unhealthy_threshold=3")?;
    assert_eq!(r.status, 422);
    let page = text(&r);
    assert!(page.contains(r#"id="instance-cpu-error""#) && page.contains("instance.cpu must be 256, 512, 1024, 2048 or 4096"), "{page}");
    let r = settings("instance.cpu=512&health_check.unhealthy_threshold=3&image_config.env=GREETING%3Dhi")?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/services/con-app")), "{}", text(&r));
    wait_until("the new settings to serve", Duration::from_secs(60), || {
        let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "con-app"])?)?;
        let ops: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "operations", "con-app"])?)?;
        let ended = ops["operations"].as_array().is_some_and(|o| o.iter().all(|op| op["ended_at"].is_i64()));
        Ok(v["status"] == "RUNNING" && v["current_revision"]["number"] == 2 && ended)
    })?;
    let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", "con-app"])?)?;
    assert_eq!((v["spec"]["instance"]["cpu"].as_u64(), v["spec"]["health_check"]["unhealthy_threshold"].as_u64()), (Some(512), Some(3)));
    assert_eq!(v["spec"]["image_config"]["env"]["GREETING"], "hi");
    // Revisions and operations say who made them: the console's token.
    let revs: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "revisions", "con-app"])?)?;
    assert_eq!(revs["revisions"][1]["by"], "admin", "{revs}");
    assert!(text(&get(&s, "/console/services/con-app", &cookie)?).contains("<td>admin</td>"));

    // A new service from the form.
    let r = post(&s, "/console/new", &cookie, &format!("csrf={csrf}&name=con-two&{}", "source.image=web%3Av1&source.auto_deploy=default&image_config.port=8080&instance.cpu=256&instance.memory=128&health_check.protocol=TCP&health_check.path=%2F&health_check.interval=5&health_check.timeout=2&health_check.healthy_threshold=1&health_check.unhealthy_threshold=5&autoscaling.max_concurrency=100&autoscaling.min_size=1&autoscaling.max_size=2&traffic.request_timeout=120&traffic.max_body_mb=64&network.egress=public&network.visibility=public"))?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/services/con-two")), "{}", text(&r));
    wait_until("the new service to run", Duration::from_secs(60), || Ok(s.cli_ok(&["service", "show", "con-two"])?.contains("RUNNING")))?;

    // A webhook from the console: a test event, then the pause below, arrive signed.
    let (hook_url, received) = receiver()?;
    let key = tmp.path().join("hook.key");
    std::fs::write(&key, "hook-key")?;
    s.cli_ok(&["secret", "create", "hooks/ops", "--from-file", &key.display().to_string()])?;
    let form = format!(
        "csrf={csrf}&name=ops&url={}&secret=hooks%2Fops&events=status&events=ping&services=con-*",
        hook_url.replace(':', "%3A").replace('/', "%2F")
    );
    let r = post(&s, "/console/webhooks", &cookie, &form)?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/webhooks")), "{}", text(&r));
    let r = post(&s, "/console/webhooks/ops/ping", &cookie, &format!("csrf={csrf}"))?;
    assert_eq!(r.status, 303);
    wait_until("the test event to arrive", Duration::from_secs(20), || {
        Ok(received.lock().map_err(|_| "poisoned")?.iter().any(|(_, b)| b.contains("\"type\":\"ping\"")))
    })?;

    // A form without the session's value is refused; with it, the service pauses.
    let r = post(&s, "/console/services/con-app/pause", &cookie, "csrf=forged")?;
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("Form refused"));
    // Pausing asks first; the confirmation's form pauses.
    let r = post(&s, "/console/services/con-app/pause", &cookie, &format!("csrf={csrf}"))?;
    assert!(r.status == 200 && text(&r).contains("Pause con-app?") && text(&r).contains(r#"name="confirm" value="yes""#), "{}", text(&r));
    assert!(s.cli_ok(&["service", "show", "con-app"])?.contains("RUNNING"), "paused without confirmation");
    let r = post(&s, "/console/services/con-app/pause", &cookie, &format!("csrf={csrf}&confirm=yes"))?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/services/con-app")));
    wait_until("the service to pause", Duration::from_secs(30), || Ok(s.cli_ok(&["service", "show", "con-app"])?.contains("PAUSED")))?;
    wait_until("the pause to be posted to the webhook", Duration::from_secs(20), || {
        Ok(received.lock().map_err(|_| "poisoned")?.iter().any(|(_, b)| b.contains("\"type\":\"status\"") && b.contains("PAUSED")))
    })?;
    for (headers, body) in received.lock().map_err(|_| "poisoned")?.iter() {
        let sig =
            headers.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("x-berth-signature: ").map(str::to_owned)).unwrap_or_default();
        let t: i64 = sig.strip_prefix("t=").and_then(|v| v.split(',').next()).and_then(|v| v.parse().ok()).unwrap_or(0);
        assert_eq!(sig, berth_notify::signature(b"hook-key", t, body), "a delivery's signature does not check out");
    }
    let page = text(&get(&s, "/console/webhooks", &cookie)?);
    assert!(page.contains("delivered") && page.contains("con-*"), "{page}");
    assert!(s.cli_ok(&["webhook", "deliveries", "ops"])?.contains("delivered"));
    let r = post(&s, "/console/services/con-app/delete", &cookie, &format!("csrf={csrf}&confirm=wrong"))?;
    assert_eq!(r.status, 422, "a delete without the name typed again");

    // The registry: repositories, tags with sizes, pushes, and a service from a tag.
    let page = text(&get(&s, "/console/registry", &cookie)?);
    assert!(page.contains(r#"href="/console/registry/web""#) && page.contains("MUTABLE"), "{page}");
    let page = text(&get(&s, "/console/registry/web", &cookie)?);
    assert!(page.contains("v1") && page.contains(" MiB</td>") && page.contains(r#"href="/console/new?image=web:v1""#), "{page}");

    // Tokens: a new one's secret is shown once.
    let r = post(&s, "/console/tokens", &cookie, &format!("csrf={csrf}&name=deployer&scopes=push%3Aweb%2C+read-only"))?;
    assert_eq!(r.status, 201);
    let page = text(&r);
    let secret = page.split("<code class=\"secret\">").nth(1).and_then(|t| t.split('<').next()).ok_or("no secret shown")?.to_owned();
    assert!(secret.starts_with("berth_"), "{page}");
    let page = text(&get(&s, "/console/tokens", &cookie)?);
    assert!(page.contains("deployer") && page.contains("push:web") && !page.contains(&secret), "the secret was shown twice");
    let r = post(&s, "/console/tokens", &cookie, &format!("csrf={csrf}&name=bad&scopes=root"))?;
    assert_eq!(r.status, 422);
    assert!(text(&r).contains("scope `root` is unknown"));

    // Secrets (names and versions, never values) and networks.
    let page = text(&get(&s, "/console/secrets", &cookie)?);
    assert!(page.contains("hooks/ops") && !page.contains("hook-key"), "{page}");
    assert_eq!(get(&s, "/console/networks", &cookie)?.status, 200);
    // A push-only token (a CI's) reads no service, only what it may pull.
    let ci: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "ci", "--scope", "push:web"])?)?;
    let ci_cookie = session_of(&login(&s, ci["token"].as_str().ok_or("no token")?, &[])?).ok_or("no session for ci")?;
    let r = get(&s, "/console/services", &ci_cookie)?;
    assert!(r.status == 403 && text(&r).contains("may not read services"), "{}", text(&r));
    assert_eq!(get(&s, "/console/secrets", &ci_cookie)?.status, 403);
    assert_eq!(get(&s, "/console/registry/web", &ci_cookie)?.status, 200);

    // A read-only token: no controls, and its changes are refused.
    let viewer: serde_json::Value =
        serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "viewer", "--scope", "read-only"])?)?;
    let viewer_token = viewer["token"].as_str().ok_or("no token")?;
    let viewer_cookie = session_of(&login(&s, viewer_token, &[])?).ok_or("no session for the viewer")?;
    let page = text(&get(&s, "/console/services/con-app", &viewer_cookie)?);
    assert!(page.contains("con-app-0001") && !page.contains("/console/services/con-app/resume") && !page.contains("Delete"), "{page}");
    let form = text(&get(&s, "/console/services/con-app/settings", &viewer_cookie)?);
    assert!(form.contains("GREETING=(hidden)") && !form.contains("GREETING=hi") && !form.contains("Save and deploy"), "{form}");
    let viewer_csrf = csrf_of(&page).ok_or("no csrf value")?;
    assert_eq!(get(&s, "/console/tokens", &viewer_cookie)?.status, 403);
    assert!(!text(&get(&s, "/console/registry/web", &viewer_cookie)?).contains("Create a service"));
    let r = post(&s, "/console/services/con-app/resume", &viewer_cookie, &format!("csrf={viewer_csrf}&confirm=yes"))?;
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("may only read"));

    // Revoking the token ends its sessions; logging out ends this one.
    s.cli_ok(&["token", "revoke", viewer["id"].as_str().ok_or("no id")?])?;
    assert_eq!(get(&s, "/console/services", &viewer_cookie)?.status, 303);
    let r = post(&s, "/console/logout", &cookie, &format!("csrf={csrf}"))?;
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    let r = get(&s, "/console/services", &cookie)?;
    assert_eq!((r.status, r.header("location")), (303, Some("/console/login")), "the session outlived its logout");
    Ok(())
}

//! `cargo xtask bench deploy` (as root): a real `berth server` with the embedded runtime runs a
//! service of `examples/hello` on `latest` with auto-deploy and an HTTP health check, under
//! continuous load through the router. Each round pushes a new version and measures
//! push→serving (from the end of the push — the manifest PUT's response — to the first response
//! from the new version), then pushes a version that fails its health check and measures
//! failure→rolled-back (from the moment the revision is declared unhealthy to the operation's
//! end, both from the operation log), counting every failed request throughout. The anchor is
//! App Runner's published behaviour (about 5 minutes to deploy, over 15 to roll back); it cannot
//! run here, so its figures are quoted, not measured.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::http::{Api, Conn};
use super::{build_berth, median};

const BRIDGE: &str = "bbdeploy0";
const CIDR: &str = "10.249.0.0/24";
const CGROUP_PARENT: &str = "berth-bench-deploy";
const HOST: &str = "web-app.localhost";

/// App Runner's figures (SYSTEM.md): about 5 minutes to deploy, over 15 to roll back.
const APP_RUNNER_DEPLOY_MS: f64 = 300_000.0;
const APP_RUNNER_ROLLBACK_MS: f64 = 900_000.0;

fn cleanup_host() {
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
}

/// Continuous GETs through the router; remembers when each version first answered.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    first_seen: Arc<Mutex<Vec<(String, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let first_seen = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..2)
            .map(|_| {
                let (stop, ok, failed, first_seen, router) =
                    (stop.clone(), ok.clone(), failed.clone(), first_seen.clone(), router.to_owned());
                std::thread::spawn(move || {
                    let mut conn = Conn::connect_as(&router, HOST, None).ok();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = conn.as_mut().map(|c| c.request("GET", "/", &[], b"", true));
                        match answer {
                            Some(Ok(r)) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let body = String::from_utf8_lossy(&r.body).into_owned();
                                let version = body.split_whitespace().nth(2).unwrap_or("").to_owned();
                                let mut seen = first_seen.lock().unwrap_or_else(|p| p.into_inner());
                                if !seen.iter().any(|(v, _)| *v == version) {
                                    seen.push((version, Instant::now()));
                                }
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = Conn::connect_as(&router, HOST, None).ok();
                            }
                        }
                        // About 200 requests/s from two threads.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        Load { stop, ok, failed, first_seen, threads }
    }

    fn first(&self, version: &str) -> Option<Instant> {
        self.first_seen.lock().unwrap_or_else(|p| p.into_inner()).iter().find(|(v, _)| v == version).map(|(_, t)| *t)
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// The service's operations, as this benchmark follows them.
trait Operations {
    fn last_operation(&self) -> anyhow::Result<serde_json::Value>;
    fn wait_operation(&self, revision: u64, within: Duration) -> anyhow::Result<serde_json::Value>;
}

impl Operations for Api {
    fn last_operation(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self.call("GET", "/api/v1/services/web-app/operations?limit=1", &serde_json::Value::Null)?["operations"][0].clone())
    }

    /// Waits until the newest operation targets `revision` and has ended.
    fn wait_operation(&self, revision: u64, within: Duration) -> anyhow::Result<serde_json::Value> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            let op = self.last_operation()?;
            let done = !matches!(op["status"].as_str(), Some("PENDING" | "IN_PROGRESS" | "ROLLBACK_IN_PROGRESS"));
            if op["target_revision"].as_u64() == Some(revision) && done {
                return Ok(op);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("revision {revision}'s operation did not end within {within:?}")
    }
}

fn push(bin: &Path, data: &Path, hello: &Path, version: &str, healthy: bool) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .arg("--data-dir")
        .arg(data)
        .args(["image", "build", "--binary"])
        .arg(hello)
        .args(["--port", "8080", "--env", &format!("HELLO_VERSION={version}"), "--env", &format!("HELLO_HEALTHY={healthy}")])
        .args(["-t", &format!("web:{version}-sha"), "-t", "web:latest"])
        .output()?;
    if !out.status.success() {
        bail!("pushing {version}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the deploy benchmark runs containers: run it as root");
    }
    let bin = build_berth()?;
    let tmp = tempfile::Builder::new().prefix("berth-bench-deploy").tempdir()?;
    let hello = tmp.path().join("hello");
    super::compile_hello(&hello, true)?;
    cleanup_host();
    let result = measure(&bin, tmp.path(), &hello, rounds);
    cleanup_host();
    result
}

fn measure(bin: &Path, dir: &Path, hello: &Path, rounds: usize) -> anyhow::Result<()> {
    let data = dir.join("data");
    let server = super::server_with_runtime(bin, &data, BRIDGE, CIDR, CGROUP_PARENT)?;
    let api = Api::new(&server.addr, &server.token);
    let routers = std::fs::read_to_string(data.join("router-address"))?;
    let router = routers.lines().find_map(|l| l.strip_prefix("http://")).context("no router address")?.to_owned();

    let result = rounds_with(&api, bin, &data, hello, &router, rounds);
    super::delete_services(&api, &["web-app"]);
    drop(server);
    result
}

fn rounds_with(api: &Api, bin: &Path, data: &Path, hello: &Path, router: &str, rounds: usize) -> anyhow::Result<()> {
    api.call(
        "POST",
        "/api/v1/repositories",
        &serde_json::json!({"name": "web", "tag_mutability": "IMMUTABLE_WITH_EXCLUSION", "exclusions": ["latest"]}),
    )?;
    push(bin, data, hello, "v0", true)?;
    let spec = serde_json::json!({
        "name": "web-app",
        "source": {"image": "web:latest"},
        "instance": {"memory": 128},
        "health_check": {"protocol": "HTTP", "path": "/healthz", "interval": 1, "unhealthy_threshold": 2},
    });
    api.call("POST", "/api/v1/services", &spec)?;
    api.wait_operation(1, Duration::from_secs(60))?;
    let load = Load::start(router);
    std::thread::sleep(Duration::from_millis(500));

    let (mut to_serving, mut rollback, mut push_to_rolled_back) = (Vec::new(), Vec::new(), Vec::new());
    let mut revision = 1;
    for round in 1..=rounds {
        // A new version: push → first answer from it.
        let version = format!("v{round}");
        push(bin, data, hello, &version, true)?;
        let pushed = Instant::now();
        revision += 1;
        let end = pushed + Duration::from_secs(60);
        let served = loop {
            if let Some(t) = load.first(&version) {
                break t;
            }
            if Instant::now() > end {
                bail!("{version} never answered");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let ms = served.saturating_duration_since(pushed).as_secs_f64() * 1000.0;
        eprintln!("round {round}/{rounds}: push→serving {ms:.0} ms");
        to_serving.push(ms);
        let op = api.wait_operation(revision, Duration::from_secs(60))?;
        if op["status"] != "SUCCEEDED" {
            bail!("deploying {version} ended {}", op["status"]);
        }

        // A broken version: declared unhealthy → rolled back.
        let broken = format!("v{round}-broken");
        push(bin, data, hello, &broken, false)?;
        let pushed = Instant::now();
        revision += 1;
        let op = api.wait_operation(revision, Duration::from_secs(60))?;
        let done_at = Instant::now();
        if op["status"] != "ROLLBACK_SUCCEEDED" {
            bail!("the broken version ended {}, not ROLLBACK_SUCCEEDED", op["status"]);
        }
        let log = op["log"].as_array().cloned().unwrap_or_default();
        let declared =
            log.iter().find(|l| l["message"].as_str().is_some_and(|m| m.contains("rolling back"))).and_then(|l| l["at_ms"].as_i64());
        let ended = log.last().and_then(|l| l["at_ms"].as_i64());
        let (Some(declared), Some(ended)) = (declared, ended) else { bail!("the operation log lacks its timestamps: {op}") };
        let ms = (ended - declared) as f64;
        let total = done_at.duration_since(pushed).as_secs_f64() * 1000.0;
        eprintln!("round {round}/{rounds}: unhealthy→rolled back {ms:.0} ms (push→rolled back {total:.0} ms, with health checks every 1 s, 2 failures)");
        rollback.push(ms);
        push_to_rolled_back.push(total);
        if load.first(&broken).is_some() {
            bail!("the broken version answered requests");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.finish();

    let (serving, back, total) = (median(to_serving), median(rollback), median(push_to_rolled_back));
    println!();
    println!("{:<40} {:>12} {:>16} {:>10}", "figure (medians)", "berth", "App Runner", "ratio");
    println!("{:<40} {:>12.0} {:>16.0} {:>10.4}", "push → serving (ms)", serving, APP_RUNNER_DEPLOY_MS, serving / APP_RUNNER_DEPLOY_MS);
    println!(
        "{:<40} {:>12.0} {:>16.0} {:>10.4}",
        "declared unhealthy → rolled back (ms)",
        back,
        APP_RUNNER_ROLLBACK_MS,
        back / APP_RUNNER_ROLLBACK_MS
    );
    println!("{:<40} {:>12.0} {:>16} {:>10}", "push of a broken version → rolled back (ms)", total, "-", "-");
    println!("{:<40} {:>12} {:>16} {:>10}", "requests (ok / failed)", format!("{ok} / {failed}"), "-", "-");
    println!("(App Runner's figures are its published behaviour, quoted, not measured here.)");
    let json = serde_json::json!({
        "bench": "deploy",
        "push_to_serving_ms": serving.round(),
        "rollback_ms": back.round(),
        "failed_requests": failed,
    });
    println!("{json}");
    Ok(())
}

//! `cargo xtask bench secrets` (as root): guestbook on MariaDB (`--db postgresql`: PostgreSQL) on
//! a private LAN berth attaches, two services of two instances each — one taking its credentials
//! as env vars, one as a file — under steady load through the router (about 200 requests/s in
//! all, each a new database connection). Measured:
//!
//! - rotations with alternating users, one started every `--every` seconds (5 by default;
//!   60 is the acceptance run), `--rotations` of them (20): failed requests, and failed logins
//!   on the database (MariaDB's `Access_denied_errors`, PostgreSQL's password failures);
//! - env rollout: from CURRENT moving (the rotation's `finish_secret`) to every env consumer on
//!   the new version (the rotation done);
//! - file propagation: from a `secret put` answered to the file changed in every instance of the
//!   file consumer, read where the instance's tmpfs is mounted on the host;
//! - a secret's value read through the API, one keep-alive connection at a time.
//!
//! The anchors cannot run here and are quoted: Kubernetes updates mounted secret files within
//! the kubelet's sync period plus its cache's TTL (60 s + 60 s by default) and env vars never;
//! App Runner, ECS and the other platforms follow a changed credential only by a redeployment
//! (App Runner's is about 5 minutes).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_testkit::{Database, Lan};
use serde_json::{json, Value};

use super::build_berth;
use super::http::{Api, Conn};

const BRIDGE: &str = "bbsec0";
const CIDR: &str = "10.247.0.0/24";
const CGROUP_PARENT: &str = "berth-bench-secrets";
const LAN_NS: &str = "bbsec-db";
const LAN_BRIDGE: &str = "bbseclan0";
const LAN_CIDR: &str = "10.247.250.0/24";
const LAN_HOST: &str = "10.247.250.1/24";
const DB_IP: &str = "10.247.250.10";
const FILE_PUTS: usize = 20;
const GETS: usize = 1000;

/// Kubernetes: kubelet sync period + secret cache TTL, their defaults.
const KUBERNETES_FILE_MS: f64 = 120_000.0;
/// App Runner: a redeployment, about 5 minutes (SYSTEM.md).
const APP_RUNNER_REDEPLOY_MS: f64 = 300_000.0;

fn cleanup_host() {
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the secrets benchmark runs containers and MariaDB: run it as root");
    }
    let number = |flag: &str, default: u64| -> anyhow::Result<u64> {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].parse().with_context(|| format!("{flag} takes a number")))
            .unwrap_or(Ok(default))
    };
    let (rotations, every) = (number("--rotations", 20)?, Duration::from_secs(number("--every", 5)?));
    let kind = args.windows(2).find(|w| w[0] == "--db").map_or("mariadb", |w| w[1].as_str());
    let bin = build_berth()?;
    let guestbook = super::build_release("guestbook")?;
    cleanup_host();
    let lan = Lan::add(LAN_NS, LAN_BRIDGE, &[LAN_HOST], &[&format!("{DB_IP}/24")]).map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!("starting {kind} on the LAN ({DB_IP})");
    let db = Database::start(kind, Some(LAN_NS), DB_IP, "first-pw", "admin-pw").map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = tempfile::Builder::new().prefix("berth-bench-secrets").tempdir()?;
    let result = measure(&bin, &guestbook, tmp.path(), &db, rotations, every);
    drop(db);
    drop(lan);
    cleanup_host();
    result
}

/// Steady GETs of `/` (each a new database connection) through the router to one service.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_failure: Arc<std::sync::Mutex<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router: &str, host: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let last_failure = Arc::new(std::sync::Mutex::new(String::new()));
        let (s, o, f, l, router, host) =
            (stop.clone(), ok.clone(), failed.clone(), last_failure.clone(), router.to_owned(), host.to_owned());
        let thread = std::thread::spawn(move || {
            let mut conn = Conn::connect_as(&router, &host, None).ok();
            while !s.load(Ordering::Relaxed) {
                match conn.as_mut().map(|c| c.request("GET", "/", &[], b"", true)) {
                    Some(Ok(r)) if r.status == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        f.fetch_add(1, Ordering::Relaxed);
                        let why = match other {
                            Some(Ok(r)) => format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim()),
                            Some(Err(e)) => e.to_string(),
                            None => "no connection".into(),
                        };
                        *l.lock().unwrap_or_else(|p| p.into_inner()) = why;
                        conn = Conn::connect_as(&router, &host, None).ok();
                    }
                }
                // About 100 requests/s per service.
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Load { stop, ok, failed, last_failure, thread: Some(thread) }
    }

    fn finish(mut self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), last)
    }
}

fn measure(bin: &Path, guestbook: &Path, dir: &Path, db: &Database, rotations: u64, every: Duration) -> anyhow::Result<()> {
    let data = dir.join("data");
    let server = super::server_with_runtime(bin, &data, BRIDGE, CIDR, CGROUP_PARENT)?;
    let api = Api::new(&server.addr, &server.token);
    let result = rounds(&api, bin, guestbook, &data, db, rotations, every);
    super::delete_services(&api, &["gb-env", "gb-file"]);
    drop(server);
    result
}

fn denied(db: &Database) -> anyhow::Result<u64> {
    db.failed_logins().map_err(|e| anyhow::anyhow!("{e}"))
}

fn p99(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1]
}

fn rounds(api: &Api, bin: &Path, guestbook: &Path, data: &Path, db: &Database, rotations: u64, every: Duration) -> anyhow::Result<()> {
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin).arg("--data-dir").arg(data).args(args).output()?;
        if !out.status.success() {
            bail!("berth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    cli(&["image", "build", "--binary", &guestbook.display().to_string(), "--with-libs", "--port", "8080", "-t", "guestbook:v1"])?;
    api.call(
        "POST",
        "/api/v1/networks",
        &json!({"name": "db", "cidr": LAN_CIDR, "attach": {"bridge": LAN_BRIDGE}, "hosts": {"db": DB_IP}}),
    )?;
    let creds = json!({"username": "gb", "password": "first-pw", "host": "db.db.internal", "port": db.port(), "dbname": "guestbook"});
    for (name, value) in
        [("db-admin", json!({"username": "admin", "password": "admin-pw"})), ("db-creds", creds), ("app-config", json!({"n": 0}))]
    {
        api.call("POST", "/api/v1/secrets", &json!({"name": name, "value": value.to_string()}))?;
    }
    let service = |name: &str, image_config: Value| {
        json!({
            "name": name,
            "source": {"image": "guestbook:v1", "auto_deploy": false},
            "image_config": image_config,
            "instance": {"memory": 128},
            "autoscaling": {"min_size": 2},
            "health_check": {"protocol": "HTTP", "path": "/healthz", "interval": 1, "unhealthy_threshold": 2},
            "network": {"networks": ["db"], "egress": "networks"},
        })
    };
    let env = json!({"port": 8080, "env": {"DB_HOST": "db.db.internal", "DB_KIND": db.guestbook_kind()},
        "secret_env": {"DB_USER": "db-creds#username", "DB_PASSWORD": "db-creds#password"}});
    let files = json!({"port": 8080, "env": {"DB_HOST": "db.db.internal", "DB_KIND": db.guestbook_kind(), "DB_CREDENTIALS_FILE": "/run/secrets/db.json"},
        "secret_files": {"/run/secrets/db.json": "db-creds", "/run/config/app.json": "app-config"}});
    for (name, config) in [("gb-env", env), ("gb-file", files)] {
        api.call("POST", "/api/v1/services", &service(name, config))?;
    }
    let ready = |name: &str| -> anyhow::Result<bool> {
        let v = api.get(&format!("/api/v1/services/{name}"))?;
        Ok(v["status"] == "RUNNING" && v["operation_in_progress"].is_null())
    };
    let end = Instant::now() + Duration::from_secs(120);
    while !(ready("gb-env")? && ready("gb-file")?) {
        if Instant::now() > end {
            let ops: Vec<String> = ["gb-env", "gb-file"]
                .iter()
                .map(|s| api.get(&format!("/api/v1/services/{s}/operations?limit=1")).map(|v| v.to_string()).unwrap_or_default())
                .collect();
            bail!("the guestbook services did not come up: {}", ops.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let routers = std::fs::read_to_string(data.join("router-address"))?;
    let router = routers.lines().find_map(|l| l.strip_prefix("http://")).context("no router address")?.to_owned();
    let loads = [Load::start(&router, "gb-env.localhost"), Load::start(&router, "gb-file.localhost")];
    std::thread::sleep(Duration::from_secs(1));
    let denied_before = denied(db)?;

    // Rotations with alternating users, one every `every`.
    let mut rollout = Vec::new();
    let mut config = Some(json!({"rotator": db.rotator(), "strategy": "alternating-users", "admin_secret": "db-admin"}));
    let status = || -> anyhow::Result<Value> { Ok(api.get("/api/v1/secrets/db-creds")?["rotation"]["status"].clone()) };
    for n in 1..=rotations {
        let started = Instant::now();
        let done = status()?["rotations"].as_u64().unwrap_or(0);
        api.call("POST", "/api/v1/secrets/db-creds/rotate", &json!({"rotation": config.take()}))?;
        let mut moved = None;
        let end = started + Duration::from_secs(300);
        loop {
            let st = status()?;
            if moved.is_none() && st["step"] == "await_consumers" {
                moved = Some(Instant::now());
            }
            if st["rotations"].as_u64().unwrap_or(0) > done {
                break;
            }
            if let Some(e) = st["last_error"].as_str() {
                bail!("rotation {n} failed: {e}");
            }
            if Instant::now() > end {
                bail!("rotation {n} did not end: {st}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let finished = Instant::now();
        let ms = finished.duration_since(moved.unwrap_or(started)).as_secs_f64() * 1000.0;
        eprintln!(
            "rotation {n}/{rotations}: {:.0} ms in all, env rollout {ms:.0} ms",
            finished.duration_since(started).as_secs_f64() * 1000.0
        );
        rollout.push(ms);
        std::thread::sleep(every.saturating_sub(started.elapsed()));
    }

    // File propagation: a put answered → the file changed in every instance.
    let mut propagation = Vec::new();
    for n in 1..=FILE_PUTS {
        let instances: Vec<PathBuf> = api.get("/api/v1/services/gb-file")?["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i["id"].as_str().map(|id| data.join("runtime/instances").join(id).join("secrets")))
            .collect();
        let value = json!({"n": n}).to_string();
        api.call("POST", "/api/v1/secrets/app-config/versions", &json!({"value": value}))?;
        let put = Instant::now();
        let end = put + Duration::from_secs(30);
        while !instances.iter().all(|dir| holds(dir, "app.json", &value)) {
            if Instant::now() > end {
                bail!("the files did not follow put {n} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        propagation.push(put.elapsed().as_secs_f64() * 1000.0);
    }

    // A value read through the API, one keep-alive connection.
    let mut conn = Conn::connect(&api.addr, Some(api.auth.clone()))?;
    let mut gets = Vec::new();
    for _ in 0..GETS {
        let t = Instant::now();
        let r = conn.request("GET", "/api/v1/secrets/db-creds/value?key=password", &[], b"", true)?;
        if r.status != 200 {
            bail!("reading the secret: {}", r.status);
        }
        gets.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    std::thread::sleep(Duration::from_millis(500));
    let auth_errors = denied(db)? - denied_before;
    let (mut ok, mut failed) = (0, 0);
    for (load, name) in loads.into_iter().zip(["gb-env", "gb-file"]) {
        let (o, f, last) = load.finish();
        if f > 0 {
            let denied = api.get(&format!("/api/v1/services/{name}")).map(|v| v["denied"].clone()).unwrap_or_default();
            eprintln!("{name}: {f} failed requests, the last: {last} (connections its rules refused: {denied})");
        }
        (ok, failed) = (ok + o, failed + f);
    }
    let (file_p99, env_p99, get_p99) = (p99(propagation.clone()), p99(rollout.clone()), p99(gets.clone()));
    println!();
    println!("{:<44} {:>12} {:>16} {:>10}", "figure", "berth", "anchor (quoted)", "ratio");
    println!("{:<44} {:>12} {:>16} {:>10}", "rotations (alternating users)", rotations, "-", "-");
    println!("{:<44} {:>12} {:>16} {:>10}", "requests ok / failed", format!("{ok} / {failed}"), "-", "-");
    println!("{:<44} {:>12} {:>16} {:>10}", "failed database logins", auth_errors, "-", "-");
    println!("{:<44} {:>12.1} {:>16.0} {:>10.5}", "file propagation p99 (ms)", file_p99, KUBERNETES_FILE_MS, file_p99 / KUBERNETES_FILE_MS);
    println!("{:<44} {:>12.1} {:>16} {:>10}", "file propagation median (ms)", super::median(propagation), "-", "-");
    println!(
        "{:<44} {:>12.0} {:>16.0} {:>10.4}",
        "env rollout p99 (ms)",
        env_p99,
        APP_RUNNER_REDEPLOY_MS,
        env_p99 / APP_RUNNER_REDEPLOY_MS
    );
    println!("{:<44} {:>12.0} {:>16} {:>10}", "env rollout median (ms)", super::median(rollout), "-", "-");
    println!("{:<44} {:>12.2} {:>16} {:>10}", "get secret value p99 (ms)", get_p99, "-", "-");
    println!("{:<44} {:>12.2} {:>16} {:>10}", "get secret value median (ms)", super::median(gets), "-", "-");
    println!(
        "(anchors: Kubernetes' kubelet sync period + cache TTL for files; App Runner's redeployment for env vars; quoted, not measured)"
    );
    println!(
        "{}",
        json!({
            "bench": "secrets",
            "rotations": rotations,
            "failed_requests": failed,
            "db_auth_errors": auth_errors,
            "file_propagation_p99_ms": (file_p99 * 10.0).round() / 10.0,
            "env_rollout_p99_ms": env_p99.round(),
            "get_secret_p99_ms": (get_p99 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}

/// Whether the instance's secret directories (one tmpfs each) hold `file` with `value`.
fn holds(secrets: &Path, file: &str, value: &str) -> bool {
    std::fs::read_dir(secrets)
        .into_iter()
        .flatten()
        .flatten()
        .any(|d| std::fs::read_to_string(d.path().join(file)).is_ok_and(|v| v == value))
}

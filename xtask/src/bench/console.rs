//! `cargo xtask bench console` (as root): a release `berth server` with 100 services of
//! `examples/hello` (one with 200 environment variables) and 7 days of metrics history for each
//! (10 busy services at about 50 requests a second, 90 quiet ones at about one, each with a
//! deployment a day), written into its state database while the server is stopped. It measures:
//!
//! - per console page, the time to the first byte as the server answers it (p95 of 30 requests
//!   with a session, gzip accepted) and the bytes sent;
//! - the metrics history's storage for the 100 services;
//! - the router's CPU time per request with the history counted and with it off
//!   (`router.metrics_history`), in alternating rounds under the same keep-alive load, after a
//!   round that warms up and is not counted.
//!
//! Ends with `{"bench":"console","ttfb_p95_ms":…,"page_kb_max":…,"metrics_mb_per_100_services":…,"router_cpu_ratio_with_history":…}`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_core::metrics::{Point, Traffic, Usage};
use berth_core::sketch::Sketch;
use berth_store::Store;

use super::http::{Api, Conn};

const BRIDGE: &str = "bconsole0";
const CIDR: &str = "10.235.0.0/16";
const CGROUP_PARENT: &str = "berth-bench-console";
const SERVICES: usize = 100;
const BUSY: usize = 10;
const ROUNDS: usize = 5;
const LOAD_FOR: Duration = Duration::from_secs(8);
/// Client connections of the router's load.
const CONNECTIONS: usize = 8;

fn name(i: usize) -> String {
    format!("svc-{i:03}")
}

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the console benchmark runs containers: run it as root");
    }
    let bin = super::build_berth()?;
    let work = tempfile::Builder::new().prefix("berth-bench-console").tempdir()?;
    let hello = work.path().join("hello");
    super::compile_hello(&hello, true)?;
    let data = work.path().join("data");
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
    let result = measure(&bin, &hello, &data);
    // Whatever deletes did not finish, `berth uninstall` removes (instances, namespaces, mounts).
    let uninstalled = Command::new(&bin)
        .arg("--data-dir")
        .arg(&data)
        .args(["uninstall", "--yes"])
        .envs([
            ("BERTH_RUNTIME", "on"),
            ("BERTH_RUNTIME_BRIDGE", BRIDGE),
            ("BERTH_RUNTIME_CIDR", CIDR),
            ("BERTH_RUNTIME_CGROUP_PARENT", CGROUP_PARENT),
        ])
        .status();
    if !uninstalled.is_ok_and(|s| s.success()) {
        eprintln!("console bench: `berth uninstall` failed; instances may be left on the host");
    }
    berth_testkit::stop_router(&data);
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
    result
}

fn measure(bin: &Path, hello: &Path, data: &Path) -> anyhow::Result<()> {
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(bin).arg("--data-dir").arg(data).args(args).output()?;
        if !out.status.success() {
            bail!("berth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let names: Vec<String> = (0..SERVICES).map(name).collect();
    let server = super::server_with_runtime(bin, data, BRIDGE, CIDR, CGROUP_PARENT)?;
    let api = Api::new(&server.addr, &server.token);
    let result = (|| -> anyhow::Result<()> {
        cli(&["image", "build", "--binary", &hello.display().to_string(), "--port", "8080", "-t", "web:v1"])?;
        eprintln!("console bench: creating {SERVICES} services…");
        for (i, n) in names.iter().enumerate() {
            let env: serde_json::Map<String, serde_json::Value> = if i == 0 {
                (0..200).map(|k| (format!("SETTING_{k:03}"), format!("value-{k}-{}", "x".repeat(20)).into())).collect()
            } else {
                Default::default()
            };
            let spec = serde_json::json!({
                "name": n,
                "source": {"image": "web:v1"},
                "image_config": {"env": env},
                "instance": {"cpu": 256, "memory": 128},
                "autoscaling": {"min_size": 1, "max_size": 1},
            });
            api.call("POST", "/api/v1/services", &spec)?;
        }
        let end = Instant::now() + Duration::from_secs(600);
        loop {
            let running =
                names.iter().filter(|n| api.get(&format!("/api/v1/services/{n}")).is_ok_and(|v| v["status"] == "RUNNING")).count();
            if running == SERVICES {
                break;
            }
            if Instant::now() > end {
                bail!("{running} of {SERVICES} services are running after 10 minutes");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(())
    })();
    drop(server);
    result?;

    // Seven days of history, written while the server is stopped (its instances run on).
    eprintln!("console bench: writing 7 days of metrics history for {SERVICES} services…");
    let metrics_bytes = write_history(&data.join("state.db"), &names)?;

    let mut server = super::server_with_runtime(bin, data, BRIDGE, CIDR, CGROUP_PARENT)?;
    let api = Api::new(&server.addr, &server.token);
    let pages = pages(&server.addr, &server.token);
    let cpu = pages.as_ref().ok().map(|_| router_cpu(bin, data, &mut server));
    super::delete_services(&Api::new(&server.addr, &server.token), &names.iter().map(String::as_str).collect::<Vec<_>>());
    drop(api);
    drop(server);
    let pages = pages?;
    let (with, without) = cpu.transpose()?.unwrap_or_default();

    println!();
    println!("{:<40} {:>12} {:>10}", "console page", "ttfb p95 ms", "gzip KB");
    for (page, p95, kb) in &pages {
        println!("{page:<40} {p95:>12.1} {kb:>10.1}");
    }
    let ttfb = pages.iter().map(|p| p.1).fold(0.0, f64::max);
    let kb = pages.iter().map(|p| p.2).fold(0.0, f64::max);
    let mb = metrics_bytes as f64 / 1e6;
    let ratio = if without > 0.0 { with / without } else { f64::NAN };
    println!();
    println!("metrics history of {SERVICES} services ({BUSY} busy, {} quiet), 7 days: {mb:.1} MB", SERVICES - BUSY);
    println!("router CPU per request: {with:.2} µs with the history counted, {without:.2} µs without: ratio {ratio:.3}");
    println!(
        "{}",
        serde_json::json!({
            "bench": "console",
            "ttfb_p95_ms": (ttfb * 10.0).round() / 10.0,
            "page_kb_max": (kb * 10.0).round() / 10.0,
            "metrics_mb_per_100_services": (mb * 10.0).round() / 10.0,
            "router_cpu_ratio_with_history": (ratio * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// A small xorshift for repeatable noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Writes 7 days of 10 s points for every service (the store rolls them up into minutes and
/// prunes the ten-second ones past a day, as the server does) and returns the bytes they take.
fn write_history(db: &Path, names: &[String]) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = berth_store::SqliteStore::open(db).context("opening the state database")?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let now = now - now % 10;
        let week = berth_store::history::COARSE_KEPT_SECS;
        let start = now - week;
        let mut noise = Noise(0x2545_f491_4f6c_dd1d);
        for (i, service) in names.iter().enumerate() {
            let busy = i < BUSY;
            for hour in 0..week / 3600 {
                let mut batch = Vec::with_capacity(360);
                for k in 0..360 {
                    let ts = start + hour * 3600 + k * 10;
                    let revision = 1 + ((ts - start) / 86_400) as u32;
                    let mut p = Point::new(ts, 10);
                    let n = if busy { 400 + noise.next() % 200 } else { noise.next() % 20 };
                    let mut latency = Sketch::default();
                    for _ in 0..n {
                        let tail = if noise.next().is_multiple_of(100) { 25 } else { 1 };
                        latency.record((2_000 + noise.next() % 18_000) * tail);
                    }
                    let errors = u64::from(n > 0 && noise.next().is_multiple_of(10));
                    p.add_traffic(&Traffic { revision, classes: [0, n - errors, 0, 0, errors], latency });
                    let instance = format!("{service}-{revision}-a1b2c3");
                    let (cpu, memory) =
                        if busy { (900_000 + noise.next() % 200_000, 40 << 20) } else { (5_000 + noise.next() % 5_000, 20 << 20) };
                    p.add_usage(&Usage { instance, revision, cpu_micros: cpu, memory_bytes: memory + (noise.next() % 64) * 4096 });
                    p.samples = 10;
                    p.concurrency_sum = if busy { 40 + noise.next() % 20 } else { noise.next() % 2 };
                    p.concurrency_max = if busy { 9 } else { 1 };
                    p.instances_max = 1;
                    batch.push((service.clone(), p));
                }
                store.merge_metrics(batch, Vec::new()).await?;
            }
        }
        store.prune_metrics(now).await?;
        Ok(store.metrics_size(None).await?)
    })
}

/// The console's pages: the p95 of the time to the first byte of 30 requests each, and the
/// bytes sent (gzip).
fn pages(addr: &str, token: &str) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let mut c = Conn::connect(addr, None)?;
    let form = format!("token={token}");
    let r = c.request("POST", "/console/login", &[("Content-Type", "application/x-www-form-urlencoded")], form.as_bytes(), true)?;
    let cookie = r.header("set-cookie").and_then(|v| v.split(';').next()).context("no session cookie at login")?.to_owned();
    let busy = name(1);
    let list = [
        "/console/services".to_owned(),
        format!("/console/services/{}", name(0)),
        format!("/console/services/{}/settings", name(0)),
        format!("/console/services/{busy}"),
        format!("/console/services/{busy}/logs"),
        format!("/console/services/{busy}/requests"),
        "/console/registry".to_owned(),
        "/console/registry/web".to_owned(),
        "/console/tokens".to_owned(),
        "/console/webhooks".to_owned(),
        "/console/secrets".to_owned(),
        "/console/networks".to_owned(),
    ];
    let mut out = Vec::new();
    for path in list {
        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..30 {
            let t = Instant::now();
            let r = c.request("GET", &path, &[("Cookie", &cookie), ("Accept-Encoding", "gzip")], b"", true)?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if r.status != 200 {
                bail!("{path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
            }
            bytes = r.body.len();
        }
        times.sort_by(f64::total_cmp);
        let p95 = times[((times.len() as f64 * 0.95).ceil() as usize).clamp(1, times.len()) - 1];
        out.push((path, p95, bytes as f64 / 1024.0));
    }
    Ok(out)
}

/// The router process's CPU time so far, microseconds.
fn router_cpu_micros(data: &Path) -> anyhow::Result<u64> {
    let pid = std::fs::read_to_string(data.join("router.pid"))?.trim().to_owned();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks * 1_000_000 / 100)
}

/// The router's CPU time per request (µs) with the history counted and without: the median of
/// alternating rounds, each under the same keep-alive load for [`LOAD_FOR`].
fn router_cpu(bin: &Path, data: &Path, server: &mut berth_testkit::BerthProcess) -> anyhow::Result<(f64, f64)> {
    let (mut with, mut without) = (Vec::new(), Vec::new());
    // Round 0 warms the server and the instances up and is not counted.
    for round in 0..=ROUNDS * 2 {
        let history = round % 2 == 1 || round == 0;
        std::fs::write(data.join("config.toml"), format!("[router]\nmetrics_history = {history}\n"))?;
        // A restart with another router configuration starts a router with it (the server
        // stopped first: one server on a data directory at a time).
        let _ = server.child.kill();
        let _ = server.child.wait();
        *server = super::server_with_runtime(bin, data, BRIDGE, CIDR, CGROUP_PARENT)?;
        let router = router_addr(&Api::new(&server.addr, &server.token), data)?;
        // Measured once the new router alone serves (its predecessor drained), and again if the
        // router changed meanwhile.
        let (served, per) = loop {
            std::thread::sleep(Duration::from_secs(3));
            let pid = std::fs::read_to_string(data.join("router.pid"))?;
            let before = router_cpu_micros(data)?;
            let served = load(&router, &format!("{}.localhost", name(1)))?;
            let used = router_cpu_micros(data)?.saturating_sub(before);
            if std::fs::read_to_string(data.join("router.pid"))? == pid {
                break (served, used as f64 / served.max(1) as f64);
            }
        };
        eprintln!(
            "console bench: round {}: history {}: {served} requests, {per:.2} µs of router CPU each",
            round,
            if history { "on" } else { "off" }
        );
        match (round, history) {
            (0, _) => {}
            (_, true) => with.push(per),
            (_, false) => without.push(per),
        }
    }
    let _ = std::fs::remove_file(data.join("config.toml"));
    Ok((super::median(with), super::median(without)))
}

/// The router's plain-HTTP address once the busy service is ready again after a restart.
fn router_addr(api: &Api, data: &Path) -> anyhow::Result<String> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = api
            .get(&format!("/api/v1/services/{}", name(1)))
            .is_ok_and(|v| v["status"] == "RUNNING" && v["instances"].as_array().is_some_and(|i| i.iter().any(|x| x["state"] == "ready")));
        if ready {
            let routers = std::fs::read_to_string(data.join("router-address"))?;
            return routers.lines().find_map(|l| l.strip_prefix("http://")).map(str::to_owned).context("no router address");
        }
        if Instant::now() > end {
            bail!("{} is not ready after a restart", name(1));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Keep-alive GETs from [`CONNECTIONS`] connections for [`LOAD_FOR`] (enough to keep the router
/// busy, where its CPU per request is steady); returns how many were answered.
fn load(router: &str, host: &str) -> anyhow::Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (stop, done, router, host) = (stop.clone(), done.clone(), router.to_owned(), host.to_owned());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut c = Conn::connect_as(&router, &host, None)?;
                while !stop.load(Ordering::Relaxed) {
                    if c.request("GET", "/", &[], b"", false)?.status == 200 {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(LOAD_FOR);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
    }
    Ok(done.load(Ordering::Relaxed))
}

//! `cargo xtask chaos` (as root): a real `berth server` (release build, embedded runtime, its data
//! directory on a 512 MiB tmpfs, at most 4096 open files) runs two services of `examples/hello`
//! with two instances each — `web-app` on `web:latest` (auto-deployed) and `echo-app`, which
//! streams full duplex — under steady load through the router: GETs on keep-alive connections
//! (a GET on a pooled connection found closed is sent again, as browsers and Go clients do) and
//! 1 MiB full-duplex echoes on new connections. Faults are injected one after another; after each
//! the suite waits for berth to recover by itself (both services running with two ready
//! instances, the API answering, requests and an echo served through the router, and what the
//! fault calls for), counts the requests that failed since it was injected, and compares the host
//! with how it was before (`host.rs`). It ends with a table and one JSON line:
//! `{"bench":"chaos","faults":…,"recovered":…,"failed_requests":…,"max_recovery_ms":…,"host_changes":…}`
//! where `failed_requests` leaves out the requests a fault costs by its nature (those in flight on
//! an instance it kills), reported per fault and as `failed_requests_by_nature`.

mod host;
mod hostile;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bench::http::{duplex_echo, Api, Conn};

const BRIDGE: &str = "bchaos0";
const CIDR: &str = "10.242.0.0/24";
const CGROUP_PARENT: &str = "berth-chaos";
const WEB: &str = "web-app.localhost";
const ECHO: &str = "echo-app.localhost";
/// berth's open-file limit, so that a bounded flood of connections can exhaust it.
const FD_LIMIT: u32 = 4096;
/// How long berth has to recover from a fault.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);

pub fn run() -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the chaos suite runs containers, mounts a tmpfs and kills processes: run it as root");
    }
    crate::test::ensure_tools(&[("prlimit", "util-linux"), ("nft", "nftables"), ("ip", "iproute2")])?;
    let bin = crate::bench::build_berth()?;
    let work = tempfile::Builder::new().prefix("berth-chaos").tempdir()?;
    let hello = work.path().join("hello");
    crate::bench::compile_hello(&hello, true)?;
    let data = work.path().join("data");
    std::fs::create_dir_all(&data)?;
    cleanup_host();
    let untouched = host::snapshot_all();
    let mount = Tmpfs::mount(&data, "512m")?;

    // A failed setup stops its server on the way out (`Server` cleans up when dropped).
    let result = Chaos::setup(&bin, work.path(), &data, &hello).and_then(|mut chaos| {
        let faults = chaos.faults();
        chaos.teardown();
        faults.map(|()| chaos)
    });
    drop(mount);
    cleanup_host();
    // After `berth uninstall`, nothing of berth's may be left either.
    let left = host::snapshot_all().changes_since(&untouched);
    result?.report(&left)
}

fn cleanup_host() {
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
}

/// A tmpfs mounted for the run, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), &format!("berth-chaos-{}", std::process::id())])
            .arg(at)
            .status()?
            .success();
        if !ok {
            bail!("mounting a tmpfs on {}", at.display());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The server under test, started through `prlimit` with [`FD_LIMIT`] open files.
struct Server {
    bin: PathBuf,
    data: PathBuf,
    api: String,
    http: u16,
    https: u16,
    log: PathBuf,
    child: Option<Child>,
    /// Shut down for good: nothing is left to clean.
    down: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    fn command(&self) -> anyhow::Result<Command> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut c = Command::new("prlimit");
        c.arg(format!("--nofile={FD_LIMIT}:{FD_LIMIT}"))
            .arg("--")
            .arg(&self.bin)
            .args(["server", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.api])
            .env("BERTH_ROUTER_HTTP", format!("127.0.0.1:{}", self.http))
            .env("BERTH_ROUTER_HTTPS", format!("127.0.0.1:{}", self.https))
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        Ok(c)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut child = self.command()?.spawn().context("starting berth server")?;
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if let Some(status) = child.try_wait()? {
                bail!("berth server exited at start ({status}); see {}", self.log.display());
            }
            if Conn::connect(&self.api, None).and_then(|mut c| c.request("GET", "/healthz", &[], b"", true)).is_ok_and(|r| r.status == 200)
            {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        bail!("berth server did not answer within 30 s")
    }

    /// Starts the server expecting it to refuse; returns what it said.
    fn start_refused(&mut self) -> anyhow::Result<String> {
        let mut c = self.command()?;
        let mut child = c.stderr(Stdio::piped()).spawn()?;
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if child.try_wait()?.is_some() {
                let out = child.wait_with_output()?;
                return Ok(String::from_utf8_lossy(&out.stderr).into_owned());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("berth server started where it should have refused")
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Stops the server and removes what it left on the host (instances, router, bridge).
    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.down, true) {
            return;
        }
        let _ = self.terminate();
        let _ = self.cli(&["uninstall", "--yes"]);
    }

    fn api(&self) -> anyhow::Result<Api> {
        let token = std::fs::read_to_string(self.data.join("admin-token"))?;
        Ok(Api::new(&self.api, token.trim()))
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new(&self.bin).arg("--data-dir").arg(&self.data).args(args).env("HOME", &self.data).output()?)
    }

    fn router_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("router.pid")).ok().and_then(|p| p.trim().parse().ok())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn signal(pid: i32, sig: &str) -> anyhow::Result<()> {
    if !Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status()?.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// One answer the load got: when, and why it failed if it did.
type Event = (Instant, Option<String>);

/// Steady load through the router: two threads of GETs on keep-alive connections to `web-app`,
/// one of 1 MiB full-duplex echoes on new connections to `echo-app`.
struct Load {
    stop: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// No load yet.
    fn idle() -> Load {
        Load { stop: Arc::new(AtomicBool::new(false)), events: Arc::new(Mutex::new(Vec::new())), threads: Vec::new() }
    }

    fn start(router: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let events: Arc<Mutex<Vec<Event>>> = Arc::new(Mutex::new(Vec::new()));
        let record = |events: &Arc<Mutex<Vec<Event>>>, failure: Option<String>| {
            events.lock().unwrap_or_else(|p| p.into_inner()).push((Instant::now(), failure));
        };
        let mut threads = Vec::new();
        for _ in 0..2 {
            let (stop, events, router) = (stop.clone(), events.clone(), router.to_owned());
            threads.push(std::thread::spawn(move || {
                let mut conn: Option<(Conn, bool)> = None;
                while !stop.load(Ordering::Relaxed) {
                    let mut outcome = None;
                    for _attempt in 0..2 {
                        if conn.is_none() {
                            conn = Conn::connect_as(&router, WEB, None).ok().map(|c| (c, false));
                        }
                        let Some((c, reused)) = conn.as_mut() else {
                            outcome = Some(Err("cannot connect to the router".to_owned()));
                            break;
                        };
                        match c.request("GET", "/", &[], b"", true) {
                            Ok(r) if r.status == 200 => {
                                *reused = true;
                                outcome = Some(Ok(()));
                                break;
                            }
                            Ok(r) => {
                                outcome = Some(Err(format!("{} {}", r.status, String::from_utf8_lossy(&r.body).trim())));
                                conn = None;
                                break;
                            }
                            // A pooled connection found closed: sent again on a new one, once.
                            Err(_) if *reused => conn = None,
                            Err(e) => {
                                outcome = Some(Err(e.to_string()));
                                conn = None;
                                break;
                            }
                        }
                    }
                    record(&events, outcome.and_then(Result::err));
                    std::thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        let (stop2, events2, router) = (stop.clone(), events.clone(), router.to_owned());
        threads.push(std::thread::spawn(move || {
            let body = Arc::new(berth_testkit::noise(11, 1 << 20));
            while !stop2.load(Ordering::Relaxed) {
                let failure = match duplex_echo(&router, ECHO, &body, Duration::from_secs(15)) {
                    Ok(Some(_)) => None,
                    Ok(None) => Some("echo stalled".to_owned()),
                    Err(e) => Some(format!("echo: {e:#}")),
                };
                record(&events2, failure);
                std::thread::sleep(Duration::from_millis(50));
            }
        }));
        Load { stop, events, threads }
    }

    fn mark(&self) -> usize {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// (answers, failures) since `mark`.
    fn since(&self, mark: usize) -> (usize, Vec<String>) {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let after = &events[mark.min(events.len())..];
        (after.len(), after.iter().filter_map(|(_, f)| f.clone()).collect())
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What one fault cost and how berth came back from it.
struct Record {
    name: &'static str,
    /// It kills an instance: the requests in flight on it fail by nature.
    by_nature: bool,
    answers: usize,
    failed: Vec<String>,
    recovered: bool,
    recovery_ms: f64,
    host: Vec<String>,
    note: String,
}

struct Chaos {
    server: Server,
    work: PathBuf,
    hello: PathBuf,
    router: String,
    load: Load,
    baseline: host::Snapshot,
    records: Vec<Record>,
    upgrades: u32,
}

fn service_spec(name: &str, image: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "source": {"image": image},
        "instance": {"memory": 128},
        "autoscaling": {"min_size": 2, "max_size": 4},
        "health_check": {"protocol": "HTTP", "path": "/healthz", "interval": 1, "unhealthy_threshold": 2},
    })
}

impl Chaos {
    fn setup(bin: &Path, work: &Path, data: &Path, hello: &Path) -> anyhow::Result<Chaos> {
        // Idle and slow connections are closed after 5 s; a stopping router drains for 15 s; the
        // 512 MiB disk keeps 32 MiB free when images are unpacked.
        // The runtime settings live in the file so that `berth uninstall --data-dir` finds them.
        std::fs::write(
            data.join("config.toml"),
            format!(
                "[runtime]\nenabled = \"on\"\noutbound_nat = false\nbridge = \"{BRIDGE}\"\ncidr = \"{CIDR}\"\ncgroup_parent = \"{CGROUP_PARENT}\"\n\
                 [router]\nidle_timeout_secs = 5\ndrain_timeout_secs = 15\n[api]\nidle_timeout_secs = 5\n\
                 [registry]\ngc_interval_secs = 0\n[image]\nmin_free_disk_mib = 32\n"
            ),
        )?;
        let mut server = Server {
            bin: bin.to_owned(),
            data: data.to_owned(),
            api: format!("127.0.0.1:{}", free_port()?),
            http: free_port()?,
            https: free_port()?,
            log: work.join("server.log"),
            child: None,
            down: false,
        };
        server.start()?;
        let api = server.api()?;
        api.call(
            "POST",
            "/api/v1/repositories",
            &serde_json::json!({"name": "web", "tag_mutability": "IMMUTABLE_WITH_EXCLUSION", "exclusions": ["latest"]}),
        )?;
        push(&server, hello, "v1", &["web:v1", "web:latest"])?;
        for (name, image) in [("web-app", "web:latest"), ("echo-app", "web:v1")] {
            api.call("POST", "/api/v1/services", &service_spec(name, image))?;
        }
        let router = format!("127.0.0.1:{}", server.http);
        let mut chaos = Chaos {
            load: Load::idle(),
            router,
            baseline: host::snapshot(&host::Berth { bridge: BRIDGE, cidr: CIDR, data, cgroup_parent: CGROUP_PARENT }),
            server,
            work: work.to_owned(),
            hello: hello.to_owned(),
            records: Vec::new(),
            upgrades: 0,
        };
        let t0 = Instant::now();
        if !chaos.wait_healthy(t0, &|_| Ok(true)).0 {
            let log = std::fs::read_to_string(chaos.work.join("server.log")).unwrap_or_default();
            let shown: Vec<String> = ["web-app", "echo-app"]
                .iter()
                .map(|s| {
                    let op = chaos.last_operation(s).map(|o| o["log"].clone()).unwrap_or_default();
                    let status =
                        chaos.api().and_then(|a| a.get(&format!("/api/v1/services/{s}"))).map(|v| v["status"].clone()).unwrap_or_default();
                    format!("{s}: {status}, last operation: {op}")
                })
                .collect();
            bail!("the services did not become ready ({:?}): {shown:?}\nserver log:\n{log}", chaos.healthy());
        }
        chaos.baseline = chaos.snapshot();
        chaos.load = Load::start(&chaos.router);
        std::thread::sleep(Duration::from_secs(2));
        let (answers, failed) = chaos.load.since(0);
        if !failed.is_empty() {
            bail!("{} of {answers} requests failed before any fault: {:?}", failed.len(), &failed[..failed.len().min(5)]);
        }
        Ok(chaos)
    }

    fn snapshot(&self) -> host::Snapshot {
        host::snapshot(&host::Berth { bridge: BRIDGE, cidr: CIDR, data: &self.server.data, cgroup_parent: CGROUP_PARENT })
    }

    fn api(&self) -> anyhow::Result<Api> {
        self.server.api()
    }

    /// The service's instances: (id, state).
    fn instances(&self, service: &str) -> anyhow::Result<Vec<(String, String)>> {
        let v = self.api()?.get(&format!("/api/v1/services/{service}"))?;
        Ok(v["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| (i["id"].as_str().unwrap_or("").to_owned(), i["state"].as_str().unwrap_or("").to_owned()))
            .collect())
    }

    fn ready(&self, service: &str) -> anyhow::Result<Vec<String>> {
        Ok(self.instances(service)?.into_iter().filter(|(_, s)| s == "ready").map(|(id, _)| id).collect())
    }

    fn instance_file(&self, id: &str, name: &str) -> PathBuf {
        self.server.data.join("runtime/instances").join(id).join(name)
    }

    fn last_operation(&self, service: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.api()?.get(&format!("/api/v1/services/{service}/operations?limit=1"))?["operations"][0].clone())
    }

    /// Both services running with two ready instances and no operation, the API answering, and
    /// a GET and an echo served through the router.
    fn healthy(&self) -> anyhow::Result<bool> {
        let api = self.api()?;
        for service in ["web-app", "echo-app"] {
            let v = api.get(&format!("/api/v1/services/{service}"))?;
            let ready = v["instances"].as_array().into_iter().flatten().filter(|i| i["state"] == "ready").count();
            if v["status"] != "RUNNING" || ready < 2 || !v["operation_in_progress"].is_null() {
                return Ok(false);
            }
        }
        let r = Conn::connect_as(&self.router, WEB, None)?.request("GET", "/", &[], b"", true)?;
        if r.status != 200 {
            return Ok(false);
        }
        let small = Arc::new(berth_testkit::noise(3, 64 << 10));
        Ok(duplex_echo(&self.router, ECHO, &small, Duration::from_secs(5))?.is_some())
    }

    /// Waits for [`Chaos::healthy`] and `extra`; returns whether they held within the limit, and
    /// when (ms after `from`).
    fn wait_healthy(&self, from: Instant, extra: &dyn Fn(&Chaos) -> anyhow::Result<bool>) -> (bool, f64) {
        while from.elapsed() < RECOVERY_LIMIT {
            if self.healthy().unwrap_or(false) && extra(self).unwrap_or(false) {
                return (true, from.elapsed().as_secs_f64() * 1000.0);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (false, from.elapsed().as_secs_f64() * 1000.0)
    }

    /// Waits for recovery, lets a second of load pass, and records the fault.
    fn settle(
        &mut self,
        name: &'static str,
        by_nature: bool,
        mark: usize,
        from: Instant,
        extra: &dyn Fn(&Chaos) -> anyhow::Result<bool>,
        note: String,
    ) {
        let (recovered, recovery_ms) = self.wait_healthy(from, extra);
        std::thread::sleep(Duration::from_secs(1));
        let (answers, failed) = self.load.since(mark);
        let host = self.snapshot().changes_since(&self.baseline);
        eprintln!(
            "chaos: {name}: {} of {answers} requests failed{}; {} in {recovery_ms:.0} ms{}{}",
            failed.len(),
            if by_nature && !failed.is_empty() { " (in flight on the instance it killed)" } else { "" },
            if recovered { "recovered" } else { "NOT recovered" },
            if host.is_empty() { String::new() } else { format!("; host changed: {host:?}") },
            if note.is_empty() { String::new() } else { format!("; {note}") },
        );
        for f in failed.iter().take(5) {
            eprintln!("chaos:   failed: {f}");
        }
        self.records.push(Record { name, by_nature, answers, failed, recovered, recovery_ms, host, note });
    }

    fn faults(&mut self) -> anyhow::Result<()> {
        self.kill_instance_process("instance-kill", "container.pid")?;
        self.kill_instance_process("shim-kill", "shim.pid")?;
        self.delete_cgroup()?;
        self.oom_request()?;
        self.server_kill_idle()?;
        self.server_kill_mid_deploy()?;
        self.server_restart(false)?;
        self.server_restart(true)?;
        self.router_upgrade()?;
        self.fd_flood()?;
        self.disk_full_push()?;
        self.state_db("state-db-corrupt", |db| {
            let mut bytes = std::fs::read(db)?;
            bytes[..64].copy_from_slice(&[0x5a; 64]);
            std::fs::write(db, bytes)
        })?;
        self.state_db("state-db-empty", |db| std::fs::write(db, b""))?;
        self.hostile_image()?;
        Ok(())
    }

    /// Kills (`kill -9`) the process whose pid is in `file` of one of `web-app`'s instances.
    fn kill_instance_process(&mut self, name: &'static str, file: &str) -> anyhow::Result<()> {
        let victim = self.ready("web-app")?.into_iter().next().context("no ready instance")?;
        let pid: i32 = std::fs::read_to_string(self.instance_file(&victim, file))?.trim().parse()?;
        let (mark, t0) = (self.load.mark(), Instant::now());
        signal(pid, "KILL")?;
        let gone = move |c: &Chaos| Ok(!c.instances("web-app")?.iter().any(|(id, _)| *id == victim));
        self.settle(name, true, mark, t0, &gone, format!("killed pid {pid}"));
        Ok(())
    }

    /// Moves an instance's processes out of its cgroups and removes them.
    fn delete_cgroup(&mut self) -> anyhow::Result<()> {
        let victim = self.ready("web-app")?.into_iter().next().context("no ready instance")?;
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let hierarchies: Vec<PathBuf> = if v2 {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            std::fs::read_dir("/sys/fs/cgroup")?.flatten().map(|e| e.path()).collect()
        };
        let (mark, t0) = (self.load.mark(), Instant::now());
        let mut removed = 0;
        for root in hierarchies {
            let dir = root.join(CGROUP_PARENT).join(&victim);
            if !dir.is_dir() {
                continue;
            }
            for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
            if std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
        let gone = move |c: &Chaos| Ok(!c.instances("web-app")?.iter().any(|(id, _)| *id == victim));
        self.settle("cgroup-deleted", true, mark, t0, &gone, format!("{removed} cgroup directories removed"));
        Ok(())
    }

    /// A request that runs its instance out of memory: it fails, on that instance alone.
    fn oom_request(&mut self) -> anyhow::Result<()> {
        let before = self.ready("web-app")?;
        let (mark, t0) = (self.load.mark(), Instant::now());
        let answer = Conn::connect_as(&self.router, WEB, None)?.request("GET", "/hog", &[], b"", true);
        let got = match answer {
            Ok(r) => format!("the request of death got {}", r.status),
            Err(e) => format!("the request of death failed: {e}"),
        };
        // Exactly one instance died: the request was not tried again on the other.
        let one_replaced = move |c: &Chaos| {
            let now = c.ready("web-app")?;
            Ok(before.iter().filter(|id| now.contains(id)).count() == 1)
        };
        self.settle("oom-request", true, mark, t0, &one_replaced, got);
        Ok(())
    }

    fn server_kill_idle(&mut self) -> anyhow::Result<()> {
        let (mark, t0) = (self.load.mark(), Instant::now());
        self.server.kill9();
        std::thread::sleep(Duration::from_secs(2));
        self.server.start()?;
        self.settle("server-kill-idle", false, mark, t0, &|_| Ok(true), "2 s without a server".into());
        Ok(())
    }

    fn server_kill_mid_deploy(&mut self) -> anyhow::Result<()> {
        let before = self.last_operation("web-app")?["id"].clone();
        let (mark, t0) = (self.load.mark(), Instant::now());
        push(&self.server, &self.hello, "v2", &["web:v2", "web:latest"])?;
        let end = Instant::now() + Duration::from_secs(30);
        let mut seen = String::new();
        while Instant::now() < end {
            let op = self.last_operation("web-app")?;
            if op["id"] != before && op["status"] == "IN_PROGRESS" {
                seen = format!("killed during {} of revision {}", op["type"].as_str().unwrap_or("?"), op["target_revision"]);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.server.kill9();
        self.server.start()?;
        let deployed = |c: &Chaos| {
            let op = c.last_operation("web-app")?;
            let body = Conn::connect_as(&c.router, WEB, None)?.request("GET", "/", &[], b"", true)?.body;
            Ok(op["status"] == "SUCCEEDED" && String::from_utf8_lossy(&body).starts_with("hello from v2"))
        };
        let note = if seen.is_empty() { "the deployment ended before it could be caught".into() } else { seen };
        self.settle("server-kill-mid-deploy", false, mark, t0, &deployed, note);
        Ok(())
    }

    /// A clean restart; with `upgrade`, onto another build of berth (whose server replaces the
    /// running router by a successor that takes its sockets over).
    fn server_restart(&mut self, upgrade: bool) -> anyhow::Result<()> {
        let router = self.server.router_pid().context("no router pid")?;
        let (mark, t0) = (self.load.mark(), Instant::now());
        self.server.terminate()?;
        if upgrade {
            self.upgrades += 1;
            let next = self.work.join(format!("berth-build-{}", self.upgrades));
            std::fs::copy(&self.server.bin, &next)?;
            self.server.bin = next;
        }
        self.server.start()?;
        let (name, note): (&'static str, String) = if upgrade {
            ("server-upgrade", "the server on another build; its router handed over to a successor".into())
        } else {
            ("server-restart", "SIGTERM, then started again".into())
        };
        let check = move |c: &Chaos| Ok(!upgrade || (c.server.router_pid() != Some(router) && !alive(router)));
        self.settle(name, false, mark, t0, &check, note);
        Ok(())
    }

    fn router_upgrade(&mut self) -> anyhow::Result<()> {
        let router = self.server.router_pid().context("no router pid")?;
        let (mark, t0) = (self.load.mark(), Instant::now());
        signal(router, "USR2")?;
        let replaced = move |c: &Chaos| Ok(c.server.router_pid() != Some(router) && !alive(router));
        self.settle("router-upgrade", false, mark, t0, &replaced, "SIGUSR2: a successor took the listeners over".into());
        Ok(())
    }

    /// More idle connections than berth may hold open files, on the router and on the API, and
    /// slow ones sending half a request head; held for 3 s, then closed.
    fn fd_flood(&mut self) -> anyhow::Result<()> {
        // This process needs the descriptors.
        let _ = Command::new("prlimit").args(["--pid", &std::process::id().to_string(), "--nofile=20000:20000"]).status();
        let before = self.ready("web-app")?;
        let (mark, t0) = (self.load.mark(), Instant::now());
        let mut held = Vec::new();
        let mut opened = [0usize; 3];
        let targets = [(self.router.clone(), 5000usize, false), (self.server.api.clone(), 4500, false), (self.router.clone(), 300, true)];
        for (i, (addr, count, slow)) in targets.iter().enumerate() {
            let mut timeouts = 0;
            let sock: std::net::SocketAddr = addr.parse()?;
            for _ in 0..*count {
                match std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)) {
                    Ok(mut s) => {
                        if *slow {
                            use std::io::Write;
                            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: web-app.localhost\r\nX-Slow: ");
                        }
                        held.push(s);
                        opened[i] += 1;
                    }
                    Err(_) => {
                        timeouts += 1;
                        if timeouts > 50 {
                            break;
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
        let same = move |c: &Chaos| {
            let now = c.ready("web-app")?;
            Ok(before.iter().all(|id| now.contains(id)))
        };
        let note = format!("{} idle on the router, {} idle on the API, {} slow: no instance replaced", opened[0], opened[1], opened[2]);
        self.settle("fd-flood", false, mark, t0, &same, note);
        Ok(())
    }

    /// The data directory fills up during a push: the push fails, saying why, and nothing of it
    /// stays; once space is freed, pushes work.
    fn disk_full_push(&mut self) -> anyhow::Result<()> {
        let big = self.work.join("big-app");
        std::fs::write(&big, berth_testkit::noise(5, 24 << 20))?;
        let filler = self.server.data.join("chaos-filler");
        let (mark, t0) = (self.load.mark(), Instant::now());
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler)?;
            let chunk = vec![0u8; 1 << 20];
            while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
            // Room for small writes, not for the push.
            let len = f.metadata()?.len();
            f.set_len(len.saturating_sub(8 << 20))?;
        }
        let out = self.server.cli(&["image", "build", "--binary", &big.display().to_string(), "--port", "8080", "-t", "big:v1"])?;
        std::fs::remove_file(&filler)?;
        let said = String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("").to_owned();
        let note =
            if out.status.success() { "the push succeeded where the disk was full".to_owned() } else { format!("the CLI said: {said}") };
        let failed_push = !out.status.success() && said.contains("full");
        let check = move |c: &Chaos| -> anyhow::Result<bool> {
            let uploads = std::fs::read_dir(c.server.data.join("registry/uploads")).map(|d| d.count()).unwrap_or(0);
            Ok(failed_push && uploads == 0 && push(&c.server, &c.hello, "after-full", &["web:after-full"]).is_ok())
        };
        self.settle("disk-full-push", false, mark, t0, &check, note);
        Ok(())
    }

    /// The state database damaged while the server is down: the server refuses it (the data
    /// plane serves on meanwhile) and starts again once it is restored from a backup.
    fn state_db(&mut self, name: &'static str, damage: fn(&Path) -> std::io::Result<()>) -> anyhow::Result<()> {
        let (mark, t0) = (self.load.mark(), Instant::now());
        self.server.terminate()?;
        let db = self.server.data.join("state.db");
        // The backup: the database with its write-ahead log, should one be left.
        let files = ["state.db", "state.db-wal", "state.db-shm"];
        let backup = self.work.join("state-backup");
        std::fs::create_dir_all(&backup)?;
        for f in files {
            let _ = std::fs::remove_file(backup.join(f));
            if self.server.data.join(f).exists() {
                std::fs::copy(self.server.data.join(f), backup.join(f))?;
                std::fs::remove_file(self.server.data.join(f))?;
            }
        }
        std::fs::copy(backup.join("state.db"), &db)?;
        damage(&db)?;
        let said = self.server.start_refused()?;
        let refusal = said.lines().find(|l| l.starts_with("error:")).unwrap_or("").to_owned();
        let _ = std::fs::remove_file(&db);
        for f in files {
            if backup.join(f).exists() {
                std::fs::copy(backup.join(f), self.server.data.join(f))?;
            }
        }
        self.server.start()?;
        let refused = !refusal.is_empty();
        let refusal = refusal.trim_start_matches("error: ").replace(&self.server.data.display().to_string(), "<data>");
        let note = format!("refused: {}", refusal.chars().take(100).collect::<String>());
        self.settle(name, false, mark, t0, &move |_| Ok(refused), note);
        Ok(())
    }

    /// A hostile image pushed to the auto-deployed tag: its deployment fails, the running
    /// revision serves on, and nothing is written outside the image's root.
    fn hostile_image(&mut self) -> anyhow::Result<()> {
        let before = self.last_operation("web-app")?["id"].clone();
        let serving = self.api()?.get("/api/v1/services/web-app")?["current_revision"]["number"].clone();
        let (mark, t0) = (self.load.mark(), Instant::now());
        let api = self.api()?;
        hostile::push(&self.server.api, &api.auth, "web", "latest")?;
        let was = serving.clone();
        let contained = move |c: &Chaos| {
            let op = c.last_operation("web-app")?;
            let ended = op["id"] != before && !matches!(op["status"].as_str(), Some("PENDING" | "IN_PROGRESS" | "ROLLBACK_IN_PROGRESS"));
            let now = c.api()?.get("/api/v1/services/web-app")?["current_revision"]["number"].clone();
            Ok(ended && now == was && host::CANARIES.iter().all(|p| !Path::new(p).exists()))
        };
        let (recovered, _) = self.wait_healthy(t0, &contained);
        let op = self.last_operation("web-app")?;
        let note = format!("its deployment ended {}; revision {serving} serves on", op["status"].as_str().unwrap_or("?"));
        self.settle("hostile-image", false, mark, t0, &move |_| Ok(recovered), note);
        Ok(())
    }

    /// Stops the load, deletes the services, stops the server and removes what berth put on the
    /// host (`berth uninstall`).
    fn teardown(&mut self) {
        self.load.stop();
        if let Ok(api) = self.api() {
            for s in ["web-app", "echo-app"] {
                let _ = api.call("DELETE", &format!("/api/v1/services/{s}"), &serde_json::Value::Null);
            }
            let end = Instant::now() + Duration::from_secs(60);
            while Instant::now() < end && ["web-app", "echo-app"].iter().any(|s| api.get(&format!("/api/v1/services/{s}")).is_ok()) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.server.shutdown();
    }

    fn report(&self, left: &[String]) -> anyhow::Result<()> {
        println!();
        println!(
            "{:<24} {:>8} {:>8} {:>10} {:>10} {:>12} {:>6}",
            "fault", "requests", "failed", "by nature", "recovered", "recovery ms", "host"
        );
        for r in &self.records {
            println!(
                "{:<24} {:>8} {:>8} {:>10} {:>10} {:>12.0} {:>6}   {}",
                r.name,
                r.answers,
                r.failed.len(),
                if r.by_nature { "yes" } else { "-" },
                if r.recovered { "yes" } else { "NO" },
                r.recovery_ms,
                if r.host.is_empty() { "same" } else { "CHANGED" },
                r.note
            );
        }
        if left.is_empty() {
            println!("after `berth uninstall`: the host is as it was before the run");
        } else {
            println!("after `berth uninstall` the host differs from before the run: {left:?}");
        }
        let excused: usize = self.records.iter().filter(|r| r.by_nature).map(|r| r.failed.len()).sum();
        let failed: usize = self.records.iter().filter(|r| !r.by_nature).map(|r| r.failed.len()).sum();
        let json = serde_json::json!({
            "bench": "chaos",
            "faults": self.records.len(),
            "recovered": self.records.iter().filter(|r| r.recovered).count(),
            "failed_requests": failed,
            "failed_requests_by_nature": excused,
            "max_recovery_ms": self.records.iter().map(|r| r.recovery_ms).fold(0.0, f64::max).round(),
            "host_changes": self.records.iter().filter(|r| !r.host.is_empty()).count() + usize::from(!left.is_empty()),
        });
        println!("{json}");
        Ok(())
    }
}

/// Builds `examples/hello` as `version` and pushes it with the given tags, through the CLI.
fn push(server: &Server, hello: &Path, version: &str, tags: &[&str]) -> anyhow::Result<()> {
    let version = format!("HELLO_VERSION={version}");
    let mut args = vec!["image", "build", "--binary"];
    let hello = hello.display().to_string();
    args.push(&hello);
    args.extend(["--port", "8080", "--env", &version]);
    for t in tags {
        args.extend(["-t", t]);
    }
    let out = server.cli(&args)?;
    if !out.status.success() {
        bail!("pushing {version}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

//! Shared test support: a real `berth server` on loopback with a temporary data directory, a
//! raw HTTP helper, OCI image layouts on disk for skopeo, and the `berth` CLI.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub mod webdriver;

pub use berth_testkit::{noise, BerthProcess};
use sha2::{Digest, Sha256};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// A running `berth server` with its own temporary data directory. Dropped, it stops the
/// server, then removes what its runtime left (the sandbox: the router process, instances,
/// host state), then the directory — fields drop in this order.
pub struct Server {
    process: Option<BerthProcess>,
    sandbox: Option<berth_testkit::RuntimeSandbox>,
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub addr: String,
    pub token: String,
    env: Vec<(String, String)>,
}

impl Server {
    pub fn start() -> Result<Server> {
        Server::start_with_env(&[])
    }

    /// Starts with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Result<Server> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().to_path_buf();
        let p = BerthProcess::start(Path::new(BIN), &dir, env)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Ok(Server { dir, _tmp: Some(tmp), addr: p.addr.clone(), token: p.token.clone(), process: Some(p), sandbox: None, env })
    }

    /// Starts with the embedded runtime on (as root); see [`runtime_sandbox`].
    pub fn start_with_runtime(name: &str, octet: u8, instances: &str) -> Result<Server> {
        let tmp = tempfile::tempdir()?;
        let (env, sandbox) = runtime_sandbox(name, octet, instances, tmp.path())?;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = BerthProcess::start(Path::new(BIN), tmp.path(), &env)?;
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let dir = tmp.path().to_path_buf();
        Ok(Server { dir, _tmp: Some(tmp), addr: p.addr.clone(), token: p.token.clone(), process: Some(p), sandbox: Some(sandbox), env })
    }

    /// What the runtime of a server started with [`Server::start_with_runtime`] uses on the host.
    pub fn sandbox(&self) -> Result<&berth_testkit::RuntimeSandbox> {
        self.sandbox.as_ref().ok_or_else(|| "this server runs no runtime".into())
    }

    /// The router's plain-HTTP listener, `host:port`.
    pub fn router_http(&self) -> Result<String> {
        let routers = std::fs::read_to_string(self.dir.join("router-address"))?;
        Ok(routers.lines().find_map(|l| l.strip_prefix("http://")).ok_or("no http listener")?.to_owned())
    }

    /// Kills the server with SIGKILL (no graceful shutdown) and waits for it.
    pub fn kill9(&mut self) -> Result {
        drop(self.process.take());
        Ok(())
    }

    /// Starts the server again on the same data directory (new port).
    pub fn restart(&mut self) -> Result {
        self.restart_with(Path::new(BIN))
    }

    /// Starts the server again from the binary `bin` (another build, say).
    pub fn restart_with(&mut self, bin: &Path) -> Result {
        self.kill9()?;
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let p = BerthProcess::start(bin, &self.dir, &env)?;
        self.addr = p.addr.clone();
        self.token = p.token.clone();
        self.process = Some(p);
        Ok(())
    }

    /// Sends SIGTERM and waits for a clean exit, returning its status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let p = self.process.as_mut().ok_or("server not running")?;
        Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status()?;
        Ok(p.child.wait()?)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn creds(&self) -> String {
        format!("ci:{}", self.token)
    }

    /// Runs the CLI against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_TOKEN")
            .env("HOME", &self.dir)
            .env_remove("XDG_CONFIG_HOME")
            .output()?;
        Ok(out)
    }

    /// Runs the CLI and returns its stdout, failing on a non-zero exit.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            return Err(format!("berth {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// The log of instance `name` once the probe in it has finished.
pub fn finished_log(s: &Server, name: &str) -> Result<String> {
    for _ in 0..200 {
        let logs = s.cli_ok(&["instance", "logs", name])?;
        if logs.contains("probe done") {
            return Ok(logs);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("the probe {name} did not finish").into())
}

/// Runs the probe with `args` as the one-off instance `name` and returns its `probe …` lines.
pub fn probe(s: &Server, name: &str, args: &str) -> Result<String> {
    s.cli_ok(&["run", "probe:v1", "--name", name, "--command", &format!("/app/probe {args}")])?;
    let logs = finished_log(s, name)?;
    s.cli_ok(&["instance", "delete", name])?;
    let lines: Vec<&str> = logs.lines().filter_map(|l| l.find("probe ").map(|i| &l[i..])).filter(|l| *l != "probe done").collect();
    Ok(lines.join("\n") + "\n")
}

/// The environment that turns the embedded runtime on (as root) for a server on `data_dir`,
/// with a bridge, CIDR (`10.<octet>.<n>.0/24`) and cgroup parent of its own, and the sandbox
/// that removes whatever is left when dropped — network namespaces included, named
/// `berth-<instances>…` (the test's instance ids start with `instances`). `BERTH_TEST_LOG` sets
/// the server's log filter.
pub fn runtime_sandbox(
    name: &str,
    octet: u8,
    instances: &str,
    data_dir: &Path,
) -> Result<(Vec<(String, String)>, berth_testkit::RuntimeSandbox)> {
    if !nix::unistd::geteuid().is_root() {
        return Err("containers need root: this test runs as root (CI does)".into());
    }
    let n = std::process::id() % 200;
    let (bridge, cidr, cgroup_parent) =
        (format!("bt{name}{n}"), format!("10.{octet}.{n}.0/24"), format!("berth-test-{name}-{}", std::process::id()));
    let env = vec![
        ("BERTH_RUNTIME".to_owned(), "on".to_owned()),
        // Never the internet from a test's instances.
        ("BERTH_RUNTIME_OUTBOUND_NAT".to_owned(), "false".to_owned()),
        ("BERTH_RUNTIME_BRIDGE".to_owned(), bridge.clone()),
        ("BERTH_RUNTIME_CIDR".to_owned(), cidr.clone()),
        ("BERTH_RUNTIME_CGROUP_PARENT".to_owned(), cgroup_parent.clone()),
        ("BERTH_LOG".to_owned(), std::env::var("BERTH_TEST_LOG").unwrap_or_else(|_| "warn".into())),
    ];
    let sandbox = berth_testkit::RuntimeSandbox {
        berth: PathBuf::from(BIN),
        instances: data_dir.join("runtime/instances"),
        netns_prefix: format!("berth-{bridge}-{instances}"),
        bridge,
        cidr,
        cgroup_parent,
    };
    Ok((env, sandbox))
}

/// What one request got, and when: the body, or why it failed.
pub type Answer = (std::time::Instant, std::result::Result<String, String>);

/// Requests through the router's HTTP listener to one host, from two threads with keep-alive
/// connections (retried on a pooled connection found closed, as browsers and Go clients do),
/// every answer recorded: its body, or why it failed.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Answer>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(router: &str, host: &str) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..2)
            .map(|_| {
                let (stop, seen, url, host) = (stop.clone(), seen.clone(), format!("http://{router}/"), host.to_owned());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                    while !stop.load(Ordering::Relaxed) {
                        let r = match agent.get(&url).set("Host", &host).call() {
                            Ok(resp) => resp.into_string().map(|s| s.trim().to_owned()).map_err(|e| e.to_string()),
                            Err(ureq::Error::Status(code, resp)) => Err(format!("{code}: {}", resp.into_string().unwrap_or_default())),
                            Err(e) => Err(e.to_string()),
                        };
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push((std::time::Instant::now(), r));
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load { stop, seen, threads }
    }

    /// Answers since `from`: (successful bodies, failures).
    pub fn since(&self, from: std::time::Instant) -> (Vec<String>, Vec<String>) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for (at, r) in seen.iter().filter(|(at, _)| *at >= from) {
            match r {
                Ok(body) => ok.push(body.clone()),
                Err(e) => failed.push(format!("at +{:.1}s: {e}", at.duration_since(from).as_secs_f64())),
            }
        }
        (ok, failed)
    }

    /// How many answers came so far.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Lets at least `n` more answers come in.
    pub fn wait_for(&self, n: usize) -> Result {
        let target = self.count() + n;
        wait_until("answers under load", Duration::from_secs(30), || Ok(self.count() >= target))
    }

    /// Stops; returns every answer's outcome: (successful bodies, failures).
    pub fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let start = self.seen.lock().unwrap_or_else(|p| p.into_inner()).first().map(|(at, _)| *at);
        start.map(|at| self.since(at)).unwrap_or_default()
    }
}

/// Polls `f` until it holds, at most `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> Result<bool>) -> Result {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("timed out waiting for {what}").into())
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The first spec error code of the body.
    pub fn code(&self) -> String {
        self.json().pointer("/errors/0/code").and_then(|c| c.as_str()).unwrap_or("").to_owned()
    }
}

/// One HTTP request with optional basic credentials (`user:password`).
pub fn http(method: &str, url: &str, creds: Option<&str>, headers: &[(&str, &str)], body: &[u8]) -> Result<Resp> {
    let agent = ureq::AgentBuilder::new().redirects(0).timeout(Duration::from_secs(60)).build();
    let mut req = agent.request(method, url);
    if let Some(c) = creds {
        use base64::Engine;
        req = req.set("Authorization", &format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c)));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = if body.is_empty() && !matches!(method, "PUT" | "PATCH" | "POST") { req.call() } else { req.send_bytes(body) };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.into()),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .flat_map(|n| resp.all(&n).into_iter().map(move |v| (n.clone(), v.to_owned())).collect::<Vec<_>>())
        .collect();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut resp.into_reader(), &mut body)?;
    Ok(Resp { status, headers, body })
}

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// An OCI image layout directory holding one image of gzip layers, tagged `tag`.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub manifest_digest: String,
    pub blobs: Vec<String>,
}

impl Layout {
    /// `layers` are (seed, uncompressed size); `version` changes the config so the digest changes.
    pub fn new(tag: &str, layers: &[(u64, usize)], version: &str) -> Result<Layout> {
        let dir = tempfile::tempdir()?;
        let blobs_dir = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs_dir)?;
        let mut blobs = Vec::new();
        let mut put = |b: &[u8]| -> Result<(String, usize)> {
            let d = sha256(b);
            std::fs::write(blobs_dir.join(d.trim_start_matches("sha256:")), b)?;
            blobs.push(d.clone());
            Ok((d, b.len()))
        };
        let mut layer_descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (seed, size) in layers {
            let raw = noise(*seed, *size);
            diff_ids.push(sha256(&raw));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw)?;
            let (d, n) = put(&gz.finish()?)?;
            layer_descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n}));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Labels": {"version": version}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let (cd, cn) = put(config.to_string().as_bytes())?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
            "layers": layer_descs
        });
        let mbytes = manifest.to_string().into_bytes();
        let (md, mn) = put(&mbytes)?;
        std::fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": tag}}]});
        std::fs::write(dir.path().join("index.json"), index.to_string())?;
        Ok(Layout { dir, manifest_digest: md, blobs })
    }

    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.path().display())
    }
}

/// Runs skopeo with a private blob-info cache and policy, returning its output.
pub fn skopeo(args: &[&str]) -> Result<Output> {
    let home = tempfile::tempdir()?;
    let policy = home.path().join("policy.json");
    std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    let mut full: Vec<String> = vec!["--policy".into(), policy.display().to_string()];
    full.extend(args.iter().map(|s| s.to_string()));
    let out = Command::new("skopeo")
        .args(&full)
        .env("HOME", home.path())
        .env("XDG_RUNTIME_DIR", home.path())
        .env("CONTAINERS_REGISTRIES_CONF", home.path().join("registries.conf"))
        .output()?;
    Ok(out)
}

/// `skopeo copy` between two references, failing with skopeo's message.
pub fn skopeo_copy(src: &str, dst: &str, creds: &str) -> Result<Output> {
    let cred_flag = if src.starts_with("docker://") { "--src-creds" } else { "--dest-creds" };
    let tls_flag = if src.starts_with("docker://") { "--src-tls-verify=false" } else { "--dest-tls-verify=false" };
    skopeo(&["copy", "--retry-times", "0", tls_flag, cred_flag, creds, src, dst])
}

pub fn ok(out: &Output) -> Result {
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("command failed: {}", String::from_utf8_lossy(&out.stderr)).into())
    }
}

/// The sha256 digests of the files in a layout's blob directory.
pub fn layout_blobs(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))?
        .map(|e| e.map(|e| format!("sha256:{}", e.file_name().to_string_lossy())))
        .collect::<std::io::Result<_>>()?;
    v.sort();
    Ok(v)
}

/// Namespaces with servers, each joined to a host bridge; all removed when dropped (the servers
/// first).
#[derive(Default)]
pub struct Lans {
    pub servers: Vec<Child>,
    lans: Vec<berth_testkit::Lan>,
}

impl Drop for Lans {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.lans.clear();
    }
}

pub fn ip(args: &[&str]) -> Result {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// A server that accepts connections on `addr:port` and closes them (python's standard library).
pub const ACCEPTOR: &str = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen()\nwhile True:\n c,_=s.accept()\n c.close()\n";

impl Lans {
    /// A namespace `ns` holding `addrs` (with a TCP server on `port`, if given), joined by a veth
    /// to a new host bridge that has `host_addrs` and routes to `routes`; it answers through the
    /// host.
    pub fn add(&mut self, ns: &str, bridge: &str, host_addrs: &[&str], routes: &[&str], addrs: &[&str], port: Option<u16>) -> Result {
        self.lans.push(berth_testkit::Lan::add(ns, bridge, host_addrs, addrs)?);
        for r in routes {
            ip(&["route", "add", r, "dev", bridge])?;
        }
        let Some(port) = port else { return Ok(()) };
        let server = Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", ACCEPTOR, "0.0.0.0", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.servers.push(server);
        // The server listens once the host reaches it.
        let first = format!("{}:{port}", addrs[0].split('/').next().unwrap_or(""));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect_timeout(&first.parse()?, std::time::Duration::from_millis(200)).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(format!("the server in {ns} did not start").into());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }
}

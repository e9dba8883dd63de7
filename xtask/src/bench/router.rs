//! `cargo xtask bench router`: berth's router against nginx 1.22 (Debian) as reverse proxies
//! in front of the same backend (an nginx answering a fixed 2 bytes), nginx set to do the same
//! work per request (the Host as sent, `X-Forwarded-For/-Proto/-Host`, the client's
//! `X-Request-Id` or a new one; keep-alive upstream connections), alternating rounds, with
//! wrk and keep-alive: 64 connections over HTTP and over HTTPS (saturated: requests/s, p50,
//! p99, and the proxy's own CPU time per request, which the noise of a shared machine moves
//! least; both proxies with an ECDSA P-256 certificate, TLS 1.3) and 1 connection (the p50 each
//! proxy adds over going direct to the backend). Then scale from zero: a request to a service
//! with no instance is held while an activator starts the backend (`examples/hello`, probed for
//! readiness as berth's controller does), and the overhead is the time to first byte minus the
//! backend's own start-up time (spawn → accepting).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use berth_router::tls::{server_config, LocalCa, OnDemandCerts};
use berth_router::{Activator, RouteSettings, RouteSpec, Router, RouterOptions, RoutingTable, Workers};

use super::{median, print_table, Figure};

const HOST: &str = "bench.localhost";

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (SIGKILL would orphan them).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn nginx(dir: &Path, name: &str, workers: &str, server: &str) -> anyhow::Result<Nginx> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\npid {pid};\nerror_log {err} error;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{server}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            err = prefix.join("logs/error.log").display()
        ),
    )?;
    let child = Command::new("nginx")
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Nginx(child))
}

/// wrk's results: (requests/s, p50 µs, p99 µs).
fn wrk(port: u16, connections: u32, threads: u32, secs: u32) -> anyhow::Result<(f64, f64, f64)> {
    wrk_url(&format!("http://127.0.0.1:{port}/"), connections, threads, secs)
}

/// wrk against a URL (`https://localhost:<port>/` for TLS: wrk sends the URL's host as SNI).
fn wrk_url(url: &str, connections: u32, threads: u32, secs: u32) -> anyhow::Result<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            "--latency",
            "-H",
            &format!("Host: {HOST}"),
        ])
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let pct = |p: &str| -> anyhow::Result<f64> {
        let v =
            text.lines().find_map(|l| l.trim().strip_prefix(p)).map(str::trim).with_context(|| format!("wrk printed no {p} latency"))?;
        let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = num.parse()?;
        Ok(match unit {
            "us" => n,
            "ms" => n * 1000.0,
            "s" => n * 1_000_000.0,
            _ => bail!("unknown latency unit in `{v}`"),
        })
    };
    if text.contains("Non-2xx") {
        bail!("requests failed during the benchmark:\n{text}");
    }
    Ok((rps, pct("50%")?, pct("99%")?))
}

/// Where the CPU time of a proxy's processes or threads is read: `/proc/.../stat` files.
enum CpuOf {
    /// The workers of an nginx master.
    NginxWorkers(u32),
    /// This process's router threads (`berth-router-N`).
    RouterThreads,
}

impl CpuOf {
    /// CPU seconds (user + system) used so far.
    fn seconds(&self) -> f64 {
        let stats: Vec<String> = match self {
            CpuOf::NginxWorkers(master) => std::fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|s| stat_fields(s).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok())) == Some(*master))
                .collect(),
            CpuOf::RouterThreads => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("berth-router")))
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .collect(),
        };
        let ticks: f64 = stats
            .iter()
            .filter_map(|s| stat_fields(s))
            .map(|f| {
                f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
            })
            .sum();
        ticks / clock_ticks_per_second()
    }
}

/// The fields of a `/proc/.../stat` line after the command name (the state is field 0).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect())
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// wrk's results plus the proxy's CPU time per request (µs) over the run.
fn wrk_cpu(url: &str, cpu: &CpuOf, secs: u32) -> anyhow::Result<(f64, f64, f64, f64)> {
    let before = cpu.seconds();
    let (rps, p50, p99) = wrk_url(url, 64, 2, secs)?;
    let used = cpu.seconds() - before;
    Ok((rps, p50, p99, used * 1e6 / (rps * f64::from(secs))))
}

/// A self-signed ECDSA P-256 certificate for `localhost` (for nginx), with openssl.
fn nginx_certificate(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?
        .success();
    if !ok {
        bail!("openssl could not make a certificate");
    }
    Ok((cert, key))
}

/// Starts the backend on demand, as berth's controller would: spawn, then probe at the
/// controller's start-up cadence (1, 2, 4 … ms) until it accepts, then route to it.
struct SpawnOnDemand {
    table: Arc<RoutingTable>,
    hello: std::path::PathBuf,
    spec: Mutex<Option<RouteSpec>>,
    /// (the backend process, its own start-up time)
    started: Arc<Mutex<Option<(Child, Duration)>>>,
}

impl Activator for SpawnOnDemand {
    /// Called on the router's request path: the work happens on a thread of its own.
    fn activate(&self, _service: &str) {
        let (table, hello, spec) = (self.table.clone(), self.hello.clone(), self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let started = self.started.clone();
        std::thread::spawn(move || {
            let Ok(port) = free_port() else { return };
            let t0 = std::time::Instant::now();
            let Ok(child) = Command::new(&hello).env("PORT", port.to_string()).stdout(Stdio::null()).stderr(Stdio::null()).spawn() else {
                return;
            };
            let settings = berth_controller::ControllerSettings::default();
            let mut own = None;
            let (mut probe_at, mut attempt) = (t0 + settings.startup_probe_delay(0), 0);
            while t0.elapsed() < Duration::from_secs(10) {
                // The backend's own start-up time, measured finely on the side…
                if own.is_none() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    own = Some(t0.elapsed());
                }
                // …while readiness is noticed only at the controller's probe cadence.
                if std::time::Instant::now() >= probe_at {
                    if own.is_some() {
                        break;
                    }
                    attempt += 1;
                    probe_at += settings.startup_probe_delay(attempt);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            *started.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, own.unwrap_or_default()));
            if let Some(spec) = spec {
                table.replace(&[RouteSpec { upstreams: vec![([127, 0, 0, 1], port).into()], ..spec }]);
            }
        });
    }
}

/// Stops a backend the activator started, however the measurement ends.
struct KillStarted(Arc<Mutex<Option<(Child, Duration)>>>);

impl Drop for KillStarted {
    fn drop(&mut self) {
        if let Some((mut child, _)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Scale from zero: time to first byte of a request held while the backend starts, minus the
/// backend's own start-up time; ms, one value per round.
fn cold_starts(hello: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let table = Arc::new(RoutingTable::new());
    let settings = RouteSettings { scale_from_zero: true, ..RouteSettings::default() };
    let spec = RouteSpec { settings, ..RouteSpec::new(HOST, "cold", vec![]) };
    let activator = Arc::new(SpawnOnDemand {
        table: table.clone(),
        hello: hello.to_owned(),
        spec: Mutex::new(Some(spec.clone())),
        started: Arc::new(Mutex::new(None)),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let port = free_port()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))?;
    let options = RouterOptions { activator: Some(activator.clone()), ..RouterOptions::default() };
    rt.spawn(Router::with_options(table.clone(), options).serve(listener));
    let _cleanup = KillStarted(activator.started.clone());
    let mut out = Vec::new();
    for round in 0..rounds.max(5) {
        table.replace(std::slice::from_ref(&spec));
        let t0 = std::time::Instant::now();
        let mut conn = super::http::Conn::connect_as(&format!("127.0.0.1:{port}"), HOST, None)?;
        let r = conn.request("GET", "/", &[], b"", true)?;
        let ttfb = t0.elapsed();
        if r.status != 200 {
            bail!("the held request got {}", r.status);
        }
        let (mut child, own) =
            activator.started.lock().unwrap_or_else(|p| p.into_inner()).take().context("the activator was not called")?;
        let overhead = (ttfb.as_secs_f64() - own.as_secs_f64()) * 1000.0;
        eprintln!(
            "cold start {}/{}: first byte after {:.1} ms, the backend's own start-up {:.1} ms, overhead {overhead:.1} ms",
            round + 1,
            rounds.max(5),
            ttfb.as_secs_f64() * 1000.0,
            own.as_secs_f64() * 1000.0
        );
        out.push(overhead);
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(rt);
    Ok(out)
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    crate::test::ensure_tools(&[("nginx", "nginx-light"), ("wrk", "wrk"), ("openssl", "openssl")])?;
    let dir = tempfile::Builder::new().prefix("berth-bench-router").tempdir()?;
    let (backend_port, nginx_port, nginx_tls_port) = (free_port()?, free_port()?, free_port()?);
    let (cert, key) = nginx_certificate(dir.path())?;
    let _backend =
        nginx(dir.path(), "backend", "1", &format!("  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 \"ok\"; }} }}"))?;
    // nginx does the work berth's router does for every request: the Host as the client sent
    // it, X-Forwarded-For/-Proto/-Host, and the client's X-Request-Id or a new random one.
    let request_id = "  map $http_x_request_id $berth_request_id { default $http_x_request_id; \"\" $request_id; }\n";
    let location = "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
        proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
        proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host; \
        proxy_set_header X-Request-Id $berth_request_id; }";
    let _proxy = nginx(
        dir.path(),
        "proxy",
        "auto",
        &format!(
            "{request_id}  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}\n  server {{ listen 127.0.0.1:{nginx_port}; {location} }}\n  server {{ listen 127.0.0.1:{nginx_tls_port} ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols TLSv1.3; {location} }}",
            cert.display(),
            key.display()
        ),
    )?;

    // berth's router, in this process, on its own runtime; over TLS with a certificate its local
    // CA issued for `localhost` (supplied, as a user's own certificate would be).
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new(HOST, "bench", vec![([127, 0, 0, 1], backend_port).into()])]);
    let ca = LocalCa::load_or_create(&dir.path().join("ca"), &["localhost".to_owned()]).map_err(|e| anyhow::anyhow!("{e}"))?;
    let leaf = Arc::new(ca.issue("localhost").map_err(|e| anyhow::anyhow!("{e}"))?.0);
    let certs = OnDemandCerts::new(ca, vec![".localhost".into()]).with_supplied(vec![(vec!["localhost".into()], leaf)]);
    let tls = server_config(Arc::new(certs)).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Two workers, as nginx runs two (`worker_processes auto` on two cores), each pinned to a
    // CPU as berth's are by default (`router.pin_workers`).
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let workers = Workers { count: 2, pin: true };
    let berth_port = Router::serve_workers(table.clone(), RouterOptions::default(), any, None, workers)?.port();
    let berth_tls_port = Router::serve_workers(table, RouterOptions::default(), any, Some(tls), workers)?.port();

    // Warm up both (pools, caches).
    wrk(nginx_port, 64, 2, 1)?;
    wrk(berth_port, 64, 2, 1)?;
    let mut rps = Figure::new("HTTP, 64 conns", "req/s");
    let mut p50 = Figure::new("HTTP p50, 64 conns", "µs");
    let mut p99 = Figure::new("HTTP p99, 64 conns", "µs");
    let mut rps_tls = Figure::new("HTTPS, 64 conns", "req/s");
    let mut p99_tls = Figure::new("HTTPS p99, 64 conns", "µs");
    let mut added = Figure::new("added p50, 1 conn", "µs");
    let mut cpu = Figure::new("CPU per request, HTTP", "µs");
    let mut cpu_tls = Figure::new("CPU per request, HTTPS", "µs");
    let nginx_cpu = CpuOf::NginxWorkers(_proxy.0.id());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        let direct = wrk(backend_port, 1, 1, 3)?.1;
        for berth in order {
            let (port, tls_port) = if berth { (berth_port, berth_tls_port) } else { (nginx_port, nginx_tls_port) };
            let of = if berth { &CpuOf::RouterThreads } else { &nginx_cpu };
            let (r, a, b, c) = wrk_cpu(&format!("http://127.0.0.1:{port}/"), of, 5)?;
            let (rt_, _, bt, ct) = wrk_cpu(&format!("https://localhost:{tls_port}/"), of, 5)?;
            let (_, c1, _) = wrk(port, 1, 1, 3)?;
            eprintln!(
                "round {}/{rounds} {:<6} http {r:>7.0} req/s p50 {a:>5.0} µs p99 {b:>6.0} µs cpu {c:>4.1} µs/req | https {rt_:>7.0} req/s p99 {bt:>6.0} µs cpu {ct:>4.1} µs/req | c1 p50 {c1:>4.0} µs (direct {direct:.0})",
                round + 1,
                if berth { "berth" } else { "nginx" }
            );
            let add = (c1 - direct).max(1.0);
            for (f, v) in [
                (&mut rps, r),
                (&mut p50, a),
                (&mut p99, b),
                (&mut rps_tls, rt_),
                (&mut p99_tls, bt),
                (&mut added, add),
                (&mut cpu, c),
                (&mut cpu_tls, ct),
            ] {
                if berth {
                    f.berth.push(v);
                } else {
                    f.anchor.push(v);
                }
            }
        }
    }

    let hello = dir.path().join("hello");
    super::compile_hello(&hello, false)?;
    let cold = cold_starts(&hello, rounds)?;

    println!();
    let figures = [rps, p50, p99, rps_tls, p99_tls, added, cpu, cpu_tls];
    print_table("nginx", &figures);
    let cold_ms = median(cold);
    println!("{:<28} {:>14.1}", "scale-from-zero overhead (ms)", cold_ms);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "router",
        "rps_ratio_http": round2(figures[0].ratio()),
        "rps_ratio_https": round2(figures[3].ratio()),
        "p99_ratio_http": round2(figures[2].ratio()),
        "added_p50_ratio_c1": round2(median(figures[5].berth.iter().zip(&figures[5].anchor).map(|(b, a)| b / a).collect())),
        "cold_start_overhead_ms": round2(cold_ms),
    });
    println!("{json}");
    Ok(())
}

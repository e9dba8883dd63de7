//! `cargo xtask bench router`: berth's router against nginx 1.22 (Debian) as reverse proxies
//! in front of the same backend (an nginx answering a fixed 2 bytes), nginx set to do the same
//! work per request (the Host as sent, `X-Forwarded-For/-Proto/-Host`, the client's
//! `X-Request-Id` or a new one; keep-alive upstream connections), alternating rounds, with
//! wrk and keep-alive: 64 connections over HTTP and over HTTPS (saturated: requests/s, p50,
//! p99, and the proxy's own CPU time per request, which the noise of a shared machine moves
//! least; both proxies with an ECDSA P-256 certificate, TLS 1.3) and 1 connection (the p50 each
//! proxy adds over going direct to the backend). Full duplex: a 64 MiB body streamed to
//! `examples/hello`'s `/echo`, which answers while it reads, through each proxy (nginx with
//! `proxy_request_buffering off` and `proxy_buffering off`), by a client that writes and reads at
//! once: MiB/s. nginx stalls on some of these exchanges; it is measured on those it completes (in a
//! round where it completes none, by the body per stall window: an upper bound). Then scale
//! from zero: a request to a service with no instance is held while an activator starts the
//! backend (`examples/hello`, probed for readiness as berth's controller does), and the overhead
//! is the time to first byte minus the backend's own start-up time (spawn → accepting).
//!
//! berth's router runs as it does in production: the `berth router` process (release build),
//! fed its routes over the control socket by a `RemoteRouter` here, as the server feeds it, and
//! asking this process for instances the same way.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use berth_router::control::{DaemonConfig, SuppliedCertificate};
use berth_router::{daemon, Activator, Launch, RemoteRouter, RouteBook, RouteSettings, RouteSpec};

use super::http::duplex_echo;
use super::nginx::{free_port, nginx, PROXY_TO_BACKEND, REQUEST_ID_MAP};
use super::{median, print_table, Figure};

const HOST: &str = "bench.localhost";
const ECHO_HOST: &str = "echo.localhost";
const COLD_HOST: &str = "cold.localhost";
/// The body of the full-duplex echo.
const ECHO_BYTES: usize = 64 << 20;

/// A process killed when the measurement ends, however it ends.
struct KillOnDrop<'a>(&'a mut Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    /// The router threads (`berth-router-N`) of a `berth router` process.
    RouterThreads(u32),
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
            CpuOf::RouterThreads(pid) => std::fs::read_dir(format!("/proc/{pid}/task"))
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
    book: Arc<RouteBook>,
    hello: std::path::PathBuf,
    spec: Mutex<Option<RouteSpec>>,
    /// (the backend process, its own start-up time)
    started: Arc<Mutex<Option<(Child, Duration)>>>,
}

impl Activator for SpawnOnDemand {
    /// Called on the router's request path: the work happens on a thread of its own.
    fn activate(&self, _service: &str) {
        let (book, hello, spec) = (self.book.clone(), self.hello.clone(), self.spec.lock().unwrap_or_else(|p| p.into_inner()).clone());
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
                book.set("cold", vec![RouteSpec { upstreams: vec![([127, 0, 0, 1], port).into()], ..spec }]);
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
fn cold_starts(router: &BerthRouter, hello: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let settings = RouteSettings { scale_from_zero: true, ..RouteSettings::default() };
    let spec = RouteSpec { settings, ..RouteSpec::new(COLD_HOST, "cold", vec![]) };
    let activator = Arc::new(SpawnOnDemand {
        book: router.book.clone(),
        hello: hello.to_owned(),
        spec: Mutex::new(Some(spec.clone())),
        started: Arc::new(Mutex::new(None)),
    });
    router.remote.set_activator(activator.clone());
    let _cleanup = KillStarted(activator.started.clone());
    let mut out = Vec::new();
    for round in 0..rounds.max(5) {
        router.book.set("cold", vec![spec.clone()]);
        // The table reaches the router process before the request does.
        std::thread::sleep(Duration::from_millis(50));
        let t0 = std::time::Instant::now();
        let mut conn = super::http::Conn::connect_as(&format!("127.0.0.1:{}", router.http), COLD_HOST, None)?;
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
    Ok(out)
}

/// berth's router process, fed over its control socket as the server feeds it.
struct BerthRouter {
    remote: RemoteRouter,
    book: Arc<RouteBook>,
    pid: u32,
    http: u16,
    https: u16,
    rt: tokio::runtime::Runtime,
}

impl BerthRouter {
    /// Starts `berth router` on `dir` with two workers (as nginx runs two, `worker_processes auto`
    /// on two cores), pinned as berth's are by default, and `cert`/`key` supplied for `localhost`.
    fn start(berth: &Path, dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<BerthRouter> {
        let data = dir.join("berth");
        std::fs::create_dir_all(&data)?;
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let config = DaemonConfig {
            data_dir: data.clone(),
            listen_http: any,
            listen_https: any,
            listen_internal: None,
            workers: 2,
            pin_workers: true,
            redirect_http_to_https: false,
            hsts: false,
            idle_timeout_secs: 75,
            max_connections: berth_router::DEFAULT_MAX_CONNECTIONS,
            tls_handshake_timeout_secs: 10,
            drain_timeout_secs: 5,
            suffixes: vec![".localhost".into()],
            certificates: vec![SuppliedCertificate { domains: vec!["localhost".into()], cert: cert.to_owned(), key: key.to_owned() }],
            access_log: None,
            log_level: "warn".into(),
            log_json: false,
            metrics_history: true,
        };
        let config_path = daemon::config_path(&data);
        std::fs::write(&config_path, config.to_json()?)?;
        let (identity, berth) = (daemon::identity_of(berth), berth.to_owned());
        let spawn = move |takeover: bool| -> std::io::Result<()> {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new(&berth);
            cmd.process_group(0).args(["router", "--config"]).arg(&config_path);
            if takeover {
                cmd.arg("--takeover");
            }
            let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
            std::thread::spawn(move || child.wait());
            Ok(())
        };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let launch = Launch { data_dir: data, config, identity, spawn: Box::new(spawn), on_hello: Box::new(|_| {}) };
        let remote = rt.block_on(RemoteRouter::start(launch)).context("starting berth router")?;
        let hello = remote.hello();
        let book = Arc::new(RouteBook::new(Arc::new(remote.clone())));
        Ok(BerthRouter { remote, book, pid: hello.pid, http: hello.http.port(), https: hello.https.port(), rt })
    }
}

impl Drop for BerthRouter {
    fn drop(&mut self) {
        self.rt.block_on(self.remote.stop());
    }
}

/// An echo with nothing coming back this long has stalled.
const STALL: Duration = Duration::from_secs(10);

/// Echo attempts per proxy and round: nginx stalls on some full-duplex exchanges, and is given
/// its best case (the first that completes).
const ECHO_ATTEMPTS: usize = 5;

pub fn run(rounds: usize) -> anyhow::Result<()> {
    crate::test::ensure_tools(&[("nginx", "nginx-light"), ("wrk", "wrk"), ("openssl", "openssl")])?;
    let dir = tempfile::Builder::new().prefix("berth-bench-router").tempdir()?;
    let (backend_port, nginx_port, nginx_tls_port) = (free_port()?, free_port()?, free_port()?);
    let (cert, key) = nginx_certificate(dir.path())?;
    let _backend =
        nginx(dir.path(), "backend", "1", &format!("  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 \"ok\"; }} }}"))?;
    let (request_id, location) = (REQUEST_ID_MAP, PROXY_TO_BACKEND);
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

    // The echo app, and nginx in front of it streaming bodies both ways as berth does
    // (`proxy_request_buffering off`; `proxy_buffering off` too, without which it stalled on
    // every full-duplex echo tried).
    let hello = dir.path().join("hello");
    super::compile_hello(&hello, false)?;
    let echo_port = free_port()?;
    let mut echo_app = Command::new(&hello).env("PORT", echo_port.to_string()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let _echo_guard = KillOnDrop(&mut echo_app);
    let nginx_echo_port = free_port()?;
    let _echo_proxy = nginx(
        dir.path(),
        "echo",
        "auto",
        &format!(
            "  upstream echo {{ server 127.0.0.1:{echo_port}; keepalive 16; }}\n  server {{ listen 127.0.0.1:{nginx_echo_port}; client_max_body_size 0; \
             location / {{ proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_request_buffering off; proxy_buffering off; }} }}"
        ),
    )?;

    // berth's router process; over TLS with the same certificate as nginx, supplied as a
    // user's own certificate would be.
    let berth = super::build_berth()?;
    let router = BerthRouter::start(&berth, dir.path(), &cert, &key)?;
    let echo_settings = RouteSettings { max_body_bytes: 2 * ECHO_BYTES as u64, ..RouteSettings::default() };
    router.book.set("bench", vec![RouteSpec::new(HOST, "bench", vec![([127, 0, 0, 1], backend_port).into()])]);
    router.book.set(
        "echo",
        vec![RouteSpec { settings: echo_settings, ..RouteSpec::new(ECHO_HOST, "echo", vec![([127, 0, 0, 1], echo_port).into()]) }],
    );
    std::thread::sleep(Duration::from_millis(100));
    let (berth_port, berth_tls_port) = (router.http, router.https);
    let echo_body = Arc::new(berth_testkit::noise(7, ECHO_BYTES));

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
    let mut duplex = Figure::new("full-duplex 64 MiB echo", "MiB/s");
    // nginx's full-duplex exchanges that stalled, and the rounds it was measured in.
    let (mut stalls, mut echo_tries, mut bounded_rounds) = (0usize, 0usize, 0usize);
    let nginx_cpu = CpuOf::NginxWorkers(_proxy.0.id());
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        let direct = wrk(backend_port, 1, 1, 3)?.1;
        for berth in order {
            let (port, tls_port) = if berth { (berth_port, berth_tls_port) } else { (nginx_port, nginx_tls_port) };
            let of = if berth { &CpuOf::RouterThreads(router.pid) } else { &nginx_cpu };
            let (r, a, b, c) = wrk_cpu(&format!("http://127.0.0.1:{port}/"), of, 5)?;
            let (rt_, _, bt, ct) = wrk_cpu(&format!("https://localhost:{tls_port}/"), of, 5)?;
            let (_, c1, _) = wrk(port, 1, 1, 3)?;
            let mut echoed = None;
            for _ in 0..ECHO_ATTEMPTS {
                let port = if berth { berth_port } else { nginx_echo_port };
                echoed = duplex_echo(&format!("127.0.0.1:{port}"), ECHO_HOST, &echo_body, STALL)?;
                match (echoed, berth) {
                    (Some(_), _) => break,
                    (None, true) => bail!("a full-duplex echo through berth's router stalled"),
                    (None, false) => stalls += 1,
                }
            }
            echo_tries += usize::from(!berth && echoed.is_some());
            // When nginx completes none of its tries in a round, its figure for the round is an
            // upper bound: less than the whole body per stall window (the ratio, a lower bound).
            let seconds = match echoed {
                Some(took) => took.as_secs_f64(),
                None => {
                    bounded_rounds += 1;
                    STALL.as_secs_f64()
                }
            };
            let mibs = ECHO_BYTES as f64 / f64::from(1u32 << 20) / seconds;
            eprintln!(
                "round {}/{rounds} {:<6} http {r:>7.0} req/s p50 {a:>5.0} µs p99 {b:>6.0} µs cpu {c:>4.1} µs/req | https {rt_:>7.0} req/s p99 {bt:>6.0} µs cpu {ct:>4.1} µs/req | c1 p50 {c1:>4.0} µs (direct {direct:.0}) | duplex {mibs:>5.0} MiB/s",
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
                (&mut duplex, mibs),
            ] {
                if berth {
                    f.berth.push(v);
                } else {
                    f.anchor.push(v);
                }
            }
        }
    }

    let cold = cold_starts(&router, &hello, rounds)?;

    println!();
    let figures = [rps, p50, p99, rps_tls, p99_tls, added, cpu, cpu_tls, duplex];
    print_table("nginx", &figures);
    let cold_ms = median(cold);
    println!("{:<28} {:>14.1}", "scale-from-zero overhead (ms)", cold_ms);
    println!(
        "nginx stalled on {stalls} full-duplex echoes (nothing for {} s) besides the {echo_tries} that completed; berth's router on none",
        STALL.as_secs()
    );
    if bounded_rounds > 0 {
        println!("nginx completed no echo in {bounded_rounds} round(s): its figure there is an upper bound (the body per stall window), the ratio a lower bound");
    }
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "router",
        "rps_ratio_http": round2(figures[0].ratio()),
        "rps_ratio_https": round2(figures[3].ratio()),
        "p99_ratio_http": round2(figures[2].ratio()),
        "added_p50_ratio_c1": round2(median(figures[5].berth.iter().zip(&figures[5].anchor).map(|(b, a)| b / a).collect())),
        "duplex_ratio": round2(figures[8].ratio()),
        "cold_start_overhead_ms": round2(cold_ms),
    });
    println!("{json}");
    Ok(())
}

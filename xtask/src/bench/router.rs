//! `cargo xtask bench router`: berth's router against nginx 1.22 (Debian) as reverse proxies
//! in front of the same backend (an nginx answering a fixed 2 bytes), alternating rounds, with
//! wrk and keep-alive: 64 connections (saturated: requests/s, p50, p99) and 1 connection (the
//! p50 each proxy adds over going direct to the backend). HTTP only: the router has no TLS yet,
//! and scale-from-zero does not exist yet, so those figures are null.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth_router::{RouteSpec, Router, RoutingTable};

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
        .arg(format!("http://127.0.0.1:{port}/"))
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

pub fn run(rounds: usize) -> anyhow::Result<()> {
    crate::test::ensure_tools(&[("nginx", "nginx-light"), ("wrk", "wrk")])?;
    let dir = tempfile::Builder::new().prefix("berth-bench-router").tempdir()?;
    let (backend_port, nginx_port, berth_port) = (free_port()?, free_port()?, free_port()?);
    let _backend =
        nginx(dir.path(), "backend", "1", &format!("  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 \"ok\"; }} }}"))?;
    let _proxy = nginx(
        dir.path(),
        "proxy",
        "auto",
        &format!(
            "  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}\n  server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}"
        ),
    )?;

    // berth's router, in this process, on its own runtime.
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new(HOST, "bench", vec![([127, 0, 0, 1], backend_port).into()])]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", berth_port)))?;
    rt.spawn(Router::new(table).serve(listener));

    // Warm up both (pools, caches).
    wrk(nginx_port, 64, 2, 1)?;
    wrk(berth_port, 64, 2, 1)?;
    let mut rps = Figure::new("HTTP, 64 conns", "req/s");
    let mut p50 = Figure::new("HTTP p50, 64 conns", "µs");
    let mut p99 = Figure::new("HTTP p99, 64 conns", "µs");
    let mut added = Figure::new("added p50, 1 conn", "µs");
    for round in 0..rounds {
        let order = if round % 2 == 0 { [true, false] } else { [false, true] };
        let direct = wrk(backend_port, 1, 1, 3)?.1;
        for berth in order {
            let port = if berth { berth_port } else { nginx_port };
            let (r, a, b) = wrk(port, 64, 2, 5)?;
            let (_, c1, _) = wrk(port, 1, 1, 3)?;
            eprintln!(
                "round {}/{rounds} {:<6} {r:>9.0} req/s  p50 {a:>7.0} µs  p99 {b:>7.0} µs  c1 p50 {c1:>5.0} µs (direct {direct:.0})",
                round + 1,
                if berth { "berth" } else { "nginx" }
            );
            let add = (c1 - direct).max(1.0);
            for (f, v) in [(&mut rps, r), (&mut p50, a), (&mut p99, b), (&mut added, add)] {
                if berth {
                    f.berth.push(v);
                } else {
                    f.anchor.push(v);
                }
            }
        }
    }
    drop(rt);
    println!();
    let figures = [rps, p50, p99, added];
    print_table("nginx", &figures);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "router",
        "rps_ratio_http": round2(figures[0].ratio()),
        "rps_ratio_https": null,
        "p99_ratio_http": round2(figures[2].ratio()),
        "added_p50_ratio_c1": round2(median(figures[3].berth.iter().zip(&figures[3].anchor).map(|(b, a)| b / a).collect())),
        "cold_start_overhead_ms": null,
    });
    println!("{json}");
    Ok(())
}

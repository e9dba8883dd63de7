//! nginx as the anchor of the proxy benchmarks: one master of the caller's own, on a
//! configuration of its own, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

pub struct Nginx(pub Child);

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (SIGKILL would orphan them).
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts nginx with `server` (the `http` block's contents) under `dir/name`.
pub fn nginx(dir: &Path, name: &str, workers: &str, server: &str) -> anyhow::Result<Nginx> {
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

/// nginx doing the work berth's router does for every request: the Host as the client sent it,
/// `X-Forwarded-For/-Proto/-Host`, and the client's `X-Request-Id` or a new random one. The map
/// goes in the `http` block, the location in a `server` with an `upstream backend`.
pub const REQUEST_ID_MAP: &str = "  map $http_x_request_id $berth_request_id { default $http_x_request_id; \"\" $request_id; }\n";
pub const PROXY_TO_BACKEND: &str = "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; \
    proxy_set_header Host $http_host; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; \
    proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $http_host; \
    proxy_set_header X-Request-Id $berth_request_id; }";

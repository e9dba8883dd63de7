//! `hello`: the sample app berth's tests and README deploy. Standard library only, so it builds
//! into one static binary.
//!
//! - `GET /` answers `hello from <HELLO_VERSION> on <hostname>`.
//! - `GET /healthz` answers `ok`, or 503 when `HELLO_HEALTHY=false` (a broken release).
//! - `GET /hog` allocates memory until the memory limit kills it (for OOM tests).
//! - Listens on `0.0.0.0:$PORT` (default 8080) and logs one line per request to stdout.
//! - Exits at once on SIGTERM (as PID 1 of a container, a signal without a handler does nothing,
//!   so stopping it would otherwise wait out the grace period).

// One C call: installing the SIGTERM handler.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

/// SIGTERM: nothing to save, so leave at once (`_exit` is safe in a signal handler).
extern "C" fn on_sigterm(_: i32) {
    // SAFETY: `_exit` is async-signal-safe.
    unsafe { _exit(0) }
}

fn main() {
    // SAFETY: installs a handler that only calls an async-signal-safe function.
    unsafe { signal(15, on_sigterm) };
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(8080);
    let version = std::env::var("HELLO_VERSION").unwrap_or_else(|_| "v1".into());
    let healthy = std::env::var("HELLO_HEALTHY").map(|v| v != "false").unwrap_or(true);
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "unknown".into());
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hello: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("hello {version} listening on port {port}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (version, host) = (version.clone(), host.clone());
        std::thread::spawn(move || serve(stream, &version, &host, healthy));
    }
}

fn serve(stream: TcpStream, version: &str, host: &str, healthy: bool) {
    let Ok(write_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let mut out = write_half;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let start = Instant::now();
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let mut keep_alive = !line.contains("HTTP/1.0");
        let mut body_len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                body_len = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("connection:") {
                keep_alive = lower.contains("keep-alive") || (keep_alive && !lower.contains("close"));
            }
        }
        if body_len > 0 {
            let mut skip = vec![0u8; body_len.min(1 << 20)];
            if std::io::Read::read_exact(&mut reader, &mut skip).is_err() {
                return;
            }
        }
        let (status, body) = match path.as_str() {
            "/" => ("200 OK", format!("hello from {version} on {host}\n")),
            "/healthz" if healthy => ("200 OK", "ok\n".to_owned()),
            "/healthz" => ("503 Service Unavailable", "unhealthy\n".to_owned()),
            "/hog" => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                for _ in 0..256 {
                    hog.push(vec![1u8; 16 << 20]);
                }
                ("200 OK", format!("survived {} MiB\n", hog.len() * 16))
            }
            _ => ("404 Not Found", "not found\n".to_owned()),
        };
        let conn = if keep_alive { "keep-alive" } else { "close" };
        let resp =
            format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}", body.len());
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
        println!("{method} {path} {} {}us", &status[..3], start.elapsed().as_micros());
        if !keep_alive {
            return;
        }
    }
}

//! `hello`: the sample app berth's tests and README deploy. Standard library only, so it builds
//! into one static binary.
//!
//! - `GET /` answers `hello from <HELLO_VERSION> on <hostname>`.
//! - `GET /healthz` answers `ok`, or 503 when `HELLO_HEALTHY=false` (a broken release).
//! - `GET /hog` allocates memory until the memory limit kills it (for OOM tests).
//! - `GET /sleep/<ms>` answers after that many milliseconds (at most a minute): a long request.
//! - `POST /echo` streams the request body back (chunked) while still reading it: full duplex.
//! - `GET /connect/<host:port>` opens a TCP connection from the app (3 s at most) and answers
//!   `connected` or 502 with the error: what an instance may reach.
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
        if method == "POST" && path == "/echo" {
            if echo(&mut reader, &mut out, body_len).is_err() {
                return;
            }
            println!("{method} {path} 200 {}us", start.elapsed().as_micros());
            if !keep_alive {
                return;
            }
            continue;
        }
        if std::io::copy(&mut std::io::Read::take(&mut reader, body_len as u64), &mut std::io::sink()).ok() != Some(body_len as u64) {
            return;
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
            p if p.starts_with("/connect/") => match connect(&p["/connect/".len()..]) {
                Ok(()) => ("200 OK", "connected\n".to_owned()),
                Err(e) => ("502 Bad Gateway", format!("{e}\n")),
            },
            p if p.starts_with("/sleep/") => {
                let ms = p["/sleep/".len()..].parse::<u64>().unwrap_or(0).min(60_000);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                ("200 OK", format!("slept {ms} ms\n"))
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

/// Sends the `len` bytes of a request body back as they arrive, as a chunked answer begun before
/// the body has been read.
fn echo(reader: &mut impl std::io::Read, out: &mut impl Write, len: usize) -> std::io::Result<()> {
    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    const CHUNK: usize = 64 << 10;
    // Each chunk goes out in one write: its size line (at most 6 bytes), the data, CRLF.
    let mut buf = vec![0u8; CHUNK + 16];
    let mut left = len;
    while left > 0 {
        let n = reader.read(&mut buf[8..8 + left.min(CHUNK)])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = format!("{n:x}\r\n");
        let start = 8 - size.len();
        buf[start..8].copy_from_slice(size.as_bytes());
        buf[8 + n..8 + n + 2].copy_from_slice(b"\r\n");
        out.write_all(&buf[start..8 + n + 2])?;
        left -= n;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

/// A TCP connection to `target` (`host:port`), opened and closed.
fn connect(target: &str) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let addr = target.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3)).map(drop)
}

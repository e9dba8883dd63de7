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
//! - `GET /call/<host[:port]>/<path>` makes a GET to `http://<host>/<path>` from the app and
//!   answers the status line and body it got, or 502 with the error: service-to-service calls.
//!   `<host>@<address>` sends it to another address than the host's.
//! - Names are resolved with the name server of `/etc/resolv.conf` (a small DNS client of its
//!   own: a static binary has no resolver library to load).
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
            p if p.starts_with("/call/") => match call(&p["/call/".len()..]) {
                Ok(answer) => ("200 OK", answer),
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
    let (host, port) = target.rsplit_once(':').ok_or_else(|| bad(format!("`{target}` needs a port")))?;
    let port = port.parse::<u16>().map_err(|_| bad(format!("`{port}` is not a port")))?;
    TcpStream::connect_timeout(&(resolve(host)?, port).into(), std::time::Duration::from_secs(3)).map(drop)
}

/// `GET http://<target>` (`host[:port]/path`): the status line and body of the answer.
fn call(target: &str) -> std::io::Result<String> {
    use std::io::Read;
    let (authority, path) = target.split_once('/').unwrap_or((target, ""));
    let (authority, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad(format!("`{p}` is not a port")))?),
        None => (authority, 80),
    };
    // `host@address`: the Host header of one name, sent to another address.
    let (host, address) = authority.split_once('@').unwrap_or((authority, authority));
    let mut conn = TcpStream::connect_timeout(&(resolve(address)?, port).into(), std::time::Duration::from_secs(3))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    write!(conn, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok(format!("{status}\n{body}"))
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

/// An IPv4 address for `host`: itself if it is one, else asked of the name server in
/// `/etc/resolv.conf` (one A query over UDP).
fn resolve(host: &str) -> std::io::Result<std::net::Ipv4Addr> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    let resolv = std::fs::read_to_string("/etc/resolv.conf")?;
    let server = resolv
        .lines()
        .find_map(|l| l.trim().strip_prefix("nameserver").and_then(|a| a.trim().parse::<std::net::Ipv4Addr>().ok()))
        .ok_or_else(|| bad("no IPv4 name server in /etc/resolv.conf".into()))?;
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in host.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).ok().filter(|l| (1..64).contains(l)).ok_or_else(|| bad(format!("`{host}` is not a name")))?;
        query.push(len);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
    sock.send_to(&query, (server, 53))?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf)?;
    let m = &buf[..n];
    let not_found = |why: &str| std::io::Error::new(std::io::ErrorKind::NotFound, format!("resolving `{host}`: {why}"));
    if m.len() < 12 || m[..2] != [0x12, 0x34] {
        return Err(not_found("a malformed answer"));
    }
    match m[3] & 0x0f {
        0 => {}
        3 => return Err(not_found("no such name (NXDOMAIN)")),
        5 => return Err(not_found("refused (REFUSED)")),
        code => return Err(not_found(&format!("response code {code}"))),
    }
    // Skip the question, then read the answers.
    let skip_name = |mut at: usize| -> Option<usize> {
        loop {
            let len = *m.get(at)?;
            if len & 0xc0 == 0xc0 {
                return Some(at + 2);
            }
            at += 1 + usize::from(len);
            if len == 0 {
                return Some(at);
            }
        }
    };
    let answers = u16::from_be_bytes([m[6], m[7]]);
    let mut at = skip_name(12).map(|a| a + 4).ok_or_else(|| not_found("a malformed answer"))?;
    for _ in 0..answers {
        at = skip_name(at).ok_or_else(|| not_found("a malformed answer"))?;
        let field = |i: usize| m.get(at + i).copied().unwrap_or(0);
        let (kind, len) = (u16::from_be_bytes([field(0), field(1)]), usize::from(u16::from_be_bytes([field(8), field(9)])));
        if kind == 1 && len == 4 {
            return Ok(std::net::Ipv4Addr::new(field(10), field(11), field(12), field(13)));
        }
        at += 10 + len;
    }
    Err(not_found("no IPv4 address"))
}

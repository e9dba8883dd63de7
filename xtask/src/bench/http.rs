//! A minimal keep-alive HTTP/1.1 client over one TCP connection, so that the client is never
//! what a registry benchmark measures: bodies stream from and into memory with no copies beyond
//! the socket's; berth's REST API through it; and a full-duplex client for streaming echoes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Conn {
    host: String,
    auth: Option<String>,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Conn {
    pub fn connect(host: &str, auth: Option<String>) -> anyhow::Result<Conn> {
        Conn::connect_as(host, host, auth)
    }

    /// Connects to `addr`, sending `Host: host` (a name the router routes by).
    pub fn connect_as(addr: &str, host: &str, auth: Option<String>) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        Ok(Conn { host: host.to_owned(), auth, reader: BufReader::with_capacity(1 << 20, stream), writer })
    }

    /// Sends a request and reads the whole response. `sink` bodies are counted, not kept.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        keep_body: bool,
    ) -> anyhow::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.host, body.len());
        if let Some(a) = &self.auth {
            head.push_str(&format!("Authorization: Basic {a}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        self.read_response(method == "HEAD", keep_body)
    }

    fn read_response(&mut self, head_only: bool, keep_body: bool) -> anyhow::Result<Response> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("bad status line `{}`", line.trim()))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut resp = Response { status, headers, body: Vec::new() };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        if resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).context("bad chunk size")?;
                if n == 0 {
                    line.clear();
                    self.reader.read_line(&mut line)?;
                    break;
                }
                self.read_body(n, keep_body, &mut resp.body)?;
                line.clear();
                self.reader.read_line(&mut line)?;
            }
        } else {
            let n: usize = resp.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            self.read_body(n, keep_body, &mut resp.body)?;
        }
        Ok(resp)
    }

    fn read_body(&mut self, n: usize, keep: bool, out: &mut Vec<u8>) -> anyhow::Result<()> {
        if keep {
            let start = out.len();
            out.resize(start + n, 0);
            self.reader.read_exact(&mut out[start..])?;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                bail!("connection closed with {left} body bytes to go");
            }
            let take = buf.len().min(left);
            self.reader.consume(take);
            left -= take;
        }
        Ok(())
    }
}

/// berth's REST API, as the admin.
pub struct Api {
    pub addr: String,
    /// `Basic` credentials: base64 of `<anything>:<token>`.
    pub auth: String,
}

impl Api {
    pub fn new(addr: &str, token: &str) -> Api {
        use base64::Engine;
        Api { addr: addr.to_owned(), auth: base64::engine::general_purpose::STANDARD.encode(format!("xtask:{token}")) }
    }

    pub fn call(&self, method: &str, path: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let mut c = Conn::connect(&self.addr, Some(self.auth.clone()))?;
        let body = if body.is_null() { Vec::new() } else { serde_json::to_vec(body)? };
        let r = c.request(method, path, &[("Content-Type", "application/json")], &body, true)?;
        if r.status >= 400 {
            bail!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
        Ok(serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
    }

    pub fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("GET", path, &serde_json::Value::Null)
    }
}

/// Streams `body` to `/echo` (as `examples/hello` answers it) at `addr` for `host`, on a new
/// connection, while reading the answer — a client that writes and reads at once, as a
/// full-duplex app needs; checks the echo and returns how long the exchange took, or `None` when
/// it stalled (nothing came for `stall`). Like curl with a large body, it asks
/// `Expect: 100-continue` and sends the body on the interim answer (or after a second without
/// one).
pub fn duplex_echo(addr: &str, host: &str, body: &Arc<Vec<u8>>, stall: Duration) -> anyhow::Result<Option<Duration>> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let t0 = Instant::now();
    writer.write_all(head.as_bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut interim = Vec::new();
    let mut byte = [0u8; 1];
    while !interim.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => bail!("the proxy closed the connection before answering"),
            Ok(_) => interim.push(byte[0]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if !interim.is_empty() && !interim.starts_with(b"HTTP/1.1 100") {
        bail!("the proxy answered before the body: {}", String::from_utf8_lossy(&interim).lines().next().unwrap_or(""));
    }
    stream.set_read_timeout(Some(stall))?;
    let sent = body.clone();
    let sending = std::thread::spawn(move || -> std::io::Result<()> {
        for chunk in sent.chunks(256 << 10) {
            writer.write_all(chunk)?;
        }
        Ok(())
    });
    let mut answer = Vec::with_capacity(body.len() + (1 << 20));
    if let Err(e) = stream.read_to_end(&mut answer) {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            // The sender, blocked on a full socket, ends with the connection.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = sending.join();
            return Ok(None);
        }
        return Err(e.into());
    }
    let took = t0.elapsed();
    sending.join().map_err(|_| anyhow::anyhow!("the sending thread panicked"))??;
    // The 100 Continue may come after the wait for it, ahead of the answer.
    let mut rest = &answer[..];
    let (head, payload) = loop {
        let split = rest.windows(4).position(|w| w == b"\r\n\r\n").context("no answer head")?;
        let head = String::from_utf8_lossy(&rest[..split]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 1") {
            break (head, &rest[split + 4..]);
        }
        rest = &rest[split + 4..];
    };
    if !head.starts_with("http/1.1 200") {
        bail!("the echo answered {}", head.lines().next().unwrap_or(""));
    }
    let echoed = if head.contains("transfer-encoding: chunked") { dechunk(payload)? } else { payload.to_vec() };
    if echoed.len() != body.len() || echoed != **body {
        bail!("the echo came back with {} bytes, not the {} sent", echoed.len(), body.len());
    }
    Ok(Some(took))
}

/// The data of a chunked body.
fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(b.len());
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").context("a chunk size line without its end")?;
        let size_text = std::str::from_utf8(&b[..line_end])?.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).with_context(|| format!("chunk size `{size_text}`"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("a chunk cut short");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

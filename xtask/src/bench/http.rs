//! A minimal keep-alive HTTP/1.1 client over one TCP connection, so that the client is never
//! what a registry benchmark measures: bodies stream from and into memory with no copies beyond
//! the socket's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

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

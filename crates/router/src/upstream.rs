//! HTTP/1.1 to instances over keep-alive connections of the router's own. The request's task
//! does all the work: it writes the request head and streams the body, reads the answer's head,
//! and the answer's body is read from the socket as the client takes it — no connection task
//! and no channel in between. Bodies flow both ways at once: when the answer starts before the
//! request body has been sent (an echo, a transcoder, any bidirectional stream), the rest of the
//! request body keeps being sent while the answer is read, driven by the same task. A connection
//! goes back to its pool once its answer has been read to the end after its request was sent in
//! full. A reused connection that turns out closed is replaced when the request is known not to
//! have reached the instance (its head could not be written) or may be sent again (an
//! idempotent request without a body to which no byte of an answer came) — and only on the same
//! instance: if that instance cannot be reached any more, it may have died of this request, so
//! the failure is never retried elsewhere (a query of death stays with one instance).

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::proxy::{is_hop_by_hop, Body, BoxError, Fields, SendError};

/// Idle connections kept per instance.
const IDLE_PER_HOST: usize = 256;
/// An idle connection older than this is closed rather than reused (below the keep-alive
/// timeouts servers commonly use, so the instance rarely closes one first).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest head read: an instance's response head, or a client's request head the router's
/// own HTTP/1.1 loop parses (a larger one goes to hyper, which refuses it).
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields parsed in a head or in chunked trailers (a client's request with more
/// goes to hyper).
pub(crate) const MAX_HEADERS: usize = 100;
/// How much is read from an instance at a time.
const READ_SIZE: usize = 16 * 1024;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// A connection to an instance, with what has been read from it and not yet used.
pub(crate) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Conn, SendError> {
        let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::new(&e, true)),
            Err(e) => return Err(SendError::new(&e, true)),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: BytesMut::new() })
    }

    /// Whether an idle connection can still carry a request: the instance has neither closed it
    /// nor sent anything unasked. Takes no system call unless the socket has become readable.
    fn usable(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == ErrorKind::WouldBlock),
        }
    }

    /// The socket of a connection switched to another protocol, and the bytes the instance
    /// already sent over it.
    pub(crate) fn into_tunnel(self) -> (TcpStream, Bytes) {
        (self.stream, self.buf.freeze())
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Default)]
struct Slots {
    by_addr: HashMap<SocketAddr, Vec<Idle>>,
    swept: Option<Instant>,
}

impl Slots {
    fn sweep(&mut self, now: Instant) {
        if self.swept.is_some_and(|t| now.saturating_duration_since(t) < IDLE_TIMEOUT) {
            return;
        }
        self.swept = Some(now);
        self.by_addr.retain(|_, list| {
            list.retain(|i| now.saturating_duration_since(i.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }
}

/// Idle connections to instances, by address. With [`crate::Router::serve_workers`] every
/// worker thread has its own, so a connection is only ever used from the thread that made it.
#[derive(Default)]
pub(crate) struct Pool {
    slots: Mutex<Slots>,
}

impl Pool {
    fn take(&self, addr: SocketAddr) -> Option<Conn> {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let list = slots.by_addr.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < IDLE_TIMEOUT && idle.conn.usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Keeps a connection whose last answer was read to its end.
    fn put(&self, addr: SocketAddr, conn: Conn) {
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.sweep(now);
        let list = slots.by_addr.entry(addr).or_default();
        if list.len() < IDLE_PER_HOST {
            list.push(Idle { conn, since: now });
        }
    }

    /// Closes the connections idle for longer than the idle timeout (so also those to
    /// addresses no longer routed); does the work at most once per timeout.
    pub(crate) fn sweep(&self, now: Instant) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).sweep(now);
    }

    /// Sends a request and reads its answer's head; the body follows as the returned
    /// [`Reply`] is read. A reused connection found closed before any answer came is replaced
    /// when the request can be sent again.
    pub(crate) async fn send(self: &Arc<Self>, addr: SocketAddr, req: Outgoing) -> Result<(Response<()>, Reply), SendError> {
        let mut head = req.head.0;
        if req.chunked {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let head = head.freeze();
        let mut body = req.body;
        // Set once the request may have reached the instance: from then on, not reaching it is
        // not a reason to try another.
        let mut reached = false;
        loop {
            let (mut conn, reused) = match self.take(addr) {
                Some(c) => (c, true),
                None => (Conn::open(addr).await.map_err(|e| if reached { e.reached() } else { e })?, false),
            };
            if let Err(e) = conn.stream.write_all(&head).await {
                if reused {
                    continue;
                }
                return Err(SendError::new(&e, false));
            }
            let Some(b) = body.take() else {
                match read_head(&mut conn.stream, &mut conn.buf, req.head_only).await {
                    Ok((head, framing)) => {
                        let reply = self.reply(conn, &head, framing, addr);
                        return Ok((head, reply));
                    }
                    Err(Failure::Stale(_)) if reused && req.idempotent => {
                        reached = true;
                        continue;
                    }
                    Err(Failure::Stale(e) | Failure::Other(e)) => return Err(e),
                }
            };
            return self.exchange_with_body(conn, b, req.chunked, req.head_only, addr).await;
        }
    }

    /// The answer on a connection that carried its whole request: its body, or the connection
    /// itself after a `101 Switching Protocols`.
    fn reply(self: &Arc<Self>, conn: Conn, head: &Response<()>, framing: Framing, addr: SocketAddr) -> Reply {
        if head.status() == StatusCode::SWITCHING_PROTOCOLS {
            Reply::Tunnel(conn)
        } else {
            Reply::Body(Streamed::new(Io::Whole(conn.stream), conn.buf, framing, None, self.clone(), addr))
        }
    }

    /// Sends the body while waiting for the answer's head. When the head comes first, the rest of
    /// the body goes on being sent while the answer is read (full duplex); the connection is then
    /// not reused.
    async fn exchange_with_body(
        self: &Arc<Self>,
        conn: Conn,
        body: Body,
        chunked: bool,
        head_only: bool,
        addr: SocketAddr,
    ) -> Result<(Response<()>, Reply), SendError> {
        let Conn { stream, mut buf } = conn;
        let (mut rd, wr) = stream.into_split();
        let mut sending: Upload = Box::pin(send_rest(wr, body, chunked));
        let mut written = None;
        let (head, framing) = {
            let reading = read_head(&mut rd, &mut buf, head_only);
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    r = &mut sending, if written.is_none() => written = Some(r?),
                    r = &mut reading => break r.map_err(|(Failure::Stale(e) | Failure::Other(e))| e)?,
                }
            }
        };
        match written {
            Some(wr) => {
                let stream = rd.reunite(wr).map_err(|e| SendError::new(&e, false))?;
                let reply = self.reply(Conn { stream, buf }, &head, framing, addr);
                Ok((head, reply))
            }
            None if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
                Err(invalid("the instance switched protocols before the request body was sent"))
            }
            None => {
                Ok((head, Reply::Body(Streamed::new(Io::Read(rd), buf, framing.last(), Some(Mutex::new(sending)), self.clone(), addr))))
            }
        }
    }
}

/// The rest of a request body being sent, handing the write half back when done.
type Upload = Pin<Box<dyn std::future::Future<Output = Result<OwnedWriteHalf, SendError>> + Send>>;

async fn send_rest(mut w: OwnedWriteHalf, body: Body, chunked: bool) -> Result<OwnedWriteHalf, SendError> {
    send_body(&mut w, body, chunked).await?;
    Ok(w)
}

/// A request on its way to an instance.
pub(crate) struct Outgoing {
    /// The request line and header fields, without the blank line that ends the head.
    pub head: RequestHead,
    /// `None` when the request has no body.
    pub body: Option<Body>,
    /// Send the body chunked (its length is not declared).
    pub chunked: bool,
    /// A HEAD request: the answer has no body, whatever its head says.
    pub head_only: bool,
    /// The request may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
}

/// A request head being written.
pub(crate) struct RequestHead(BytesMut);

impl RequestHead {
    /// `target` in origin form (`/path?query`).
    pub(crate) fn new(method: &Method, target: &str) -> RequestHead {
        let mut b = BytesMut::with_capacity(512);
        b.extend_from_slice(method.as_str().as_bytes());
        b.put_u8(b' ');
        b.extend_from_slice(target.as_bytes());
        b.extend_from_slice(b" HTTP/1.1\r\n");
        RequestHead(b)
    }

    /// One header field; `value` must be a valid field value (as a [`HeaderValue`]'s bytes are).
    pub(crate) fn header(&mut self, name: &[u8], value: &[u8]) {
        field(&mut self.0, name, value);
    }
}

/// Writes one header field line (`name: value`).
pub(crate) fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether an answer has no body whatever its head says (RFC 9112 §6.3): to a HEAD request, or
/// 1xx, 204 or 304.
pub(crate) fn bodiless(status: StatusCode, head_request: bool) -> bool {
    head_request || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// The answer's body, or the connection a `101 Switching Protocols` handed over.
pub(crate) enum Reply {
    Body(Streamed),
    Tunnel(Conn),
}

/// Why reading an answer's head failed: `Stale` when the connection was found closed before
/// anything of the answer arrived (so the instance may never have seen the request).
enum Failure {
    Stale(SendError),
    Other(SendError),
}

/// Streams a request body, chunked when its length was not declared (with its trailers, if any).
async fn send_body<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, mut body: Body, chunked: bool) -> Result<(), SendError> {
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SendError::new(&*e, false))?;
        let io = |e: std::io::Error| SendError::new(&e, false);
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if chunked => {
                let mut framed = BytesMut::with_capacity(data.len().min(8192) + 16);
                framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                if data.len() <= 8192 {
                    framed.extend_from_slice(&data);
                    framed.extend_from_slice(b"\r\n");
                    w.write_all(&framed).await.map_err(io)?;
                } else {
                    w.write_all(&framed).await.map_err(io)?;
                    w.write_all(&data).await.map_err(io)?;
                    w.write_all(b"\r\n").await.map_err(io)?;
                }
            }
            Ok(data) => w.write_all(&data).await.map_err(io)?,
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if chunked {
        let mut end = BytesMut::from(&b"0\r\n"[..]);
        for (name, value) in trailers.iter().flatten() {
            field(&mut end, name.as_str().as_bytes(), value.as_bytes());
        }
        end.extend_from_slice(b"\r\n");
        w.write_all(&end).await.map_err(|e| SendError::new(&e, false))?;
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> SendError {
    SendError::message(msg.into())
}

/// Reads until a final answer's head has arrived (or a 101).
async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<(Response<()>, Framing), Failure> {
    let mut received = false;
    loop {
        if !buf.is_empty() {
            received = true;
            if let Some((resp, framing)) = parse_head(buf, head_only).map_err(Failure::Other)? {
                if resp.status().is_informational() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    continue;
                }
                return Ok((resp, framing));
            }
            if buf.len() > MAX_HEAD {
                return Err(Failure::Other(invalid(format!("the instance's response head is over {MAX_HEAD} bytes"))));
            }
        }
        buf.reserve(READ_SIZE);
        match r.read_buf(buf).await {
            Ok(0) if !received => return Err(Failure::Stale(invalid("the instance closed the connection"))),
            Ok(0) => return Err(Failure::Other(invalid("the instance closed the connection within a response head"))),
            Ok(_) => {}
            Err(e) if !received => return Err(Failure::Stale(SendError::new(&e, false))),
            Err(e) => return Err(Failure::Other(SendError::new(&e, false))),
        }
    }
}

/// How an answer's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `n` more bytes; the connection is reused after them when `keep` is set.
    Length {
        left: u64,
        keep: bool,
    },
    Chunked {
        state: Chunk,
        keep: bool,
    },
    /// Until the instance closes the connection.
    Close,
    Done {
        keep: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Framing {
    /// The same delimiting, on a connection that is not reused afterwards.
    fn last(self) -> Framing {
        match self {
            Framing::Length { left, .. } => Framing::Length { left, keep: false },
            Framing::Chunked { state, .. } => Framing::Chunked { state, keep: false },
            Framing::Done { .. } => Framing::Done { keep: false },
            Framing::Close => Framing::Close,
        }
    }
}

/// Where the head at the start of `buf` ends: just after its first empty line.
pub(crate) fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().skip(1).find_map(|(i, &c)| match (c, buf[i - 1]) {
        (b'\n', b'\n') => Some(i + 1),
        (b'\n', b'\r') if i >= 2 && buf[i - 2] == b'\n' => Some(i + 1),
        _ => None,
    })
}

/// Parses a response head at the start of `buf` (taking it out of `buf`): `None` while it is
/// incomplete. The head's hop-by-hop fields are left out (but `Upgrade` on a 101), and so is a
/// `Content-Length` that chunked coding overrides; values share the head's bytes.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<(Response<()>, Framing)>, SendError> {
    let Some(len) = head_end(buf) else { return Ok(None) };
    let head = buf.split_to(len).freeze();
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(invalid("the instance sent an incomplete response head")),
        Err(e) => return Err(invalid(format!("the instance sent an invalid response head: {e}"))),
    }
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|_| invalid("the instance sent an invalid status code"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let fields = Fields::Raw(parsed.headers);
    let framing = framing(fields, status, version, head_only)?;
    let drop_length = matches!(framing, Framing::Chunked { .. } | Framing::Close) && fields.contains("transfer-encoding");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    let headers = resp.headers_mut();
    headers.reserve(parsed.headers.len());
    for f in parsed.headers.iter() {
        let name = f.name.as_bytes();
        let kept_upgrade = switching && name.eq_ignore_ascii_case(b"upgrade");
        if (is_hop_by_hop(fields, name) && !kept_upgrade) || (drop_length && name.eq_ignore_ascii_case(b"content-length")) {
            continue;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| invalid("the instance sent an invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice_ref(f.value)).map_err(|_| invalid("the instance sent an invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some((resp, framing)))
}

/// How the body of an answer with these fields is delimited.
fn framing(fields: Fields<'_>, status: StatusCode, version: Version, head_only: bool) -> Result<Framing, SendError> {
    let keep =
        if version == Version::HTTP_10 { fields.has_token("connection", b"keep-alive") } else { !fields.has_token("connection", b"close") };
    if bodiless(status, head_only) {
        return Ok(Framing::Done { keep });
    }
    let mut codings: Option<&[u8]> = None;
    fields.values("transfer-encoding", |v| codings = Some(v));
    if let Some(last) = codings {
        // Chunked must be the last coding; anything else is delimited by the close.
        let chunked = last.rsplit(|&c| c == b',').next().is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked { Framing::Chunked { state: Chunk::Size, keep } } else { Framing::Close });
    }
    let (mut length, mut lengths, mut agree) = (None, 0, true);
    fields.values("content-length", |v| {
        lengths += 1;
        let n = std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<u64>().ok());
        agree &= n.is_some() && (length.is_none() || length == n);
        length = n;
    });
    match (lengths, length) {
        (0, _) => Ok(Framing::Close),
        (_, Some(n)) if agree => Ok(if n == 0 { Framing::Done { keep } } else { Framing::Length { left: n, keep } }),
        _ => Err(invalid("the instance sent an invalid Content-Length")),
    }
}

/// What an answer's body is read from: the whole connection, or its read half while the write
/// half sends the rest of the request body.
enum Io {
    Whole(TcpStream),
    Read(OwnedReadHalf),
}

/// An answer's body, read from the instance's connection as the client takes it. The connection
/// goes back to the pool when the body has ended and may carry another request. While the
/// request body is still being sent ([`Upload`]), reading the answer also drives the sending, so
/// both directions move at once.
pub(crate) struct Streamed {
    io: Option<Io>,
    buf: BytesMut,
    framing: Framing,
    /// In a mutex only to be `Sync`, as response bodies must be; always reached through `&mut`.
    upload: Option<Mutex<Upload>>,
    /// The write half once the upload is done, kept until the end: dropping it would half-close
    /// the connection, which some servers take for the client going away.
    _sent: Option<OwnedWriteHalf>,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl Streamed {
    fn new(io: Io, buf: BytesMut, framing: Framing, upload: Option<Mutex<Upload>>, pool: Arc<Pool>, addr: SocketAddr) -> Streamed {
        let mut s = Streamed { io: Some(io), buf, framing, upload, _sent: None, pool, addr };
        if let Framing::Done { keep } = framing {
            s.finish(keep);
        }
        s
    }

    /// The body has ended: the connection goes back if it may and nothing unasked follows.
    fn finish(&mut self, keep: bool) {
        self.framing = Framing::Done { keep };
        if let Some(Io::Whole(stream)) = self.io.take() {
            if keep && self.buf.is_empty() {
                self.pool.put(self.addr, Conn { stream, buf: std::mem::take(&mut self.buf) });
            }
        }
    }

    /// Drives the sending of the rest of the request body, if any.
    fn poll_upload(&mut self, cx: &mut Context<'_>) -> Result<(), SendError> {
        if let Some(up) = self.upload.as_mut() {
            let up = up.get_mut().unwrap_or_else(|p| p.into_inner());
            if let Poll::Ready(done) = up.as_mut().poll(cx) {
                self.upload = None;
                self._sent = Some(done?);
            }
        }
        Ok(())
    }

    /// One step of the body: `Ready(None)` when more must be read first.
    fn step(&mut self) -> Result<Option<Option<Frame<Bytes>>>, SendError> {
        if self.io.is_none() {
            return Ok(Some(None));
        }
        let buf = &mut self.buf;
        match self.framing {
            Framing::Done { .. } => Ok(Some(None)),
            Framing::Close if buf.is_empty() => Ok(None),
            Framing::Close => Ok(Some(Some(Frame::data(buf.split().freeze())))),
            Framing::Length { .. } | Framing::Chunked { state: Chunk::Data(_), .. } if buf.is_empty() => Ok(None),
            Framing::Length { left, keep } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                if left == 0 {
                    self.finish(keep);
                } else {
                    self.framing = Framing::Length { left, keep };
                }
                Ok(Some(Some(Frame::data(data))))
            }
            Framing::Chunked { state: Chunk::Data(left), keep } => {
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(n).freeze();
                let left = left - n as u64;
                let state = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                self.framing = Framing::Chunked { state, keep };
                Ok(Some(Some(Frame::data(data))))
            }
            Framing::Chunked { state: Chunk::DataEnd, keep } => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("the instance sent a malformed chunk"));
                }
                let _ = buf.split_to(2);
                self.framing = Framing::Chunked { state: Chunk::Size, keep };
                self.step()
            }
            Framing::Chunked { state: Chunk::Size, keep } => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    return if buf.len() > MAX_CHUNK_LINE { Err(invalid("the instance sent a malformed chunk")) } else { Ok(None) };
                };
                let line = buf.split_to(end + 2);
                let digits = line[..end].split(|&c| c == b';').next().unwrap_or(&[]);
                let size = std::str::from_utf8(digits)
                    .ok()
                    .map(str::trim)
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or_else(|| invalid("the instance sent a malformed chunk size"))?;
                let state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                self.framing = Framing::Chunked { state, keep };
                self.step()
            }
            Framing::Chunked { state: Chunk::Trailers, keep } => {
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (len, trailers) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields.iter() {
                            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(f.name.as_bytes()), HeaderValue::from_bytes(f.value)) {
                                trailers.append(name, value);
                            }
                        }
                        (len, trailers)
                    }
                    Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
                    _ => return Err(invalid("the instance sent malformed trailers")),
                };
                let _ = buf.split_to(len);
                self.finish(keep);
                Ok(Some(if trailers.is_empty() { None } else { Some(Frame::trailers(trailers)) }))
            }
        }
    }
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_upload(cx) {
            this.io = None;
            return Poll::Ready(Some(Err(format!("sending the request body failed: {}", e.message).into())));
        }
        loop {
            match this.step() {
                Err(e) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(e.message.into())));
                }
                Ok(Some(frame)) => return Poll::Ready(frame.map(Ok)),
                Ok(None) => {}
            }
            let Some(io) = this.io.as_mut() else { return Poll::Ready(None) };
            this.buf.reserve(READ_SIZE);
            let read = match io {
                Io::Whole(stream) => ready!(tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut this.buf)),
                Io::Read(half) => ready!(tokio_util::io::poll_read_buf(Pin::new(half), cx, &mut this.buf)),
            };
            match read {
                Ok(0) if this.framing == Framing::Close => this.finish(false),
                Ok(0) => {
                    this.io = None;
                    return Poll::Ready(Some(Err("the instance closed the connection before the response body ended".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.io = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done { .. })
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length { left, .. } => SizeHint::with_exact(left),
            Framing::Done { .. } => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, head_only: bool) -> Result<Option<(Response<()>, Framing)>, SendError> {
        parse_head(&mut BytesMut::from(raw.as_bytes()), head_only)
    }

    fn framing_of(raw: &str) -> Framing {
        head(raw, false).ok().flatten().map(|(_, f)| f).unwrap_or(Framing::Done { keep: false })
    }

    #[test]
    fn heads_are_delimited_as_rfc_9112_says() {
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"), Framing::Length { left: 5, keep: true });
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), Framing::Done { keep: true });
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length { left: 5, keep: false }
        );
        assert_eq!(framing_of("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n"), Framing::Length { left: 5, keep: false });
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 5\r\n\r\n"),
            Framing::Length { left: 5, keep: true }
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n"),
            Framing::Chunked { state: Chunk::Size, keep: true }
        );
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"), Framing::Close);
        assert_eq!(framing_of("HTTP/1.1 200 OK\r\n\r\n"), Framing::Close);
        assert_eq!(framing_of("HTTP/1.1 204 No Content\r\n\r\n"), Framing::Done { keep: true });
        assert_eq!(framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n"), Framing::Done { keep: true });
        let f = head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true).ok().flatten().map(|(_, f)| f);
        assert_eq!(f, Some(Framing::Done { keep: true }));
    }

    #[test]
    fn bad_heads_are_refused_and_partial_ones_wait() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", false).is_ok_and(|h| h.is_none()));
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert!(head("HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
        assert!(head("NOT HTTP\r\n\r\n", false).is_err());
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\na: b\r\n\r\nbody"), Some(25));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\na: b\n\nbody"), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\na: b\r\n"), None);
    }

    #[test]
    fn hop_by_hop_fields_are_left_out_of_the_head() {
        let names = |raw: &str| -> Vec<String> {
            let mut n: Vec<String> =
                head(raw, false).ok().flatten().map(|(r, _)| r.headers().keys().map(|k| k.to_string()).collect()).unwrap_or_default();
            n.sort();
            n
        };
        let ok = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-App: 2\r\ncontent-length: 1\r\n\r\n";
        assert_eq!(names(ok), ["content-length", "x-app"]);
        assert_eq!(names("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), ["upgrade"]);
    }

    #[test]
    fn chunk_size_rules() {
        let h = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(head(h, false).is_ok_and(|h| h.is_some_and(|(resp, _)| !resp.headers().contains_key("content-length"))));
    }

    /// A scripted instance: for each connection it accepts, reads a request head (and `body`
    /// bytes), then writes the answer in the given pieces; records what it read.
    async fn instance(
        answers: Vec<(usize, Vec<&'static [u8]>, bool)>,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>)> {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut conn: Option<TcpStream> = None;
            for (body, pieces, close) in answers {
                let mut s = match conn.take() {
                    Some(s) => s,
                    None => match listener.accept().await {
                        Ok((s, _)) => s,
                        Err(_) => break,
                    },
                };
                let mut got = Vec::new();
                let mut byte = [0u8; 1];
                while !got.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.is_ok_and(|n| n == 1) {
                    got.push(byte[0]);
                }
                let mut rest = vec![0u8; body];
                if s.read_exact(&mut rest).await.is_ok() {
                    got.extend_from_slice(&rest);
                }
                seen.push(got);
                for p in pieces {
                    let _ = s.write_all(p).await;
                    let _ = s.flush().await;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                if !close {
                    conn = Some(s);
                }
            }
            seen
        });
        Ok((addr, task))
    }

    fn get(target: &str) -> Outgoing {
        let mut head = RequestHead::new(&Method::GET, target);
        head.header(b"host", b"web.localhost");
        Outgoing { head, body: None, chunked: false, head_only: false, idempotent: true }
    }

    /// Sends and reads the whole answer: (status, body, trailers).
    async fn fetch(pool: &Arc<Pool>, addr: SocketAddr, req: Outgoing) -> Result<(u16, Vec<u8>, Option<HeaderMap>), BoxError> {
        let (head, reply) = pool.send(addr, req).await.map_err(|e| e.message)?;
        let Reply::Body(body) = reply else { return Err("a tunnel".into()) };
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((head.status().as_u16(), collected.to_bytes().to_vec(), trailers))
    }

    #[tokio::test]
    async fn chunked_answers_in_small_pieces_are_decoded_and_the_connection_reused() -> Result<(), BoxError> {
        let chunked: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\ntransfer-en",
            b"coding: chunked\r\n\r\n5;ext=1\r",
            b"\nhel",
            b"lo\r\n",
            b"6\r\n, worl\r\n1\r\nd\r\n0\r\ngrpc-",
            b"status: 0\r\n\r\n",
        ];
        let (addr, server) =
            instance(vec![(0, chunked, false), (0, vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], false)]).await?;
        let pool = Arc::new(Pool::default());
        let (status, body, trailers) = fetch(&pool, addr, get("/a?b=1")).await?;
        assert_eq!((status, body.as_slice()), (200, &b"hello, world"[..]));
        assert_eq!(trailers.and_then(|t| t.get("grpc-status").cloned()), Some(HeaderValue::from_static("0")));
        // The second request goes over the same connection (the instance accepts only once).
        let (status, body, _) = fetch(&pool, addr, get("/second")).await?;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
        // Idle past the timeout: closed by the sweep.
        pool.sweep(Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1));
        assert!(pool.take(addr).is_none());
        let seen = server.await?;
        assert!(seen[0].starts_with(b"GET /a?b=1 HTTP/1.1\r\nhost: web.localhost\r\n\r\n"), "{:?}", String::from_utf8_lossy(&seen[0]));
        assert!(seen[1].starts_with(b"GET /second HTTP/1.1\r\n"));
        Ok(())
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_replaced() -> Result<(), BoxError> {
        let ok: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1"];
        // The instance closes a kept-alive connection while it is idle, and then one as a
        // request arrives on it (reading the request, answering nothing): both times the
        // request goes over a new connection instead of failing.
        let script = vec![(0, ok.clone(), true), (0, ok.clone(), false), (0, vec![], true), (0, ok, true)];
        let (addr, server) = instance(script).await?;
        let pool = Arc::new(Pool::default());
        assert_eq!(fetch(&pool, addr, get("/1")).await?.0, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(fetch(&pool, addr, get("/2")).await?.0, 200);
        assert_eq!(fetch(&pool, addr, get("/3")).await?.0, 200);
        let seen = server.await?;
        assert_eq!(seen.len(), 4);
        assert!(seen[3].starts_with(b"GET /3 "));
        Ok(())
    }

    #[tokio::test]
    async fn bodies_are_sent_chunked_with_trailers_and_close_delimited_answers_end_at_the_close() -> Result<(), BoxError> {
        let expected = b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
        let body_len = expected.len() - b"POST /up HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".len();
        let (addr, server) = instance(vec![(body_len, vec![b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"], true)]).await?;
        let pool = Arc::new(Pool::default());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", HeaderValue::from_static("1"));
        let frames =
            futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::trailers(trailers))]);
        let body = http_body_util::StreamBody::new(frames).boxed();
        let out =
            Outgoing { head: RequestHead::new(&Method::POST, "/up"), body: Some(body), chunked: true, head_only: false, idempotent: false };
        let (status, body, _) = fetch(&pool, addr, out).await?;
        assert_eq!((status, body.as_slice()), (200, &b"until the end"[..]));
        assert_eq!(server.await?[0], expected);
        Ok(())
    }

    #[tokio::test]
    async fn an_answer_before_the_body_was_sent_ends_the_sending() -> Result<(), BoxError> {
        // The instance refuses without reading the body, which never ends.
        let (addr, server) = instance(vec![(0, vec![b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig"], false)]).await?;
        let pool = Arc::new(Pool::default());
        let endless = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Some((Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"more"))), ()))
        });
        let head = RequestHead::new(&Method::PUT, "/");
        let out = Outgoing {
            head,
            body: Some(http_body_util::StreamBody::new(endless).boxed()),
            chunked: true,
            head_only: false,
            idempotent: true,
        };
        let (status, body, _) = fetch(&pool, addr, out).await?;
        assert_eq!((status, body.as_slice()), (413, &b"big"[..]));
        // Half-sent: never reused.
        assert!(pool.take(addr).is_none());
        drop(server);
        Ok(())
    }
}

//! The router's own HTTP/1.1 loop for client connections, for the common request: HTTP/1.1, no
//! body, no Upgrade, no Expect, to a service forwarded over HTTP/1.1. Its head is parsed with
//! httparse and forwarded from its raw fields, and the answer is written back directly: no
//! header map for the request and no hyper dispatch on the way. At the first request the loop
//! leaves to hyper — one with a body, an Upgrade, Expect, `Connection: close`, HTTP/1.0, an
//! unknown host, a paused service, a redirect, h2c or gRPC, or the HTTP/2 preface — the
//! connection goes to hyper, with the bytes already read, for the rest of its life.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::proxy::{is_grpc, request_id, visible, Ask, Body, Exchange, Fields, Line, Peer, Router};
use crate::upstream::{bodiless, field, head_end, MAX_HEAD, MAX_HEADERS};

/// Response bytes gathered before they are written.
const WRITE_AT: usize = 64 * 1024;

/// What became of one request.
enum Served {
    Next,
    Close,
    HandOver,
}

/// Serves a client connection until it closes or a request needs hyper.
pub(crate) async fn serve<I>(router: Arc<Router>, mut io: I, peer: Arc<Peer>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(4096);
    // One timer per connection, moved on for every request (moving it later costs no timer
    // operation).
    let idle = router.options.idle_timeout;
    let timeout = tokio::time::sleep(idle);
    tokio::pin!(timeout);
    loop {
        timeout.as_mut().reset(tokio::time::Instant::now() + idle);
        let len = loop {
            if let Some(n) = head_end(&buf) {
                break n;
            }
            if buf.len() > MAX_HEAD {
                return hand_over(router, io, buf, peer).await;
            }
            buf.reserve(4096);
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = &mut timeout => {
                    tracing::debug!(peer = %peer.ip, "no request head within the idle timeout; closing the connection");
                    return;
                }
                // Stopping: a connection between requests closes; one in the middle of a head
                // is served.
                () = router.options.stopping.cancelled(), if buf.is_empty() => return,
            }
        };
        let head = buf.split_to(len).freeze();
        match one(&router, &mut io, &peer, &head, &mut buf, &mut out).await {
            Served::Next if router.options.stopping.is_cancelled() => return,
            Served::Next => {}
            Served::Close => return,
            Served::HandOver => {
                let mut read = BytesMut::with_capacity(head.len() + buf.len());
                read.extend_from_slice(&head);
                read.extend_from_slice(&buf);
                return hand_over(router, io, read, peer).await;
            }
        }
    }
}

async fn hand_over<I>(router: Arc<Router>, io: I, read: BytesMut, peer: Arc<Peer>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    router.serve_hyper(Rewind { read: read.freeze(), io }, peer).await;
}

/// Whether the loop leaves a request with these fields to hyper.
fn needs_hyper(fields: Fields<'_>) -> bool {
    let mut body = fields.contains("transfer-encoding");
    fields.values("content-length", |v| body |= v != b"0");
    let mut other_connection = false;
    fields.values("connection", |v| {
        other_connection |= v.split(|&c| c == b',').any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"));
    });
    body || other_connection || is_grpc(fields) || fields.contains("upgrade") || fields.contains("expect")
}

/// Reads what the client sends while its request is being served (a pipelined request, kept in
/// `buf`); resolves only when the client has gone away.
async fn client_gone<I: AsyncRead + Unpin>(io: &mut I, buf: &mut BytesMut) {
    loop {
        if buf.len() > MAX_HEAD {
            // Enough is waiting; the rest stays in the socket until it is wanted.
            return std::future::pending().await;
        }
        buf.reserve(4096);
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One request: served here, or left to hyper (nothing has been written then). A client that
/// goes away while it is served ends the exchange with the instance at once.
async fn one<I>(router: &Router, io: &mut I, peer: &Peer, head: &Bytes, buf: &mut BytesMut, out: &mut BytesMut) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    if !matches!(req.parse_with_uninit_headers(head, &mut slots), Ok(httparse::Status::Complete(_))) {
        return Served::HandOver;
    }
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Served::HandOver };
    let fields = Fields::Raw(req.headers);
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Served::HandOver };
    if !target.starts_with('/') || needs_hyper(fields) {
        return Served::HandOver;
    }
    let (mut host, mut hosts) = (None, 0);
    fields.values("host", |v| {
        hosts += 1;
        host = visible(v);
    });
    let Some(host) = host.filter(|_| hosts == 1) else { return Served::HandOver };
    let Ok(mut route) = router.table.route_for(host, peer.from) else { return Served::HandOver };
    let redirects = router.options.redirect_to_https_port.is_some() && peer.scheme == "http";
    if route.paused.is_some() || route.settings.h2c || redirects {
        return Served::HandOver;
    }
    let mut id_buf = [0u8; 32];
    let line = Line { method: &method, version: Version::HTTP_11, target };
    let mut ex = Exchange::begin(router, &route, host, peer, request_id(fields, &mut id_buf), start, line);
    let ask = Ask { method: &method, target, fields, body: None, declared: false, h2c: false, upgrade: None };
    let mut resp = tokio::select! {
        resp = router.forward(&mut ex, &mut route, ask) => resp,
        () = client_gone(io, buf) => {
            tracing::debug!(peer = %peer.ip, "the client went away before the answer");
            return Served::Close;
        }
    };
    router.finish(&route, &ex, &mut resp);
    if router.options.stopping.is_cancelled() {
        // The connection closes after this answer; the client learns it from the answer.
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    match write_response(io, buf, out, resp, method == Method::HEAD).await {
        Ok(()) => Served::Next,
        Err(e) => {
            tracing::debug!(error = %e, peer = %peer.ip, "response not sent in full; closing the connection");
            Served::Close
        }
    }
}

/// Now as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted at most once a second per
/// thread.
fn http_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = time::OffsetDateTime::now_utc();
    let secs = now.unix_timestamp().max(0) as u64;
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            let format =
                time::macros::format_description!("[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT");
            *text = now.format(&format).unwrap_or_default();
            *at = secs;
        }
        field(out, b"date", text.as_bytes());
    });
}

/// Adds a body frame to what is to be written; true once the chunked body has been terminated.
fn add(out: &mut BytesMut, frame: Frame<Bytes>, chunked: bool) -> bool {
    match frame.into_data() {
        Ok(data) if data.is_empty() => false,
        Ok(data) => {
            if chunked {
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            false
        }
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) if chunked => {
                out.extend_from_slice(b"0\r\n");
                for (name, value) in &trailers {
                    field(out, name.as_str().as_bytes(), value.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                true
            }
            _ => false,
        },
    }
}

/// Writes a response as HTTP/1.1: its length when known, chunked when not. What the body has
/// ready goes out with the head in one write; the rest as it comes.
async fn write_response<I>(io: &mut I, buf: &mut BytesMut, out: &mut BytesMut, resp: Response<Body>, head_request: bool) -> io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    let no_body = bodiless(status, head_request);
    // A length the instance sent stays (for HEAD and 304 too: it is the representation's).
    let mut chunked = false;
    if !no_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        match body.size_hint().exact() {
            Some(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            None => {
                chunked = true;
                field(out, b"transfer-encoding", b"chunked");
            }
        }
    }
    for (name, value) in &parts.headers {
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        http_date(out);
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        io.write_all(out).await?;
        return io.flush().await;
    }
    let (mut ended, mut terminated) = (false, false);
    loop {
        // Everything the body has ready now goes out in one write.
        while !ended && out.len() < WRITE_AT {
            match poll_fn(|cx: &mut Context<'_>| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(Some(frame)) => terminated |= add(out, frame.map_err(io::Error::other)?, chunked),
                Poll::Ready(None) => ended = true,
                Poll::Pending => break,
            }
        }
        if ended && chunked && !terminated {
            out.extend_from_slice(b"0\r\n\r\n");
            terminated = true;
        }
        io.write_all(out).await?;
        out.clear();
        if ended {
            return io.flush().await;
        }
        io.flush().await?;
        let next = tokio::select! {
            next = body.frame() => next,
            () = client_gone(io, buf) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "the client went away")),
        };
        match next {
            Some(frame) => terminated |= add(out, frame.map_err(io::Error::other)?, chunked),
            None => ended = true,
        }
    }
}

/// A connection with bytes already read from it, which are read again first.
struct Rewind<I> {
    read: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

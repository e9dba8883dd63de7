//! Accepting connections without ever giving up on a listener, and without letting connections
//! use up the process. An accept error that passes — a connection reset before it was accepted,
//! or no descriptor or memory left for the moment — is ridden out (waiting a little, with a log
//! line, while resources are short) instead of ending the listener. Each listener has a
//! [`Gate`]: at most so many connections open at once; beyond that new connections are accepted
//! and closed at once, with a log line, so clients fail fast rather than wait in the backlog.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};

/// How often a listener says it is refusing connections or short of resources.
const WARN_EVERY_SECS: u64 = 10;

/// The connection limit of one listener (shared by every worker serving it).
#[derive(Debug)]
pub struct Gate {
    name: String,
    max: usize,
    open: AtomicUsize,
    last_warning: AtomicU64,
}

impl Gate {
    /// A listener called `name` in log lines (`router HTTPS`), with at most `max` connections.
    pub fn new(name: impl Into<String>, max: usize) -> Arc<Gate> {
        Arc::new(Gate { name: name.into(), max: max.max(1), open: AtomicUsize::new(0), last_warning: AtomicU64::new(0) })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether to log now: at most once per [`WARN_EVERY_SECS`].
    fn may_warn(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let last = self.last_warning.load(Ordering::Relaxed);
        now >= last + WARN_EVERY_SECS && self.last_warning.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

/// A connection counted against its listener's limit until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The next connection within the gate's limit. Never fails: errors that pass are waited out.
pub async fn accept(listener: &TcpListener, gate: &Arc<Gate>) -> (TcpStream, SocketAddr, Admitted) {
    let mut backoff = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                if gate.open.fetch_add(1, Ordering::Relaxed) >= gate.max {
                    gate.open.fetch_sub(1, Ordering::Relaxed);
                    if gate.may_warn() {
                        tracing::warn!(
                            listener = %gate.name,
                            limit = gate.max,
                            "connection limit reached: closing new connections until some end"
                        );
                    }
                    drop(stream);
                    continue;
                }
                return (stream, peer, Admitted(gate.clone()));
            }
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused) => {}
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: resources come back as connections end.
                if gate.may_warn() {
                    tracing::warn!(listener = %gate.name, error = %e, "accepting connections failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The requests in progress on one connection, so that a connection left idle can be closed:
/// each request counts from the moment its head has been read until its response body is
/// dropped.
#[derive(Clone)]
pub struct Activity(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(tokio::sync::watch::channel(0).0))
    }
}

impl Activity {
    /// A request has begun; it ends when the returned guard is dropped.
    pub fn begin(&self) -> ActiveRequest {
        self.0.send_modify(|n| *n += 1);
        ActiveRequest(self.0.clone())
    }

    /// Resolves once no request has been in progress for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let mut watch = self.0.subscribe();
        loop {
            if *watch.borrow_and_update() == 0 {
                if tokio::time::timeout(idle, watch.changed()).await.is_err() {
                    return;
                }
            } else if watch.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}

/// One request in progress (see [`Activity`]).
pub struct ActiveRequest(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A body that carries a [`Guard`] along, told when the body's end is reached and dropped with it.
pub struct Guarded<B: hyper::body::Body, G: Guard> {
    inner: B,
    guard: G,
}

/// What a [`Guarded`] body carries.
pub trait Guard {
    /// The body's end was read (or the body was dropped with nothing left to read).
    fn end(&mut self) {}
}

impl<B: hyper::body::Body, G: Guard> Guarded<B, G> {
    pub fn new(inner: B, guard: G) -> Guarded<B, G> {
        Guarded { inner, guard }
    }
}

impl<B: hyper::body::Body, G: Guard> Drop for Guarded<B, G> {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.guard.end();
        }
    }
}

impl<B: hyper::body::Body + Unpin, G: Guard + Unpin> hyper::body::Body for Guarded<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            self.guard.end();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in progress until it is dropped.
pub type Tracked<B> = Guarded<B, ActiveRequest>;

impl Guard for ActiveRequest {}

/// A connection that goes back to its owner once the server using it drops it, so that it can be
/// closed with [`linger`]: a server that answers before reading a whole request body (an error
/// for an upload that cannot be stored) would otherwise close with unread data, which resets the
/// connection and takes the answer with it.
pub struct Returning<S> {
    io: Option<S>,
    back: Option<tokio::sync::oneshot::Sender<S>>,
}

impl<S> Returning<S> {
    /// Wraps `io`; the receiver gets it back when the wrapper is dropped.
    pub fn new(io: S) -> (Returning<S>, tokio::sync::oneshot::Receiver<S>) {
        let (back, returned) = tokio::sync::oneshot::channel();
        (Returning { io: Some(io), back: Some(back) }, returned)
    }

    fn io(&mut self) -> std::io::Result<&mut S> {
        self.io.as_mut().ok_or_else(|| std::io::Error::from(ErrorKind::NotConnected))
    }
}

impl<S> Drop for Returning<S> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.io.take(), self.back.take()) {
            let _ = back.send(io);
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Returning<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Returning<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_write_vectored(cx, bufs),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        match self.io() {
            Ok(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

/// Whether a request body on a connection was left unread — the case for a [`linger`]ing close.
#[derive(Clone, Default)]
pub struct BodyLeft(Arc<std::sync::atomic::AtomicBool>);

impl BodyLeft {
    /// `body`, noting here whether it is dropped before its end.
    pub fn watch<B: hyper::body::Body>(&self, body: B) -> Guarded<B, Unfinished> {
        Guarded::new(body, Unfinished { left: self.0.clone(), ended: false })
    }

    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The [`Guard`] of a body watched by [`BodyLeft`].
pub struct Unfinished {
    left: Arc<std::sync::atomic::AtomicBool>,
    ended: bool,
}

impl Guard for Unfinished {
    fn end(&mut self) {
        self.ended = true;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.ended {
            self.left.store(true, Ordering::Relaxed);
        }
    }
}

/// How long a lingering close waits for more of what the client is still sending.
const LINGER_IDLE: Duration = Duration::from_secs(5);
/// How long a lingering close lasts at most.
const LINGER_MAX: Duration = Duration::from_secs(30);

/// Closes a connection the way nginx's `lingering_close` does: no more writes (the client sees
/// the end of the answer), then what the client still sends is read and discarded until it
/// stops sending (5 s), closes, or 30 s pass — so it reads the answer instead of a reset.
pub async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let deadline = tokio::time::Instant::now() + LINGER_MAX;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let wait = LINGER_IDLE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

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

/// A response body that keeps its request counted as in progress until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _request: ActiveRequest,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, request: ActiveRequest) -> Tracked<B> {
        Tracked { inner, _request: request }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

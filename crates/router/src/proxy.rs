//! The proxy: requests pass named phases — route, pick, forward, respond, log — over pooled
//! upstream connections, with WebSocket (Upgrade) tunnels, per-service timeouts, body limits, a
//! concurrency cap with a bounded queue, and requests held while a first instance starts.
//! Client connections start in the router's own HTTP/1.1 loop (`h1.rs`); HTTP/2 (h2 over TLS,
//! h2c with prior knowledge) and the requests that loop leaves are served through hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::access::{AccessLog, AccessRecord};
use crate::listen::{self, Gate};
use crate::table::{InFlight, NoPick, Refusal, Route, RoutingTable};
use crate::upstream::{self, Outgoing, Reply, RequestHead};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers the router sets on the requests it forwards, replacing the client's.
const ROUTER_SET: [HeaderName; 5] = [header::HOST, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_REQUEST_ID];

fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let fields = Fields::Map(headers);
    let found: Vec<HeaderName> = headers.keys().filter(|k| is_hop_by_hop(fields, k.as_str().as_bytes())).cloned().collect();
    for name in found {
        headers.remove(name);
    }
}

/// A request's header fields: hyper's map, or the raw fields of a head the router parsed itself.
#[derive(Clone, Copy)]
pub(crate) enum Fields<'a> {
    Map(&'a HeaderMap),
    Raw(&'a [httparse::Header<'a>]),
}

impl<'a> Fields<'a> {
    /// Every field, in order, as (name, value).
    fn each(&self, mut f: impl FnMut(&[u8], &'a [u8])) {
        match *self {
            Fields::Map(m) => m.iter().for_each(|(n, v)| f(n.as_str().as_bytes(), v.as_bytes())),
            Fields::Raw(r) => r.iter().for_each(|h| f(h.name.as_bytes(), h.value)),
        }
    }

    /// The values of the fields named `name` (any case).
    pub(crate) fn values(&self, name: &str, mut f: impl FnMut(&'a [u8])) {
        self.each(|n, v| {
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                f(v)
            }
        })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        let mut found = false;
        self.values(name, |_| found = true);
        found
    }

    /// Whether a comma-separated field has `token` among its elements.
    pub(crate) fn has_token(&self, name: &str, token: &[u8]) -> bool {
        let mut found = false;
        self.values(name, |v| found |= v.split(|&c| c == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)));
        found
    }
}

/// Whether `name` is one of `names` (any case).
fn named(names: &[HeaderName], name: &[u8]) -> bool {
    names.iter().any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// Whether the field `name` describes only this hop in a message with these fields: one of
/// RFC 9110's (§7.6.1), or one its Connection header names.
pub(crate) fn is_hop_by_hop(fields: Fields<'_>, name: &[u8]) -> bool {
    named(&HOP_BY_HOP, name) || fields.has_token("connection", name)
}

/// Every header field an instance sees, in order: the client's, minus hop-by-hop ones and those
/// the router sets; `TE: trailers` when the client accepts trailers; then Host, the
/// `X-Forwarded-*` headers (the client's address appended to any `X-Forwarded-For` it sent)
/// and `X-Request-Id`.
fn upstream_headers(src: Fields<'_>, ex: &Exchange<'_>, mut emit: impl FnMut(&[u8], &[u8])) {
    src.each(|name, value| {
        if !is_hop_by_hop(src, name) && !named(&ROUTER_SET, name) {
            emit(name, value);
        }
    });
    if src.has_token("te", b"trailers") {
        emit(b"te", b"trailers");
    }
    emit(b"host", ex.host.as_bytes());
    let mut chain: Vec<u8> = Vec::new();
    src.values("x-forwarded-for", |v| {
        chain.extend_from_slice(v);
        chain.extend_from_slice(b", ");
    });
    if chain.is_empty() {
        emit(b"x-forwarded-for", ex.client.ip.as_bytes());
    } else {
        chain.extend_from_slice(ex.client.ip.as_bytes());
        emit(b"x-forwarded-for", &chain);
    }
    emit(b"x-forwarded-proto", ex.client.scheme.as_bytes());
    emit(b"x-forwarded-host", ex.host.as_bytes());
    emit(b"x-request-id", ex.request_id.as_bytes());
}

/// A new request id: 128 random bits in hex, written into `buf`.
fn new_request_id(buf: &mut [u8; 32]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Who a connection comes from, worked out once per connection.
pub(crate) struct Peer {
    /// The client's IP as text, for `X-Forwarded-For` and the access log.
    pub(crate) ip: String,
    pub(crate) scheme: &'static str,
    /// On the internal listener: the address of the instance calling, which says what it may
    /// call. `None` on public listeners.
    pub(crate) from: Option<std::net::IpAddr>,
}

/// Starts instances of services that have none, on the router's request (scale from zero).
pub trait Activator: Send + Sync {
    /// A request for `service` is being held because it has no ready instance. Called once per
    /// held request; the answer comes as a table change. It runs on a router worker, which may
    /// be pinned to one CPU: it should only signal whatever starts instances (a process started
    /// from this thread would inherit the pinning) and must not block.
    fn activate(&self, service: &str);
}

/// Connections a router listener keeps open at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// Behaviour switches of a router.
#[derive(Clone)]
pub struct RouterOptions {
    /// Answer plain-HTTP requests with a 308 redirect to HTTPS on this port (as clients see it).
    pub redirect_to_https_port: Option<u16>,
    /// Add `Strict-Transport-Security` to HTTPS responses.
    pub hsts: bool,
    /// Asked for an instance when a scale-from-zero service gets a request and has none.
    pub activator: Option<Arc<dyn Activator>>,
    /// Where each request is recorded as a JSON line.
    pub access_log: Option<AccessLog>,
    /// An HTTP/1.1 client connection is closed when a request head has not arrived in full this
    /// long after the connection opened or the previous answer was sent (idle keep-alive
    /// connections, and clients that send their heads too slowly); an HTTP/2 connection when no
    /// request has been in progress on it this long.
    pub idle_timeout: Duration,
    /// The connection limit of the listener(s) this router serves (shared by its workers).
    pub gate: Arc<Gate>,
    /// How long a client has for its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Cancelled to stop: no new connections; idle ones close, busy ones after their answer.
    pub stopping: CancellationToken,
    /// How long a stopping worker waits for its connections to end.
    pub drain_timeout: Duration,
    /// This listener serves instances' calls to `<name>.internal`: the caller is told by its
    /// address, and only internal routes it may call are served. Public listeners serve public
    /// routes only.
    pub internal: bool,
    /// Count each revision's responses and latency for the metrics history.
    pub metrics_history: bool,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            redirect_to_https_port: None,
            hsts: false,
            activator: None,
            access_log: None,
            idle_timeout: Duration::from_secs(75),
            gate: Gate::new("router", DEFAULT_MAX_CONNECTIONS),
            tls_handshake_timeout: Duration::from_secs(10),
            stopping: CancellationToken::new(),
            drain_timeout: Duration::from_secs(60),
            internal: false,
            metrics_history: true,
        }
    }
}

pub struct Router {
    pub(crate) table: Arc<RoutingTable>,
    pub(crate) http1: Arc<upstream::Pool>,
    h2c: Client<HttpConnector, Body>,
    pub(crate) options: RouterOptions,
}

/// A 308 to the same host and path over HTTPS.
fn redirect(host: &str, port: u16, path: &str) -> Response<Body> {
    let name = crate::table::normalize_host(host);
    let authority = if port == 443 { name } else { format!("{name}:{port}") };
    let mut r = text(StatusCode::PERMANENT_REDIRECT, "use HTTPS\n");
    if let Ok(v) = HeaderValue::from_str(&format!("https://{authority}{path}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A 413 naming the limit.
fn too_large(limit: u64) -> Response<Body> {
    text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {limit} bytes\n"))
}

/// A 503 that tells the client when to try again.
fn busy(msg: String) -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The protocol a request asks to switch to (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
fn upgrade_protocol(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version == Version::HTTP_11 && Fields::Map(headers).has_token("connection", b"upgrade") {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Whether a request is gRPC (which instances only speak over HTTP/2).
pub(crate) fn is_grpc(fields: Fields<'_>) -> bool {
    let mut grpc = false;
    fields.values("content-type", |v| grpc |= v.starts_with(b"application/grpc"));
    grpc
}

/// Why forwarding failed.
pub(crate) struct SendError {
    /// Connecting failed: nothing reached the instance.
    connect: bool,
    /// The request body went over the service's limit.
    too_large: bool,
    pub(crate) message: String,
}

impl SendError {
    pub(crate) fn new(e: &(dyn std::error::Error + 'static), connect: bool) -> SendError {
        let mut too_large = false;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut message = e.to_string();
        while let Some(s) = source {
            too_large |= s.downcast_ref::<LengthLimitError>().is_some();
            if let Some(next) = s.source() {
                message = format!("{message}: {next}");
            }
            source = s.source();
        }
        SendError { connect, too_large, message }
    }

    pub(crate) fn message(message: String) -> SendError {
        SendError { connect: false, too_large: false, message }
    }

    /// The same failure, for a request that may already have reached the instance: not one to
    /// retry on another instance.
    pub(crate) fn reached(self) -> SendError {
        SendError { connect: false, ..self }
    }
}

/// A response body streamed from an instance: the instance counts as busy until it has been
/// sent, and the stream is cut when the request's deadline passes.
struct Deadlined<B> {
    inner: B,
    _in_flight: InFlight,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> hyper::body::Body for Deadlined<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                // The timer is armed only when the instance keeps the stream waiting.
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(DeadlineExceeded)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An access record waiting for its exchange to end.
struct Pending {
    log: AccessLog,
    record: AccessRecord,
    start: Instant,
    bytes_in: Option<Arc<AtomicU64>>,
}

impl Pending {
    fn write(mut self, outcome: &'static str, bytes_out: u64) {
        let r = &mut self.record;
        r.ts = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        r.outcome = outcome;
        r.duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        r.bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
        r.bytes_out = bytes_out;
        self.log.record(r);
    }
}

/// A response body that writes its exchange's access record when it ends, fails, or is dropped
/// before its end (the client went away).
struct Logged {
    inner: Body,
    pending: Option<Pending>,
    bytes_out: u64,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => this.bytes_out += f.data_ref().map_or(0, |d| d.len() as u64),
            Some(Err(e)) => {
                let outcome = if e.downcast_ref::<DeadlineExceeded>().is_some() { "timeout" } else { "upstream_error" };
                if let Some(p) = this.pending.take() {
                    p.write(outcome, this.bytes_out);
                }
            }
            None => {
                if let Some(p) = this.pending.take() {
                    p.write("ok", this.bytes_out);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            // A body that says it has ended may be dropped without a last poll.
            let outcome = if self.inner.is_end_stream() { "ok" } else { "client_gone" };
            p.write(outcome, self.bytes_out);
        }
    }
}

/// The error a response body ends with when the request timeout cuts it.
#[derive(Debug)]
struct DeadlineExceeded;

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the response did not finish within the request timeout")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// A request body that counts what passes through it (for the access log).
struct Counted {
    inner: Body,
    bytes: Arc<AtomicU64>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(d)) = frame.as_ref().map(|f| f.as_ref().map(|f| f.data_ref())) {
            self.bytes.fetch_add(d.map_or(0, |d| d.len() as u64), Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An instance's answer: over HTTP/1.1 (a head, then a body or a tunnel) or over h2c.
enum Answer {
    H1(Response<()>, Reply),
    H2(Response<Incoming>),
}

/// What the phases share about one request.
pub(crate) struct Exchange<'a> {
    /// The Host the client asked for, as it sent it.
    pub(crate) host: &'a str,
    pub(crate) client: &'a Peer,
    pub(crate) request_id: &'a str,
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The request target, kept only for the access log.
    pub(crate) path: Option<String>,
    pub(crate) start: Instant,
    pub(crate) deadline: tokio::time::Instant,
    /// The instance the request went to, once picked.
    pub(crate) upstream: Option<SocketAddr>,
    /// The instance picked (its revision's traffic counters, its id), once picked.
    pub(crate) picked: Option<Arc<crate::table::Upstream>>,
    /// Request body bytes passed on, counted when there is an access log and a body.
    pub(crate) bytes_in: Option<Arc<AtomicU64>>,
}

/// A request line.
pub(crate) struct Line<'a> {
    pub(crate) method: &'a Method,
    pub(crate) version: Version,
    /// In origin form (`/path?query`).
    pub(crate) target: &'a str,
}

impl<'a> Exchange<'a> {
    /// The exchange of a request to `route` that arrived at `start`.
    pub(crate) fn begin(
        router: &Router,
        route: &Route,
        host: &'a str,
        client: &'a Peer,
        request_id: &'a str,
        start: Instant,
        line: Line<'_>,
    ) -> Exchange<'a> {
        Exchange {
            host,
            client,
            request_id,
            method: line.method.clone(),
            version: line.version,
            path: router.options.access_log.as_ref().map(|_| line.target.to_owned()),
            start,
            deadline: tokio::time::Instant::from_std(start + route.settings.request_timeout),
            upstream: None,
            picked: None,
            bytes_in: None,
        }
    }
}

/// A field value as text, if it is visible ASCII (as [`HeaderValue::to_str`] accepts).
pub(crate) fn visible(v: &[u8]) -> Option<&str> {
    v.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c)).then(|| std::str::from_utf8(v).ok()).flatten()
}

/// The request's id: the client's `X-Request-Id`, or a new one written into `buf`.
pub(crate) fn request_id<'a>(fields: Fields<'a>, buf: &'a mut [u8; 32]) -> &'a str {
    let mut given = None;
    fields.values("x-request-id", |v| given = given.or(visible(v)));
    match given {
        Some(id) => id,
        None => new_request_id(buf),
    }
}

/// What is forwarded to an instance.
pub(crate) struct Ask<'a> {
    pub(crate) method: &'a Method,
    /// The target in origin form (`/path?query`).
    pub(crate) target: &'a str,
    pub(crate) fields: Fields<'a>,
    /// `None`: the request has no body.
    pub(crate) body: Option<Body>,
    /// The body's length was declared, so it goes as is rather than chunked.
    pub(crate) declared: bool,
    /// Over h2c rather than HTTP/1.1.
    pub(crate) h2c: bool,
    /// The protocol an Upgrade request asks for, and the client side of the switch.
    pub(crate) upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
}

impl Router {
    pub fn new(table: Arc<RoutingTable>) -> Arc<Router> {
        Router::with_options(table, RouterOptions::default())
    }

    pub fn with_options(table: Arc<RoutingTable>, options: RouterOptions) -> Arc<Router> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http1 = Arc::new(upstream::Pool::default());
        let h2c = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).http2_only(true).build(connector);
        Arc::new(Router { table, http1, h2c, options })
    }

    /// Serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) from `listener` until the
    /// task is dropped. Accept errors never end it ([`listen::accept`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer, admitted) = tokio::select! {
                accepted = listen::accept(&listener, &self.options.gate) => accepted,
                () = self.options.stopping.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let _admitted = admitted;
                this.connection(stream, peer, "http", false).await
            });
        }
    }

    /// Serves HTTPS from `listener`: TLS with certificates by SNI, HTTP/2 or HTTP/1.1 by ALPN. A
    /// handshake that does not finish within the handshake timeout ends its connection.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, config: Arc<rustls::ServerConfig>) {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (stream, peer, admitted) = tokio::select! {
                accepted = listen::accept(&listener, &self.options.gate) => accepted,
                () = self.options.stopping.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                let _admitted = admitted;
                match tokio::time::timeout(this.options.tls_handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        this.connection(tls, peer, "https", h2).await
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "no TLS handshake within the timeout; closing the connection"),
                }
            });
        }
    }

    /// Serves a client connection: HTTP/2 (ALPN `h2`) through hyper; anything else starts in the
    /// router's own HTTP/1.1 loop, which hands the connection to hyper at the first request it
    /// leaves to it.
    async fn connection<I>(self: Arc<Self>, io: I, addr: SocketAddr, scheme: &'static str, h2: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Arc::new(Peer { ip: addr.ip().to_string(), scheme, from: self.options.internal.then_some(addr.ip()) });
        if h2 {
            self.serve_hyper(io, peer).await;
        } else {
            crate::h1::serve(self, io, peer).await;
        }
    }

    /// Serves a connection (HTTP/1.1, or HTTP/2 with prior knowledge or by ALPN) with hyper. A
    /// connection with no request in progress for the idle timeout is closed gracefully (an idle
    /// HTTP/2 connection gets a GOAWAY; HTTP/1.1 has hyper's header read timeout as well).
    pub(crate) async fn serve_hyper<I>(self: Arc<Self>, io: I, peer: Arc<Peer>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let ip = peer.ip.clone();
        let idle = self.options.idle_timeout;
        let activity = listen::Activity::default();
        let tracker = activity.clone();
        let stopping = self.options.stopping.clone();
        let service = hyper::service::service_fn(move |req| {
            let (this, peer, request) = (self.clone(), peer.clone(), tracker.begin());
            async move {
                let resp = this.handle(req, &peer).await;
                Ok::<_, Infallible>(resp.map(|inner| listen::Tracked::new(inner, request).boxed()))
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            () = activity.idle_for(idle) => {
                tracing::debug!(peer = %ip, "no request within the idle timeout; closing the connection");
                conn.as_mut().graceful_shutdown();
                conn.await
            }
            // Stopping: requests in progress finish; HTTP/1.1 closes after them, HTTP/2 says GOAWAY.
            () = stopping.cancelled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, peer = %ip, "connection ended with an error");
        }
    }

    /// One request hyper parsed, through the phases.
    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        // Phase: route.
        // HTTP/2 carries the host in the URI's authority (made into a value only then).
        let authority;
        let host_value = match parts.headers.get(header::HOST) {
            Some(h) => Some(h),
            None => {
                authority = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok());
                authority.as_ref()
            }
        };
        let host = host_value.and_then(|h| h.to_str().ok()).unwrap_or("");
        let mut route = match self.table.route_for(host, peer.from) {
            Ok(route) => route,
            Err(Refusal::NotFound) => return text(StatusCode::NOT_FOUND, format!("no service is served at `{host}`\n")),
            Err(Refusal::Forbidden(why)) => return text(StatusCode::FORBIDDEN, format!("{why}\n")),
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if let (Some(port), "http") = (self.options.redirect_to_https_port, peer.scheme) {
            return redirect(host, port, target);
        }
        let fields = Fields::Map(&parts.headers);
        let mut id_buf = [0u8; 32];
        let line = Line { method: &parts.method, version: parts.version, target };
        let mut ex = Exchange::begin(self, &route, host, peer, request_id(fields, &mut id_buf), start, line);
        let mut resp = match &route.paused {
            Some(message) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")),
            None => {
                let settings = &route.settings;
                let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                let upgrade = upgrade_protocol(parts.version, &parts.headers)
                    .and_then(|p| parts.extensions.remove::<hyper::upgrade::OnUpgrade>().map(|on| (p, on)));
                if declared.is_some_and(|n| n > settings.max_body_bytes) {
                    too_large(settings.max_body_bytes)
                } else {
                    let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
                    let body = (!body.is_end_stream()).then(|| {
                        let limited = Limited::new(body, limit).boxed();
                        match (&self.options.access_log, &mut ex.bytes_in) {
                            (Some(_), counter) => Counted { inner: limited, bytes: counter.insert(Arc::default()).clone() }.boxed(),
                            (None, _) => limited,
                        }
                    });
                    let ask = Ask {
                        method: &parts.method,
                        target,
                        fields,
                        body,
                        declared: declared.is_some(),
                        h2c: settings.h2c || is_grpc(fields),
                        upgrade,
                    };
                    self.forward(&mut ex, &mut route, ask).await
                }
            }
        };
        self.finish(&route, &ex, &mut resp);
        resp
    }

    /// Adds what the router adds to every response, and records the exchange (phase log): in the
    /// metrics at the head, in the access log when the answer has ended (or was abandoned).
    pub(crate) fn finish(&self, route: &Route, ex: &Exchange<'_>, resp: &mut Response<Body>) {
        if self.options.hsts && ex.client.scheme == "https" {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
        }
        let status = resp.status().as_u16();
        let elapsed = ex.start.elapsed();
        route.service.stats.response(status, elapsed);
        if self.options.metrics_history {
            ex.picked.as_ref().map_or(&route.service.unrouted, |u| &u.traffic).response(status, elapsed);
        }
        if let (Some(log), Some(path)) = (&self.options.access_log, &ex.path) {
            let record = AccessRecord {
                ts: String::new(),
                service: route.service.name.clone(),
                host: ex.host.to_owned(),
                method: ex.method.as_str().to_owned(),
                path: path.clone(),
                protocol: match ex.version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                status,
                outcome: "ok",
                ttfb_ms: elapsed.as_secs_f64() * 1000.0,
                duration_ms: 0.0,
                bytes_in: 0,
                bytes_out: 0,
                upstream: ex.upstream.map(|a| a.to_string()),
                instance: ex.picked.as_ref().filter(|u| !u.instance.is_empty()).map(|u| u.instance.to_string()),
                revision: ex.picked.as_ref().map(|u| u.revision).filter(|r| *r > 0),
                request_id: ex.request_id.to_owned(),
                client: ex.client.ip.clone(),
            };
            let pending = Pending { log: log.clone(), record, start: ex.start, bytes_in: ex.bytes_in.clone() };
            if status == 101 {
                pending.write("upgraded", 0);
            } else {
                let body = std::mem::replace(resp.body_mut(), empty());
                *resp.body_mut() = Logged { inner: body, pending: Some(pending), bytes_out: 0 }.boxed();
            }
        }
    }

    /// Phases pick, forward and respond. A request whose body is empty is retried once on another
    /// instance when connecting failed; one with a body is never retried.
    pub(crate) async fn forward(&self, ex: &mut Exchange<'_>, route: &mut Arc<Route>, ask: Ask<'_>) -> Response<Body> {
        let Ask { method, target, fields, body, declared, h2c, upgrade } = ask;
        let empty_request = body.is_none();
        let (upgrade, mut client_upgrade) = match upgrade {
            Some((proto, on)) => (Some(proto), Some(on)),
            None => (None, None),
        };
        let mut body = body;
        let mut failed = None;
        for _attempt in 0..2 {
            // Phase: pick.
            let in_flight = match self.acquire(ex, route, failed).await {
                Ok(g) => g,
                Err(resp) => return resp,
            };
            let upstream = in_flight.upstream();
            ex.upstream = Some(upstream.addr);
            ex.picked = Some(upstream.clone());
            let b = match (empty_request, body.take()) {
                (true, _) => None,
                (false, Some(b)) => Some(b),
                // The body went with the first attempt.
                (false, None) => break,
            };
            let ex: &Exchange<'_> = ex;
            // Phase: forward.
            let sent = async {
                if h2c {
                    // HTTP/2 needs the authority in the URI.
                    let uri = hyper::Uri::builder()
                        .scheme(hyper::http::uri::Scheme::HTTP)
                        .authority(upstream.authority.clone())
                        .path_and_query(target)
                        .build()
                        .map_err(|e| SendError::new(&e, false))?;
                    let mut up = Request::new(b.unwrap_or_else(empty));
                    *up.method_mut() = method.clone();
                    *up.version_mut() = Version::HTTP_2;
                    *up.uri_mut() = uri;
                    let headers = up.headers_mut();
                    upstream_headers(fields, ex, |name, value| {
                        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                            headers.append(n, v);
                        }
                    });
                    self.h2c.request(up).await.map(Answer::H2).map_err(|e| SendError::new(&e, e.is_connect()))
                } else {
                    let mut head = RequestHead::new(method, target);
                    upstream_headers(fields, ex, |name, value| head.header(name, value));
                    if let Some(proto) = &upgrade {
                        head.header(b"connection", b"upgrade");
                        head.header(b"upgrade", proto.as_bytes());
                    }
                    let out = Outgoing {
                        head,
                        chunked: b.is_some() && !declared,
                        body: b,
                        head_only: *method == Method::HEAD,
                        idempotent: method.is_idempotent(),
                    };
                    self.http1.send(upstream.addr, out).await.map(|(head, reply)| Answer::H1(head, reply))
                }
            };
            match tokio::time::timeout_at(ex.deadline, sent).await {
                Ok(Ok(answer)) => return respond(answer, in_flight, ex.deadline, client_upgrade.take()),
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("the instance did not answer within the request timeout ({:?})\n", route.settings.request_timeout),
                    )
                }
                Ok(Err(e)) if e.connect && empty_request => {
                    tracing::warn!(upstream = %upstream.addr, error = %e.message, "connecting failed, retrying on another instance");
                    failed = Some(upstream.addr);
                }
                Ok(Err(e)) if e.too_large => return too_large(route.settings.max_body_bytes),
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %upstream.addr, error = %e.message, "upstream failed");
                    return text(StatusCode::BAD_GATEWAY, "the instance failed to answer\n");
                }
            }
        }
        busy(format!("no ready instance of `{}`\n", route.service.name))
    }

    /// Phase pick: an instance below its concurrency cap. When all are busy the request waits in
    /// the service's bounded queue; when there is none and the service scales from zero it is
    /// held while the activator starts one. Both waits are bounded, then 503 with `Retry-After`.
    async fn acquire(&self, ex: &Exchange<'_>, route: &mut Arc<Route>, exclude: Option<SocketAddr>) -> Result<InFlight, Response<Body>> {
        let mut queued = None;
        let mut activated = false;
        let mut hold_until: Option<tokio::time::Instant> = None;
        // The fast path takes no lock: the waiter is registered only once a pick has failed, and
        // the pick is tried again after registering, so no wake-up is missed.
        let mut waiting = false;
        loop {
            let service = route.service.clone();
            let changed = service.changed.notified();
            tokio::pin!(changed);
            if waiting {
                changed.as_mut().enable();
            }
            if let Some(message) = &route.paused {
                return Err(text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")));
            }
            let settings = &route.settings;
            let (bound, why) = match route.admit(exclude) {
                Ok(in_flight) => {
                    if !in_flight.upstream().retired() {
                        return Ok(in_flight);
                    }
                    // It left the table after this request looked it up: look again.
                    drop(in_flight);
                    match self.table.lookup(ex.host) {
                        Some(r) => *route = r,
                        None => return Err(text(StatusCode::NOT_FOUND, format!("no service is served at `{}`\n", ex.host))),
                    }
                    continue;
                }
                Err(NoPick::Empty) if settings.scale_from_zero && exclude.is_none() => {
                    if !activated {
                        activated = true;
                        service.begin_activation();
                        if let Some(a) = &self.options.activator {
                            a.activate(&service.name);
                        }
                    }
                    (settings.activation_timeout, format!("no instance of `{}` became ready in time", service.name))
                }
                // Every instance is being replaced (or none has passed its checks yet): hold the
                // request as for scale from zero, within the queue's bounds.
                Err(NoPick::Empty) if exclude.is_none() => {
                    (settings.queue_timeout, format!("no instance of `{}` became ready in time", service.name))
                }
                Err(NoPick::Empty) => return Err(busy(format!("no ready instance of `{}`\n", service.name))),
                Err(NoPick::Full) => (settings.queue_timeout, format!("every instance of `{}` is at its concurrency limit", service.name)),
            };
            if !waiting {
                waiting = true;
                continue;
            }
            if queued.is_none() {
                match service.enqueue(settings.queue_depth) {
                    Some(q) => queued = Some(q),
                    None => return Err(busy(format!("`{}` is overloaded: its request queue is full\n", service.name))),
                }
            }
            let until = *hold_until.get_or_insert_with(|| tokio::time::Instant::now() + bound);
            if tokio::time::timeout_at(until.min(ex.deadline), changed).await.is_err() {
                return Err(busy(format!("{why}\n")));
            }
            match self.table.lookup(ex.host) {
                Some(r) => *route = r,
                None => return Err(text(StatusCode::NOT_FOUND, format!("no service is served at `{}`\n", ex.host))),
            }
        }
    }
}

/// Phase respond: the instance's answer with hop-by-hop headers dropped, its body streamed. A
/// `101 Switching Protocols` to an upgrade request joins both connections into a tunnel, which
/// counts as a request in flight until either side closes.
fn respond(
    answer: Answer,
    in_flight: InFlight,
    deadline: tokio::time::Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    fn streamed<B>(resp: Response<B>, in_flight: InFlight, deadline: tokio::time::Instant) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, inner) = resp.into_parts();
        Response::from_parts(parts, Deadlined { inner, _in_flight: in_flight, deadline, timer: None }.boxed())
    }
    match answer {
        Answer::H2(mut resp) => {
            strip_hop_by_hop(resp.headers_mut());
            streamed(resp, in_flight, deadline)
        }
        // The head came without its hop-by-hop fields.
        Answer::H1(head, Reply::Body(body)) => streamed(head.map(|()| body), in_flight, deadline),
        Answer::H1(head, Reply::Tunnel(conn)) => {
            let Some(client) = client_upgrade else {
                return text(StatusCode::BAD_GATEWAY, "the instance switched protocols unasked\n");
            };
            // The head came without its hop-by-hop fields but Upgrade; the switch is announced
            // again on the client's side.
            let (mut parts, ()) = head.into_parts();
            if parts.headers.contains_key(header::UPGRADE) {
                parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            tokio::spawn(async move {
                let _in_flight = in_flight;
                let (mut upstream, early) = conn.into_tunnel();
                match client.await {
                    Ok(c) => {
                        let mut c = TokioIo::new(c);
                        let copied = async {
                            c.write_all(&early).await?;
                            tokio::io::copy_bidirectional(&mut c, &mut upstream).await
                        };
                        if let Err(e) = copied.await {
                            tracing::debug!(error = %e, "tunnel ended with an error");
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade failed"),
                }
            });
            Response::from_parts(parts, empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers an instance would see, for a client at `ip`.
    fn forwarded_from(src: Fields<'_>, ip: [u8; 4], host: &str, scheme: &'static str) -> HeaderMap {
        let client = Peer { ip: std::net::IpAddr::from(ip).to_string(), scheme, from: None };
        let ex = Exchange {
            host,
            client: &client,
            request_id: "rid",
            method: Method::GET,
            version: Version::HTTP_11,
            path: None,
            start: Instant::now(),
            deadline: tokio::time::Instant::now(),
            upstream: None,
            picked: None,
            bytes_in: None,
        };
        let mut out = HeaderMap::new();
        upstream_headers(src, &ex, |n, v| {
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                out.append(n, v);
            }
        });
        out
    }

    /// The same, from a header map and from the raw fields of the same head: both must agree.
    fn forwarded(src: &HeaderMap, ip: [u8; 4], host: &str, scheme: &'static str) -> HeaderMap {
        let from_map = forwarded_from(Fields::Map(src), ip, host, scheme);
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for (n, v) in src {
            // Raw names keep the case clients send.
            head.push_str(&format!("{}: {}\r\n", n.as_str().to_uppercase(), v.to_str().unwrap_or_default()));
        }
        head.push_str("\r\n");
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut fields);
        assert!(matches!(req.parse(head.as_bytes()), Ok(httparse::Status::Complete(_))));
        let from_raw = forwarded_from(Fields::Raw(req.headers), ip, host, scheme);
        assert_eq!(from_map, from_raw);
        from_map
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "5"),
            ("x-private", "1"),
            ("te", "trailers, gzip"),
            ("upgrade", "h2c"),
            ("host", "other"),
            ("x-app", "kept"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = forwarded(&h, [10, 0, 0, 9], "web.localhost", "http");
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "te", "x-app", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id"]);
        assert_eq!(out.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(out.get("host").map(|v| v.as_bytes()), Some(&b"web.localhost"[..]));
        assert_eq!(out.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"10.0.0.9"[..]));
        let mut resp = h.clone();
        strip_hop_by_hop(&mut resp);
        let mut names: Vec<&str> = resp.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-app"]);
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        let out = forwarded(&h, [127, 0, 0, 1], "a", "https");
        assert_eq!(out.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()), Some(&b"1.2.3.4, 5.6.7.8, 127.0.0.1"[..]));
        assert_eq!(out.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(out.get(&X_FORWARDED_PROTO).map(|v| v.as_bytes()), Some(&b"https"[..]));
    }

    #[test]
    fn request_ids_are_128_bit_hex() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        let (a, b) = (new_request_id(&mut a).to_owned(), new_request_id(&mut b));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The proxy: an HTTP/1.1 and HTTP/2 server (h2c with prior knowledge, or h2 over TLS) whose
//! requests pass named phases — route, pick, forward, respond, log — over pooled upstream
//! connections, with WebSocket (Upgrade) tunnels, per-service timeouts, body limits, a
//! concurrency cap with a bounded queue, and requests held while a first instance starts.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use crate::access::{AccessLog, AccessRecord};
use crate::table::{InFlight, NoPick, Route, RoutingTable};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te", "transfer-encoding", "upgrade"];

fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !t.is_empty())
        .collect();
    let keeps_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for h in HOP_BY_HOP.iter().map(|s| s.to_string()).chain(named) {
        headers.remove(h.as_str());
    }
    if keeps_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The request headers an upstream sees.
fn upstream_headers(src: &HeaderMap, peer: SocketAddr, host: &str, request_id: &str, scheme: &str) -> HeaderMap {
    let mut h = src.clone();
    strip_hop_by_hop(&mut h);
    let xff = match src.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    for (name, value) in
        [(&X_FORWARDED_FOR, xff.as_str()), (&X_FORWARDED_PROTO, scheme), (&X_FORWARDED_HOST, host), (&X_REQUEST_ID, request_id)]
    {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name.clone(), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(header::HOST, v);
    }
    h
}

/// Starts instances of services that have none, on the router's request (scale from zero).
pub trait Activator: Send + Sync {
    /// A request for `service` is being held because it has no ready instance. Called once per
    /// held request; the answer comes as a table change.
    fn activate(&self, service: &str);
}

/// Behaviour switches of a router.
#[derive(Clone, Default)]
pub struct RouterOptions {
    /// Answer plain-HTTP requests with a 308 redirect to HTTPS on this port (as clients see it).
    pub redirect_to_https_port: Option<u16>,
    /// Add `Strict-Transport-Security` to HTTPS responses.
    pub hsts: bool,
    /// Asked for an instance when a scale-from-zero service gets a request and has none.
    pub activator: Option<Arc<dyn Activator>>,
    /// Where each request is recorded as a JSON line.
    pub access_log: Option<AccessLog>,
}

pub struct Router {
    table: Arc<RoutingTable>,
    http1: Arc<Pool>,
    h2c: Client<HttpConnector, Body>,
    options: RouterOptions,
}

/// Idle HTTP/1.1 connections to instances, by address. With [`Router::serve_workers`] every
/// worker thread has its own, so a connection is only ever used from the thread that made it.
#[derive(Default)]
struct Pool {
    idle: std::sync::Mutex<std::collections::HashMap<SocketAddr, Vec<hyper::client::conn::http1::SendRequest<Body>>>>,
}

/// Idle connections kept per instance.
const POOL_IDLE_PER_HOST: usize = 256;

impl Pool {
    fn take(&self, addr: SocketAddr) -> Option<hyper::client::conn::http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(s) = list.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: hyper::client::conn::http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(addr).or_default();
        if list.len() < POOL_IDLE_PER_HOST {
            list.push(sender);
        }
    }

    async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Body>, SendError> {
        let stream = connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| SendError::new(&e, true))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends on an idle connection (or a new one when none is idle or the idle one turned out
    /// closed before the request went out). The connection comes back with the response, to be
    /// returned once its body has been read.
    async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, hyper::client::conn::http1::SendRequest<Body>), SendError> {
        while let Some(mut sender) = self.take(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    // Never sent: try another connection.
                    Some(back) => req = back,
                    None => return Err(SendError::new(&e.into_error(), false)),
                },
            }
        }
        let mut sender = Pool::connect(addr).await?;
        let resp = sender.send_request(req).await.map_err(|e| SendError::new(&e, false))?;
        Ok((resp, sender))
    }
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

/// A 503 that tells the client when to try again.
fn busy(msg: String) -> Response<Body> {
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The protocol a request asks to switch to (HTTP/1.1 `Connection: upgrade` + `Upgrade`).
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))));
    if asks && req.version() == Version::HTTP_11 {
        req.headers().get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/grpc"))
}

/// Why forwarding failed.
struct SendError {
    /// Connecting failed: nothing reached the instance.
    connect: bool,
    /// The request body went over the service's limit.
    too_large: bool,
    message: String,
}

impl SendError {
    fn new(e: &(dyn std::error::Error + 'static), connect: bool) -> SendError {
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
}

/// A response body streamed from an instance: the instance counts as busy until it has been
/// sent, and the stream is cut when the request's deadline passes.
struct ResponseBody {
    inner: Incoming,
    _in_flight: InFlight,
    deadline: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The pooled connection it came on, returned once the body has been read to its end.
    conn: Option<Returned>,
}

/// A pooled connection on its way back.
struct Returned {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

/// Returns the connection to its pool, if it has not gone back yet.
fn give_back(conn: &mut Option<Returned>) {
    if let Some(r) = conn.take() {
        r.pool.put(r.addr, r.sender);
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                give_back(&mut this.conn);
                Poll::Ready(None)
            }
            Poll::Ready(frame) => {
                // Servers stop polling once the body says it has ended: return the connection
                // as soon as the last frame is out.
                if this.inner.is_end_stream() {
                    give_back(&mut this.conn);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                // The timer is armed only when the instance keeps the stream waiting.
                let deadline = this.deadline;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err("the response did not finish within the request timeout".into()))),
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

/// What the phases share about one request.
struct Exchange<'a> {
    host: &'a str,
    peer: SocketAddr,
    scheme: &'static str,
    request_id: &'a str,
    deadline: tokio::time::Instant,
    /// The instance the request went to, once picked.
    upstream: Option<SocketAddr>,
}

impl Router {
    pub fn new(table: Arc<RoutingTable>) -> Arc<Router> {
        Router::with_options(table, RouterOptions::default())
    }

    pub fn with_options(table: Arc<RoutingTable>, options: RouterOptions) -> Arc<Router> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http1 = Arc::new(Pool::default());
        let h2c = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).http2_only(true).build(connector);
        Arc::new(Router { table, http1, h2c, options })
    }

    /// Serves `addr` on `workers` threads, each running a single-threaded runtime with a
    /// listener of its own on the same port (`SO_REUSEPORT`, the kernel spreads connections) and
    /// a router — so an upstream pool — of its own: a request and its upstream connection stay
    /// on one thread, with no cross-thread wake-ups (nginx's worker model). With `tls`, serves
    /// HTTPS. Returns the bound address (port 0 picks one).
    pub fn serve_workers(
        table: Arc<RoutingTable>,
        options: RouterOptions,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        workers: usize,
    ) -> std::io::Result<SocketAddr> {
        let mut bound = addr;
        for i in 0..workers.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let (table, options, tls) = (table.clone(), options.clone(), tls.clone());
            std::thread::Builder::new().name(format!("berth-router-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match reuseport_listener(bound) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(listener.local_addr());
                    let router = Router::with_options(table, options);
                    let served = match tls {
                        Some(config) => router.serve_tls(listener, config).await,
                        None => router.serve(listener).await,
                    };
                    if let Err(e) = served {
                        tracing::error!(error = %e, "a router worker stopped");
                    }
                });
            })?;
            bound = rx.recv().map_err(|_| std::io::Error::other("a router worker died while starting"))??;
        }
        Ok(bound)
    }

    /// Serves plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge) from `listener` until the
    /// task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().connection(stream, peer, "http"));
        }
    }

    /// Serves HTTPS from `listener`: TLS with certificates by SNI, HTTP/2 or HTTP/1.1 by ALPN.
    pub async fn serve_tls(self: Arc<Self>, listener: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (this, acceptor) = (self.clone(), acceptor.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(tls) => this.connection(tls, peer, "https").await,
                    Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                }
            });
        }
    }

    async fn connection<I>(self: Arc<Self>, io: I, peer: SocketAddr, scheme: &'static str)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| {
            let this = self.clone();
            async move { Ok::<_, Infallible>(this.handle(req, peer, scheme).await) }
        });
        let builder = auto::Builder::new(TokioExecutor::new());
        if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }

    /// One request through the phases.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr, scheme: &'static str) -> Response<Body> {
        let start = Instant::now();
        // Phase: route.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some(route) = self.table.lookup(&host) else {
            return text(StatusCode::NOT_FOUND, format!("no service is served at `{host}`\n"));
        };
        if let (Some(port), "http") = (self.options.redirect_to_https_port, scheme) {
            return redirect(&host, port, req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        }
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()));
        let method = req.method().clone();
        let version = req.version();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let mut ex = Exchange {
            host: &host,
            peer,
            scheme,
            request_id: &request_id,
            deadline: tokio::time::Instant::from_std(start + route.settings.request_timeout),
            upstream: None,
        };
        let mut resp = match &route.paused {
            Some(message) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")),
            None => self.forward(&mut ex, route.clone(), req).await,
        };
        if self.options.hsts && scheme == "https" {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
        }
        // Phase: log.
        let status = resp.status().as_u16();
        let elapsed = start.elapsed();
        route.service.stats.response(status, elapsed);
        if let Some(log) = &self.options.access_log {
            log.record(&AccessRecord {
                ts: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                service: &route.service.name,
                host: &host,
                method: method.as_str(),
                path: &path,
                protocol: match version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
                status,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream: ex.upstream.map(|a| a.to_string()),
                request_id: &request_id,
                client: peer.ip().to_string(),
            });
        }
        resp
    }

    /// Phases pick, forward and respond. A request whose body is empty is retried once on another
    /// instance when connecting failed; one with a body is never retried.
    async fn forward(&self, ex: &mut Exchange<'_>, mut route: Arc<Route>, mut req: Request<Incoming>) -> Response<Body> {
        let settings = route.settings.clone();
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > settings.max_body_bytes) {
            return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {} bytes\n", settings.max_body_bytes));
        }
        let upgrade = upgrade_protocol(&req);
        let mut client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let h2c = settings.h2c || is_grpc(req.headers());
        let (parts, body) = req.into_parts();
        let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        let empty_request = body.is_end_stream();
        let limit = usize::try_from(settings.max_body_bytes).unwrap_or(usize::MAX);
        let mut body = Some(Limited::new(body, limit).boxed());
        let mut failed = None;
        for _attempt in 0..2 {
            // Phase: pick.
            let in_flight = match self.acquire(ex, &mut route, failed).await {
                Ok(g) => g,
                Err(resp) => return resp,
            };
            let upstream = in_flight.upstream().clone();
            ex.upstream = Some(upstream.addr);
            let b = if empty_request {
                empty()
            } else {
                match body.take() {
                    Some(b) => b,
                    None => break,
                }
            };
            // Built per attempt: a retry is rare, and cheaper than cloning every time.
            let mut headers = upstream_headers(&parts.headers, ex.peer, ex.host, ex.request_id, ex.scheme);
            if let Some(proto) = &upgrade {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto.clone());
            }
            // HTTP/2 needs the authority in the URI; HTTP/1.1 connections of our own send the
            // origin form (`/path?query`, with the Host header), as origin servers expect.
            let uri = if h2c {
                hyper::Uri::builder()
                    .scheme(hyper::http::uri::Scheme::HTTP)
                    .authority(upstream.authority.clone())
                    .path_and_query(path_and_query.clone())
                    .build()
            } else {
                hyper::Uri::builder().path_and_query(path_and_query.clone()).build()
            };
            let Ok(uri) = uri else { return text(StatusCode::BAD_REQUEST, "invalid request target\n") };
            let mut up = Request::new(b);
            *up.method_mut() = parts.method.clone();
            *up.version_mut() = if h2c { Version::HTTP_2 } else { Version::HTTP_11 };
            *up.headers_mut() = headers;
            *up.uri_mut() = uri;
            let addr = upstream.addr;
            // Phase: forward.
            type Sent = Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Option<Returned>), SendError>> + Send>>;
            let sent: Sent = if upgrade.is_some() {
                Box::pin(async move { send_upgrade(addr, up).await.map(|r| (r, None)) })
            } else if h2c {
                let fut = self.h2c.request(up);
                Box::pin(async move { fut.await.map(|r| (r, None)).map_err(|e| SendError::new(&e, e.is_connect())) })
            } else {
                let pool = self.http1.clone();
                Box::pin(async move { pool.send(addr, up).await.map(|(r, s)| (r, Some(Returned { pool, addr, sender: s }))) })
            };
            match tokio::time::timeout_at(ex.deadline, sent).await {
                Ok(Ok((resp, conn))) => return respond(resp, in_flight, ex.deadline, client_upgrade.take(), conn),
                Err(_) => {
                    return text(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("the instance did not answer within the request timeout ({:?})\n", settings.request_timeout),
                    )
                }
                Ok(Err(e)) if e.connect && empty_request => {
                    tracing::warn!(upstream = %addr, error = %e.message, "connecting failed, retrying on another instance");
                    failed = Some(addr);
                }
                Ok(Err(e)) if e.too_large => {
                    return text(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is over {} bytes\n", settings.max_body_bytes))
                }
                Ok(Err(e)) => {
                    tracing::warn!(upstream = %addr, error = %e.message, "upstream failed");
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
            let (bound, why) = match route.pick(exclude) {
                Ok(u) => {
                    let in_flight = u.begin();
                    if !u.retired() {
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

/// A listener on `addr` that other workers may share (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// A TCP connection to an instance (no Nagle), given up after 2 s.
async fn connect(addr: SocketAddr) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::new(&e, true)),
        Err(e) => return Err(SendError::new(&e, true)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Forwards an upgrade request on a connection of its own, which becomes the tunnel.
async fn send_upgrade(addr: SocketAddr, req: Request<Body>) -> Result<Response<Incoming>, SendError> {
    let stream = connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| SendError::new(&e, false))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
        }
    });
    sender.send_request(req).await.map_err(|e| SendError::new(&e, false))
}

/// Phase respond: the instance's answer with hop-by-hop headers dropped, its body streamed. A
/// `101 Switching Protocols` to an upgrade request joins both connections into a tunnel, which
/// counts as a request in flight until either side closes.
fn respond(
    mut resp: Response<Incoming>,
    in_flight: InFlight,
    deadline: tokio::time::Instant,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    conn: Option<Returned>,
) -> Response<Body> {
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (resp.status(), client_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        let (mut parts, _) = resp.into_parts();
        let proto = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(p) = proto {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, p);
        }
        tokio::spawn(async move {
            match tokio::try_join!(client, upstream) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "tunnel ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
            drop(in_flight);
        });
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // A body that is empty from the start is done already: the connection can go back now.
    let mut conn = conn;
    if body.is_end_stream() {
        give_back(&mut conn);
    }
    Response::from_parts(parts, ResponseBody { inner: body, _in_flight: in_flight, deadline, timer: None, conn }.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "5"),
            ("x-private", "1"),
            ("te", "trailers, gzip"),
            ("upgrade", "h2c"),
            ("x-app", "kept"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = upstream_headers(&h, SocketAddr::from(([10, 0, 0, 9], 5555)), "web.localhost", "rid", "http");
        let mut names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "te", "x-app", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id"]);
        assert_eq!(out.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert_eq!(out.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"10.0.0.9"[..]));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        let out = upstream_headers(&h, SocketAddr::from(([127, 0, 0, 1], 1)), "a", "r", "https");
        assert_eq!(out.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()), Some(&b"1.2.3.4, 127.0.0.1"[..]));
    }
}

//! The proxy: an HTTP/1.1 and HTTP/2 (h2c) server whose requests pass named phases —
//! route, pick, forward, respond, log — over pooled upstream connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::table::{Route, RoutingTable};

pub type Body = BoxBody<Bytes, hyper::Error>;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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

/// Behaviour switches of a router.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouterOptions {
    /// Answer plain-HTTP requests with a 308 redirect to HTTPS on this port (as clients see it).
    pub redirect_to_https_port: Option<u16>,
    /// Add `Strict-Transport-Security` to HTTPS responses.
    pub hsts: bool,
}

pub struct Router {
    table: Arc<RoutingTable>,
    client: Client<HttpConnector, Body>,
    options: RouterOptions,
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

impl Router {
    pub fn new(table: Arc<RoutingTable>) -> Arc<Router> {
        Router::with_options(table, RouterOptions::default())
    }

    pub fn with_options(table: Arc<RoutingTable>, options: RouterOptions) -> Arc<Router> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).pool_max_idle_per_host(256).build(connector);
        Arc::new(Router { table, client, options })
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
        if let Err(e) = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service).await {
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
        let (parts, body) = req.into_parts();
        let headers = upstream_headers(&parts.headers, peer, &host, &request_id, scheme);
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let mut resp = self.forward(&route, &parts.method, &path, headers, body).await;
        if self.options.hsts && scheme == "https" {
            resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
        }
        // Phase: log. (At debug level until the router has its own access log.)
        tracing::debug!(
            service = %route.service,
            method = %parts.method,
            path = %path,
            status = resp.status().as_u16(),
            request_id = %request_id,
            micros = start.elapsed().as_micros() as u64,
            "request"
        );
        resp
    }

    /// Phases pick, forward and respond. A request whose body is empty is retried once on another
    /// instance when connecting failed; one with a body is never retried.
    async fn forward(&self, route: &Route, method: &hyper::Method, path: &str, headers: HeaderMap, body: Incoming) -> Response<Body> {
        let empty = body.is_end_stream();
        let mut body = Some(body);
        let mut failed = None;
        for _attempt in 0..2 {
            // Phase: pick.
            let Some(upstream) = route.pick(failed) else { break };
            let in_flight = upstream.begin();
            let b: Body = if empty {
                Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
            } else {
                match body.take() {
                    Some(b) => b.boxed(),
                    None => break,
                }
            };
            let mut up = Request::new(b);
            *up.method_mut() = method.clone();
            *up.version_mut() = Version::HTTP_11;
            *up.headers_mut() = headers.clone();
            match format!("http://{}{path}", upstream.addr).parse() {
                Ok(uri) => *up.uri_mut() = uri,
                Err(_) => return text(StatusCode::BAD_REQUEST, "invalid request target\n"),
            }
            // Phase: forward.
            match self.client.request(up).await {
                Ok(resp) => {
                    // Phase: respond. The instance counts as busy until the body has been sent.
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = body
                        .map_frame(move |f| {
                            let _ = &in_flight;
                            f
                        })
                        .boxed();
                    return Response::from_parts(parts, body);
                }
                Err(e) if e.is_connect() && empty => {
                    tracing::warn!(upstream = %upstream.addr, error = %e, "connecting failed, retrying on another instance");
                    failed = Some(upstream.addr);
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.addr, error = %e, "upstream failed");
                    return text(StatusCode::BAD_GATEWAY, "the instance failed to answer\n");
                }
            }
        }
        text(StatusCode::SERVICE_UNAVAILABLE, format!("no ready instance of `{}`\n", route.service))
    }
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

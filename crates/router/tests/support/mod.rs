//! Backends for the router's tests: plain hyper servers on loopback, no containers.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use berth_router::{Router, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

/// Serves `handler` on a loopback port (HTTP/1.1 with upgrades, and h2c).
pub async fn serve<F, Fut>(handler: F) -> Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve_on(listener, handler));
    Ok(addr)
}

pub async fn serve_on<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    while let Ok((stream, _)) = listener.accept().await {
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A backend that answers with its name.
pub async fn named(name: &'static str) -> Result<SocketAddr> {
    serve(move |_req| async move { Response::new(full(name)) }).await
}

pub async fn start_router(table: Arc<RoutingTable>, options: RouterOptions) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(Router::with_options(table, options).serve(listener));
    Ok(addr)
}

/// curl `url` through `router` (as `--connect-to`), returning (exit code, status, body, headers).
pub async fn curl(router: SocketAddr, url: &str, extra: &[&str]) -> Result<(i32, u16, String, String)> {
    let dir = tempfile::tempdir()?;
    let headers = dir.path().join("headers");
    let host = url.split("://").nth(1).and_then(|r| r.split(['/', ':']).next()).unwrap_or("").to_owned();
    let port = if url.starts_with("https") { 443 } else { 80 };
    let port = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or(port.to_string());
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}", "--max-time", "20", "--connect-to"])
        .arg(format!("{host}:{port}:{}:{}", router.ip(), router.port()))
        .args(extra)
        .arg(url);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let headers = std::fs::read_to_string(&headers).unwrap_or_default();
    Ok((out.status.code().unwrap_or(-1), code.parse().unwrap_or(0), body.to_owned(), headers))
}

/// The value of header `name` in a raw header block.
pub fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

//! The router over real sockets, driven by curl: Host routing, load balancing across instances,
//! forwarded headers, a retry past a dead instance, no retry once a body was sent, atomic table
//! replacement, HTTP/2 with prior knowledge.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use berth_router::{RouteSpec, Router, RoutingTable};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A backend that answers with its name and the headers the router added.
async fn backend(name: &'static str) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
                    let body = format!(
                        "backend={name} path={} host={} xff={} xfp={} xfh={} rid={} conn={}",
                        req.uri().path(),
                        h("host"),
                        h("x-forwarded-for"),
                        h("x-forwarded-proto"),
                        h("x-forwarded-host"),
                        h("x-request-id"),
                        h("x-private")
                    );
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// An address nothing listens on.
async fn dead() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

async fn start_router(table: Arc<RoutingTable>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(Router::new(table).serve(listener));
    Ok(addr)
}

/// curl through the router with a Host header; returns (status, body).
async fn curl(router: SocketAddr, host: &str, extra: &[&str]) -> Result<(u16, String)> {
    let (router, host, extra) = (router.to_string(), host.to_owned(), extra.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-H", &format!("Host: {host}")])
            .args(&extra)
            .arg(format!("http://{router}/hello"))
            .output()
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').ok_or("no status")?;
    Ok((code.parse()?, body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_balances_retries_and_swaps() -> Result {
    let (a1, a2, b1, down) = (backend("a1").await?, backend("a2").await?, backend("b1").await?, dead().await?);
    let table = Arc::new(RoutingTable::new());
    table.replace(&[
        RouteSpec::new("a.localhost", "a", vec![a1, a2]),
        RouteSpec::new("b.localhost", "b", vec![b1]),
        RouteSpec::new("flaky.localhost", "flaky", vec![down, b1]),
        RouteSpec::new("gone.localhost", "gone", vec![down]),
    ]);
    let router = start_router(table.clone()).await?;

    // Host routing, and the headers the instance sees.
    let (status, body) =
        curl(router, "b.localhost:8080", &["-H", "Connection: x-private", "-H", "X-Private: secret", "-H", "X-Request-Id: abc"]).await?;
    assert_eq!(status, 200);
    assert_eq!(body, "backend=b1 path=/hello host=b.localhost:8080 xff=127.0.0.1 xfp=http xfh=b.localhost:8080 rid=abc conn=-");
    let (status, body) = curl(router, "nothing.localhost", &[]).await?;
    assert_eq!((status, body.as_str()), (404, "no service is served at `nothing.localhost`\n"));

    // Both instances of a get requests.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        let (status, body) = curl(router, "a.localhost", &[]).await?;
        assert_eq!(status, 200);
        seen.insert(body.split_whitespace().next().unwrap_or("").to_owned());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // A dead instance costs a retry, not a failure; a request with a body is not retried.
    for _ in 0..20 {
        assert_eq!(curl(router, "flaky.localhost", &[]).await?.0, 200);
    }
    assert_eq!(curl(router, "gone.localhost", &[]).await?.0, 503);
    assert_eq!(curl(router, "gone.localhost", &["--data", "payload"]).await?.0, 502);

    // HTTP/2 with prior knowledge (h2c).
    let (status, body) = curl(router, "b.localhost", &["--http2-prior-knowledge"]).await?;
    assert_eq!(status, 200);
    assert!(body.starts_with("backend=b1"), "{body}");

    // The table is replaced at once: new requests go to the new instances.
    table.replace(&[RouteSpec::new("a.localhost", "a", vec![b1])]);
    for _ in 0..5 {
        assert!(curl(router, "a.localhost", &[]).await?.1.starts_with("backend=b1"));
    }
    assert_eq!(curl(router, "b.localhost", &[]).await?.0, 404);
    Ok(())
}

/// An instance that answers `/warm` on a keep-alive connection and, at `/boom`, dies: it closes
/// the connection without answering and stops listening (an OOM kill in the middle of a request).
async fn doomed() -> Result<SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let (died, mut dead) = tokio::sync::mpsc::channel::<()>(1);
        loop {
            let (mut stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => return },
                _ = dead.recv() => return,
            };
            let died = died.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        if head.starts_with("GET /boom") {
                            let _ = died.send(()).await;
                            return;
                        }
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nwarm").await;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// A request that kills the instance it reached is not sent to another (a query of death would
/// take the whole service down): the client gets a 502, the other instance never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_kills_its_instance_is_not_retried_elsewhere() -> Result {
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let healthy = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        if req.uri().path() == "/boom" {
                            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("healthy")))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        addr
    };
    let table = Arc::new(RoutingTable::new());
    let router = start_router(table.clone()).await?;
    let get = |path: &'static str| async move {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: q.localhost"])
                .arg(format!("http://{router}{path}"))
                .output()
        })
        .await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The two instances are picked at random: try until the request of death reaches the doomed one.
    for _ in 0..20 {
        let doomed = doomed().await?;
        table.replace(&[RouteSpec::new("q.localhost", "q", vec![doomed])]);
        assert_eq!(get("/warm").await?, "200", "the router keeps this connection to the doomed instance");
        table.replace(&[RouteSpec::new("q.localhost", "q", vec![doomed, healthy])]);
        let before = seen.load(std::sync::atomic::Ordering::SeqCst);
        let status = get("/boom").await?;
        if status == "502" {
            assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), before, "the request of death was retried on the healthy instance");
            return Ok(());
        }
        assert_eq!(status, "200");
    }
    Err("the request of death never reached the doomed instance alone: it was retried elsewhere".into())
}

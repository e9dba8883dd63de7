//! Protocols through the router over real sockets: a WebSocket echo both ways, an HTTP/2 stream
//! with trailers as gRPC sends them (streamed, not buffered), curl over HTTP/1.1, h2c and h2, the
//! request timeout and the body limit.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_router::tls::{server_config, LocalCa, OnDemandCerts};
use berth_router::{RouteSettings, RouteSpec, Router, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{curl, full, serve, start_router, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// RFC 6455's example key and the accept value that belongs to it.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A text frame; clients mask theirs.
fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x81];
    let len = payload.len();
    let masked = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        f.push(masked | len as u8);
    } else {
        f.push(masked | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    match mask {
        Some(m) => {
            f.extend_from_slice(&m);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await?;
    let mut len = (head[1] & 0x7f) as usize;
    if len == 126 {
        let mut ext = [0u8; 2];
        r.read_exact(&mut ext).await?;
        len = u16::from_be_bytes(ext) as usize;
    }
    let mask = if head[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Ok(payload)
}

/// A WebSocket server: greets first, then echoes every frame back with a prefix.
async fn websocket_backend() -> Result<std::net::SocketAddr> {
    serve(|mut req: Request<hyper::body::Incoming>| async move {
        if req.headers().get("sec-websocket-key").and_then(|v| v.to_str().ok()) != Some(WS_KEY) {
            let mut r = Response::new(full("not a websocket request"));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(io) = upgrade.await else { return };
            let mut io = TokioIo::new(io);
            let _ = io.write_all(&frame(b"hello from the server", None)).await;
            while let Ok(msg) = read_frame(&mut io).await {
                let reply = [b"echo: ".as_slice(), &msg].concat();
                if io.write_all(&frame(&reply, None)).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header("sec-websocket-accept", WS_ACCEPT)
            .body(full(""))
            .unwrap_or_default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_both_ways() -> Result {
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("ws.localhost", "ws", vec![websocket_backend().await?])]);
    let router = start_router(table.clone(), RouterOptions::default()).await?;
    let mut io = TcpStream::connect(router).await?;
    let hello = format!(
        "GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    io.write_all(hello.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        io.read_exact(&mut b).await?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(support::header(&head, "sec-websocket-accept"), Some(WS_ACCEPT));
    assert_eq!(support::header(&head, "upgrade"), Some("websocket"));
    // Server to client, unprompted.
    assert_eq!(read_frame(&mut io).await?, b"hello from the server");
    // Client to server and back, several times on the one tunnel.
    for i in 0..5 {
        let msg = format!("message {i} {}", "x".repeat(i * 60));
        io.write_all(&frame(msg.as_bytes(), Some([1, 2, 3, 4]))).await?;
        assert_eq!(read_frame(&mut io).await?, format!("echo: {msg}").as_bytes());
    }
    // The open tunnel counts as a request in flight; closing it ends that.
    let ws = table.services().remove(0);
    assert_eq!(ws.in_flight(), 1);
    drop(io);
    for _ in 0..100 {
        if ws.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ws.in_flight(), 0);
    Ok(())
}

/// A gRPC-like backend over h2c: one message, then waits for `go` before the second message and
/// the trailers.
async fn trailers_backend(go: Arc<tokio::sync::Notify>) -> Result<std::net::SocketAddr> {
    serve(move |req: Request<hyper::body::Incoming>| {
        let go = go.clone();
        async move {
            let version = format!("{:?}", req.version());
            let (tx, rx) = tokio::sync::mpsc::channel::<std::result::Result<Frame<Bytes>, std::convert::Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from(format!("first over {version};"))))).await;
                go.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"second")))).await;
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                trailers.insert("grpc-message", hyper::header::HeaderValue::from_static("done"));
                let _ = tx.send(Ok(Frame::trailers(trailers))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
            Response::builder().header(header::CONTENT_TYPE, "application/grpc").body(StreamBody::new(stream).boxed()).unwrap_or_default()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_stream_with_trailers() -> Result {
    let go = Arc::new(tokio::sync::Notify::new());
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("grpc.localhost", "grpc", vec![trailers_backend(go.clone()).await?])]);
    let router = start_router(table, RouterOptions::default()).await?;
    let io = TokioIo::new(TcpStream::connect(router).await?);
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("http://grpc.localhost/echo.Echo/Say")
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .body(http_body_util::Full::new(Bytes::from_static(b"\0\0\0\0\0")))?;
    let resp = sender.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first message arrives while the backend is still holding the rest: streamed.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await?.ok_or("no frame")??;
    assert_eq!(first.into_data().ok().as_deref(), Some(&b"first over HTTP/2.0;"[..]), "the backend was reached over h2c");
    go.notify_one();
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = body.frame().await {
        let f = f?;
        if f.is_trailers() {
            trailers = f.into_trailers().ok();
        } else if let Ok(d) = f.into_data() {
            data.extend_from_slice(&d);
        }
    }
    assert_eq!(data, b"second");
    let trailers = trailers.ok_or("no trailers")?;
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert_eq!(trailers.get("grpc-message").map(|v| v.as_bytes()), Some(&b"done"[..]));
    Ok(())
}

/// A backend that reports the request's protocol and body size, sleeps on `/slow`, and stalls in
/// the middle of the body on `/stall`.
async fn misc_backend() -> Result<std::net::SocketAddr> {
    serve(|req: Request<hyper::body::Incoming>| async move {
        let path = req.uri().path().to_owned();
        let version = format!("{:?}", req.version());
        match path.as_str() {
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Response::new(full("late"))
            }
            "/stall" => {
                let stream = futures_util::stream::unfold(0u8, |n| async move {
                    match n {
                        0 => Some((Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"partial"))), 1)),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            None
                        }
                    }
                });
                Response::new(StreamBody::new(stream).boxed())
            }
            _ => {
                let size = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
                Response::new(full(format!("upstream saw {version} with {size} bytes")))
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_protocols_timeout_and_body_limit() -> Result {
    let backend = misc_backend().await?;
    let table = Arc::new(RoutingTable::new());
    let settings = RouteSettings { request_timeout: Duration::from_millis(700), max_body_bytes: 1000, ..RouteSettings::default() };
    table.replace(&[RouteSpec { settings, ..RouteSpec::new("misc.localhost", "misc", vec![backend]) }]);

    // TLS with the local CA, next to plain HTTP.
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::load_or_create(dir.path(), &["localhost".to_owned()])?;
    let config = server_config(Arc::new(OnDemandCerts::new(ca, vec![".localhost".into()])))?;
    let router = Router::with_options(table.clone(), RouterOptions::default());
    let tls = TcpListener::bind("127.0.0.1:0").await?;
    let tls_addr = tls.local_addr()?;
    tokio::spawn(router.clone().serve_tls(tls, config));
    let plain = start_router(table.clone(), RouterOptions::default()).await?;
    let cacert = dir.path().join("ca.pem").display().to_string();

    let (_, status, body, _) = curl(plain, "http://misc.localhost/", &["--http1.1"]).await?;
    assert_eq!((status, body.as_str()), (200, "upstream saw HTTP/1.1 with 0 bytes"));
    let (_, status, _, headers) = curl(plain, "http://misc.localhost/", &["--http2-prior-knowledge"]).await?;
    assert_eq!(status, 200);
    assert!(headers.starts_with("HTTP/2 200"), "{headers}");
    let (_, status, _, headers) = curl(tls_addr, "https://misc.localhost/", &["--http2", "--cacert", &cacert]).await?;
    assert_eq!(status, 200);
    assert!(headers.starts_with("HTTP/2 200"), "{headers}");
    let (_, status, _, headers) = curl(tls_addr, "https://misc.localhost/", &["--http1.1", "--cacert", &cacert]).await?;
    assert_eq!(status, 200);
    assert!(headers.starts_with("HTTP/1.1 200"), "{headers}");

    // Bodies up to the limit pass; a declared larger one is refused before it is sent, a
    // streamed (chunked) one as soon as it goes over.
    let small = dir.path().join("small");
    std::fs::write(&small, vec![b'a'; 1000])?;
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'a'; 5000])?;
    let (_, status, body, _) = curl(plain, "http://misc.localhost/", &["--data-binary", &format!("@{}", small.display())]).await?;
    assert_eq!((status, body.as_str()), (200, "upstream saw HTTP/1.1 with 1000 bytes"));
    let (_, status, body, _) = curl(plain, "http://misc.localhost/", &["--data-binary", &format!("@{}", big.display())]).await?;
    assert_eq!((status, body.as_str()), (413, "the request body is over 1000 bytes\n"));
    let chunked = ["-H", "Transfer-Encoding: chunked", "--data-binary"];
    let (_, status, _, _) = curl(plain, "http://misc.localhost/", &[&chunked[..], &[&format!("@{}", big.display())]].concat()).await?;
    assert_eq!(status, 413);

    // The request timeout: a late head is a 504; a stalled body is cut.
    let (_, status, body, _) = curl(plain, "http://misc.localhost/slow", &[]).await?;
    assert_eq!((status, body.as_str()), (504, "the instance did not answer within the request timeout (700ms)\n"));
    let (code, status, body, _) = curl(plain, "http://misc.localhost/stall", &["--http1.1"]).await?;
    assert_eq!((status, body.as_str()), (200, "partial"));
    // curl gives up by itself after 20 s (exit 28); the router cuts the stream long before.
    assert!(code != 0 && code != 28, "curl exit {code}: the router should have cut the stream");
    Ok(())
}

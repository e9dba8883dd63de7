//! Bodies both ways at once: an instance that streams its answer while it still reads the
//! request (an echo) works through the router over HTTP/1.1 and HTTP/2, chunk by chunk — each
//! chunk is echoed back before the next is sent, so a router that sent the whole request before
//! reading the answer would deadlock here. A client that goes away ends the upstream exchange.
//! The access log records each exchange when it ends: outcome, bytes each way, total duration.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_router::{AccessLog, RouteSpec, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use support::*;

/// An HTTP/1.1 backend that echoes the request body as it arrives.
async fn echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(req.into_body()))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

/// A request body fed chunk by chunk from a channel.
struct Fed(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Fed {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Sends `chunks` chunks of `size` bytes through the router, each only after the echo of the one
/// before came back; returns the bytes echoed.
async fn ping_pong(router: SocketAddr, h2: bool, chunks: usize, size: usize) -> Result<usize> {
    let io = TokioIo::new(TcpStream::connect(router).await?);
    let (tx, rx) = mpsc::channel(1);
    let req = Request::post("http://echo.localhost/").header("host", "echo.localhost").body(Fed(rx))?;
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        // The head goes out with the first chunk.
        tx.send(Bytes::from(vec![b'a'; size])).await?;
        let resp = send.send_request(req);
        resp.await?
    };
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = 0;
    let mut sent = if h2 { 0 } else { 1 };
    if h2 {
        tx.send(Bytes::from(vec![b'a'; size])).await?;
        sent = 1;
    }
    while echoed < chunks * size {
        let frame = body.frame().await.ok_or("the echo ended early")??;
        if let Ok(data) = frame.into_data() {
            echoed += data.len();
        }
        if echoed >= sent * size && sent < chunks {
            tx.send(Bytes::from(vec![b'a' + (sent % 26) as u8; size])).await?;
            sent += 1;
        }
    }
    drop(tx);
    // The request has ended: so does the echo.
    while let Some(frame) = body.frame().await {
        echoed += frame?.into_data().map_or(0, |d| d.len());
    }
    Ok(echoed)
}

/// The access log's records, once `n` have been written.
async fn records(path: &std::path::Path, n: usize) -> Result<Vec<serde_json::Value>> {
    for _ in 0..100 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(serde_json::from_str).collect::<std::result::Result<_, _>>()?;
        if lines.len() >= n {
            return Ok(lines);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the access log did not get {n} records").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_flow_both_ways_at_once() -> Result {
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("echo.localhost", "echo", vec![echo().await?])]);
    let router = start_router(table, RouterOptions { access_log: Some(AccessLog::open(&log)?), ..RouterOptions::default() }).await?;
    for h2 in [false, true] {
        let echoed = tokio::time::timeout(Duration::from_secs(30), ping_pong(router, h2, 64, 64 << 10))
            .await
            .map_err(|_| format!("full-duplex echo over {} stalled", if h2 { "HTTP/2" } else { "HTTP/1.1" }))??;
        assert_eq!(echoed, 64 * (64 << 10));
    }
    for r in records(&log, 2).await? {
        assert_eq!(
            (r["outcome"].as_str(), r["bytes_in"].as_u64(), r["bytes_out"].as_u64()),
            (Some("ok"), Some(4 << 20), Some(4 << 20)),
            "{r}"
        );
        assert!(r["duration_ms"].as_f64() >= r["ttfb_ms"].as_f64(), "{r}");
    }
    Ok(())
}

/// A backend that reads a request and never answers; reports when its connection closes.
async fn silent(closed: mpsc::Sender<()>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = closed.send(()).await;
            });
        }
    });
    Ok(addr)
}

/// A client that goes away while the instance works ends the exchange with the instance at once,
/// for a request without a body (the router's own HTTP/1.1 loop) and one with a body (hyper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_ends_the_upstream_exchange() -> Result {
    use tokio::io::AsyncWriteExt;
    let (closed_tx, mut closed) = mpsc::channel(4);
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("slow.localhost", "slow", vec![silent(closed_tx).await?])]);
    let router = start_router(table, RouterOptions::default()).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("access.log");
    let streaming = serve(|_req| async { Response::new(http_body_util::StreamBody::new(futures_util::stream::pending()).boxed()) }).await?;
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("stream.localhost", "stream", vec![streaming])]);
    let logged = start_router(table, RouterOptions { access_log: Some(AccessLog::open(&log)?), ..RouterOptions::default() }).await?;
    for request in [
        "GET / HTTP/1.1\r\nHost: slow.localhost\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: slow.localhost\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: slow.localhost\r\nContent-Length: 50\r\n\r\npartial",
    ] {
        let mut client = TcpStream::connect(router).await?;
        client.write_all(request.as_bytes()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .map_err(|_| format!("the instance's connection stayed open after the client left: {request:?}"))?;
    }
    // A client that leaves in the middle of an answer is logged as gone, not as a 200 served.
    let mut client = TcpStream::connect(logged).await?;
    client.write_all(b"GET /events HTTP/1.1\r\nHost: stream.localhost\r\n\r\n").await?;
    let mut head = [0u8; 64];
    let _ = client.read(&mut head).await?;
    drop(client);
    let r = records(&log, 1).await?.remove(0);
    assert_eq!((r["status"].as_u64(), r["outcome"].as_str(), r["path"].as_str()), (Some(200), Some("client_gone"), Some("/events")), "{r}");
    Ok(())
}

//! The router's own HTTP/1.1 loop over a raw socket: pipelined requests answered in order, HEAD,
//! lengths and chunked answers, a Date on every answer, and a connection handed to hyper at the
//! first request the loop leaves to it (a body, HTTP/1.0, an unknown host), which keeps serving.

mod support;

use std::sync::Arc;

use berth_router::{RouteSpec, RouterOptions, RoutingTable};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use support::{full, header, serve, start_router, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off `stream`: (status, head, body). `buf` keeps what belongs to the next.
async fn response(stream: &mut TcpStream, buf: &mut Vec<u8>, head_request: bool) -> Result<(u16, String, Vec<u8>)> {
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut chunk)).await??;
        if n == 0 {
            return Err("the router closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut body = Vec::new();
    if head_request {
        return Ok((status, head, body));
    }
    if let Some(n) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < n {
            fill(stream, buf).await?;
        }
        body = buf.drain(..n).collect();
    } else if header(&head, "transfer-encoding") == Some("chunked") {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(stream, buf).await?;
            };
            let size = usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16)?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    }
    Ok((status, head, body))
}

async fn backend() -> Result<std::net::SocketAddr> {
    serve(|req| async move {
        match req.uri().path() {
            // No length: the instance answers chunked, and so must the router.
            "/chunked" => {
                let frames = futures_util::stream::iter(
                    ["one ", "two ", "three"].map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(s.as_bytes())))),
                );
                Response::new(StreamBody::new(frames).boxed())
            }
            "/echo" => {
                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                Response::new(full(body))
            }
            _ => Response::new(full("hello")),
        }
    })
    .await
}

/// A router serving `web.localhost` from [`backend`].
async fn router_with(options: RouterOptions) -> Result<std::net::SocketAddr> {
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![backend().await?])]);
    start_router(table, options).await
}

async fn router() -> Result<std::net::SocketAddr> {
    router_with(RouterOptions::default()).await
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_lengths_chunks_and_dates() -> Result {
    let mut stream = TcpStream::connect(router().await?).await?;
    stream
        .write_all(
            b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n\
              HEAD / HTTP/1.1\r\nHost: web.localhost\r\nConnection: keep-alive\r\n\r\n\
              GET /chunked HTTP/1.1\r\nhost: WEB.localhost:80\r\n\r\n\
              HEAD /chunked HTTP/1.1\r\nHost: web.localhost\r\n\r\n",
        )
        .await?;
    let mut buf = Vec::new();
    let (status, head, body) = response(&mut stream, &mut buf, false).await?;
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "{head}");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("5"));
    assert!(header(&head, "date").is_some_and(|d| d.ends_with(" GMT")), "{head}");
    let (status, head, _) = response(&mut stream, &mut buf, true).await?;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-length"), Some("5"), "a HEAD answer keeps the length: {head}");
    let (status, head, body) = response(&mut stream, &mut buf, false).await?;
    assert_eq!((status, body.as_slice()), (200, &b"one two three"[..]), "{head}");
    assert_eq!(header(&head, "transfer-encoding"), Some("chunked"));
    let (status, head, _) = response(&mut stream, &mut buf, true).await?;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-length"), None, "no length is made up for HEAD: {head}");
    assert!(buf.is_empty(), "nothing follows the last answer: {:?}", String::from_utf8_lossy(&buf));
    Ok(())
}

#[tokio::test]
async fn a_connection_goes_to_hyper_at_a_request_with_a_body_and_keeps_serving() -> Result {
    let router = router().await?;
    let mut stream = TcpStream::connect(router).await?;
    let mut buf = Vec::new();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n").await?;
    assert_eq!(response(&mut stream, &mut buf, false).await?.2, b"hello");
    // A body: from here on hyper serves the connection, the bytes already read included.
    stream.write_all(b"POST /echo HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 4\r\n\r\nping").await?;
    let (status, head, body) = response(&mut stream, &mut buf, false).await?;
    assert_eq!((status, body.as_slice()), (200, &b"ping"[..]), "{head}");
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\nGET / HTTP/1.1\r\nHost: elsewhere.localhost\r\n\r\n").await?;
    assert_eq!(response(&mut stream, &mut buf, false).await?.2, b"hello");
    let (status, _, body) = response(&mut stream, &mut buf, false).await?;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("elsewhere.localhost"));

    // An unknown host and HTTP/1.0 go to hyper from the first request.
    let mut stream = TcpStream::connect(router).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.localhost\r\n\r\nGET / HTTP/1.0\r\nHost: web.localhost\r\n\r\n").await?;
    let mut buf = Vec::new();
    assert_eq!(response(&mut stream, &mut buf, false).await?.0, 404);
    let (status, head, body) = response(&mut stream, &mut buf, false).await?;
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "{head}");
    Ok(())
}

#[tokio::test]
async fn connections_without_a_request_head_in_time_are_closed() -> Result {
    let router = router_with(RouterOptions { idle_timeout: std::time::Duration::from_millis(300), ..RouterOptions::default() }).await?;
    let silent = TcpStream::connect(router).await?;
    let mut slow = TcpStream::connect(router).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n").await?;
    let mut served = TcpStream::connect(router).await?;
    served.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n\r\n").await?;
    assert_eq!(response(&mut served, &mut Vec::new(), false).await?.2, b"hello");
    let mut handed = TcpStream::connect(router).await?;
    handed.write_all(b"POST /echo HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 2\r\n\r\nhi").await?;
    assert_eq!(response(&mut handed, &mut Vec::new(), false).await?.2, b"hi");
    for (what, mut stream) in [("silent", silent), ("slow", slow), ("served", served), ("handed to hyper", handed)] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the {what} connection is still open after 5 s");
    }
    Ok(())
}

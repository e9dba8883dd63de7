//! What a flood of connections cannot do to the router: an accept error (no descriptors left)
//! never ends a listener; connections beyond the limit are closed at once while the others are
//! served; a TLS handshake that never comes, and an HTTP/2 connection left idle, are closed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use berth_router::listen::Gate;
use berth_router::{RouteSpec, RouterOptions, RoutingTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Reads until the peer closes the connection (true) or `within` passes (false).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn get(router: std::net::SocketAddr) -> Result<String> {
    let mut c = TcpStream::connect(router).await?;
    c.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n").await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out)).await??;
    Ok(out)
}

/// In a process of its own (nextest runs each test so), with a low open-files limit: once
/// descriptors run out the router cannot accept, and once they are back it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_does_not_end_a_listener() -> Result {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![named("web").await?])]);
    let router = start_router(table, RouterOptions::default()).await?;
    assert!(get(router).await?.ends_with("web"));
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    setrlimit(Resource::RLIMIT_NOFILE, open + 24, hard)?;
    // Take every descriptor left: the router's accept now fails with EMFILE.
    let mut hogs = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hogs.push(f);
    }
    // One descriptor back, for a client: the router has none left to accept it with.
    hogs.pop();
    let waiting = std::net::TcpStream::connect(router)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(waiting);
    drop(hogs);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(get(router).await?.ends_with("web"), "the listener stopped after an accept error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_idle_ones_end() -> Result {
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![named("web").await?])]);
    let gate = Gate::new("test", 3);
    let options = RouterOptions { gate: gate.clone(), idle_timeout: Duration::from_millis(400), ..RouterOptions::default() };
    let router = start_router(table, options).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(router).await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.open(), 3);
    let mut extra = TcpStream::connect(router).await?;
    assert!(closed_within(&mut extra, Duration::from_millis(300)).await, "a connection beyond the limit was kept");
    // Idle connections end at the idle timeout, which frees their places.
    for c in &mut held {
        assert!(closed_within(c, Duration::from_secs(3)).await, "an idle connection was kept");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(gate.open(), 0);
    assert!(get(router).await?.ends_with("web"));
    Ok(())
}

/// HTTP/2 (h2c with prior knowledge): once no request is in progress for the idle timeout, the
/// router sends GOAWAY and closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed() -> Result {
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![named("web").await?])]);
    let options = RouterOptions { idle_timeout: Duration::from_millis(400), ..RouterOptions::default() };
    let router = start_router(table, options).await?;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(router).await?);
    let (mut send, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("http://web.localhost/").body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was kept open");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_closed() -> Result {
    let dir = tempfile::tempdir()?;
    let ca = berth_router::tls::LocalCa::load_or_create(dir.path(), &["localhost".to_owned()])?;
    let config = berth_router::tls::server_config(Arc::new(berth_router::tls::OnDemandCerts::new(ca, vec![".localhost".into()])))?;
    let table = Arc::new(RoutingTable::new());
    let options = RouterOptions { tls_handshake_timeout: Duration::from_millis(300), ..RouterOptions::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(berth_router::Router::with_options(table, options).serve_tls(listener, config));
    let mut silent = TcpStream::connect(addr).await?;
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await, "a connection without a handshake was kept");
    Ok(())
}

//! Health probes: a TCP connect, or an HTTP/1.1 GET of the path expecting 2xx or 3xx, each
//! bounded by the check's timeout. Behind a trait so controller tests can decide health without
//! real instances.

use std::net::SocketAddr;
use std::time::Duration;

use berth_core::service::{HealthCheck, HealthProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass,
    /// Nothing listens yet: during start-up this is not counted as a failure.
    Refused,
    /// The instance answered wrongly or too late.
    Fail(String),
}

#[async_trait::async_trait]
pub trait Prober: Send + Sync {
    async fn probe(&self, instance: &str, addr: SocketAddr, check: &HealthCheck) -> Probe;
}

/// Probes over the network.
#[derive(Debug, Default)]
pub struct NetProber;

#[async_trait::async_trait]
impl Prober for NetProber {
    async fn probe(&self, _instance: &str, addr: SocketAddr, check: &HealthCheck) -> Probe {
        let timeout = Duration::from_secs(check.timeout.into());
        match tokio::time::timeout(timeout, probe(addr, check)).await {
            Ok(p) => p,
            Err(_) => Probe::Fail(format!("no answer within {} s", check.timeout)),
        }
    }
}

async fn probe(addr: SocketAddr, check: &HealthCheck) -> Probe {
    let mut stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Probe::Refused,
        Err(e) => return Probe::Fail(format!("connecting: {e}")),
    };
    if check.protocol == HealthProtocol::Tcp {
        return Probe::Pass;
    }
    let request = format!("GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: berth-health-check\r\nConnection: close\r\n\r\n", check.path);
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return Probe::Fail(format!("sending the request: {e}"));
    }
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Probe::Fail(format!("reading the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    match line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if (200..400).contains(&code) => Probe::Pass,
        Some(code) => Probe::Fail(format!("GET {} answered {code}", check.path)),
        None => Probe::Fail(format!("GET {} got no HTTP answer", check.path)),
    }
}

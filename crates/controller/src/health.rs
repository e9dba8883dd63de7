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
    /// berth itself could not probe (out of descriptors, memory or local ports): says nothing of
    /// the instance, so it is not counted either way.
    Unknown(String),
}

/// The probe result of a failed connect: refused, berth's own shortage, or a failure.
fn connect_failed(e: &std::io::Error) -> Probe {
    const OURS: [i32; 5] = [libc_errno::EMFILE, libc_errno::ENFILE, libc_errno::ENOBUFS, libc_errno::ENOMEM, libc_errno::EADDRNOTAVAIL];
    match e.raw_os_error() {
        _ if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        Some(code) if OURS.contains(&code) => Probe::Unknown(format!("connecting: {e}")),
        _ => Probe::Fail(format!("connecting: {e}")),
    }
}

/// The errno values berth's own shortages show as (Linux numbering).
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
    pub const EADDRNOTAVAIL: i32 = 99;
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
        Err(e) => return connect_failed(&e),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn berths_own_shortages_are_not_the_instances_failures() {
        let of = |code| connect_failed(&std::io::Error::from_raw_os_error(code));
        assert!(matches!(of(24), Probe::Unknown(_)), "EMFILE");
        assert!(matches!(of(23), Probe::Unknown(_)), "ENFILE");
        assert!(matches!(of(99), Probe::Unknown(_)), "EADDRNOTAVAIL");
        assert_eq!(of(111), Probe::Refused);
        assert!(matches!(of(113), Probe::Fail(_)), "EHOSTUNREACH is the instance's");
        assert!(matches!(of(110), Probe::Fail(_)), "a timeout is the instance's");
    }
}

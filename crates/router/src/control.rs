//! The control protocol between berth's server and its router process: JSON lines over the Unix
//! socket `<data dir>/router.sock` (in the `0700` data directory, so only berth's user reaches
//! it).
//!
//! A server sends [`ToRouter::Attach`]; the router answers [`Hello`] (who it is, what it serves)
//! and from then on sends a [`Report`] ten times a second (each service's load, the upstreams
//! still draining, the metrics once a second) and [`FromRouter::Activate`] when a request waits
//! for a service with no instance; the server sends the whole table whenever it changes. A newer
//! attachment replaces an older one.
//!
//! A successor router sends [`ToRouter::Handoff`]: the router sends its listening sockets (one
//! byte carrying them as `SCM_RIGHTS`), then [`Handing`] (which socket is which, and the table);
//! the successor serves them, takes the socket path over and sends [`ToRouter::Taken`]; the old
//! router then stops accepting and drains.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::sink::{Owners, ServiceLoad};
use crate::table::TrafficInterval;

/// The control socket, in the data directory.
pub const SOCKET: &str = "router.sock";
/// The router process's PID, in the data directory.
pub const PID_FILE: &str = "router.pid";
/// The longest message either side accepts.
const MAX_MESSAGE: u64 = 64 << 20;

/// What the router process is started with: everything about its listeners. The server writes
/// it; a running router whose configuration differs from the server's is replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonConfig {
    pub data_dir: PathBuf,
    pub listen_http: SocketAddr,
    pub listen_https: SocketAddr,
    /// Where instances call services as `http://<name>.internal` (the instance bridge's gateway,
    /// port 80), when the server runs instances; berth's DNS for them is on port 53 there.
    #[serde(default)]
    pub listen_internal: Option<SocketAddr>,
    /// Threads per listener.
    pub workers: usize,
    pub pin_workers: bool,
    pub redirect_http_to_https: bool,
    pub hsts: bool,
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub tls_handshake_timeout_secs: u64,
    /// How long a stopping router lets requests in flight finish.
    pub drain_timeout_secs: u64,
    /// The host suffixes the local CA issues certificates for (`.localhost`, `.<base domain>`).
    pub suffixes: Vec<String>,
    pub certificates: Vec<SuppliedCertificate>,
    /// The access log (JSON lines), if any.
    pub access_log: Option<PathBuf>,
    /// The log filter (`info`, `berth_router=debug`).
    pub log_level: String,
    /// Log lines as JSON.
    pub log_json: bool,
    /// Count each revision's traffic for the metrics history.
    #[serde(default = "on")]
    pub metrics_history: bool,
}

fn on() -> bool {
    true
}

impl DaemonConfig {
    /// Reads one written by [`DaemonConfig::to_json`].
    pub fn read(path: &std::path::Path) -> std::io::Result<DaemonConfig> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    pub fn to_json(&self) -> std::io::Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(std::io::Error::other)
    }
}

/// A certificate the user supplies for some domains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppliedCertificate {
    pub domains: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToRouter {
    /// A server takes charge of the router.
    Attach,
    /// The whole table, numbered; reports say which number they have seen.
    Table { gen: u64, owners: Owners },
    /// Stop accepting, let requests in flight finish, exit.
    Stop,
    /// From a successor: hand the listeners over.
    Handoff,
    /// From a successor: it serves now.
    Taken,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromRouter {
    Hello(Box<Hello>),
    Report(Report),
    /// A request waits for `service`, which has no instance.
    Activate {
        service: String,
    },
    Handing(Handing),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub pid: u32,
    /// The build the router runs ([`crate::daemon::identity`]).
    pub identity: String,
    pub config: DaemonConfig,
    pub http: SocketAddr,
    pub https: SocketAddr,
    /// The routes it serves, and the number of the table they came in.
    pub owners: Owners,
    pub gen: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The last table applied.
    pub gen: u64,
    pub services: Vec<ServiceLoad>,
    /// Upstreams that left the table and still have requests in flight.
    pub draining: Vec<(String, SocketAddr)>,
    /// The router's metrics, about once a second.
    pub metrics: Option<String>,
    /// Traffic intervals closed since the last report (on attaching: every one kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficInterval>,
}

/// Which listener each handed descriptor is, in order, and the table being served.
#[derive(Debug, Serialize, Deserialize)]
pub struct Handing {
    pub listeners: Vec<Listener>,
    pub owners: Owners,
    pub gen: u64,
    /// The traffic intervals not yet taken by a server, the one in progress closed early: the
    /// successor reports them.
    #[serde(default)]
    pub traffic: Vec<TrafficInterval>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    Http,
    Https,
    /// Instances' calls to `<name>.internal`.
    Internal,
}

/// Reads one message; `None` at the end of the stream.
pub async fn read<T: DeserializeOwned, R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<T>> {
    let mut line = Vec::new();
    let n = (&mut *r).take(MAX_MESSAGE + 1).read_until(b'\n', &mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        let why = if n as u64 > MAX_MESSAGE { "a control message over 64 MiB" } else { "a control message cut short" };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    serde_json::from_slice(&line).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes one message.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(w: &mut W, msg: &T) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

/// The most descriptors one handoff carries.
pub const MAX_HANDED: usize = 250;

/// Sends `fds` as one byte with `SCM_RIGHTS`.
pub async fn send_fds(stream: &tokio::net::UnixStream, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many descriptors for one message"));
    }
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::net::sendmsg(stream, &[std::io::IoSlice::new(b"F")], &mut control, SendFlags::NOSIGNAL).map_err(std::io::Error::from)
        }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Receives the descriptors [`send_fds`] sent (and its one byte, nothing more).
pub async fn receive_fds(stream: &tokio::net::UnixStream) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_HANDED))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        let got = stream.try_io(tokio::io::Interest::READABLE, || {
            rustix::net::recvmsg(stream, &mut [std::io::IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)
                .map_err(std::io::Error::from)
        });
        match got {
            Ok(msg) if msg.bytes == 0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    Ok(fds)
}

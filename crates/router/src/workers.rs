//! The threads that serve a listener, nginx's worker model: each runs a single-threaded runtime
//! with a listener of its own on the same port (`SO_REUSEPORT`, the kernel spreads connections)
//! and a router — so an upstream pool — of its own, so a request and its upstream connection
//! stay on one thread with no cross-thread wake-ups. Each is pinned to one CPU unless told not
//! to be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tokio::net::TcpListener;

use crate::listen::Gate;
use crate::proxy::{Router, RouterOptions};
use crate::table::RoutingTable;
use crate::upstream;

/// The threads serving one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// How many (at least one).
    pub count: usize,
    /// Pin worker `i` to the `i`-th CPU this process may run on (wrapping around). A worker that
    /// stays on its CPU keeps its connections' state in that CPU's caches, and the kernel
    /// balances the other busy threads of the host around it instead of moving it among them.
    pub pin: bool,
}

impl Router {
    /// Serves `addr` on `workers`' threads. With `tls`, serves HTTPS. Returns the bound address
    /// (port 0 picks one).
    pub fn serve_workers(
        table: Arc<RoutingTable>,
        options: RouterOptions,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        workers: Workers,
    ) -> std::io::Result<SocketAddr> {
        let listeners = bind(addr, workers.count)?;
        let bound = listeners.first().map(|l| l.local_addr()).transpose()?.unwrap_or(addr);
        Router::serve_on(table, options, listeners, tls, workers.pin)?;
        Ok(bound)
    }

    /// Serves each of `listeners` on a worker thread of its own (pinned to a CPU each with
    /// `pin`). A worker ends once `options.stopping` is cancelled and the listener's connections
    /// have ended, or `options.drain_timeout` has passed.
    pub fn serve_on(
        table: Arc<RoutingTable>,
        options: RouterOptions,
        listeners: Vec<std::net::TcpListener>,
        tls: Option<Arc<rustls::ServerConfig>>,
        pin: bool,
    ) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let mut threads = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let (table, mut options, tls) = (table.clone(), options.clone(), tls.clone());
            // Connections wait on their own worker's token: waiting registers with it, and one
            // token shared by every worker would be a lock taken across CPUs for each request.
            options.stopping = options.stopping.child_token();
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (up, started) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new().name(format!("berth-router-{i}")).spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = up.send(Err(e));
                            return;
                        }
                    };
                    let _ = up.send(Ok(()));
                    let (gate, drain, stopping) = (options.gate.clone(), options.drain_timeout, options.stopping.clone());
                    let router = Router::with_options(table, options);
                    tokio::spawn(worker_chores(router.http1.clone()));
                    match tls {
                        Some(config) => router.serve_tls(listener, config).await,
                        None => router.serve(listener).await,
                    }
                    if stopping.is_cancelled() {
                        drained(&gate, drain).await;
                    }
                });
            })?;
            started.recv().map_err(|_| std::io::Error::other("a router worker died while starting"))??;
            threads.push(thread);
        }
        Ok(threads)
    }
}

/// Waits until no connection of the gate's listener is open, at most `bound`.
async fn drained(gate: &Gate, bound: Duration) {
    let deadline = Instant::now() + bound;
    while gate.open() > 0 {
        if Instant::now() >= deadline {
            tracing::warn!(connections = gate.open(), "connections still open after the drain timeout; closing them");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The CPUs this process may run on (its affinity mask), in order; empty when it cannot be read.
fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this process's CPUs; router workers are not pinned");
            Vec::new()
        }
    }
}

/// Pins the calling thread to `cpu`; when that fails, the thread runs where the kernel puts it.
fn pin_to(cpu: usize) {
    let mut set = CpuSet::new();
    let pinned = set.set(cpu).and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::warn!(error = %e, cpu, "cannot pin a router worker to its CPU; it runs unpinned");
    }
}

/// A worker's once-a-second chores: closing upstream connections idle too long, and keeping a
/// timer due within a second on its runtime. Every request arms a deadline; when that deadline
/// is the runtime's earliest timer, arming it wakes the runtime's driver through its eventfd — a
/// system call per request. With this one always earlier, none is needed.
async fn worker_chores(pool: Arc<upstream::Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        pool.sweep(Instant::now());
    }
}

/// `count` listeners on `addr` that share its port (`SO_REUSEPORT`: the kernel spreads the
/// connections); port 0 picks one port for all.
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut all: Vec<std::net::TcpListener> = Vec::new();
    let mut at = addr;
    for _ in 0..count.max(1) {
        let l = reuseport_listener(at)?;
        at = l.local_addr()?;
        all.push(l);
    }
    Ok(all)
}

/// A non-blocking listener on `addr` that other sockets may share (`SO_REUSEPORT`). The
/// address need not be up yet (`IP_FREEBIND`): the internal listener binds the instance bridge's
/// gateway address, which the runtime may make after the router starts.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC | SocketFlags::NONBLOCK, None)?;
    if addr.is_ipv4() {
        sockopt::set_ip_freebind(&fd, true)?;
    }
    sockopt::set_socket_reuseaddr(&fd, true)?;
    sockopt::set_socket_reuseport(&fd, true)?;
    sockopt::set_tcp_nodelay(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 4096)?;
    Ok(std::net::TcpListener::from(fd))
}

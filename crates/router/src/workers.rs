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
        let cpus = if workers.pin { allowed_cpus() } else { Vec::new() };
        let mut bound = addr;
        for i in 0..workers.count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            let (table, options, tls) = (table.clone(), options.clone(), tls.clone());
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            std::thread::Builder::new().name(format!("berth-router-{i}")).spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match reuseport_listener(bound) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = tx.send(listener.local_addr());
                    let router = Router::with_options(table, options);
                    tokio::spawn(worker_chores(router.http1.clone()));
                    match tls {
                        Some(config) => router.serve_tls(listener, config).await,
                        None => router.serve(listener).await,
                    }
                });
            })?;
            bound = rx.recv().map_err(|_| std::io::Error::other("a router worker died while starting"))??;
        }
        Ok(bound)
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

/// A listener on `addr` that other workers may share (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

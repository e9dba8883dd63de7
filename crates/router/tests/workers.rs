//! The threads serving a listener: pinned one to a CPU (wrapping around the CPUs the process may
//! use) or left to the kernel, and serving either way.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use berth_router::{RouteSpec, Router, RouterOptions, RoutingTable, Workers};
use support::{full, serve, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// CPUs in a `Cpus_allowed_list` value: `0-3,6`.
fn cpu_list(list: &str) -> Result<BTreeSet<usize>> {
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        cpus.extend(first.parse::<usize>()?..=last.parse::<usize>()?);
    }
    Ok(cpus)
}

/// The CPUs `/proc/self/task/<tid>` (or the process, for `None`) may run on.
fn allowed(tid: Option<&str>) -> Result<BTreeSet<usize>> {
    let path = match tid {
        Some(tid) => format!("/proc/self/task/{tid}/status"),
        None => "/proc/self/status".into(),
    };
    let status = std::fs::read_to_string(path)?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).ok_or("no Cpus_allowed_list")?;
    cpu_list(list)
}

/// The ids of this process's router worker threads, by name (`berth-router-<i>`).
fn worker_threads() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default().trim().to_string();
        if name.starts_with("berth-router-") {
            out.push((tid, name));
        }
    }
    Ok(out)
}

async fn get(router: std::net::SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(router).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n").await?;
    let mut answer = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_string(&mut answer)).await??;
    Ok(answer)
}

#[tokio::test]
async fn workers_are_pinned_one_to_a_cpu_or_left_to_the_kernel_and_serve() -> Result {
    let table = Arc::new(RoutingTable::new());
    table.replace(&[RouteSpec::new("web.localhost", "web", vec![serve(|_| async { hyper::Response::new(full("hello")) }).await?])]);
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let process = allowed(None)?;

    let free = Router::serve_workers(table.clone(), RouterOptions::default(), any, None, Workers { count: 2, pin: false })?;
    let unpinned = worker_threads()?;
    assert_eq!(unpinned.len(), 2);
    for (tid, name) in &unpinned {
        assert_eq!(allowed(Some(tid))?, process, "{name} runs wherever the process may");
    }

    // One more worker than CPUs: the last one shares the first CPU.
    let cpus: Vec<usize> = process.iter().copied().collect();
    let count = cpus.len() + 1;
    let pinned_addr = Router::serve_workers(table, RouterOptions::default(), any, None, Workers { count, pin: true })?;
    let pinned: Vec<_> = worker_threads()?.into_iter().filter(|t| !unpinned.contains(t)).collect();
    assert_eq!(pinned.len(), count);
    for (tid, name) in &pinned {
        let i: usize = name.trim_start_matches("berth-router-").parse()?;
        assert_eq!(allowed(Some(tid))?, BTreeSet::from([cpus[i % cpus.len()]]), "{name} is pinned to its CPU");
    }

    // Several connections, spread over the workers by the kernel, are all served.
    for addr in [free, pinned_addr] {
        for _ in 0..8 {
            let answer = get(addr).await?;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("hello"), "{answer}");
        }
    }
    Ok(())
}

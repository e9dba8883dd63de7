//! The routing table: host → service → ready upstreams. Readers load an `Arc` snapshot without
//! locking; a writer builds a new table and swaps it in. Upstreams that survive a replacement
//! keep their identity, so their in-flight counts stay true across swaps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// One instance the router may send requests to.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
}

impl Upstream {
    pub fn new(addr: SocketAddr) -> Upstream {
        Upstream { addr, in_flight: AtomicUsize::new(0) }
    }

    /// Requests sent to it and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// An outstanding request on an upstream.
#[derive(Debug)]
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's place in the table.
#[derive(Debug)]
pub struct Route {
    pub service: String,
    pub upstreams: Vec<Arc<Upstream>>,
}

impl Route {
    /// Least outstanding requests between two upstreams picked at random (power of two
    /// choices), skipping `exclude` (an upstream that just failed).
    pub fn pick(&self, exclude: Option<SocketAddr>) -> Option<Arc<Upstream>> {
        let candidates: Vec<&Arc<Upstream>> = self.upstreams.iter().filter(|u| Some(u.addr) != exclude).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].clone()),
            n => {
                let a = rand::random::<usize>() % n;
                let mut b = rand::random::<usize>() % (n - 1);
                if b >= a {
                    b += 1;
                }
                let (x, y) = (candidates[a], candidates[b]);
                Some(if y.in_flight() < x.in_flight() { y.clone() } else { x.clone() })
            }
        }
    }
}

/// What a writer declares: a host, the service behind it, its ready instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub host: String,
    pub service: String,
    pub upstreams: Vec<SocketAddr>,
}

#[derive(Debug, Default)]
struct Table {
    hosts: HashMap<String, Arc<Route>>,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    current: ArcSwap<Table>,
}

/// Lowercases a Host header value and drops its port.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().trim_end_matches('.');
    let h = if h.starts_with('[') {
        h.split(']').next().map(|s| format!("{s}]")).unwrap_or_default()
    } else {
        h.split(':').next().unwrap_or("").to_owned()
    };
    h.to_ascii_lowercase()
}

impl RoutingTable {
    pub fn new() -> RoutingTable {
        RoutingTable::default()
    }

    /// The route for a Host header value.
    pub fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.current.load().hosts.get(&normalize_host(host)).cloned()
    }

    /// Replaces the whole table at once. New requests see the new table; requests in flight keep
    /// the upstream they started on.
    pub fn replace(&self, specs: &[RouteSpec]) {
        let old = self.current.load_full();
        let existing: HashMap<SocketAddr, Arc<Upstream>> =
            old.hosts.values().flat_map(|r| r.upstreams.iter().map(|u| (u.addr, u.clone()))).collect();
        let hosts = specs
            .iter()
            .map(|s| {
                let upstreams =
                    s.upstreams.iter().map(|a| existing.get(a).cloned().unwrap_or_else(|| Arc::new(Upstream::new(*a)))).collect();
                (normalize_host(&s.host), Arc::new(Route { service: s.service.clone(), upstreams }))
            })
            .collect();
        self.current.store(Arc::new(Table { hosts }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Web.LOCALHOST:8443"), "web.localhost");
        assert_eq!(normalize_host("web.example.com."), "web.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn replacement_keeps_surviving_upstreams() {
        let t = RoutingTable::new();
        t.replace(&[RouteSpec { host: "a.localhost".into(), service: "a".into(), upstreams: vec![addr(1), addr(2)] }]);
        let before = t.lookup("a.localhost").and_then(|r| r.upstreams.first().cloned());
        let _busy = before.as_ref().map(|u| u.begin());
        t.replace(&[RouteSpec { host: "a.localhost".into(), service: "a".into(), upstreams: vec![addr(1), addr(3)] }]);
        let after = t.lookup("A.localhost:443").and_then(|r| r.upstreams.first().cloned());
        assert_eq!(after.map(|u| u.in_flight()), Some(1), "the in-flight count survived the swap");
        assert!(t.lookup("b.localhost").is_none());
    }

    #[test]
    fn picks_the_less_busy_and_skips_the_failed() {
        let r = Route { service: "s".into(), upstreams: vec![Arc::new(Upstream::new(addr(1))), Arc::new(Upstream::new(addr(2)))] };
        let _busy: Vec<_> = (0..3).map(|_| r.upstreams[0].begin()).collect();
        for _ in 0..20 {
            assert_eq!(r.pick(None).map(|u| u.addr), Some(addr(2)));
        }
        assert_eq!(r.pick(Some(addr(2))).map(|u| u.addr), Some(addr(1)));
        let lone = Route { service: "s".into(), upstreams: vec![Arc::new(Upstream::new(addr(1)))] };
        assert!(lone.pick(Some(addr(1))).is_none());
    }
}

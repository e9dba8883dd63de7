//! Where a [`RouteBook`](crate::RouteBook) puts its routes: a [`RoutingTable`] in this process
//! (tests, benchmarks), or the router process over its control socket
//! ([`RemoteRouter`](crate::RemoteRouter)). Either way the writer gets back the upstreams that
//! left, to wait on before stopping them, and reads each service's load.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::remote::DrainWatch;
use crate::table::{RouteSpec, RoutingTable, TrafficInterval, Upstream};

/// The routes of every owner, by owner (a service's supervisor, the one-off instances).
pub type Owners = BTreeMap<String, Vec<RouteSpec>>;

/// One service's load as the router sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLoad {
    pub service: String,
    /// Requests being worked on by its instances.
    pub in_flight: usize,
    /// Requests waiting for a free instance or for one to start.
    pub queued: usize,
    /// Ready instances.
    pub ready: usize,
}

/// A backend of the [`RouteBook`](crate::RouteBook).
pub trait RouteSink: Send + Sync {
    /// Makes `owners`' routes the whole table; returns the upstreams that left it.
    fn install(&self, owners: &Owners) -> Vec<Leaver>;
    /// Each service's load, as last known.
    fn load(&self) -> Vec<ServiceLoad>;
    /// Appends the router's metrics in the Prometheus text format.
    fn render_metrics(&self, out: &mut String);
    /// A waiter for an upstream not in the table — one a previous writer took out, whose
    /// requests may still be in flight in a router that outlived that writer.
    fn left_earlier(&self, service: &str, addr: SocketAddr) -> Leaver;
    /// The traffic intervals the router closed since the last call. A router run reports each of
    /// its intervals once per attachment; a new attachment gets every one it still holds again.
    fn take_traffic(&self) -> Vec<TrafficInterval>;
}

/// An upstream that left the table: nothing new goes to it, and [`Leaver::drained`] says when
/// its last request has ended.
pub struct Leaver {
    pub service: String,
    pub addr: SocketAddr,
    wait: Wait,
}

enum Wait {
    Here(Arc<Upstream>),
    There(DrainWatch),
    /// Nothing of it is in flight here.
    Gone,
}

impl Leaver {
    pub(crate) fn remote(service: String, addr: SocketAddr, watch: DrainWatch) -> Leaver {
        Leaver { service, addr, wait: Wait::There(watch) }
    }

    /// Resolves once no request is in flight on it any more.
    pub async fn drained(&self) {
        match &self.wait {
            Wait::Here(u) => u.drained().await,
            Wait::There(w) => w.drained(&self.service, self.addr).await,
            Wait::Gone => {}
        }
    }
}

/// Every owner's routes in one list.
pub(crate) fn flatten(owners: &Owners) -> Vec<RouteSpec> {
    owners.values().flatten().cloned().collect()
}

impl RouteSink for RoutingTable {
    fn install(&self, owners: &Owners) -> Vec<Leaver> {
        self.replace(&flatten(owners))
            .into_iter()
            .map(|u| Leaver { service: u.service_name().to_owned(), addr: u.addr, wait: Wait::Here(u) })
            .collect()
    }

    fn load(&self) -> Vec<ServiceLoad> {
        self.services()
            .iter()
            .map(|s| ServiceLoad { service: s.name.clone(), in_flight: s.in_flight(), queued: s.queued(), ready: s.ready() })
            .collect()
    }

    fn render_metrics(&self, out: &mut String) {
        crate::stats::render(self, out);
    }

    fn left_earlier(&self, service: &str, addr: SocketAddr) -> Leaver {
        // A table in this process starts empty with its writer: nothing earlier is in flight.
        Leaver { service: service.to_owned(), addr, wait: Wait::Gone }
    }

    fn take_traffic(&self) -> Vec<TrafficInterval> {
        self.take_intervals()
    }
}

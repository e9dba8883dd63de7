//! Several writers' routes merged into the one table: each owner (a service's controller, the
//! one-off instances) sets its own routes, and the table is rebuilt from all of them at once.

use std::sync::{Arc, Mutex};

use crate::sink::{Leaver, Owners, RouteSink, ServiceLoad};
use crate::table::RouteSpec;

pub struct RouteBook {
    sink: Arc<dyn RouteSink>,
    owners: Mutex<Owners>,
}

impl RouteBook {
    pub fn new(sink: Arc<dyn RouteSink>) -> RouteBook {
        RouteBook { sink, owners: Mutex::new(Owners::new()) }
    }

    /// A book that starts from routes already being served (by a router that outlived its
    /// previous writer), until their owners set them again.
    pub fn seeded(sink: Arc<dyn RouteSink>, owners: Owners) -> RouteBook {
        RouteBook { sink, owners: Mutex::new(owners) }
    }

    /// Replaces `owner`'s routes (none removes them) and returns the upstreams that left the
    /// table, which the owner may wait on ([`Leaver::drained`]) before stopping them.
    pub fn set(&self, owner: &str, specs: Vec<RouteSpec>) -> Vec<Leaver> {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if specs.is_empty() {
            owners.remove(owner);
        } else {
            owners.insert(owner.to_owned(), specs);
        }
        self.sink.install(&owners)
    }

    /// `owner`'s routes as last set.
    pub fn get(&self, owner: &str) -> Vec<RouteSpec> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).get(owner).cloned().unwrap_or_default()
    }

    /// Every owner's routes.
    pub fn all(&self) -> Owners {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Each service's load, as the router last reported it.
    pub fn load(&self) -> Vec<ServiceLoad> {
        self.sink.load()
    }

    /// A waiter for an upstream of `service` that is not in the table, which a router that
    /// outlived its previous writer may still have requests in flight on.
    pub fn left_earlier(&self, service: &str, addr: std::net::SocketAddr) -> Leaver {
        self.sink.left_earlier(service, addr)
    }

    /// The router's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        self.sink.render_metrics(out);
    }

    /// The traffic intervals closed since the last call ([`RouteSink::take_traffic`]).
    pub fn take_traffic(&self) -> Vec<crate::table::TrafficInterval> {
        self.sink.take_traffic()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::RoutingTable;

    #[test]
    fn owners_are_merged_and_replaced_alone() {
        let table = Arc::new(RoutingTable::new());
        let book = RouteBook::new(table.clone());
        let a = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        book.set("one", vec![RouteSpec::new("one.localhost", "one", vec![a(1)])]);
        book.set("two", vec![RouteSpec::new("two.localhost", "two", vec![a(2)])]);
        let left = book.set("one", vec![RouteSpec::new("one.localhost", "one", vec![a(3)])]);
        assert_eq!(left.iter().map(|u| u.addr).collect::<Vec<_>>(), [a(1)]);
        assert!(table.lookup("two.localhost").is_some());
        let left = book.set("two", vec![]);
        assert_eq!(left.iter().map(|u| u.addr).collect::<Vec<_>>(), [a(2)]);
        assert!(table.lookup("two.localhost").is_none() && book.get("two").is_empty());
        assert_eq!(book.get("one").len(), 1);
    }
}

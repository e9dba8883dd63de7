//! Several writers' routes merged into the one table: each owner (a service's controller, the
//! one-off instances) sets its own routes, and the table is rebuilt from all of them at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::table::{RouteSpec, RoutingTable, Upstream};

#[derive(Debug)]
pub struct RouteBook {
    table: Arc<RoutingTable>,
    owners: Mutex<BTreeMap<String, Vec<RouteSpec>>>,
}

impl RouteBook {
    pub fn new(table: Arc<RoutingTable>) -> RouteBook {
        RouteBook { table, owners: Mutex::new(BTreeMap::new()) }
    }

    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }

    /// Replaces `owner`'s routes (none removes them) and returns the upstreams that left the
    /// table, which the owner may wait on ([`Upstream::drained`]) before stopping them.
    pub fn set(&self, owner: &str, specs: Vec<RouteSpec>) -> Vec<Arc<Upstream>> {
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        if specs.is_empty() {
            owners.remove(owner);
        } else {
            owners.insert(owner.to_owned(), specs);
        }
        let all: Vec<RouteSpec> = owners.values().flatten().cloned().collect();
        self.table.replace(&all)
    }

    /// `owner`'s routes as last set.
    pub fn get(&self, owner: &str) -> Vec<RouteSpec> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner()).get(owner).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_merged_and_replaced_alone() {
        let book = RouteBook::new(Arc::new(RoutingTable::new()));
        let a = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        book.set("one", vec![RouteSpec::new("one.localhost", "one", vec![a(1)])]);
        book.set("two", vec![RouteSpec::new("two.localhost", "two", vec![a(2)])]);
        let left = book.set("one", vec![RouteSpec::new("one.localhost", "one", vec![a(3)])]);
        assert_eq!(left.iter().map(|u| u.addr).collect::<Vec<_>>(), [a(1)]);
        assert!(book.table().lookup("two.localhost").is_some());
        let left = book.set("two", vec![]);
        assert_eq!(left.iter().map(|u| u.addr).collect::<Vec<_>>(), [a(2)]);
        assert!(book.table().lookup("two.localhost").is_none() && book.get("two").is_empty());
        assert_eq!(book.get("one").len(), 1);
    }
}

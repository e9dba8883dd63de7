//! berth's data plane: every request to a service passes through here. A request goes through
//! named phases — route (Host → service), pick (least outstanding requests, power of two
//! choices), forward (pooled upstream connections, one retry when connecting failed and nothing
//! was sent), respond (hop-by-hop headers dropped, `X-Forwarded-*` and `X-Request-Id` added) and
//! log.
//!
//! Invariants: the router never writes desired state; it learns instances through the
//! [`RoutingTable`], which is replaced atomically, and lookups take no lock.

mod proxy;
mod table;
pub mod tls;

pub use proxy::{Router, RouterOptions};
pub use table::{Route, RouteSpec, RoutingTable, Upstream};

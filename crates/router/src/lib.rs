//! berth's data plane: every request to a service passes through here. A request goes through
//! named phases — route (Host → service), pick (least outstanding requests, power of two
//! choices, under a per-instance concurrency cap with a bounded queue, or held while a first
//! instance starts), forward (pooled upstream connections, one retry when connecting failed and
//! nothing was sent; WebSocket tunnels), respond (hop-by-hop headers dropped, `X-Forwarded-*` and
//! `X-Request-Id` added, the stream cut at the request timeout) and log (statistics, access log).
//! Instances call services at `<name>.internal` on an internal listener, which knows the caller
//! by its address; `dns.rs` answers their names from the same table.
//!
//! Invariants: the router never writes desired state; it learns instances through the
//! [`RoutingTable`], which is replaced atomically, and lookups take no lock. An upstream that
//! leaves the table gets nothing new; its writer can wait for [`Upstream::drained`].

mod access;
mod book;
pub mod control;
pub mod daemon;
pub mod dns;
mod h1;
pub mod listen;
mod proxy;
mod remote;
mod sink;
mod stats;
mod table;
pub mod tls;
mod upstream;
mod workers;

pub use access::{AccessLog, AccessRecord};
pub use book::RouteBook;
pub use proxy::{Activator, Body, BoxError, Router, RouterOptions, DEFAULT_MAX_CONNECTIONS};
pub use remote::{Launch, RemoteRouter};
pub use sink::{Leaver, Owners, RouteSink, ServiceLoad};
pub use table::{
    unix_now, InFlight, NoPick, Refusal, Route, RouteSettings, RouteSpec, RoutingTable, ServiceState, TrafficInterval, Upstream,
    INTERVAL_SECS,
};
pub use workers::{bind, Workers};

//! The shared vocabulary of berth: content digests, repository names and references, tag
//! mutability policies, access scopes, services and networks. Everything here is pure: no IO, no clocks, no
//! randomness, so every other crate can depend on it and test it cheaply.

pub mod aws;
pub mod calendar;
pub mod digest;
pub mod lifecycle;
pub mod metrics;
pub mod name;
pub mod network;
pub mod pattern;
pub mod policy;
pub mod query;
pub mod scope;
pub mod service;
pub mod sketch;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use lifecycle::LifecycleRule;
pub use name::{NameError, Reference, RepositoryName, Tag};
pub use network::{Cidr, Egress, NetworkSpec, ServiceNetwork, Visibility};
pub use pattern::Pattern;
pub use policy::{PolicyError, TagMutability, TagPolicy};
pub use scope::{Action, Grant, Principal, Scope, ScopeError};
pub use service::{OperationStatus, OperationType, ServiceSpec, ServiceStatus, SpecError};

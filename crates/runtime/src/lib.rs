//! The seam between berth's policy and whatever runs containers: the [`Runtime`] trait, in
//! berth's own types only. The embedded backend (namespaces, cgroups, overlayfs; no Docker)
//! is the default; Docker and Kubernetes backends come later behind the same trait.
//! [`FakeRuntime`] records calls and simulates lifecycles for controller tests.
//!
//! Invariant: no backend type crosses this trait. Every call is idempotent by instance id, so
//! a controller may repeat any of them after a crash.

pub mod embedded;
mod fake;
mod spec;

use std::time::Duration;

pub use fake::{Call, FakeRuntime};
pub use spec::*;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("instance `{0}` does not exist")]
    NotFound(InstanceId),
    #[error("instance `{id}` is {state}; {hint}")]
    InvalidState { id: InstanceId, state: String, hint: &'static str },
    #[error("image {0} is not available: {1}")]
    Image(String, String),
    #[error("invalid instance spec: {0}")]
    InvalidSpec(String),
    #[error("the runtime failed: {0}")]
    Backend(String),
    /// What is asked clashes with what is on the host.
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Runs instances of images on some substrate.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Prepares an instance (root filesystem, network, limits) without starting it. Creating an
    /// id that exists with the same spec returns its status.
    async fn create(&self, spec: InstanceSpec) -> Result<InstanceStatus>;
    /// Starts a created instance; starting a running one is a no-op.
    async fn start(&self, id: &InstanceId) -> Result<InstanceStatus>;
    /// SIGTERM, then SIGKILL after `grace`; stopping a stopped instance is a no-op.
    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<InstanceStatus>;
    /// Stops if needed and frees everything the instance held. Deleting an absent id is a no-op.
    async fn delete(&self, id: &InstanceId) -> Result<()>;
    async fn inspect(&self, id: &InstanceId) -> Result<Option<InstanceStatus>>;
    async fn list(&self) -> Result<Vec<InstanceStatus>>;
    /// The instance's log lines (timestamp, stream, text) after the first `since` lines — of a
    /// deleted instance too, while its log is kept.
    async fn logs(&self, id: &InstanceId, since: usize) -> Result<Vec<String>>;
    /// Deleted instances whose logs are still kept, newest first.
    async fn retired(&self) -> Result<Vec<RetiredInstance>>;
    /// Whether `network` can be realized here: its CIDR clashes with nothing of the runtime's
    /// (the instance addresses) or the host's routes, and the device it attaches exists. The
    /// error names the conflict.
    async fn check_network(&self, network: &berth_core::NetworkSpec) -> Result<()>;
    /// Replaces the files of the instance's file directories (matched by `dir`) in place, each
    /// directory at once: the app sees the old set or the new one, with no restart.
    async fn update_files(&self, id: &InstanceId, files: Vec<FileMount>) -> Result<()>;
    /// Connections instances tried and were refused, per instance group (service) and
    /// destination class, counted since the rules were first loaded.
    async fn denied(&self) -> Result<Vec<Denied>>;
    /// What the instance has used of its limits; `None` when it is gone or not running.
    async fn usage(&self, id: &InstanceId) -> Result<Option<Usage>>;
    /// Lifecycle events as they happen (started, exited, OOM-killed).
    fn events(&self) -> tokio::sync::broadcast::Receiver<RuntimeEvent>;
}

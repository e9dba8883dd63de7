//! The types that cross the [`Runtime`](crate::Runtime) trait.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use berth_core::Digest;

/// A caller-chosen instance id (`[a-z0-9-]{1,63}`), stable across restarts, so every call can
/// be repeated safely.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn new(id: impl Into<String>) -> Result<InstanceId, crate::RuntimeError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 63
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-');
        if ok {
            Ok(InstanceId(id))
        } else {
            Err(crate::RuntimeError::InvalidSpec(format!("instance id `{id}` must be 1 to 63 of [a-z0-9-], not starting with `-`")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The image an instance runs: a repository of berth's registry (or another registry) pinned
/// to a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub repository: String,
    pub digest: Digest,
}

/// CPU, memory and process limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Thousandths of a CPU (1000 = one vCPU).
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub pids: u32,
}

impl Default for Resources {
    /// App Runner's defaults: 1 vCPU, 2 GB.
    fn default() -> Self {
        Resources { cpu_millis: 1000, memory_bytes: 2 << 30, pids: 1024 }
    }
}

impl Resources {
    /// Bounds every limit can take: a limit of 0 or one so large it means none is refused.
    pub const CPU_MILLIS: std::ops::RangeInclusive<u32> = 10..=256_000;
    pub const MEMORY_BYTES: std::ops::RangeInclusive<u64> = (4 << 20)..=(1 << 40);
    pub const PIDS: std::ops::RangeInclusive<u32> = 8..=1 << 22;

    /// Checks every limit against its bounds, naming the first one out of them.
    pub fn validate(&self) -> Result<(), String> {
        if !Self::CPU_MILLIS.contains(&self.cpu_millis) {
            return Err(format!(
                "cpu_millis {} is out of range; use {} to {}",
                self.cpu_millis,
                Self::CPU_MILLIS.start(),
                Self::CPU_MILLIS.end()
            ));
        }
        if !Self::MEMORY_BYTES.contains(&self.memory_bytes) {
            return Err(format!(
                "a memory limit of {} bytes is out of range; use {} MiB to {} MiB",
                self.memory_bytes,
                Self::MEMORY_BYTES.start() >> 20,
                Self::MEMORY_BYTES.end() >> 20
            ));
        }
        if !Self::PIDS.contains(&self.pids) {
            return Err(format!("a process limit of {} is out of range; use {} to {}", self.pids, Self::PIDS.start(), Self::PIDS.end()));
        }
        Ok(())
    }
}

/// Everything needed to run one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// Labels for people and for re-adoption (service, revision, …).
    pub labels: Vec<(String, String)>,
    pub image: ImageRef,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub cmd: Option<Vec<String>>,
    /// Added to the image's environment (and `PORT`).
    pub env: Vec<(String, String)>,
    /// The port the app listens on inside the instance.
    pub port: u16,
    pub resources: Resources,
    /// Replaces the image's USER when set.
    pub user: Option<String>,
    pub read_only_rootfs: bool,
    /// Run the app under berth's init as PID 1 (signals forwarded, orphans reaped), as Docker's
    /// `--init` does.
    pub init: bool,
    /// What the instance may reach; in force before it starts.
    pub network: InstanceNetwork,
    /// Directories of files from secrets (each on a tmpfs of its own, read-only in the
    /// instance); [`Runtime::update_files`](crate::Runtime::update_files) replaces their files.
    pub files: Vec<FileMount>,
}

/// One directory of files in an instance, e.g. `/run/secrets` with `db-password`: each file
/// `0400` owned by the app's user. Its `Debug` names the files, never their content.
#[derive(Clone, PartialEq, Eq)]
pub struct FileMount {
    /// An absolute directory in the instance.
    pub dir: String,
    /// File name → content.
    pub files: std::collections::BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for FileMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileMount").field("dir", &self.dir).field("files", &self.files.keys().collect::<Vec<_>>()).finish()
    }
}

/// What an instance may open connections to, beside berth's DNS and router on its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct InstanceNetwork {
    /// Whose rules and counters these are: the service's DNS label (empty for one-off instances).
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub egress: berth_core::Egress,
    /// The networks attached: their LANs, and their host endpoints on the gateway.
    #[serde(default)]
    pub networks: Vec<berth_core::NetworkSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum InstanceState {
    Created,
    Running,
    Exited { code: i32, oom_killed: bool },
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstanceState::Created => f.write_str("created"),
            InstanceState::Running => f.write_str("running"),
            InstanceState::Exited { oom_killed: true, .. } => f.write_str("OOM-killed"),
            InstanceState::Exited { code, .. } => write!(f, "exited ({code})"),
        }
    }
}

/// What the runtime knows of an instance now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceStatus {
    pub id: InstanceId,
    pub labels: Vec<(String, String)>,
    pub image: ImageRef,
    pub state: InstanceState,
    /// Where the host reaches the app (`instance-ip:port`), once created.
    pub address: Option<SocketAddr>,
}

/// A deleted instance whose log is still kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredInstance {
    pub id: InstanceId,
    pub labels: Vec<(String, String)>,
    /// Unix seconds.
    pub deleted_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    Started { id: InstanceId },
    Exited { id: InstanceId, code: i32, oom_killed: bool },
}

/// The default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What an instance has used of its limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time since it started, microseconds.
    pub cpu_micros: u64,
    /// Memory in use now, bytes: its working set (what it cannot give back without paging), as
    /// the kubelet counts it.
    pub memory_bytes: u64,
}

/// Connections an instance group tried that its rules refused, towards one class of destination
/// (`host`, `instances`, `metadata`, `link_local`, `private`, `internet`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Denied {
    pub group: String,
    pub destination: String,
    pub count: u64,
}

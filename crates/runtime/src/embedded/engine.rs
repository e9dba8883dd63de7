//! [`EmbeddedRuntime`]: the default [`Runtime`], running instances on this host with nothing but
//! the berth binary. `create` pulls the image into the layer cache, assembles the root
//! filesystem, attaches the network and writes the OCI bundle; `start` launches the instance's
//! shim, detached, and waits for the container to run. All state lives in files under the
//! instance directory, so a restarted server re-adopts running instances and reports the ones
//! that ended while it was away.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_image::{ImageSource, LayerCache, UnpackLimits};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::broadcast;

use super::files::{write_atomic, InstanceFiles};
use super::firewall;
use super::network::{etc_files, Cidr, Network};
use super::oci::{process_plan, runtime_spec, BundlePlan};
use super::rootfs::{Rootfs, RootfsKind};
use super::secret_files;
use crate::{
    Denied, FileMount, ImageRef, InstanceId, InstanceNetwork, InstanceSpec, InstanceState, InstanceStatus, Result, RetiredInstance,
    Runtime, RuntimeError, RuntimeEvent, Usage,
};

/// How long `start` waits for a container to run.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often exits are looked for.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// How much of a deleted instance's log is kept, how long, and how much in all.
/// How much of gone instances' logs is kept, and for how long: the end of each instance's log,
/// for `days`, at most `per_group_bytes` of one service's instances and `total_bytes` in all
/// (the oldest go first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRetention {
    pub per_instance_bytes: u64,
    pub per_group_bytes: u64,
    pub total_bytes: u64,
    pub days: u32,
}

/// Which kept logs (kept at, path, bytes, group) go at `now`: those older than the retention's
/// days, and, newest first, those past its bytes per group or in all.
fn retired_to_drop(mut logs: Vec<(i64, PathBuf, u64, String)>, now: i64, r: &LogRetention) -> Vec<PathBuf> {
    logs.sort_by_key(|l| std::cmp::Reverse(l.0));
    let mut total = 0u64;
    let mut by_group: HashMap<String, u64> = HashMap::new();
    let mut drop = Vec::new();
    for (at, path, len, group) in logs {
        total += len;
        let in_group = by_group.entry(group).or_default();
        *in_group += len;
        if now - at > i64::from(r.days) * 86_400 || total > r.total_bytes || *in_group > r.per_group_bytes {
            drop.push(path);
        }
    }
    drop
}

impl Default for LogRetention {
    fn default() -> Self {
        LogRetention { per_instance_bytes: 1 << 20, per_group_bytes: 64 << 20, total_bytes: 256 << 20, days: 7 }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Every how many watch intervals running instances' supervision is checked.
const GUARD_EVERY: u64 = 5;

/// Settings of the embedded backend.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Instances, the layer cache and network state live below this.
    pub root: PathBuf,
    /// The berth binary, run as `<shim> shim run <instance dir>`.
    pub shim: PathBuf,
    pub bridge: String,
    pub cidr: Cidr,
    /// Prefix of network namespace names.
    pub netns_prefix: String,
    /// Parent of every instance's cgroup (`/<parent>/<id>`).
    pub cgroup_parent: String,
    pub rootfs: RootfsKind,
    /// Masquerade instance traffic leaving the host. Off by default.
    pub outbound_nat: bool,
    /// Ports of the gateway every instance may reach: berth's DNS and router.
    pub open_ports: Vec<(firewall::Proto, u16)>,
    /// What unpacking one image may write.
    pub unpack_limits: UnpackLimits,
    /// berth's init (a static binary on this host), for instances that run under it.
    pub init: Option<PathBuf>,
    /// How much of gone instances' logs is kept.
    pub retention: LogRetention,
}

/// Whether `pid` is the shim of the instance in `dir` (not another process that got its pid).
fn is_shim_of(pid: i32, dir: &std::path::Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.contains(&&b"shim"[..]) && args.contains(&dir.as_os_str().as_encoded_bytes())
}

/// Whether `pid` is in the cgroup `path` (`/<parent>/<id>`): in the memory controller's
/// hierarchy on cgroups v1, in the unified one on v2.
fn in_cgroup(pid: i32, path: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return true };
    let lines: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(':')).filter_map(|(_, rest)| rest.split_once(':')).collect();
    let memory_v1 = lines.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"));
    match memory_v1.or_else(|| lines.iter().find(|(controllers, _)| controllers.is_empty())) {
        Some((_, p)) => *p == path,
        // Nothing to compare with: not evidence of escape.
        None => true,
    }
}

/// What an instance directory records about its instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct InstanceRecord {
    id: InstanceId,
    labels: Vec<(String, String)>,
    repository: String,
    digest: String,
    port: u16,
    address: Option<std::net::Ipv4Addr>,
    /// A fingerprint of the spec it was created from, so create is idempotent.
    fingerprint: String,
    /// The cached layers its root filesystem uses.
    #[serde(default)]
    layers: Vec<String>,
    /// What it may reach (an instance from before networks: public egress, no network).
    #[serde(default)]
    network: InstanceNetwork,
    /// Its directories of files from secrets (in the instance; `secrets/<i>` on the host), and
    /// who owns the files.
    #[serde(default)]
    file_dirs: Vec<String>,
    #[serde(default)]
    file_owner: (u32, u32),
}

fn fingerprint(spec: &InstanceSpec) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("{spec:?}").as_bytes()))
}

/// Unmounts the instance's tmpfs mounts: its bundle and each of its file directories
/// (`<dir>/secrets/<i>`).
fn unmount_tmpfs_mounts(dir: &std::path::Path) {
    secret_files::unmount(&InstanceFiles::new(dir).bundle());
    for e in std::fs::read_dir(dir.join("secrets")).into_iter().flatten().flatten() {
        secret_files::unmount(&e.path());
    }
}

fn backend(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Backend(e.to_string())
}

pub struct EmbeddedRuntime {
    config: EmbeddedConfig,
    cache: LayerCache,
    source: Arc<dyn ImageSource>,
    network: Network,
    events: broadcast::Sender<RuntimeEvent>,
    /// One lock per instance: never two operations on one instance at once.
    locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    /// Instances the last guard found without supervision (see [`confirmed`]).
    suspects: Mutex<HashSet<InstanceId>>,
    /// Held from reading the instances to loading their rules: two reloads at once (a create
    /// and a delete) must not load the one that read the instances first last, which would
    /// leave an instance out of the rules, refused, until the next reload.
    rules: Mutex<()>,
}

/// Of the instances found without supervision now, those also found so at the previous look;
/// `previous` becomes the ones found now. A shim is seen for a moment without its command line
/// while it re-executes itself to watch (right after its container starts), so one look is not
/// evidence; two looks a guard period apart are.
fn confirmed<T>(previous: &mut HashSet<InstanceId>, now: Vec<(InstanceId, T)>) -> Vec<(InstanceId, T)> {
    let seen_before = std::mem::replace(previous, now.iter().map(|(id, _)| id.clone()).collect());
    now.into_iter().filter(|(id, _)| seen_before.contains(id)).collect()
}

impl EmbeddedRuntime {
    /// Opens the runtime: layer cache, network (bridge set up) and a watcher that reports exits,
    /// including those that happened while no server was running.
    pub fn open(config: EmbeddedConfig, source: Arc<dyn ImageSource>) -> Result<Arc<EmbeddedRuntime>> {
        std::fs::create_dir_all(config.root.join("instances")).map_err(backend)?;
        let cache = LayerCache::open(&config.root.join("layers")).map_err(backend)?;
        let network = Network::open(&config.bridge, config.cidr, &config.netns_prefix, &config.root.join("network")).map_err(backend)?;
        if config.outbound_nat {
            super::network::enable_forwarding().map_err(backend)?;
        }
        let rt = Arc::new(EmbeddedRuntime {
            config,
            cache,
            source,
            network,
            events: broadcast::channel(1024).0,
            suspects: Mutex::new(HashSet::new()),
            locks: Mutex::new(HashMap::new()),
            rules: Mutex::new(()),
        });
        rt.sweep_partial();
        // The rules of instances that outlived a server, as they are now.
        rt.apply_rules()?;
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            let mut reported: HashSet<InstanceId> = HashSet::new();
            for tick in 0u64.. {
                // Waiting first lets whoever opened the runtime subscribe to its events before
                // instances that ended while it was closed are reported.
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(rt) = weak.upgrade() else { return };
                if tick % GUARD_EVERY == 0 {
                    rt.guard_instances();
                    for dev in rt.network.keep_forwarding() {
                        tracing::warn!(device = %dev, "IPv4 forwarding was turned off on a device instances need; turned it on again");
                    }
                    if rt.config.outbound_nat && std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
                        tracing::warn!("IPv4 forwarding was turned off on the host; outbound NAT needs it: turned it on again");
                        let _ = super::network::enable_forwarding();
                    }
                }
                rt.report_exits(&mut reported);
            }
        });
        Ok(rt)
    }

    /// The instances' gateway: the bridge's address, where they reach berth's DNS and router.
    pub fn gateway(&self) -> std::net::Ipv4Addr {
        self.config.cidr.gateway()
    }

    /// Removes what the runtime put on the host — the bridge with its route and firewall tables,
    /// the cgroup parent — when no instance remains (a clean stop with nothing running, or after
    /// [`EmbeddedRuntime::remove_all`]). Returns whether it did.
    pub async fn release_host_if_idle(&self) -> Result<bool> {
        if !self.list().await?.is_empty() {
            return Ok(false);
        }
        self.network.remove_bridge().map_err(backend)?;
        // The instances' cgroups are gone with them; the (then empty) parent is berth's alone: one
        // directory on cgroup v2, one per controller hierarchy on v1.
        let root = std::path::Path::new("/sys/fs/cgroup");
        let hierarchies = std::iter::once(root.to_owned()).chain(std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()));
        for parent in hierarchies.map(|h| h.join(&self.config.cgroup_parent)).filter(|p| p.is_dir()) {
            // Leftovers of instances whose shim died before cleaning up: empty, so removable.
            for child in std::fs::read_dir(&parent).into_iter().flatten().flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(child.path());
            }
            std::fs::remove_dir(&parent).map_err(|e| RuntimeError::Backend(format!("removing the cgroup {}: {e}", parent.display())))?;
        }
        Ok(true)
    }

    /// Stops and deletes every instance, then releases the host (`berth uninstall`); returns how
    /// many instances there were.
    pub async fn remove_all(&self) -> Result<usize> {
        let all = self.list().await?;
        for st in &all {
            self.delete(&st.id).await?;
        }
        self.release_host_if_idle().await?;
        Ok(all.len())
    }

    /// Removes cached layers that no instance uses; returns how many.
    pub fn collect_layers(&self) -> Result<usize> {
        let mut in_use = HashSet::new();
        for e in std::fs::read_dir(self.config.root.join("instances")).map_err(backend)?.flatten() {
            if let Ok(id) = InstanceId::new(e.file_name().to_string_lossy()) {
                match self.record(&id) {
                    Some(rec) => in_use.extend(rec.layers.iter().filter_map(|d| d.parse().ok())),
                    // An instance being created has no record yet: keep everything this round.
                    None => return Ok(0),
                }
            }
        }
        let removed = self.cache.collect(&in_use).map_err(backend)?;
        if !removed.is_empty() {
            tracing::info!(layers = removed.len(), "collected unused layers");
        }
        Ok(removed.len())
    }

    fn dir(&self, id: &InstanceId) -> PathBuf {
        self.config.root.join("instances").join(id.as_str())
    }

    fn lock(&self, id: &InstanceId) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(id.clone()).or_default().clone()
    }

    fn cgroup(&self, id: &InstanceId) -> String {
        format!("/{}/{}", self.config.cgroup_parent, id)
    }

    /// Removes what creates a crash cut short left: instance directories with no record (the
    /// record is written last), and namespaces and addresses of instances that have no directory.
    fn sweep_partial(&self) {
        for e in std::fs::read_dir(self.config.root.join("instances")).into_iter().flatten().flatten() {
            let Ok(id) = InstanceId::new(e.file_name().to_string_lossy()) else { continue };
            if self.record(&id).is_some() {
                continue;
            }
            let dir = e.path();
            tracing::warn!(instance = %id, "removing an instance a crash left half made");
            if dir.join("state").exists() {
                let _ = std::process::Command::new(&self.config.shim).arg("shim").arg("delete").arg(&dir).status();
            }
            unmount_tmpfs_mounts(&dir);
            let removed = Rootfs::at(&dir, self.config.rootfs)
                .remove()
                .map_err(backend)
                .and_then(|()| self.network.detach(id.as_str()).map_err(backend))
                .and_then(|()| std::fs::remove_dir_all(&dir).map_err(backend));
            if let Err(e) = removed {
                tracing::warn!(instance = %id, error = %e, "removing a half-made instance failed");
            }
        }
        for id in self.network.orphans(|id| self.config.root.join("instances").join(id).exists()) {
            tracing::warn!(instance = %id, "removing the network of an instance that is gone");
            if let Err(e) = self.network.detach(&id) {
                tracing::warn!(instance = %id, error = %e, "removing an orphaned network namespace failed");
            }
        }
    }

    /// Every instance's record.
    fn records(&self) -> Result<Vec<InstanceRecord>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.config.root.join("instances")).map_err(backend)?.flatten() {
            if let Ok(id) = InstanceId::new(e.file_name().to_string_lossy()) {
                out.extend(self.record(&id));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Loads the packet filter for every instance there is.
    fn apply_rules(&self) -> Result<()> {
        let _in_order = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let records = self.records()?;
        let members = records
            .iter()
            .filter_map(|r| {
                r.address.map(|address| firewall::Member { address, veth: self.network.host_veth(r.id.as_str()), network: &r.network })
            })
            .collect();
        self.network.apply_rules(members, self.config.outbound_nat, &self.config.open_ports).map_err(backend)
    }

    fn record(&self, id: &InstanceId) -> Option<InstanceRecord> {
        let f = InstanceFiles::new(&self.dir(id));
        serde_json::from_slice(&std::fs::read(f.dir.join("instance.json")).ok()?).ok()
    }

    /// The instance's state, from its files.
    fn state(files: &InstanceFiles) -> InstanceState {
        if let Some(e) = files.read_exit() {
            return InstanceState::Exited { code: e.code, oom_killed: e.oom_killed };
        }
        if files.start_error().exists() {
            return InstanceState::Exited { code: -1, oom_killed: false };
        }
        match InstanceFiles::read_pid(&files.container_pid()) {
            Some(pid) if kill(Pid::from_raw(pid), None).is_ok() => InstanceState::Running,
            // The process is gone but its shim is still up: it is about to record the exit.
            Some(_) if InstanceFiles::read_pid(&files.shim_pid()).is_some_and(|shim| is_shim_of(shim, &files.dir)) => {
                InstanceState::Running
            }
            // The pid is gone and the shim recorded nothing: it was killed with its container.
            Some(_) => InstanceState::Exited { code: -1, oom_killed: false },
            None => InstanceState::Created,
        }
    }

    fn status(&self, rec: &InstanceRecord) -> Result<InstanceStatus> {
        let files = InstanceFiles::new(&self.dir(&rec.id));
        Ok(InstanceStatus {
            id: rec.id.clone(),
            labels: rec.labels.clone(),
            image: ImageRef { repository: rec.repository.clone(), digest: rec.digest.parse().map_err(backend)? },
            state: Self::state(&files),
            address: rec.address.map(|a| SocketAddr::from((a, rec.port))),
        })
    }

    /// Checks that every running instance is still under supervision: its shim alive (the
    /// process that holds its output and records its end) and its process still in its cgroup
    /// (its limits). An instance found without either at two looks in a row is killed — a lost
    /// shim's end is recorded here — so it is reported as failed rather than left running
    /// unwatched or unlimited.
    fn guard_instances(&self) {
        let Ok(entries) = std::fs::read_dir(self.config.root.join("instances")) else { return };
        let mut lost = Vec::new();
        for e in entries.flatten() {
            let Ok(id) = InstanceId::new(e.file_name().to_string_lossy()) else { continue };
            let files = InstanceFiles::new(&e.path());
            if Self::state(&files) != InstanceState::Running {
                continue;
            }
            let Some(pid) = InstanceFiles::read_pid(&files.container_pid()) else { continue };
            let shim_alive = InstanceFiles::read_pid(&files.shim_pid()).is_some_and(|shim| is_shim_of(shim, &files.dir));
            let why = if !shim_alive {
                "its shim is gone"
            } else if !in_cgroup(pid, &self.cgroup(&id)) {
                "its process left its cgroup"
            } else {
                continue;
            };
            lost.push((id, (files, pid, shim_alive, why)));
        }
        let lost = confirmed(&mut self.suspects.lock().unwrap_or_else(|p| p.into_inner()), lost);
        for (id, (files, pid, shim_alive, why)) in lost {
            tracing::warn!(instance = %id, reason = why, "an instance lost its supervision; killing it");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            if !shim_alive {
                let record = super::files::ExitRecord { code: 137, signal: Some(9), oom_killed: false, at: unix_now() };
                if let Err(e) = write_atomic(&files.exit(), &serde_json::to_vec(&record).unwrap_or_default()) {
                    tracing::warn!(instance = %id, error = %e, "recording the end of an instance failed");
                }
            }
        }
    }

    fn report_exits(&self, reported: &mut HashSet<InstanceId>) {
        let Ok(entries) = std::fs::read_dir(self.config.root.join("instances")) else { return };
        for e in entries.flatten() {
            let Ok(id) = InstanceId::new(e.file_name().to_string_lossy()) else { continue };
            let files = InstanceFiles::new(&e.path());
            if let InstanceState::Exited { code, oom_killed } = Self::state(&files) {
                if files.container_pid().exists() && reported.insert(id.clone()) {
                    let _ = self.events.send(RuntimeEvent::Exited { id, code, oom_killed });
                }
            } else {
                reported.remove(&id);
            }
        }
    }

    async fn build(&self, spec: &InstanceSpec, files: &InstanceFiles) -> Result<InstanceRecord> {
        let digest = spec.image.digest.to_string();
        let tmp = self.config.root.join("tmp");
        let limits = self.config.unpack_limits;
        let image = format!("{}@{digest}", spec.image.repository);
        // Unpacking checks the same deadline itself; this bounds the downloads too.
        let pulled = tokio::time::timeout(
            limits.timeout,
            berth_image::pull(&*self.source, &self.cache, &spec.image.repository, &digest, &tmp, limits),
        )
        .await
        .map_err(|_| {
            RuntimeError::Image(
                image.clone(),
                format!("pulling took longer than {} s (image.unpack_timeout_secs)", limits.timeout.as_secs()),
            )
        })?
        .map_err(|e| RuntimeError::Image(image, e.to_string()))?;
        // The bundle's spec holds the environment, values from secrets included: on a tmpfs, so
        // they never reach a disk.
        secret_files::mount_tmpfs(&files.bundle(), 0o700).map_err(|e| backend(format!("mounting a tmpfs for the bundle: {e}")))?;
        let rootfs = Rootfs::assemble(&files.dir, &pulled.layer_dirs, self.config.rootfs).map_err(backend)?;
        let att = self.network.attach(spec.id.as_str()).map_err(backend)?;
        std::fs::create_dir_all(files.etc()).map_err(backend)?;
        let (hosts, resolv) = etc_files(spec.id.as_str(), Some(att.address), self.config.cidr.gateway());
        std::fs::write(files.etc().join("hosts"), hosts).map_err(backend)?;
        std::fs::write(files.etc().join("resolv.conf"), resolv).map_err(backend)?;
        std::fs::write(files.etc().join("hostname"), format!("{}\n", spec.id)).map_err(backend)?;
        let process = process_plan(&pulled.config, spec, &rootfs.path)?;
        let init = match (spec.init, &self.config.init) {
            (false, _) => None,
            (true, Some(init)) => Some(init.as_path()),
            (true, None) => {
                return Err(RuntimeError::InvalidSpec(
                    "this berth has no init binary (it was built without one); run without --init".into(),
                ))
            }
        };
        let cgroup = self.cgroup(&spec.id);
        let mut file_mounts = Vec::new();
        for (i, m) in spec.files.iter().enumerate() {
            let host = files.dir.join("secrets").join(i.to_string());
            secret_files::mount_tmpfs(&host, 0o755).map_err(|e| backend(format!("mounting a tmpfs for {}: {e}", m.dir)))?;
            secret_files::write(&host, &m.files, process.uid, process.gid)
                .map_err(|e| backend(format!("writing the files of {}: {e}", m.dir)))?;
            file_mounts.push((host, m.dir.clone()));
        }
        let oci = runtime_spec(&BundlePlan {
            hostname: spec.id.as_str(),
            rootfs: &rootfs.path,
            read_only_rootfs: spec.read_only_rootfs,
            process: &process,
            resources: spec.resources,
            cgroup_path: &cgroup,
            netns: Some(&att.netns),
            etc_dir: &files.etc(),
            init,
            files: &file_mounts,
        });
        write_atomic(&files.config(), &serde_json::to_vec_pretty(&oci).map_err(backend)?).map_err(backend)?;
        Ok(InstanceRecord {
            id: spec.id.clone(),
            labels: spec.labels.clone(),
            repository: spec.image.repository.clone(),
            digest,
            port: spec.port,
            address: Some(att.address),
            fingerprint: fingerprint(spec),
            layers: pulled.layers.iter().map(ToString::to_string).collect(),
            network: spec.network.clone(),
            file_dirs: spec.files.iter().map(|m| m.dir.clone()).collect(),
            file_owner: (process.uid, process.gid),
        })
    }

    /// Frees everything an instance holds (container state, cgroups, mount, netns, address, files).
    async fn teardown(&self, id: &InstanceId) -> Result<()> {
        let dir = self.dir(id);
        self.keep_log(id);
        if dir.join("state").exists() {
            let out =
                tokio::process::Command::new(&self.config.shim).arg("shim").arg("delete").arg(&dir).output().await.map_err(backend)?;
            if !out.status.success() {
                return Err(RuntimeError::Backend(format!("deleting container {id}: {}", String::from_utf8_lossy(&out.stderr).trim())));
            }
        }
        Rootfs::at(&dir, self.config.rootfs).remove().map_err(backend)?;
        unmount_tmpfs_mounts(&dir);
        self.network.detach(id.as_str()).map_err(backend)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(backend)?;
        }
        self.apply_rules()
    }

    fn retired_dir(&self) -> PathBuf {
        self.config.root.join("retired")
    }

    /// Keeps the end of a deleted instance's log, with its labels and group, in `retired/`; then
    /// drops kept logs as the [`LogRetention`] says.
    fn keep_log(&self, id: &InstanceId) {
        let (Some(rec), dir) = (self.record(id), self.retired_dir()) else { return };
        let files = InstanceFiles::new(&self.dir(id));
        let Ok(text) = std::fs::read(files.log()) else { return };
        let start = text.len().saturating_sub(usize::try_from(self.config.retention.per_instance_bytes).unwrap_or(usize::MAX));
        // From a line's start.
        let start = text[start..].iter().position(|&b| b == b'\n').filter(|_| start > 0).map_or(start, |p| start + p + 1);
        let meta = serde_json::json!({ "labels": rec.labels, "group": rec.network.group, "deleted_at": unix_now() });
        let kept = std::fs::create_dir_all(&dir)
            .and_then(|()| write_atomic(&dir.join(format!("{id}.log")), &text[start..]))
            .and_then(|()| write_atomic(&dir.join(format!("{id}.json")), meta.to_string().as_bytes()));
        if let Err(e) = kept {
            tracing::warn!(instance = %id, error = %e, "keeping the log of a deleted instance failed");
        }
        self.prune_retired();
    }

    fn prune_retired(&self) {
        let r = self.config.retention;
        let group_of = |log: &std::path::Path| -> String {
            let meta = std::fs::read(log.with_extension("json")).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            meta.and_then(|m| m["group"].as_str().map(str::to_owned)).unwrap_or_default()
        };
        let logs: Vec<(i64, PathBuf, u64, String)> = std::fs::read_dir(self.retired_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| {
                let at = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs() as i64);
                (at, e.path(), e.metadata().map(|m| m.len()).unwrap_or(0), group_of(&e.path()))
            })
            .collect();
        for path in retired_to_drop(logs, unix_now(), &r) {
            let _ = std::fs::remove_file(path.with_extension("json"));
            let _ = std::fs::remove_file(&path);
        }
    }

    async fn wait_exit(files: &InstanceFiles, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !matches!(Self::state(files), InstanceState::Running) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn stop_locked(&self, id: &InstanceId, grace: Duration) -> Result<()> {
        let files = InstanceFiles::new(&self.dir(id));
        if Self::state(&files) != InstanceState::Running {
            return Ok(());
        }
        let pid = InstanceFiles::read_pid(&files.container_pid()).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        let pid = Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        if Self::wait_exit(&files, grace).await {
            return Ok(());
        }
        let _ = kill(pid, Signal::SIGKILL);
        if Self::wait_exit(&files, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(RuntimeError::Backend(format!("instance {id} did not die after SIGKILL")))
        }
    }
}

/// The CPU time and working set of the cgroup at `path` (below the hierarchy roots), from cgroup
/// v2's files or v1's cpuacct and memory controllers; `None` when it is not there.
fn cgroup_usage(path: &str) -> Option<Usage> {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let rel = path.trim_start_matches('/');
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let stat = |text: &str, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.trim().parse::<u64>().ok()))
    };
    let v2 = root.join(rel);
    let (cpu_micros, used, inactive) = if let Some(cpu) = read(v2.join("cpu.stat")) {
        let memory: u64 = read(v2.join("memory.current")).and_then(|t| t.trim().parse().ok())?;
        let inactive = read(v2.join("memory.stat")).and_then(|t| stat(&t, "inactive_file")).unwrap_or(0);
        (stat(&cpu, "usage_usec")?, memory, inactive)
    } else {
        let nanos: u64 = read(root.join("cpuacct").join(rel).join("cpuacct.usage"))?.trim().parse().ok()?;
        let memory = root.join("memory").join(rel);
        let used: u64 = read(memory.join("memory.usage_in_bytes")).and_then(|t| t.trim().parse().ok())?;
        let inactive = read(memory.join("memory.stat")).and_then(|t| stat(&t, "total_inactive_file")).unwrap_or(0);
        (nanos / 1000, used, inactive)
    };
    Some(Usage { cpu_micros, memory_bytes: used.saturating_sub(inactive) })
}

#[async_trait::async_trait]
impl Runtime for EmbeddedRuntime {
    async fn create(&self, spec: InstanceSpec) -> Result<InstanceStatus> {
        spec.resources.validate().map_err(RuntimeError::InvalidSpec)?;
        let lock = self.lock(&spec.id);
        let _guard = lock.lock().await;
        if let Some(rec) = self.record(&spec.id) {
            if rec.fingerprint == fingerprint(&spec) {
                return self.status(&rec);
            }
            return Err(RuntimeError::InvalidState {
                id: spec.id.clone(),
                state: "created with another spec".into(),
                hint: "delete it first",
            });
        }
        let files = InstanceFiles::new(&self.dir(&spec.id));
        match self.build(&spec, &files).await {
            Ok(rec) => {
                // Its rules are in force before it can start.
                let recorded = write_atomic(&files.dir.join("instance.json"), &serde_json::to_vec_pretty(&rec).map_err(backend)?)
                    .map_err(backend)
                    .and_then(|()| self.apply_rules());
                if let Err(e) = recorded {
                    if let Err(cleanup) = self.teardown(&spec.id).await {
                        tracing::warn!(instance = %spec.id, error = %cleanup, "cleaning up a failed create");
                    }
                    return Err(e);
                }
                tracing::info!(instance = %spec.id, address = ?rec.address, "instance created");
                self.status(&rec)
            }
            Err(e) => {
                if let Err(cleanup) = self.teardown(&spec.id).await {
                    tracing::warn!(instance = %spec.id, error = %cleanup, "cleaning up a failed create");
                }
                Err(e)
            }
        }
    }

    async fn start(&self, id: &InstanceId) -> Result<InstanceStatus> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let rec = self.record(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        let files = InstanceFiles::new(&self.dir(id));
        match Self::state(&files) {
            InstanceState::Running => return self.status(&rec),
            InstanceState::Exited { .. } => {
                // A restart: drop the old container, keep the instance's files and network.
                let out = tokio::process::Command::new(&self.config.shim)
                    .arg("shim")
                    .arg("delete")
                    .arg(&files.dir)
                    .output()
                    .await
                    .map_err(backend)?;
                if !out.status.success() {
                    return Err(RuntimeError::Backend(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
                }
                for f in [files.exit(), files.container_pid(), files.start_error(), files.shim_pid()] {
                    let _ = std::fs::remove_file(f);
                }
            }
            InstanceState::Created => {}
        }
        let shim_log = std::fs::File::create(files.dir.join("shim.log")).map_err(backend)?;
        let mut child = std::process::Command::new(&self.config.shim)
            .arg("shim")
            .arg("run")
            .arg(&files.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shim_log)
            .spawn()
            .map_err(|e| RuntimeError::Backend(format!("starting the shim {}: {e}", self.config.shim.display())))?;
        // The shim is detached (own session); reap it when it ends so it leaves no zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if files.container_pid().exists() {
                break;
            }
            if let Ok(e) = std::fs::read_to_string(files.start_error()) {
                return Err(RuntimeError::Backend(format!("instance {id} did not start: {}", e.trim())));
            }
            if Instant::now() > deadline {
                return Err(RuntimeError::Backend(format!("instance {id} did not start within {START_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = self.events.send(RuntimeEvent::Started { id: id.clone() });
        tracing::info!(instance = %id, "instance started");
        self.status(&rec)
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<InstanceStatus> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let rec = self.record(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        self.stop_locked(id, grace).await?;
        self.status(&rec)
    }

    async fn delete(&self, id: &InstanceId) -> Result<()> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        self.stop_locked(id, Duration::ZERO).await?;
        self.teardown(id).await?;
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        tracing::info!(instance = %id, "instance deleted");
        Ok(())
    }

    async fn inspect(&self, id: &InstanceId) -> Result<Option<InstanceStatus>> {
        self.record(id).map(|r| self.status(&r)).transpose()
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>> {
        self.records()?.iter().map(|r| self.status(r)).collect()
    }

    async fn logs(&self, id: &InstanceId, since: usize) -> Result<Vec<String>> {
        let path = match self.record(id) {
            Some(_) => InstanceFiles::new(&self.dir(id)).log(),
            None => Some(self.retired_dir().join(format!("{id}.log")))
                .filter(|p| p.exists())
                .ok_or_else(|| RuntimeError::NotFound(id.clone()))?,
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Ok(text.lines().skip(since).map(str::to_owned).collect())
    }

    async fn usage(&self, id: &InstanceId) -> Result<Option<Usage>> {
        if self.record(id).is_none() {
            return Ok(None);
        }
        Ok(cgroup_usage(&self.cgroup(id)))
    }

    async fn denied(&self) -> Result<Vec<Denied>> {
        let counters = firewall::counters(&self.config.bridge).map_err(backend)?;
        Ok(counters
            .iter()
            .filter_map(|(name, (packets, _))| {
                let (group, class) = firewall::counter_of(name)?;
                Some(Denied { group: group.to_owned(), destination: class.to_owned(), count: *packets })
            })
            .collect())
    }

    async fn update_files(&self, id: &InstanceId, files: Vec<FileMount>) -> Result<()> {
        let lock = self.lock(id);
        let _guard = lock.lock().await;
        let rec = self.record(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        for m in files {
            let i = rec.file_dirs.iter().position(|d| *d == m.dir).ok_or_else(|| {
                RuntimeError::InvalidSpec(format!("instance {id} has no file directory {} (it was created without it)", m.dir))
            })?;
            let host = self.dir(id).join("secrets").join(i.to_string());
            let (uid, gid) = rec.file_owner;
            secret_files::write(&host, &m.files, uid, gid).map_err(|e| backend(format!("writing the files of {}: {e}", m.dir)))?;
        }
        Ok(())
    }

    async fn check_network(&self, network: &berth_core::NetworkSpec) -> Result<()> {
        self.network.check(network).map_err(RuntimeError::Conflict)
    }

    async fn retired(&self) -> Result<Vec<RetiredInstance>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.retired_dir()).into_iter().flatten().flatten() {
            let path = e.path();
            let (Some(stem), Some("json")) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|x| x.to_str())) else {
                continue;
            };
            let Ok(id) = InstanceId::new(stem) else { continue };
            let Some(meta) = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok()) else { continue };
            let labels = serde_json::from_value(meta["labels"].clone()).unwrap_or_default();
            out.push(RetiredInstance { id, labels, deleted_at: meta["deleted_at"].as_i64().unwrap_or(0) });
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.deleted_at));
        Ok(out)
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervision_is_lost_only_when_seen_lost_twice_in_a_row() -> Result<()> {
        let (a, b) = (InstanceId::new("a")?, InstanceId::new("b")?);
        let mut previous = HashSet::new();
        // `a`'s shim re-executing itself: seen once, then fine. `b`'s shim gone for good.
        assert!(confirmed(&mut previous, vec![(a.clone(), ()), (b.clone(), ())]).is_empty(), "killed on one look");
        let now = confirmed(&mut previous, vec![(b.clone(), ())]);
        assert_eq!(now.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), [b]);
        assert!(confirmed(&mut previous, vec![(a, ())]).is_empty(), "a look between two of `a`'s found it supervised");
        Ok(())
    }

    #[test]
    fn gone_instances_logs_are_kept_per_service_in_all_and_for_days() {
        let r = LogRetention { per_instance_bytes: 100, per_group_bytes: 250, total_bytes: 400, days: 7 };
        let log = |age_days: i64, name: &str, group: &str| (1_000_000 - age_days * 86_400, PathBuf::from(name), 100, group.to_owned());
        let logs = vec![
            log(0, "web-1", "web"),
            log(1, "web-2", "web"),
            log(2, "web-3", "web"),
            log(0, "api-1", "api"),
            log(1, "api-2", "api"),
            log(8, "api-old", "api"),
        ];
        let mut dropped: Vec<String> = retired_to_drop(logs, 1_000_000, &r).into_iter().map(|p| p.display().to_string()).collect();
        dropped.sort();
        // web-3: a third 100 past web's 250; api-old: 8 days old (and past 400 in all).
        assert_eq!(dropped, ["api-old", "web-3"]);
    }
}

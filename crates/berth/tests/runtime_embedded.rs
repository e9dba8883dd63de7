//! The embedded runtime end to end (as root): three instances of `examples/hello` answer over
//! their own addresses, limits are in the cgroup files, a memory hog is OOM-killed and reported,
//! a new runtime (a restarted server) re-adopts running instances, stop escalates to SIGKILL,
//! and delete leaves no namespace, veth, cgroup, mount or directory behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use berth_core::Digest;
use berth_image::build::{build_from_binary, BuiltImage, ImageSettings};
use berth_image::{ImageSource, PullError};
use berth_runtime::embedded::network::Cidr;
use berth_runtime::embedded::rootfs::RootfsKind;
use berth_runtime::embedded::{EmbeddedConfig, EmbeddedRuntime};
use berth_runtime::{ImageRef, InstanceId, InstanceSpec, InstanceState, Resources, Runtime, RuntimeEvent};
use berth_testkit::{hello_binary, RuntimeSandbox};
use support::*;

/// Serves one built image from memory.
struct MemorySource(BuiltImage);

#[async_trait::async_trait]
impl ImageSource for MemorySource {
    async fn manifest(&self, _repo: &str, _reference: &str) -> std::result::Result<(String, Vec<u8>), PullError> {
        Ok((self.0.manifest.media_type.to_owned(), self.0.manifest.data.clone()))
    }
    async fn blob(&self, _repo: &str, digest: &Digest, dest: &Path) -> std::result::Result<(), PullError> {
        let b = std::iter::once(&self.0.config)
            .chain(&self.0.layers)
            .find(|b| &b.digest == digest)
            .ok_or_else(|| PullError::NotFound(digest.to_string()))?;
        std::fs::write(dest, &b.data).map_err(|e| PullError::Io { context: "writing".into(), source: e })
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build().get(&format!("http://{addr}{path}")).call().ok()?.into_string().ok()
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    for _ in 0..200 {
        if let Some(v) = f() {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

async fn next_exit(events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>, id: &InstanceId) -> Result<(i32, bool)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(RuntimeEvent::Exited { id: got, code, oom_killed })) if &got == id => return Ok((code, oom_killed)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(format!("no exit event for {id}").into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_limits_oom_adoption_and_cleanup() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("containers need root: this test runs as root (CI does)".into());
    }
    let tmp = tempfile::tempdir()?;
    let n = std::process::id() % 200;
    let root = tmp.path().join("runtime");
    let sb = RuntimeSandbox {
        berth: PathBuf::from(BIN),
        instances: root.join("instances"),
        bridge: format!("btr{n}"),
        cidr: format!("10.251.{n}.0/24"),
        netns_prefix: format!("btr{n}-"),
        cgroup_parent: format!("berth-test-{}", std::process::id()),
    };
    let bin = hello_binary(tmp.path())?;
    let image =
        build_from_binary(&bin, false, &ImageSettings { port: Some(8080), env: vec!["HELLO_VERSION=v1".into()], ..Default::default() })?;
    let digest = image.manifest.digest.clone();
    let source: Arc<dyn ImageSource> = Arc::new(MemorySource(image));
    let config = EmbeddedConfig {
        root: root.clone(),
        shim: PathBuf::from(BIN),
        bridge: sb.bridge.clone(),
        cidr: sb.cidr.parse::<Cidr>()?,
        netns_prefix: sb.netns_prefix.clone(),
        cgroup_parent: sb.cgroup_parent.clone(),
        rootfs: RootfsKind::Overlay,
        outbound_nat: false,
        open_ports: Vec::new(),
        unpack_limits: Default::default(),
        init: None,
        retention: Default::default(),
    };
    let rt = EmbeddedRuntime::open(config.clone(), source.clone())?;
    let mut events = rt.events();
    let spec = |i: usize, memory: u64| -> Result<InstanceSpec> {
        Ok(InstanceSpec {
            id: InstanceId::new(format!("hello-{i}"))?,
            labels: vec![("service".into(), "hello".into())],
            image: ImageRef { repository: "hello".into(), digest: digest.clone() },
            entrypoint: None,
            cmd: None,
            env: vec![],
            port: 8080,
            resources: Resources { cpu_millis: 250, memory_bytes: memory, pids: 128 },
            user: None,
            read_only_rootfs: false,
            files: Vec::new(),
            init: false,
            network: Default::default(),
        })
    };

    let mut addrs = Vec::new();
    for i in 0..3 {
        let s = spec(i, 64 << 20)?;
        let created = rt.create(s.clone()).await?;
        assert_eq!(created.state, InstanceState::Created);
        // The bundle (its spec holds the environment) lives on a tmpfs, never on a disk.
        let bundle = root.join(format!("instances/hello-{i}/bundle")).display().to_string();
        let mounts = std::fs::read_to_string("/proc/mounts")?;
        assert!(mounts.lines().any(|l| l.starts_with(&format!("tmpfs {bundle} tmpfs"))), "no tmpfs at {bundle}");
        assert_eq!(rt.create(s.clone()).await?, created, "create is idempotent");
        let started = rt.start(&s.id).await?;
        assert_eq!(started.state, InstanceState::Running);
        addrs.push(started.address.ok_or("no address")?);
    }
    for (i, a) in addrs.iter().enumerate() {
        let body = wait_for("hello to answer", || get(*a, "/")).await?;
        assert_eq!(body.trim(), format!("hello from v1 on hello-{i}"));
    }
    let cg = |ctl: &str, id: &str, file: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(ctl).join(&sb.cgroup_parent).join(id).join(file))
            .map(|s| s.trim().to_owned())
    };
    assert_eq!(cg("memory", "hello-0", "memory.limit_in_bytes")?, (64u64 << 20).to_string());
    assert_eq!(cg("cpu", "hello-0", "cpu.cfs_quota_us")?, "25000");
    assert_eq!(cg("pids", "hello-0", "pids.max")?, "128");

    // A memory hog is OOM-killed and reported.
    let _ = get(addrs[2], "/hog");
    let id2 = InstanceId::new("hello-2")?;
    assert_eq!(next_exit(&mut events, &id2).await?, (137, true));
    assert_eq!(rt.inspect(&id2).await?.map(|s| s.state), Some(InstanceState::Exited { code: 137, oom_killed: true }));

    // A create a crash cut short: a directory with no record, a namespace of an instance that is
    // gone. The next start removes both.
    let half = config.root.join("instances/hello-9");
    std::fs::create_dir_all(half.join("bundle"))?;
    let orphan_ns = format!("{}hello-8", sb.netns_prefix);
    assert!(Command::new("ip").args(["netns", "add", &orphan_ns]).status()?.success());

    // A restarted server re-adopts: instances kept running, the dead one is reported again.
    drop(events);
    drop(rt);
    let rt = EmbeddedRuntime::open(config, source)?;
    assert!(!half.exists(), "a half-made instance was left");
    assert!(!std::path::Path::new("/run/netns").join(&orphan_ns).exists(), "an orphaned namespace was left");
    let mut events = rt.events();
    let states: Vec<(String, InstanceState)> = rt.list().await?.into_iter().map(|s| (s.id.to_string(), s.state)).collect();
    assert_eq!(
        states,
        [
            ("hello-0".into(), InstanceState::Running),
            ("hello-1".into(), InstanceState::Running),
            ("hello-2".into(), InstanceState::Exited { code: 137, oom_killed: true })
        ]
    );
    assert_eq!(next_exit(&mut events, &id2).await?, (137, true));
    assert!(get(addrs[0], "/").is_some_and(|b| b.contains("hello-0")));

    // Stop: hello leaves on SIGTERM, well within the grace period.
    let id0 = InstanceId::new("hello-0")?;
    let stopped = rt.stop(&id0, Duration::from_millis(300)).await?;
    assert_eq!(stopped.state, InstanceState::Exited { code: 0, oom_killed: false });
    // Start again after a stop: a restart.
    assert_eq!(rt.start(&id0).await?.state, InstanceState::Running);
    wait_for("the restarted instance", || get(addrs[0], "/")).await?;

    // Supervision lost: a shim killed behind berth's back, and a process moved out of its
    // cgroup (out of its limits), each end the instance, reported as an exit.
    let id1 = InstanceId::new("hello-1")?;
    let shim = std::fs::read_to_string(root.join("instances/hello-1/shim.pid"))?.trim().parse::<i32>()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim), nix::sys::signal::Signal::SIGKILL)?;
    assert_eq!(next_exit(&mut events, &id1).await?, (137, false));
    let pid = std::fs::read_to_string(root.join("instances/hello-0/container.pid"))?.trim().to_owned();
    let procs = ["/sys/fs/cgroup/memory/cgroup.procs", "/sys/fs/cgroup/cgroup.procs"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no cgroup.procs")?;
    std::fs::write(procs, &pid)?;
    assert_eq!(next_exit(&mut events, &id0).await?, (137, false));

    // Creates at once reload the rules at once: every instance is in the rules that stay loaded
    // (a reload that read the instances earlier must not be loaded last).
    let rt = Arc::new(rt);
    let tasks: Vec<_> = (3..9)
        .map(|i| {
            let (rt, s) = (rt.clone(), spec(i, 64 << 20).map_err(|e| e.to_string()));
            tokio::spawn(async move { rt.create(s?).await.map_err(|e| e.to_string()) })
        })
        .collect();
    let mut made = Vec::new();
    for t in tasks {
        made.push(t.await??);
    }
    let rules = String::from_utf8_lossy(
        &Command::new("nft").args(["-j", "list", "table", "inet", &format!("berth_{}", sb.bridge)]).output()?.stdout,
    )
    .into_owned();
    for m in &made {
        let addr = m.address.ok_or("a created instance has no address")?.ip().to_string();
        assert!(rules.contains(&format!("\"{addr}\"")), "instance {} ({addr}) is not in the rules loaded last", m.id);
    }
    for m in &made {
        rt.delete(&m.id).await?;
    }
    let rt = Arc::try_unwrap(rt).map_err(|_| "the runtime is still shared")?;

    // Layers in use are kept; once no instance uses them they are collected.
    assert_eq!(rt.collect_layers()?, 0);
    // Delete leaves nothing behind.
    for i in 0..3 {
        rt.delete(&InstanceId::new(format!("hello-{i}"))?).await?;
    }
    assert_eq!(rt.collect_layers()?, 1);
    // Their logs are kept a while after them.
    assert_eq!(rt.retired().await?.len(), 3);
    let kept = rt.logs(&InstanceId::new("hello-0")?, 0).await?;
    assert!(kept.iter().any(|l| l.contains("listening on port 8080")), "{kept:?}");
    assert_eq!(std::fs::read_dir(root.join("layers/layers/sha256"))?.count(), 0);
    assert!(rt.list().await?.is_empty());
    let netns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout).into_owned();
    assert!(!netns.contains(&sb.netns_prefix), "{netns}");
    let veths = String::from_utf8_lossy(&Command::new("ip").args(["link", "show", "master", &sb.bridge]).output()?.stdout).into_owned();
    assert!(veths.trim().is_empty(), "{veths}");
    for ctl in ["memory", "cpu", "pids"] {
        let left: Vec<_> = std::fs::read_dir(Path::new("/sys/fs/cgroup").join(ctl).join(&sb.cgroup_parent))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .collect();
        assert!(left.is_empty(), "{ctl} cgroups left: {left:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&root.display().to_string()), "mounts left");
    assert_eq!(std::fs::read_dir(root.join("instances"))?.count(), 0);
    Ok(())
}

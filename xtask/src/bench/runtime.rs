//! `cargo xtask bench runtime` (as root): berth's embedded runtime against Debian's runc 1.1.5
//! and umoci, alternating rounds.
//!
//! - Start: from the start call until `instance-ip:8080` accepts TCP, for `examples/hello` with
//!   its image cached. runc runs the very bundle berth created (same root filesystem, network
//!   namespace, cgroup limits), with `runc run -d`. berth also installs its seccomp filter;
//!   the bundle carries none for runc.
//! - Unpack: berth's layer cache (digest verified while unpacking) against `umoci unpack` of the
//!   same image, a 64 MiB layer of 4000 files.
//! - Shim memory: RSS, PSS and private memory of each instance's shim while it idles.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use berth_core::Digest;
use berth_image::build::{build_from_binary, build_from_dir, BuiltImage, ImageSettings};
use berth_image::{ImageSource, LayerCache, PullError};
use berth_runtime::embedded::rootfs::RootfsKind;
use berth_runtime::embedded::{EmbeddedConfig, EmbeddedRuntime};
use berth_runtime::{ImageRef, InstanceId, InstanceNetwork, InstanceSpec, Resources, Runtime};
use berth_testkit::noise;

use super::{build_berth, median, print_table, Figure};

/// Images served from memory by repository name, as berth's registry would serve them.
pub(super) struct MemorySource(pub Vec<(String, BuiltImage)>);

#[async_trait::async_trait]
impl ImageSource for MemorySource {
    async fn manifest(&self, repository: &str, _: &str) -> Result<(String, Vec<u8>), PullError> {
        let (_, image) = self.0.iter().find(|(r, _)| r == repository).ok_or_else(|| PullError::NotFound(repository.to_owned()))?;
        Ok((image.manifest.media_type.to_owned(), image.manifest.data.clone()))
    }
    async fn blob(&self, _: &str, digest: &Digest, dest: &Path) -> Result<(), PullError> {
        let b = self
            .0
            .iter()
            .flat_map(|(_, i)| std::iter::once(&i.config).chain(&i.layers))
            .find(|b| &b.digest == digest)
            .ok_or_else(|| PullError::NotFound(digest.to_string()))?;
        std::fs::write(dest, &b.data).map_err(|e| PullError::Io { context: "writing a blob".into(), source: e })
    }
}

const BRIDGE: &str = "bbench0";
const CIDR: &str = "10.254.0.0/24";
const CGROUP_PARENT: &str = "berth-bench";

/// runc with its state under `root`; its output but errors goes nowhere.
pub(super) fn runc(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    let ok = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()?
        .success();
    if !ok {
        bail!("runc {args:?} failed");
    }
    Ok(())
}

/// An embedded runtime of the benchmark's own, on `(bridge, cidr, netns prefix, cgroup
/// parent)`, pulling `images` from memory, with no outbound NAT.
pub(super) fn open_runtime(
    bin: &Path,
    root: &Path,
    (bridge, cidr, netns_prefix, cgroup_parent): (&str, &str, &str, &str),
    images: Vec<(String, BuiltImage)>,
) -> anyhow::Result<Arc<EmbeddedRuntime>> {
    let config = EmbeddedConfig {
        root: root.to_owned(),
        shim: bin.to_owned(),
        bridge: bridge.into(),
        cidr: cidr.parse().map_err(|e| anyhow::anyhow!("{e}"))?,
        netns_prefix: netns_prefix.into(),
        cgroup_parent: cgroup_parent.into(),
        rootfs: RootfsKind::Overlay,
        outbound_nat: false,
        open_ports: Vec::new(),
        unpack_limits: Default::default(),
        init: None,
        retention: Default::default(),
    };
    Ok(EmbeddedRuntime::open(config, Arc::new(MemorySource(images)))?)
}

pub(super) fn wait_tcp(addr: std::net::SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    bail!("{addr} did not accept a connection within {limit:?}")
}

/// An instance of `image` for the benchmarks: port 8080, one CPU, 256 MiB.
pub(super) fn spec(id: &str, image: &ImageRef, env: &[(&str, &str)], network: &InstanceNetwork) -> anyhow::Result<InstanceSpec> {
    Ok(InstanceSpec {
        id: InstanceId::new(id)?,
        labels: vec![],
        image: image.clone(),
        entrypoint: None,
        cmd: None,
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        port: 8080,
        resources: Resources { cpu_millis: 1000, memory_bytes: 256 << 20, pids: 256 },
        user: None,
        read_only_rootfs: false,
        files: Vec::new(),
        init: false,
        network: network.clone(),
    })
}

/// smaps_rollup figures of a process, KiB: (Rss, Pss, Private).
fn memory(pid: &str) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let get = |k: &str| {
        text.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0)
    };
    (get("Rss:"), get("Pss:"), get("Private_Clean:") + get("Private_Dirty:"))
}

/// Writes `image` as an OCI layout for umoci.
fn write_layout(image: &BuiltImage, dir: &Path) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for b in std::iter::once(&image.config).chain(&image.layers).chain(std::iter::once(&image.manifest)) {
        std::fs::write(blobs.join(b.digest.hex()), &b.data)?;
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": image.manifest.media_type, "digest": image.manifest.digest.to_string(), "size": image.manifest.data.len(), "annotations": {"org.opencontainers.image.ref.name": "bench"}}]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    Ok(())
}

fn cleanup_host() {
    berth_testkit::cleanup_runtime_host(BRIDGE, CIDR, CGROUP_PARENT);
}

pub fn run(rounds: usize) -> anyhow::Result<()> {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0") {
        bail!("the runtime benchmark runs containers: run it as root");
    }
    crate::test::ensure_tools(&[("runc", "runc"), ("umoci", "umoci"), ("ip", "iproute2")])?;
    let bin = build_berth()?;
    let tmp = tempfile::Builder::new().prefix("berth-bench-runtime").tempdir()?;
    let hello = tmp.path().join("hello");
    super::compile_hello(&hello, true)?;
    let image = build_from_binary(&hello, false, &ImageSettings { port: Some(8080), ..Default::default() })?;
    let digest = image.manifest.digest.clone();
    cleanup_host();
    let result =
        tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(measure(&bin, tmp.path(), image, digest, rounds));
    cleanup_host();
    result
}

async fn measure(bin: &Path, dir: &Path, image: BuiltImage, digest: Digest, rounds: usize) -> anyhow::Result<()> {
    let rt = open_runtime(bin, &dir.join("runtime"), (BRIDGE, CIDR, "bbench-", CGROUP_PARENT), vec![("hello".into(), image)])?;
    let hello = ImageRef { repository: "hello".into(), digest };
    let runc_root = dir.join("runc-state");
    let mut start = Figure::new("start to first TCP accept", "ms");
    for round in 0..rounds {
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for berth in order {
            let id = format!("bench-{}-{round}", if berth { "b" } else { "r" });
            let st = rt.create(spec(&id, &hello, &[], &InstanceNetwork::default())?).await?;
            let addr = st.address.context("no address")?;
            let iid = InstanceId::new(&id)?;
            let ms = if berth {
                let t0 = Instant::now();
                rt.start(&iid).await?;
                wait_tcp(addr, Duration::from_secs(10))?;
                t0.elapsed().as_secs_f64() * 1000.0
            } else {
                let bundle = dir.join("runtime/instances").join(&id).join("bundle");
                let t0 = Instant::now();
                runc(&runc_root, &["run", "-d", "--bundle", &bundle.display().to_string(), &id])?;
                wait_tcp(addr, Duration::from_secs(10))?;
                let ms = t0.elapsed().as_secs_f64() * 1000.0;
                runc(&runc_root, &["delete", "-f", &id])?;
                ms
            };
            eprintln!("round {}/{rounds} {:<5} start {ms:.1} ms", round + 1, if berth { "berth" } else { "runc" });
            if berth {
                start.berth.push(ms);
            } else {
                start.anchor.push(ms);
            }
            rt.delete(&iid).await?;
        }
    }

    // Shim memory while three instances idle.
    let mut shims = Vec::new();
    for i in 0..3 {
        let id = format!("bench-idle-{i}");
        rt.create(spec(&id, &hello, &[], &InstanceNetwork::default())?).await?;
        let st = rt.start(&InstanceId::new(&id)?).await?;
        wait_tcp(st.address.context("no address")?, Duration::from_secs(10))?;
        shims.push(id);
    }
    // Idle means quiet for a while: past the shim's trim delay after the start-up log lines.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mems: Vec<(u64, u64, u64)> = shims
        .iter()
        .map(|id| {
            std::fs::read_to_string(dir.join("runtime/instances").join(id).join("shim.pid")).map(|p| memory(p.trim())).unwrap_or((0, 0, 0))
        })
        .collect();
    for id in &shims {
        rt.delete(&InstanceId::new(id)?).await?;
    }
    let rss = median(mems.iter().map(|m| m.0 as f64).collect());
    let pss = median(mems.iter().map(|m| m.1 as f64).collect());
    let private = median(mems.iter().map(|m| m.2 as f64).collect());

    // Unpack: a 64 MiB layer of 4000 files.
    let tree = dir.join("tree");
    for i in 0..4000u64 {
        let d = tree.join(format!("d{}", i % 40));
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("f{i}")), noise(i, 16 << 10))?;
    }
    let big = build_from_dir(&tree, &ImageSettings::default())?;
    let layout = dir.join("layout");
    write_layout(&big, &layout)?;
    let layer = &big.layers[0];
    let mut unpack = Figure::new("unpack 64 MiB, 4000 files", "ms");
    for round in 0..rounds {
        let order: [bool; 2] = if round % 2 == 0 { [true, false] } else { [false, true] };
        for berth in order {
            let out = dir.join(format!("unpack-{round}-{berth}"));
            let t0 = Instant::now();
            if berth {
                let cache = LayerCache::open(&out)?;
                cache.ensure(
                    &layer.digest,
                    layer.media_type,
                    layer.data.as_slice(),
                    &mut berth_image::UnpackBudget::new(Default::default()),
                )?;
            } else {
                let ok = Command::new("umoci")
                    .args(["unpack", "--image"])
                    .arg(format!("{}:bench", layout.display()))
                    .arg(&out)
                    .stdout(Stdio::null())
                    .status()?
                    .success();
                if !ok {
                    bail!("umoci unpack failed");
                }
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            eprintln!("round {}/{rounds} {:<5} unpack {ms:.1} ms", round + 1, if berth { "berth" } else { "umoci" });
            if berth {
                unpack.berth.push(ms);
            } else {
                unpack.anchor.push(ms);
            }
            std::fs::remove_dir_all(&out)?;
        }
    }
    drop(rt);

    println!();
    let figures = [start, unpack];
    print_table("runc/umoci", &figures);
    println!("{:<28} {:>14} {:>14}", "shim memory (KiB)", format!("rss {rss:.0}"), format!("pss {pss:.0}, private {private:.0}"));
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let json = serde_json::json!({
        "bench": "runtime",
        "start_ratio": round2(figures[0].ratio()),
        "unpack_ratio": round2(figures[1].ratio()),
        "shim_rss_kib": rss.round(),
        "shim_pss_kib": pss.round(),
        "shim_private_kib": private.round(),
    });
    println!("{json}");
    Ok(())
}

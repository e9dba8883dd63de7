//! A real container (as root): `examples/hello` built into an image, its layers cached and
//! assembled into an overlay root filesystem, started by `berth shim` with libcontainer, limits
//! visible in the cgroup files, answered over HTTP inside its network namespace, logs written,
//! stopped, deleted with nothing left behind.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_image::build::{build_from_binary, ImageSettings};
use berth_image::LayerCache;
use berth_runtime::embedded::files::InstanceFiles;
use berth_runtime::embedded::oci::{process_plan, runtime_spec, BundlePlan};
use berth_runtime::embedded::rootfs::{Rootfs, RootfsKind};
use berth_runtime::{ImageRef, InstanceId, InstanceSpec, Resources};
use berth_testkit::hello_binary;
use support::*;

/// Deletes the container and its root filesystem even when an assertion fails.
struct Cleanup {
    dir: PathBuf,
    rootfs: Option<Rootfs>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(BIN).arg("shim").arg("delete").arg(&self.dir).status();
        if let Some(r) = self.rootfs.take() {
            let _ = r.remove();
        }
        // The test's parent cgroup, once empty (other tests may still use it).
        for ctl in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(ctl.path().join("berth-test"));
        }
    }
}

#[test]
fn runs_hello_in_an_isolated_container() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("containers need root: this test runs as root (CI does)".into());
    }
    let tmp = tempfile::tempdir()?;
    let bin = hello_binary(tmp.path())?;
    let image =
        build_from_binary(&bin, false, &ImageSettings { port: Some(8080), env: vec!["HELLO_VERSION=v7".into()], ..Default::default() })?;
    let cache = LayerCache::open(&tmp.path().join("cache"))?;
    let layer = &image.layers[0];
    let (layer_dir, _) =
        cache.ensure(&layer.digest, layer.media_type, layer.data.as_slice(), &mut berth_image::UnpackBudget::new(Default::default()))?;

    let id = format!("berth-test-{}", std::process::id());
    let files = InstanceFiles::new(&tmp.path().join("instances").join(&id));
    std::fs::create_dir_all(files.bundle())?;
    let rootfs = Rootfs::assemble(&files.dir, &[layer_dir], RootfsKind::Overlay)?;
    let mut cleanup = Cleanup { dir: files.dir.clone(), rootfs: Some(rootfs.clone()) };

    std::fs::create_dir_all(files.etc())?;
    std::fs::write(files.etc().join("hostname"), format!("{id}\n"))?;
    std::fs::write(files.etc().join("hosts"), format!("127.0.0.1 localhost {id}\n"))?;
    std::fs::write(files.etc().join("resolv.conf"), "nameserver 127.0.0.1\n")?;
    let config: berth_image::ImageConfig =
        berth_image::ImageConfig { entrypoint: vec!["/app/hello".into()], env: vec!["HELLO_VERSION=v7".into()], ..Default::default() };
    let spec = InstanceSpec {
        id: InstanceId::new(&id)?,
        labels: vec![],
        image: ImageRef { repository: "hello".into(), digest: image.manifest.digest.clone() },
        entrypoint: None,
        cmd: None,
        env: vec![],
        port: 8080,
        resources: Resources { cpu_millis: 500, memory_bytes: 64 << 20, pids: 64 },
        user: Some("65534".into()),
        read_only_rootfs: true,
        files: Vec::new(),
        init: false,
        network: Default::default(),
    };
    let process = process_plan(&config, &spec, &rootfs.path)?;
    let cgroup = format!("/berth-test/{id}");
    let oci = runtime_spec(&BundlePlan {
        hostname: &id,
        rootfs: &rootfs.path,
        read_only_rootfs: true,
        files: &[],
        process: &process,
        resources: spec.resources,
        cgroup_path: &cgroup,
        netns: None,
        etc_dir: &files.etc(),
        init: None,
    });
    std::fs::write(files.config(), serde_json::to_vec_pretty(&oci)?)?;

    let mut shim = Command::new(BIN).arg("shim").arg("run").arg(&files.dir).spawn()?;
    wait_until("the container to start", Duration::from_secs(20), || Ok(files.container_pid().exists() || files.start_error().exists()))?;
    if let Ok(e) = std::fs::read_to_string(files.start_error()) {
        return Err(format!("the container did not start: {e}").into());
    }
    let pid = InstanceFiles::read_pid(&files.container_pid()).ok_or("no pid")?;

    // Limits are in the cgroup files.
    let cg = |ctl: &str, file: &str| {
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(ctl).join(cgroup.trim_start_matches('/')).join(file))
            .map(|s| s.trim().to_owned())
    };
    assert_eq!(cg("memory", "memory.limit_in_bytes")?, (64u64 << 20).to_string());
    assert_eq!(cg("cpu", "cpu.cfs_quota_us")?, "50000");
    assert_eq!(cg("pids", "pids.max")?, "64");

    // A fresh network namespace has only a loopback device, and it is down.
    let up = Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).args(["ip", "link", "set", "lo", "up"]).status()?;
    assert!(up.success());
    let mut answer = String::new();
    wait_until("hello to answer", Duration::from_secs(10), || {
        let out = Command::new("nsenter").arg(format!("--net=/proc/{pid}/ns/net")).args(["curl", "-s", "http://127.0.0.1:8080/"]).output();
        answer = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        Ok(answer.starts_with("hello from v7"))
    })?;
    assert_eq!(answer.trim(), format!("hello from v7 on {id}"));
    // Once it answers it has been executed: as user 65534, no capabilities, no new privileges,
    // seccomp filtering, in namespaces of its own.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("65534")), "{status}");
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.ends_with('2')), "{status}");
    assert!(status.lines().any(|l| l == "CapEff:\t0000000000000000"), "{status}");
    assert_ne!(std::fs::read_link(format!("/proc/{pid}/ns/net"))?, std::fs::read_link("/proc/self/ns/net")?);
    assert_ne!(std::fs::read_link(format!("/proc/{pid}/ns/pid"))?, std::fs::read_link("/proc/self/ns/pid")?);

    // Logs carry timestamps and the stream name.
    wait_until("the log", Duration::from_secs(5), || Ok(std::fs::read_to_string(files.log()).is_ok_and(|l| l.contains("GET / 200"))))?;
    let log = std::fs::read_to_string(files.log())?;
    assert!(log.lines().any(|l| l.contains(" stdout hello v7 listening on port 8080")), "{log}");

    // hello handles SIGTERM itself (as a namespace's init it must: unhandled signals do nothing
    // to PID 1) and exits at once. The shim records the end.
    let target = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM)?;
    wait_until("the exit record", Duration::from_secs(10), || Ok(files.read_exit().is_some()))?;
    let exit = files.read_exit().ok_or("no exit record")?;
    assert_eq!((exit.code, exit.signal, exit.oom_killed), (0, None, false));
    assert!(shim.wait()?.success());

    // Delete frees the cgroups and the mount.
    let st = Command::new(BIN).arg("shim").arg("delete").arg(&files.dir).status()?;
    assert!(st.success());
    for ctl in ["memory", "cpu", "pids"] {
        assert!(!Path::new("/sys/fs/cgroup").join(ctl).join(cgroup.trim_start_matches('/')).exists(), "{ctl} cgroup left behind");
    }
    if let Some(r) = cleanup.rootfs.take() {
        r.remove()?;
    }
    Ok(())
}

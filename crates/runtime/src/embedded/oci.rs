//! The OCI runtime spec (`config.json`) of an instance: the process from the image config and
//! the instance spec, and berth's isolation defaults — new pid, mount, ipc, uts, net and cgroup
//! namespaces; Docker's default capability set and nothing more; no-new-privileges; masked and
//! read-only /proc paths; tmpfs /tmp and /dev/shm; cgroup limits at an absolute path.

use std::path::Path;

use berth_image::ImageConfig;
use serde_json::{json, Value};

use crate::{InstanceSpec, Resources, RuntimeError};

/// Docker's default capabilities.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The container's process, resolved against its image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
    env.push(format!("{key}={value}"));
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) against the image's /etc/passwd and
/// /etc/group, as runc does: a numeric uid takes its primary group from the passwd entry with
/// that uid (0 when there is none). The files are read as the container sees them, confined to
/// its root filesystem.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), RuntimeError> {
    let (u, g) = user.split_once(':').map(|(u, g)| (u, Some(g))).unwrap_or((user, None));
    // Each line: name, password, id, (primary gid for passwd).
    let read = |file: &str| -> Vec<(String, u32, u32)> {
        let text = berth_image::read_in_root(rootfs, Path::new(file), 4 << 20).unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.first()?.to_string(), f.get(2)?.parse().ok()?, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(0)))
            })
            .collect()
    };
    let passwd = read("etc/passwd");
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd.iter().find(|(_, id, _)| *id == uid).map(|(_, _, g)| *g).unwrap_or(0)),
        Err(_) => passwd
            .iter()
            .find(|(name, _, _)| name == u)
            .map(|(_, id, g)| (*id, *g))
            .ok_or_else(|| RuntimeError::InvalidSpec(format!("user `{u}` is not in the image's /etc/passwd; use a numeric uid")))?,
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read("etc/group")
                .iter()
                .find(|(name, _, _)| name == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| RuntimeError::InvalidSpec(format!("group `{g}` is not in the image's /etc/group; use a numeric gid")))?,
        },
    };
    Ok((uid, gid))
}

/// The process an instance runs: entrypoint and command (an overridden entrypoint drops the
/// image's command, as Docker does), environment with `PORT`, user and working directory.
pub fn process_plan(image: &ImageConfig, spec: &InstanceSpec, rootfs: &Path) -> Result<ProcessPlan, RuntimeError> {
    let entrypoint = spec.entrypoint.clone().unwrap_or_else(|| image.entrypoint.clone());
    let cmd = match (&spec.cmd, &spec.entrypoint) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Vec::new(),
        (None, None) => image.cmd.clone(),
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(RuntimeError::InvalidSpec("the image has no entrypoint or command; set a start command".into()));
    }
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for (k, v) in &spec.env {
        set_env(&mut env, k, v);
    }
    set_env(&mut env, "PORT", &spec.port.to_string());
    let user = spec.user.clone().or_else(|| image.user.clone()).unwrap_or_else(|| "0".into());
    let (uid, gid) = resolve_user(&user, rootfs)?;
    Ok(ProcessPlan { args, env, cwd: image.workdir.clone().unwrap_or_else(|| "/".into()), uid, gid })
}

/// Where the instance's generated /etc files and namespaces are.
#[derive(Debug, Clone)]
pub struct BundlePlan<'a> {
    pub hostname: &'a str,
    pub rootfs: &'a Path,
    pub read_only_rootfs: bool,
    pub process: &'a ProcessPlan,
    pub resources: Resources,
    /// Absolute cgroup path, e.g. `/berth/<id>`.
    pub cgroup_path: &'a str,
    /// A network namespace to join; a new, empty one when `None`.
    pub netns: Option<&'a Path>,
    /// Directory holding `resolv.conf`, `hosts` and `hostname` for the container.
    pub etc_dir: &'a Path,
    /// berth's init on the host, when the app runs under it ([`INIT_PATH`] in the container).
    pub init: Option<&'a Path>,
    /// Directories of files from secrets: (the tmpfs on the host, the directory in the
    /// container), bound read-only.
    pub files: &'a [(std::path::PathBuf, String)],
}

/// Where berth's init is in a container that runs under it (on the runtime's own `/dev`, so an
/// image's files and a read-only root filesystem are left alone).
pub const INIT_PATH: &str = "/dev/berth-init";

/// The open-files limit for containers: Docker's 1048576, or less where the host's own hard
/// limit is lower (raising it needs privileges berth does not ask for).
pub fn nofile_limit() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(|(_, h)| h).unwrap_or(1024);
    hard.min(1 << 20)
}

/// CFS period used for CPU limits, microseconds.
const CPU_PERIOD: u64 = 100_000;

pub fn runtime_spec(plan: &BundlePlan<'_>) -> Value {
    let caps: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "mount"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "cgroup"})];
    namespaces.push(match plan.netns {
        Some(p) => json!({"type": "network", "path": p.display().to_string()}),
        None => json!({"type": "network"}),
    });
    let bind = |file: &str| json!({"destination": format!("/etc/{file}"), "type": "bind", "source": plan.etc_dir.join(file).display().to_string(), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]});
    let r = &plan.resources;
    let mut args = plan.process.args.clone();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]}),
        bind("resolv.conf"),
        bind("hosts"),
        bind("hostname"),
    ];
    for (host, dir) in plan.files {
        mounts.push(json!({"destination": dir, "type": "bind", "source": host.display().to_string(), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    if let Some(init) = plan.init {
        mounts.push(json!({"destination": INIT_PATH, "type": "bind", "source": init.display().to_string(), "options": ["rbind", "ro", "nosuid", "nodev"]}));
        args.splice(0..0, [INIT_PATH.to_owned(), "--".to_owned()]);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": plan.process.uid, "gid": plan.process.gid},
            "args": args,
            "env": plan.process.env,
            "cwd": plan.process.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile_limit(), "soft": nofile_limit()}],
            "noNewPrivileges": true
        },
        "root": {"path": plan.rootfs.display().to_string(), "readonly": plan.read_only_rootfs},
        "hostname": plan.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": plan.cgroup_path,
            "resources": {
                "memory": {"limit": r.memory_bytes, "swap": r.memory_bytes},
                "cpu": {"quota": u64::from(r.cpu_millis) * CPU_PERIOD / 1000, "period": CPU_PERIOD},
                "pids": {"limit": r.pids},
                "devices": [{"allow": false, "access": "rwm"}]
            },
            "namespaces": namespaces,
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageRef, InstanceId};

    fn spec() -> Result<InstanceSpec, RuntimeError> {
        Ok(InstanceSpec {
            id: InstanceId::new("web-1")?,
            labels: vec![],
            image: ImageRef { repository: "web".into(), digest: berth_core::Digest::sha256_of(b"x") },
            entrypoint: None,
            cmd: None,
            env: vec![("MODE".into(), "prod".into()), ("PORT".into(), "1".into())],
            port: 8080,
            resources: Resources::default(),
            user: None,
            read_only_rootfs: false,
            files: Vec::new(),
            init: false,
            network: Default::default(),
        })
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/app/hello".into()],
            cmd: vec!["--serve".into()],
            env: vec!["MODE=dev".into()],
            user: Some("app".into()),
            workdir: Some("/srv".into()),
            exposed_ports: vec![8080],
        }
    }

    fn rootfs() -> Result<tempfile::TempDir, Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        std::fs::create_dir_all(d.path().join("etc"))?;
        std::fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")?;
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n")?;
        Ok(d)
    }

    #[test]
    fn process_follows_image_and_overrides() -> Result<(), Box<dyn std::error::Error>> {
        let root = rootfs()?;
        let p = process_plan(&image(), &spec()?, root.path())?;
        assert_eq!(p.args, ["/app/hello", "--serve"]);
        assert_eq!(p.env, ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MODE=prod", "PORT=8080"]);
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (1000, 1001, "/srv"));
        // Overriding the entrypoint drops the image's command.
        let mut s = spec()?;
        s.entrypoint = Some(vec!["/bin/sh".into(), "-c".into(), "sleep 1".into()]);
        s.user = Some("0:staff".into());
        let p = process_plan(&image(), &s, root.path())?;
        assert_eq!(p.args, ["/bin/sh", "-c", "sleep 1"]);
        assert_eq!((p.uid, p.gid), (0, 50));
        Ok(())
    }

    #[test]
    fn numeric_users_take_their_passwd_group_and_lookups_stay_in_the_root() -> Result<(), Box<dyn std::error::Error>> {
        let root = rootfs()?;
        assert_eq!(resolve_user("1000", root.path())?, (1000, 1001));
        assert_eq!(resolve_user("4242", root.path())?, (4242, 0));
        assert_eq!(resolve_user("1000:7", root.path())?, (1000, 7));
        // A passwd that links to an absolute path is looked up inside the root, never on the host.
        let host = tempfile::tempdir()?;
        std::fs::write(host.path().join("passwd"), "app:x:1000:4444::/:/bin/sh\n")?;
        let passwd = root.path().join("etc/passwd");
        std::fs::remove_file(&passwd)?;
        std::os::unix::fs::symlink(host.path().join("passwd"), &passwd)?;
        assert_eq!(resolve_user("1000", root.path())?, (1000, 0));
        // A FIFO in its place is not waited on.
        std::fs::remove_file(&passwd)?;
        nix::unistd::mkfifo(&passwd, nix::sys::stat::Mode::from_bits_truncate(0o644))?;
        assert_eq!(resolve_user("1000", root.path())?, (1000, 0));
        Ok(())
    }

    #[test]
    fn clear_errors() -> Result<(), Box<dyn std::error::Error>> {
        let root = rootfs()?;
        let mut s = spec()?;
        s.user = Some("nobody".into());
        let err = process_plan(&image(), &s, root.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(err, "invalid instance spec: user `nobody` is not in the image's /etc/passwd; use a numeric uid");
        let err = process_plan(&ImageConfig::default(), &spec()?, root.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no entrypoint or command"), "{err}");
        Ok(())
    }

    #[test]
    fn isolation_defaults_and_limits() -> Result<(), Box<dyn std::error::Error>> {
        let root = rootfs()?;
        let p = process_plan(&image(), &spec()?, root.path())?;
        let r = Resources { cpu_millis: 250, memory_bytes: 512 << 20, pids: 100 };
        let v = runtime_spec(&BundlePlan {
            hostname: "web-1",
            rootfs: root.path(),
            read_only_rootfs: true,
            files: &[],
            process: &p,
            resources: r,
            cgroup_path: "/berth/web-1",
            netns: Some(Path::new("/run/netns/x")),
            etc_dir: Path::new("/etc-dir"),
            init: Some(Path::new("/var/lib/berth/runtime/berth-init")),
        });
        // Under berth's init, bound read-only onto the runtime's /dev.
        assert_eq!(v["process"]["args"], json!(["/dev/berth-init", "--", "/app/hello", "--serve"]));
        let init = v["mounts"].as_array().and_then(|m| m.iter().find(|m| m["destination"] == INIT_PATH)).ok_or("no init mount")?;
        assert_eq!((init["source"].as_str(), init["options"][1].as_str()), (Some("/var/lib/berth/runtime/berth-init"), Some("ro")));
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 512u64 << 20);
        assert_eq!(v["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["capabilities"]["bounding"].as_array().map(Vec::len), Some(14));
        assert_eq!(v["root"]["readonly"], true);
        let ns: Vec<&str> =
            v["linux"]["namespaces"].as_array().map(|a| a.iter().filter_map(|n| n["type"].as_str()).collect()).unwrap_or_default();
        assert_eq!(ns, ["pid", "mount", "ipc", "uts", "cgroup", "network"]);
        assert_eq!(v["linux"]["namespaces"][5]["path"], "/run/netns/x");
        Ok(())
    }
}

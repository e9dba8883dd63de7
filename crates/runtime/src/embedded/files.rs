//! The files of one instance, shared by the server and the instance's shim:
//!
//! ```text
//! <instance dir>/
//!   bundle/config.json   OCI runtime spec (root at ../rootfs)
//!   rootfs/ upper/ work/ the root filesystem (see rootfs.rs)
//!   etc/                 resolv.conf, hosts, hostname bound into the container
//!   state/               libcontainer's state
//!   logs/current.log     stdout and stderr, one timestamped line each, rotated
//!   shim.pid             the shim's pid
//!   container.pid        the container process's pid, once started
//!   exit.json            how it ended: {"code", "signal", "oom_killed", "at"}
//!   start-error          why it could not start
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct InstanceFiles {
    pub dir: PathBuf,
}

/// How an instance's process ended, as the shim records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + signal when killed by a signal.
    pub code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// Unix seconds.
    pub at: i64,
}

impl InstanceFiles {
    pub fn new(dir: &Path) -> InstanceFiles {
        InstanceFiles { dir: dir.to_owned() }
    }
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("bundle")
    }
    pub fn config(&self) -> PathBuf {
        self.bundle().join("config.json")
    }
    pub fn etc(&self) -> PathBuf {
        self.dir.join("etc")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log(&self) -> PathBuf {
        self.logs().join("current.log")
    }
    pub fn shim_pid(&self) -> PathBuf {
        self.dir.join("shim.pid")
    }
    pub fn container_pid(&self) -> PathBuf {
        self.dir.join("container.pid")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn start_error(&self) -> PathBuf {
        self.dir.join("start-error")
    }

    /// The instance id: the directory's name.
    pub fn id(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn read_exit(&self) -> Option<ExitRecord> {
        std::fs::read(self.exit()).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn read_pid(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok())
    }
}

/// Writes a file atomically (temp file and rename).
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

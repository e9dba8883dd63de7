//! An instance's root filesystem: the image's cached layers as read-only overlayfs lower
//! directories, with a per-instance upper and work directory, mounted at `<instance>/rootfs`.
//! Where overlayfs is missing the layers are copied into place instead. Unmounting and removing
//! leaves nothing behind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("an image needs at least one layer")]
    NoLayers,
    #[error("layer directory {0} is missing; pull the image again")]
    MissingLayer(PathBuf),
    #[error("mounting the overlay at {target} failed: {source}")]
    Mount { target: PathBuf, source: nix::Error },
    #[error("unmounting {target} failed: {source}")]
    Unmount { target: PathBuf, source: nix::Error },
    #[error("copying a layer into the root filesystem: {0}")]
    Copy(#[from] berth_image::CopyError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> RootfsError {
    let context = context.into();
    move |source| RootfsError::Io { context, source }
}

/// How a root filesystem was assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsKind {
    Overlay,
    Copy,
}

/// A mounted (or copied) root filesystem under an instance directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rootfs {
    pub path: PathBuf,
    pub kind: RootfsKind,
    instance_dir: PathBuf,
}

/// Whether this kernel offers overlayfs.
pub fn overlay_supported() -> bool {
    fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

impl Rootfs {
    /// Assembles `layers` (bottom first) under `instance_dir`: `rootfs/` as the mount point,
    /// `upper/` and `work/` for the instance's own writes. Idempotent: an existing mount is kept.
    pub fn assemble(instance_dir: &Path, layers: &[PathBuf], kind: RootfsKind) -> Result<Rootfs, RootfsError> {
        if layers.is_empty() {
            return Err(RootfsError::NoLayers);
        }
        for l in layers {
            if !l.is_dir() {
                return Err(RootfsError::MissingLayer(l.clone()));
            }
        }
        let target = instance_dir.join("rootfs");
        let rootfs = Rootfs { path: target.clone(), kind, instance_dir: instance_dir.to_owned() };
        if is_mountpoint(&target)? {
            return Ok(rootfs);
        }
        fs::create_dir_all(&target).map_err(io_ctx(format!("creating {}", target.display())))?;
        match kind {
            RootfsKind::Overlay => {
                let (upper, work) = (instance_dir.join("upper"), instance_dir.join("work"));
                for d in [&upper, &work] {
                    fs::create_dir_all(d).map_err(io_ctx(format!("creating {}", d.display())))?;
                }
                // overlayfs lists lower directories top first.
                let lower: Vec<String> = layers.iter().rev().map(|l| l.display().to_string()).collect();
                let data = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
                mount(Some("overlay"), &target, Some("overlay"), MsFlags::MS_NODEV, Some(data.as_str()))
                    .map_err(|source| RootfsError::Mount { target: target.clone(), source })?;
            }
            RootfsKind::Copy => {
                if fs::read_dir(&target).map_err(io_ctx("listing the root filesystem"))?.next().is_none() {
                    for l in layers {
                        berth_image::copy_layer(l, &target)?;
                    }
                }
            }
        }
        Ok(rootfs)
    }

    /// The root filesystem of an instance directory, whatever its state (to remove it).
    pub fn at(instance_dir: &Path, kind: RootfsKind) -> Rootfs {
        Rootfs { path: instance_dir.join("rootfs"), kind, instance_dir: instance_dir.to_owned() }
    }

    /// Unmounts and removes everything under the instance directory that this created.
    pub fn remove(&self) -> Result<(), RootfsError> {
        if is_mountpoint(&self.path)? {
            umount2(&self.path, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount { target: self.path.clone(), source })?;
        }
        for d in ["rootfs", "upper", "work"] {
            let p = self.instance_dir.join(d);
            if p.exists() {
                fs::remove_dir_all(&p).map_err(io_ctx(format!("removing {}", p.display())))?;
            }
        }
        Ok(())
    }
}

/// Whether `path` is a mount point, from /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> Result<bool, RootfsError> {
    let Ok(canonical) = fs::canonicalize(path) else { return Ok(false) };
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(io_ctx("reading /proc/self/mountinfo"))?;
    let want = canonical.display().to_string();
    Ok(info.lines().any(|l| l.split_whitespace().nth(4).map(unescape_mountinfo).as_deref() == Some(want.as_str())))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests;

//! Unpacking one layer tarball. Every entry path is confined to the destination: absolute
//! paths, `..`, writing through a symlink and device nodes are refused with an error naming
//! the entry. Modes, ownership (when running as root), modification times, symlinks, hard
//! links, FIFOs and extended attributes are applied as the OCI image spec says.
//!
//! Two modes: [`UnpackMode::OverlayLayer`] unpacks into an empty directory that serves as an
//! overlayfs lower layer (whiteouts become 0:0 character devices, opaque markers the
//! `trusted.overlay.opaque` attribute); [`UnpackMode::Flatten`] applies the layer onto a root
//! filesystem holding the layers below it (whiteouts delete).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackMode {
    /// Into an empty directory, as one overlayfs lower layer.
    OverlayLayer,
    /// Onto a root filesystem that holds the layers below this one.
    Flatten,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry `{0}` is an absolute path; layer entries must be relative to the root")]
    Absolute(String),
    #[error("layer entry `{0}` contains `..` and would escape the root filesystem")]
    ParentDir(String),
    #[error("layer entry `{path}` would be written through the symlink `{link}`")]
    ThroughSymlink { path: String, link: String },
    #[error("layer entry `{path}` needs `{parent}` to be a directory, but it is not")]
    NotADirectory { path: String, parent: String },
    #[error("layer entry `{0}` is a device node; images may not contain device nodes")]
    Device(String),
    #[error("layer entry `{path}` has a type berth does not unpack ({kind})")]
    Unsupported { path: String, kind: String },
    #[error("hard link `{path}` points at `{target}`, {why}")]
    BadHardLink { path: String, target: String, why: &'static str },
    #[error("layer is not a valid tar stream: {0}")]
    Tar(io::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// The entry's path made relative and checked: no root, no `..`.
fn clean(raw: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::ParentDir(show(raw))),
            Component::RootDir | Component::Prefix(_) => return Err(UnpackError::Absolute(show(raw))),
        }
    }
    Ok(out)
}

/// State of one unpack.
struct Unpacker<'a> {
    root: &'a Path,
    mode: UnpackMode,
    as_root: bool,
    /// Paths this layer wrote (opaque markers in Flatten mode keep them).
    written: HashSet<PathBuf>,
    /// Directory metadata applied at the end, deepest first, so read-only directories can be filled.
    dirs: Vec<(PathBuf, u32, Option<SystemTime>)>,
    stats: UnpackStats,
}

/// Unpacks a decompressed layer tarball from `tar` into `root`.
pub fn unpack_layer(tar: impl Read, root: &Path, mode: UnpackMode) -> Result<UnpackStats, UnpackError> {
    let mut u = Unpacker {
        root,
        mode,
        as_root: nix::unistd::geteuid().is_root(),
        written: HashSet::new(),
        dirs: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        u.entry(&mut entry)?;
        u.stats.entries += 1;
    }
    u.dirs.sort_by_key(|d| std::cmp::Reverse(d.0.components().count()));
    for (path, mode, mtime) in std::mem::take(&mut u.dirs) {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io_ctx(format!("setting the mode of {}", show(&path))))?;
        if let Some(t) = mtime {
            if let Ok(d) = File::open(&path) {
                let _ = d.set_modified(t);
            }
        }
    }
    Ok(u.stats)
}

impl Unpacker<'_> {
    /// Makes sure every ancestor of `rel` is a real directory inside the root (creating missing
    /// ones when `create`), and returns the full path of `rel`.
    fn resolve(&self, rel: &Path, create: bool) -> Result<PathBuf, UnpackError> {
        let mut at = self.root.to_path_buf();
        let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
        for c in parents {
            at.push(c);
            match fs::symlink_metadata(&at) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::ThroughSymlink { path: show(rel), link: show(at.strip_prefix(self.root).unwrap_or(&at)) })
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::NotADirectory { path: show(rel), parent: show(at.strip_prefix(self.root).unwrap_or(&at)) })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&at).map_err(io_ctx(format!("creating {}", show(&at))))?;
                    fs::set_permissions(&at, fs::Permissions::from_mode(0o755)).map_err(io_ctx("setting a directory mode"))?;
                }
                Err(e) => return Err(io_ctx(format!("inspecting {}", show(&at)))(e)),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Removes whatever is at `full`, if anything (never following a symlink).
    fn clear(full: &Path, keep_dir: bool) -> Result<(), UnpackError> {
        match fs::symlink_metadata(full) {
            Ok(m) if m.is_dir() && keep_dir => Ok(()),
            Ok(m) if m.is_dir() => fs::remove_dir_all(full).map_err(io_ctx(format!("replacing {}", show(full)))),
            Ok(_) => fs::remove_file(full).map_err(io_ctx(format!("replacing {}", show(full)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_ctx(format!("inspecting {}", show(full)))(e)),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let rel = clean(&raw)?;
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root itself
        }
        let name = rel.file_name().map(OsStr::as_bytes).unwrap_or_default();
        if name == OPAQUE_MARKER.as_bytes() {
            return self.opaque(&rel);
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&rel, OsStr::from_bytes(hidden));
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        let full = self.resolve(&rel, true)?;
        let mode = header.mode().map_err(UnpackError::Tar)? & 0o7777;
        let mtime = header.mtime().ok().map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        match kind {
            tar::EntryType::Directory => {
                Self::clear(&full, true)?;
                if !full.exists() {
                    fs::create_dir(&full).map_err(io_ctx(format!("creating {}", show(&rel))))?;
                }
                self.owner(&full, &header)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(0o700)).map_err(io_ctx("setting a directory mode"))?;
                self.dirs.push((full.clone(), mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                Self::clear(&full, false)?;
                // create_new: O_EXCL never follows a symlink planted at the final component.
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&full)
                    .map_err(io_ctx(format!("creating {}", show(&rel))))?;
                self.stats.bytes += io::copy(entry, &mut f).map_err(io_ctx(format!("writing {}", show(&rel))))?;
                self.owner(&full, &header)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).map_err(io_ctx("setting a file mode"))?;
                if let Some(t) = mtime {
                    let _ = f.set_modified(t);
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::Unsupported { path: show(&rel), kind: "symlink without target".into() })?;
                Self::clear(&full, false)?;
                std::os::unix::fs::symlink(&target, &full).map_err(io_ctx(format!("creating symlink {}", show(&rel))))?;
                self.owner(&full, &header)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::Unsupported { path: show(&rel), kind: "hard link without target".into() })?;
                let bad = |why| UnpackError::BadHardLink { path: show(&rel), target: show(&target_raw), why };
                let target_rel = clean(&target_raw).map_err(|_| bad("which is outside the root filesystem"))?;
                let target = self.resolve(&target_rel, false).map_err(|_| bad("which is reached through a symlink or a non-directory"))?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => return Err(bad("which is a directory")),
                    Ok(_) => {}
                    Err(_) => return Err(bad("which does not exist earlier in this layer")),
                }
                Self::clear(&full, false)?;
                // linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
                fs::hard_link(&target, &full).map_err(io_ctx(format!("creating hard link {}", show(&rel))))?;
            }
            tar::EntryType::Fifo => {
                Self::clear(&full, false)?;
                nix::unistd::mkfifo(&full, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|e| io_ctx(format!("creating fifo {}", show(&rel)))(e.into()))?;
                self.owner(&full, &header)?;
                fs::set_permissions(&full, fs::Permissions::from_mode(mode)).map_err(io_ctx("setting a fifo mode"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => return Err(UnpackError::Device(show(&rel))),
            other => return Err(UnpackError::Unsupported { path: show(&rel), kind: format!("{other:?}") }),
        }
        self.xattrs(entry, &full, &rel)?;
        self.written.insert(rel);
        Ok(())
    }

    /// Applies the entry's owner when running as root (chown before chmod: chown clears set-id bits).
    fn owner(&self, full: &Path, header: &tar::Header) -> Result<(), UnpackError> {
        if !self.as_root {
            return Ok(());
        }
        let uid = header.uid().map_err(UnpackError::Tar)?;
        let gid = header.gid().map_err(UnpackError::Tar)?;
        let (uid, gid) = (u32::try_from(uid).unwrap_or(u32::MAX), u32::try_from(gid).unwrap_or(u32::MAX));
        std::os::unix::fs::lchown(full, Some(uid), Some(gid)).map_err(io_ctx(format!("setting the owner of {}", show(full))))
    }

    /// Applies `SCHILY.xattr.*` records. An image may not set overlayfs' own attributes.
    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, full: &Path, rel: &Path) -> Result<(), UnpackError> {
        let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? else { return Ok(()) };
        for ext in exts {
            let ext = ext.map_err(UnpackError::Tar)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            let name = OsStr::from_bytes(name);
            if name.as_bytes().starts_with(b"trusted.overlay.") {
                tracing::warn!(entry = %show(rel), "ignoring an overlayfs attribute set by the image");
                continue;
            }
            if let Err(e) = xattr::set(full, name, ext.value_bytes()) {
                // Filesystems without xattr support, or labels this kernel refuses: not fatal.
                tracing::warn!(entry = %show(rel), attribute = %name.to_string_lossy(), error = %e, "extended attribute not applied");
            }
        }
        Ok(())
    }

    fn opaque(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let dir_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = self.resolve(rel, true)?.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.to_path_buf());
        match self.mode {
            UnpackMode::OverlayLayer => {
                xattr::set(&dir, OVERLAY_OPAQUE_XATTR, b"y").map_err(io_ctx(format!("marking {} opaque", show(&dir_rel))))
            }
            UnpackMode::Flatten => {
                for child in fs::read_dir(&dir).map_err(io_ctx(format!("listing {}", show(&dir_rel))))? {
                    let child = child.map_err(io_ctx("listing a directory"))?;
                    let child_rel = dir_rel.join(child.file_name());
                    if !self.written.contains(&child_rel) {
                        Self::clear(&child.path(), false)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn whiteout(&mut self, rel: &Path, hidden: &OsStr) -> Result<(), UnpackError> {
        let target_rel = rel.with_file_name(hidden);
        if hidden.is_empty() || hidden == ".." || hidden == "." {
            return Err(UnpackError::ParentDir(show(rel)));
        }
        match self.mode {
            UnpackMode::OverlayLayer => {
                let full = self.resolve(&target_rel, true)?;
                Self::clear(&full, false)?;
                let dev = nix::sys::stat::makedev(0, 0);
                nix::sys::stat::mknod(&full, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), dev)
                    .map_err(|e| io_ctx(format!("creating whiteout for {} (needs root)", show(&target_rel)))(e.into()))
            }
            UnpackMode::Flatten => match self.resolve(&target_rel, false) {
                Ok(full) => Self::clear(&full, false),
                // Nothing below to hide.
                Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests;

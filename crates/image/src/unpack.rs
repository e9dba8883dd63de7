//! Unpacking one layer tarball, confined to its root. Every operation goes through directory
//! descriptors ([`crate::beneath`]): no symlink an entry placed (in this layer or a lower one)
//! is ever followed, metadata is applied through descriptors opened `O_NOFOLLOW`, directory
//! metadata deferred to the end is dropped when a later entry replaces the directory, and no
//! open can block on a FIFO. Absolute names are relative to the root and a `/` or `./` entry
//! sets the root's own metadata, as containerd and moby read layers; `..` above the root is
//! refused. Device nodes are skipped (`/dev` is the runtime's), with a warning.
//!
//! Two modes: [`UnpackMode::OverlayLayer`] unpacks into an empty directory that serves as an
//! overlayfs lower layer (whiteouts become 0:0 character devices, opaque markers the
//! `trusted.overlay.opaque` attribute); [`UnpackMode::Flatten`] applies the layer onto a root
//! filesystem holding the layers below it (whiteouts delete).
//!
//! Every unpack runs against an [`UnpackBudget`]: uncompressed bytes and entries per layer and
//! per image, free disk space and a deadline are enforced while the stream is read.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::FileType;

use crate::beneath::{self, Meta, WalkError};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
pub(crate) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Longest entry name accepted (Linux's PATH_MAX).
const MAX_NAME: usize = 4096;
/// How often free space is checked while writing.
const FREE_SPACE_EVERY: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackMode {
    /// Into an empty directory, as one overlayfs lower layer.
    OverlayLayer,
    /// Onto a root filesystem that holds the layers below this one.
    Flatten,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnpackStats {
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Bounds on what unpacking an image may write. See `docs/security.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Uncompressed file content of one layer.
    pub layer_bytes: u64,
    /// Entries of one layer.
    pub layer_entries: u64,
    /// Uncompressed file content of all layers of an image.
    pub image_bytes: u64,
    /// Entries of all layers of an image.
    pub image_entries: u64,
    /// Unpacking stops when the disk would have less than this free.
    pub min_free_bytes: u64,
    /// Unpacking all layers of an image may take this long.
    pub timeout: Duration,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            layer_bytes: 8 << 30,
            layer_entries: 500_000,
            image_bytes: 16 << 30,
            image_entries: 1_000_000,
            min_free_bytes: 1 << 30,
            timeout: Duration::from_secs(900),
        }
    }
}

/// What one image may still write: the limits, what its layers used so far, its deadline.
#[derive(Debug, Clone)]
pub struct UnpackBudget {
    limits: UnpackLimits,
    deadline: Instant,
    used: UnpackStats,
}

impl UnpackBudget {
    pub fn new(limits: UnpackLimits) -> UnpackBudget {
        UnpackBudget { limits, deadline: Instant::now() + limits.timeout, used: UnpackStats::default() }
    }

    /// Counts a layer unpacked earlier (a cached one) against the image's totals.
    pub fn charge(&mut self, layer: UnpackStats) -> Result<(), UnpackError> {
        self.used.entries = self.used.entries.saturating_add(layer.entries);
        self.used.bytes = self.used.bytes.saturating_add(layer.bytes);
        self.check_image()
    }

    fn check_image(&self) -> Result<(), UnpackError> {
        if self.used.bytes > self.limits.image_bytes {
            return Err(UnpackError::Limit(format!(
                "the image expands to more than {} (image.max_image_mib)",
                human(self.limits.image_bytes)
            )));
        }
        if self.used.entries > self.limits.image_entries {
            return Err(UnpackError::Limit(format!(
                "the image has more than {} entries (image.max_image_entries)",
                self.limits.image_entries
            )));
        }
        Ok(())
    }

    fn check_time(&self) -> Result<(), UnpackError> {
        if Instant::now() > self.deadline {
            return Err(UnpackError::Limit(format!(
                "unpacking the image took longer than {} s (image.unpack_timeout_secs)",
                self.limits.timeout.as_secs()
            )));
        }
        Ok(())
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry `{0}` contains `..` and would escape the root filesystem")]
    ParentDir(String),
    #[error("layer entry `{path}` would be written through the symlink `{link}`")]
    ThroughSymlink { path: String, link: String },
    #[error("layer entry `{path}` needs `{parent}` to be a directory, but it is not")]
    NotADirectory { path: String, parent: String },
    #[error("layer entry `{path}` has a type berth does not unpack ({kind})")]
    Unsupported { path: String, kind: String },
    #[error("layer entry name `{0}…` is longer than 4096 bytes")]
    NameTooLong(String),
    #[error("hard link `{path}` points at `{target}`, {why}")]
    BadHardLink { path: String, target: String, why: &'static str },
    #[error("{0}; if the image is genuine, raise the limit in the server's configuration")]
    Limit(String),
    #[error("the disk holding {0} has less than {1} free; free some space and try again")]
    DiskFull(String, String),
    #[error("layer is not a valid tar stream: {0}")]
    Tar(io::Error),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
    let context = context.into();
    move |source| UnpackError::Io { context, source }
}

/// The error for an entry `rel` whose directory could not be walked to.
fn walk_error(rel: &Path) -> impl FnOnce(WalkError) -> UnpackError + '_ {
    move |e| match e {
        WalkError::Symlink(link) => UnpackError::ThroughSymlink { path: show(rel), link: show(&link) },
        WalkError::NotDir(p) => UnpackError::NotADirectory { path: show(rel), parent: show(&p) },
        WalkError::Missing(p) => io_ctx(format!("looking up {}", show(&p)))(io::ErrorKind::NotFound.into()),
        WalkError::Io(p, e) => io_ctx(format!("opening {}", show(&p)))(e),
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// A directory's metadata, applied when the layer has been written (so that read-only
/// directories can be filled and their times are not changed by what goes in them).
struct DeferredDir {
    meta: Meta,
    /// The directory's device and inode: it is applied only to that node.
    identity: (u64, u64),
}

/// State of one unpack.
struct Unpacker<'a> {
    root: OwnedFd,
    root_path: &'a Path,
    mode: UnpackMode,
    as_root: bool,
    /// Paths this layer wrote (opaque markers in Flatten mode keep them).
    written: HashSet<PathBuf>,
    /// Directory metadata applied at the end; an entry that replaces a path drops the
    /// metadata of it and of everything below it.
    dirs: BTreeMap<PathBuf, DeferredDir>,
    /// The parent directory of the last entry, reused while entries stay in one directory;
    /// dropped whenever anything is removed.
    last_parent: Option<(PathBuf, OwnedFd)>,
    stats: UnpackStats,
    budget: &'a mut UnpackBudget,
    next_space_check: u64,
}

/// The layer stream, padded with zeros to the next 512-byte block where it ends in the middle of
/// one. Some writers (umoci among them) end a layer right after its last file's content, with
/// no padding and no end-of-archive blocks; Go's archive/tar, and so containerd, moby and
/// podman, read such a layer to its end, and so does berth. Where the content really ended is
/// kept, so a file whose content is cut short is still an error, not zeros.
struct ZeroPadded<R> {
    inner: R,
    pos: u64,
    /// Where the real stream ended, once it has.
    end: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> Read for ZeroPadded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.end.get().is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.pos += n as u64;
                return Ok(n);
            }
            self.end.set(Some(self.pos));
        }
        let pad = ((512 - self.pos % 512) % 512).min(buf.len() as u64) as usize;
        buf[..pad].fill(0);
        self.pos += pad as u64;
        Ok(pad)
    }
}

/// Unpacks a decompressed layer tarball from `tar` into `root`, within `budget`.
pub fn unpack_layer(tar: impl Read, root: &Path, mode: UnpackMode, budget: &mut UnpackBudget) -> Result<UnpackStats, UnpackError> {
    let root_fd = beneath::open_root(root).map_err(io_ctx(format!("opening {}", show(root))))?;
    let mut u = Unpacker {
        root: root_fd,
        root_path: root,
        mode,
        as_root: nix::unistd::geteuid().is_root(),
        written: HashSet::new(),
        dirs: BTreeMap::new(),
        last_parent: None,
        stats: UnpackStats::default(),
        budget,
        next_space_check: 0,
    };
    let end = std::rc::Rc::new(std::cell::Cell::new(None));
    let mut archive = tar::Archive::new(ZeroPadded { inner: tar, pos: 0, end: end.clone() });
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        u.count_entry()?;
        let content_end = entry.raw_file_position().saturating_add(entry.size());
        u.entry(&mut entry)?;
        if end.get().is_some_and(|end| content_end > end) {
            return Err(UnpackError::Tar(io::Error::new(io::ErrorKind::UnexpectedEof, "the layer ends inside a file's content")));
        }
    }
    u.finish_dirs()?;
    Ok(u.stats)
}

impl Unpacker<'_> {
    fn count_entry(&mut self) -> Result<(), UnpackError> {
        self.stats.entries += 1;
        self.budget.used.entries += 1;
        if self.stats.entries > self.budget.limits.layer_entries {
            return Err(UnpackError::Limit(format!(
                "a layer has more than {} entries (image.max_layer_entries)",
                self.budget.limits.layer_entries
            )));
        }
        self.budget.check_image()?;
        self.budget.check_time()
    }

    fn count_bytes(&mut self, n: u64) -> Result<(), UnpackError> {
        self.stats.bytes += n;
        self.budget.used.bytes += n;
        if self.stats.bytes > self.budget.limits.layer_bytes {
            return Err(UnpackError::Limit(format!(
                "a layer expands to more than {} (image.max_layer_mib)",
                human(self.budget.limits.layer_bytes)
            )));
        }
        self.budget.check_image()?;
        self.budget.check_time()?;
        if self.stats.bytes >= self.next_space_check && self.budget.limits.min_free_bytes > 0 {
            self.next_space_check = self.stats.bytes + FREE_SPACE_EVERY;
            let free = beneath::free_bytes(self.root.as_fd()).map_err(io_ctx("checking free disk space"))?;
            if free < self.budget.limits.min_free_bytes {
                return Err(UnpackError::DiskFull(show(self.root_path), human(self.budget.limits.min_free_bytes)));
            }
        }
        Ok(())
    }

    /// The directory holding `rel`, created when missing if `create`.
    fn parent(&mut self, rel: &Path, create: bool) -> Result<OwnedFd, UnpackError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some((p, fd)) = &self.last_parent {
            if p == parent {
                return rustix::io::dup(fd).map_err(|e| io_ctx("duplicating a directory descriptor")(e.into()));
            }
        }
        let fd = beneath::walk(self.root.as_fd(), parent.iter(), create).map_err(walk_error(rel))?;
        let dup = rustix::io::dup(&fd).map_err(|e| io_ctx("duplicating a directory descriptor")(e.into()))?;
        self.last_parent = Some((parent.to_path_buf(), dup));
        Ok(fd)
    }

    /// Removes whatever is at `name` in `dir` (`rel` in the layer), forgetting what was
    /// recorded of it and below it.
    fn clear(&mut self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), UnpackError> {
        if beneath::kind_of(dir.as_fd(), name).map_err(io_ctx(format!("inspecting {}", show(rel))))?.is_none() {
            return Ok(());
        }
        self.forget(rel);
        beneath::remove(dir.as_fd(), name).map_err(io_ctx(format!("replacing {}", show(rel))))
    }

    /// Drops deferred metadata of `rel` and below, and the cached parent descriptor.
    fn forget(&mut self, rel: &Path) {
        let below: Vec<PathBuf> =
            self.dirs.range(rel.to_path_buf()..).map(|(k, _)| k).take_while(|k| k.starts_with(rel)).cloned().collect();
        for k in below {
            self.dirs.remove(&k);
        }
        self.last_parent = None;
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_bytes = entry.path_bytes();
        if raw_bytes.len() > MAX_NAME {
            return Err(UnpackError::NameTooLong(String::from_utf8_lossy(&raw_bytes[..64]).into_owned()));
        }
        let raw = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let rel = beneath::clean(&raw).ok_or_else(|| UnpackError::ParentDir(show(&raw)))?;
        let header = entry.header().clone();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(UnpackError::Tar)? & 0o7777,
            owner: match (header.uid(), header.gid()) {
                (Ok(u), Ok(g)) => Some((u32::try_from(u).unwrap_or(u32::MAX), u32::try_from(g).unwrap_or(u32::MAX))),
                _ => None,
            },
            mtime: header.mtime().ok().and_then(|s| i64::try_from(s).ok()),
        };
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself: `/` or `./`.
            if kind != tar::EntryType::Directory {
                return Err(UnpackError::Unsupported { path: show(&raw), kind: "a root entry that is not a directory".into() });
            }
            let identity = beneath::identity(self.root.as_fd()).map_err(io_ctx("inspecting the root"))?;
            self.dirs.insert(PathBuf::new(), DeferredDir { meta, identity });
            return Ok(());
        };
        let name_bytes = name.as_bytes();
        if name_bytes == OPAQUE_MARKER {
            return self.opaque(&rel);
        }
        if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX) {
            return self.whiteout(&rel, OsStr::from_bytes(hidden));
        }
        if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            tracing::warn!(entry = %show(&rel), "skipping a device node: a container's /dev is made by the runtime");
            return Ok(());
        }
        let dir = self.parent(&rel, true)?;
        let ctx = |what: &str| io_ctx(format!("{what} {}", show(&rel)));
        let node = match kind {
            tar::EntryType::Directory => {
                match beneath::kind_of(dir.as_fd(), &name).map_err(ctx("inspecting"))? {
                    Some(FileType::Directory) => {}
                    other => {
                        if other.is_some() {
                            self.clear(&dir, &name, &rel)?;
                        }
                        rustix::fs::mkdirat(&dir, name.as_os_str(), rustix::fs::Mode::from_raw_mode(0o700))
                            .map_err(|e| ctx("creating")(e.into()))?;
                    }
                }
                let fd = beneath::open_node(dir.as_fd(), &name, FileType::Directory).map_err(ctx("opening"))?;
                if !self.as_root {
                    // Without root, a read-only directory could not be filled: its mode comes last.
                    rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| ctx("opening")(e.into()))?;
                }
                let identity = beneath::identity(fd.as_fd()).map_err(ctx("inspecting"))?;
                self.dirs.insert(rel.clone(), DeferredDir { meta, identity });
                Some(fd)
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.clear(&dir, &name, &rel)?;
                let mut f = beneath::create_file(dir.as_fd(), &name).map_err(ctx("creating"))?;
                self.copy(entry, &mut f, &rel)?;
                beneath::apply_meta(f.as_fd(), &meta, self.as_root).map_err(ctx("setting the metadata of"))?;
                Some(OwnedFd::from(f))
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(UnpackError::Tar)?
                    .ok_or_else(|| UnpackError::Unsupported { path: show(&rel), kind: "symlink without target".into() })?;
                self.clear(&dir, &name, &rel)?;
                beneath::create_symlink(dir.as_fd(), &name, &target).map_err(ctx("creating symlink"))?;
                beneath::apply_symlink_meta(dir.as_fd(), &name, &meta, self.as_root).map_err(ctx("setting the metadata of"))?;
                None
            }
            tar::EntryType::Link => {
                self.hard_link(entry, &dir, &name, &rel)?;
                None
            }
            tar::EntryType::Fifo => {
                self.clear(&dir, &name, &rel)?;
                let fd = beneath::create_fifo(dir.as_fd(), &name).map_err(ctx("creating fifo"))?;
                beneath::apply_meta(fd.as_fd(), &meta, self.as_root).map_err(ctx("setting the metadata of"))?;
                Some(fd)
            }
            other => return Err(UnpackError::Unsupported { path: show(&rel), kind: format!("{other:?}") }),
        };
        if let Some(fd) = node {
            self.xattrs(entry, &fd, &rel)?;
        }
        self.written.insert(rel);
        Ok(())
    }

    /// Copies an entry's content, counting it against the budget as it streams.
    fn copy<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, f: &mut std::fs::File, rel: &Path) -> Result<(), UnpackError> {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = entry.read(&mut buf).map_err(|e| match e.kind() {
                io::ErrorKind::Interrupted => io_ctx("reading the layer")(e),
                _ => UnpackError::Tar(e),
            })?;
            if n == 0 {
                return Ok(());
            }
            self.count_bytes(n as u64)?;
            f.write_all(&buf[..n]).map_err(io_ctx(format!("writing {}", show(rel))))?;
        }
    }

    fn hard_link<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), UnpackError> {
        let target_raw = entry
            .link_name()
            .map_err(UnpackError::Tar)?
            .ok_or_else(|| UnpackError::Unsupported { path: show(rel), kind: "hard link without target".into() })?;
        let bad = |why| UnpackError::BadHardLink { path: show(rel), target: show(&target_raw), why };
        let target = beneath::clean(&target_raw).ok_or_else(|| bad("which is outside the root filesystem"))?;
        let Some(target_name) = target.file_name() else { return Err(bad("which is the root directory")) };
        if target == rel {
            return Err(bad("which is itself"));
        }
        let target_dir = beneath::walk(self.root.as_fd(), target.parent().unwrap_or(Path::new("")).iter(), false)
            .map_err(|_| bad("which is reached through a symlink or a non-directory, or does not exist"))?;
        match beneath::kind_of(target_dir.as_fd(), target_name).map_err(io_ctx(format!("inspecting {}", show(&target))))? {
            Some(FileType::Directory) => return Err(bad("which is a directory")),
            Some(_) => {}
            None => return Err(bad("which does not exist earlier in this layer")),
        }
        self.clear(dir, name, rel)?;
        beneath::hard_link(target_dir.as_fd(), target_name, dir.as_fd(), name).map_err(io_ctx(format!("creating hard link {}", show(rel))))
    }

    /// Applies `SCHILY.xattr.*` records. An image may not set overlayfs' own attributes.
    fn xattrs<R: Read>(&self, entry: &mut tar::Entry<'_, R>, fd: &OwnedFd, rel: &Path) -> Result<(), UnpackError> {
        let Some(exts) = entry.pax_extensions().map_err(UnpackError::Tar)? else { return Ok(()) };
        for ext in exts {
            let ext = ext.map_err(UnpackError::Tar)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            let name = OsStr::from_bytes(name);
            if name.as_bytes().starts_with(b"trusted.overlay.") {
                tracing::warn!(entry = %show(rel), "ignoring an overlayfs attribute set by the image");
                continue;
            }
            if let Err(e) = beneath::set_xattr(fd.as_fd(), name, ext.value_bytes()) {
                // Filesystems without xattr support, or labels this kernel refuses: not fatal.
                tracing::warn!(entry = %show(rel), attribute = %name.to_string_lossy(), error = %e, "extended attribute not applied");
            }
        }
        Ok(())
    }

    fn opaque(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let dir_rel = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = beneath::walk(self.root.as_fd(), dir_rel.iter(), true).map_err(walk_error(rel))?;
        match self.mode {
            UnpackMode::OverlayLayer => beneath::set_xattr(dir.as_fd(), OsStr::new(OVERLAY_OPAQUE_XATTR), b"y")
                .map_err(io_ctx(format!("marking {} opaque", show(&dir_rel)))),
            UnpackMode::Flatten => {
                let written = &self.written;
                let removed = beneath::remove_children(dir.as_fd(), |child| written.contains(&dir_rel.join(child)))
                    .map_err(io_ctx(format!("emptying {}", show(&dir_rel))))?;
                for child in removed {
                    self.forget(&dir_rel.join(child));
                }
                Ok(())
            }
        }
    }

    fn whiteout(&mut self, rel: &Path, hidden: &OsStr) -> Result<(), UnpackError> {
        if hidden.is_empty() || hidden == ".." || hidden == "." || hidden.as_bytes().contains(&b'/') {
            return Err(UnpackError::ParentDir(show(rel)));
        }
        let target = rel.with_file_name(hidden);
        match self.mode {
            UnpackMode::OverlayLayer => {
                let dir = self.parent(&target, true)?;
                self.clear(&dir, hidden, &target)?;
                beneath::create_whiteout(dir.as_fd(), hidden)
                    .map_err(io_ctx(format!("creating the whiteout for {} (needs root)", show(&target))))
            }
            UnpackMode::Flatten => match self.parent(&target, false) {
                Ok(dir) => self.clear(&dir, hidden, &target),
                // Nothing below to hide.
                Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(UnpackError::NotADirectory { .. }) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    /// Applies deferred directory metadata, deepest first, each only to the very directory the
    /// entry made (found again without following any symlink).
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let dirs = std::mem::take(&mut self.dirs);
        let mut ordered: Vec<_> = dirs.into_iter().collect();
        ordered.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, d) in ordered {
            let Ok(fd) = beneath::walk(self.root.as_fd(), rel.iter(), false) else { continue };
            if beneath::identity(fd.as_fd()).ok() != Some(d.identity) {
                continue;
            }
            beneath::apply_meta(fd.as_fd(), &d.meta, self.as_root).map_err(io_ctx(format!("setting the metadata of {}", show(&rel))))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;

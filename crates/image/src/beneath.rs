//! File-system operations confined beneath a directory, for content that an image controls.
//!
//! Everything goes through directory file descriptors, one path component at a time: a
//! component is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and `O_NOFOLLOW`
//! (plain `openat` with `O_NOFOLLOW` on kernels without `openat2`, which is as safe for a single
//! component that is never `.` or `..`), so no symlink placed by an image is ever followed and
//! nothing outside the root is reached. Nodes are created with `*at` calls relative to their
//! parent, metadata is applied through descriptors of the node itself (opened `O_NOFOLLOW`, and
//! `O_NONBLOCK` so a FIFO never blocks), and nothing is ever opened by a path string.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// Ownership, mode and modification time to give a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, set-id and sticky bits included.
    pub mode: u32,
    /// Owner and group; applied only when running as root.
    pub owner: Option<(u32, u32)>,
    /// Seconds since the epoch.
    pub mtime: Option<i64>,
}

/// Why a path could not be walked.
#[derive(Debug)]
pub enum WalkError {
    /// The component at this prefix is a symlink.
    Symlink(PathBuf),
    /// The component at this prefix exists but is not a directory.
    NotDir(PathBuf),
    /// The component at this prefix does not exist (and was not to be created).
    Missing(PathBuf),
    Io(PathBuf, io::Error),
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// A path from an image, made relative and checked: `.` dropped, an absolute name taken as
/// relative to the root (as containerd and moby read them; `/..` is `/`), `..` resolved
/// lexically; `None` when a relative name's `..` would climb above the root.
pub fn clean(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut absolute = false;
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::ParentDir => {
                if !out.pop() && !absolute {
                    return None;
                }
            }
        }
    }
    Some(out)
}

/// Opens a directory the caller trusts (the root of an unpack, a cache directory).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(errno)
}

/// Opens the directory `name` (one component) inside `dir`, never following a symlink.
pub fn open_child_dir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, rustix::io::Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve) {
        Err(rustix::io::Errno::NOSYS) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        other => other,
    }
}

/// Reads the regular file `path` of a root filesystem as the container would see it: symlinks
/// resolved with `root` as `/` (`RESOLVE_IN_ROOT`), never blocking on a FIFO, at most `max`
/// bytes.
pub fn read_in_root(root: &Path, path: &Path, max: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let dir = open_root(root)?;
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
    let fd = rustix::fs::openat2(&dir, path, flags, Mode::empty(), resolve).map_err(errno)?;
    let st = rustix::fs::fstat(&fd).map_err(errno)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!("{} is not a regular file", path.display())));
    }
    let mut out = Vec::new();
    File::from(fd).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// The type of `name` in `dir` without following it, or `None` when nothing is there.
pub fn kind_of(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Walks `components` down from `root`, creating missing directories (mode 0755) when `create`,
/// and returns the last one.
pub fn walk<'a>(root: BorrowedFd<'_>, components: impl IntoIterator<Item = &'a OsStr>, create: bool) -> Result<OwnedFd, WalkError> {
    let mut at: Option<OwnedFd> = None;
    let mut prefix = PathBuf::new();
    for name in components {
        prefix.push(name);
        let parent = at.as_ref().map_or(root, |f| f.as_fd());
        let next = match open_child_dir(parent, name) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if create => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(WalkError::Io(prefix, errno(e))),
                }
                let fd = open_child_dir(parent, name).map_err(|e| classify(parent, name, &prefix, e))?;
                // mkdir's mode passes through the umask.
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755)).map_err(|e| WalkError::Io(prefix.clone(), errno(e)))?;
                fd
            }
            Err(e) => return Err(classify(parent, name, &prefix, e)),
        };
        at = Some(next);
    }
    match at {
        Some(fd) => Ok(fd),
        None => rustix::io::dup(root).map_err(|e| WalkError::Io(prefix, errno(e))),
    }
}

fn classify(parent: BorrowedFd<'_>, name: &OsStr, prefix: &Path, e: rustix::io::Errno) -> WalkError {
    let prefix = prefix.to_path_buf();
    match e {
        rustix::io::Errno::NOENT => WalkError::Missing(prefix),
        rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOTDIR => match kind_of(parent, name) {
            Ok(Some(FileType::Symlink)) => WalkError::Symlink(prefix),
            Ok(_) => WalkError::NotDir(prefix),
            Err(io) => WalkError::Io(prefix, io),
        },
        other => WalkError::Io(prefix, errno(other)),
    }
}

/// Removes whatever `name` in `dir` is, a whole directory tree included, without following a
/// symlink. Nothing there is not an error.
pub fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match kind_of(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => remove_tree(dir, name),
        Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno),
    }
}

/// Removes the directory `name` in `dir` and everything in it.
fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let child = open_child_dir(dir, name).map_err(errno)?;
    remove_children(child.as_fd(), |_| false)?;
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(errno)
}

/// The names in a directory, `.` and `..` left out.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(errno)? {
        let entry = entry.map_err(errno)?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// Removes every entry of `dir` for which `keep` is false; returns the names removed.
pub fn remove_children(dir: BorrowedFd<'_>, keep: impl Fn(&OsStr) -> bool) -> io::Result<Vec<OsString>> {
    let mut removed = Vec::new();
    for name in list(dir)? {
        if !keep(&name) {
            remove(dir, &name)?;
            removed.push(name);
        }
    }
    Ok(removed)
}

/// Creates the regular file `name` in `dir`, which must not exist (`O_EXCL` never follows a
/// symlink at the final component), open for writing.
pub fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)).map(File::from).map_err(errno)
}

/// Opens `name` in `dir` to change its metadata: never following a symlink, never blocking (a
/// FIFO), and only when it is of the type `expected`.
pub fn open_node(dir: BorrowedFd<'_>, name: &OsStr, expected: FileType) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if expected == FileType::Directory {
        flags |= OFlags::DIRECTORY;
    }
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(errno)?;
    let st = rustix::fs::fstat(&fd).map_err(errno)?;
    if FileType::from_raw_mode(st.st_mode) != expected {
        return Err(io::Error::other(format!("{} changed type while being unpacked", Path::new(name).display())));
    }
    Ok(fd)
}

fn timestamps(secs: i64) -> Timestamps {
    let t = Timespec { tv_sec: secs, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Applies `meta` through a descriptor of the node: owner first (chown clears set-id bits),
/// then the mode, then the modification time.
pub fn apply_meta(fd: BorrowedFd<'_>, meta: &Meta, as_root: bool) -> io::Result<()> {
    if let (true, Some((uid, gid))) = (as_root, meta.owner) {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::fchown(fd, Some(uid), Some(gid)).map_err(errno)?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777)).map_err(errno)?;
    if let Some(t) = meta.mtime {
        rustix::fs::futimens(fd, &timestamps(t)).map_err(errno)?;
    }
    Ok(())
}

/// Applies the owner and time of `meta` to the symlink `name` in `dir` itself (a symlink has no
/// mode of its own).
pub fn apply_symlink_meta(dir: BorrowedFd<'_>, name: &OsStr, meta: &Meta, as_root: bool) -> io::Result<()> {
    if let (true, Some((uid, gid))) = (as_root, meta.owner) {
        let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
    }
    if let Some(t) = meta.mtime {
        rustix::fs::utimensat(dir, name, &timestamps(t), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
    }
    Ok(())
}

/// Creates the symlink `name` in `dir` pointing at `target` (kept as written: it is only ever
/// resolved inside the container).
pub fn create_symlink(dir: BorrowedFd<'_>, name: &OsStr, target: &Path) -> io::Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(errno)
}

/// Creates the FIFO `name` in `dir` and returns a non-blocking descriptor of it.
pub fn create_fifo(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    rustix::fs::mknodat(dir, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0).map_err(errno)?;
    open_node(dir, name, FileType::Fifo)
}

/// Creates an overlayfs whiteout (a 0:0 character device) `name` in `dir`.
pub fn create_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0).map_err(errno)
}

/// Makes the hard link `new_name` in `new_dir` to `old_name` in `old_dir`; a link to a symlink
/// links the symlink itself (no `AT_SYMLINK_FOLLOW`).
pub fn hard_link(old_dir: BorrowedFd<'_>, old_name: &OsStr, new_dir: BorrowedFd<'_>, new_name: &OsStr) -> io::Result<()> {
    rustix::fs::linkat(old_dir, old_name, new_dir, new_name, AtFlags::empty()).map_err(errno)
}

/// Sets the extended attribute `name` on the node behind `fd`.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty()).map_err(errno)
}

/// The extended attribute `name` of the node behind `fd`, if it has one.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    match rustix::fs::fgetxattr(fd, name, &mut buf) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// The device and inode of the node behind `fd`: its identity, to tell whether a path still
/// names the same node.
pub fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd).map_err(errno)?;
    Ok((st.st_dev, st.st_ino))
}

/// Bytes available to unprivileged users on the file system of `fd`.
pub fn free_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let s = rustix::fs::fstatvfs(fd).map_err(errno)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_keeps_paths_beneath_the_root() {
        let check = |raw: &str| clean(Path::new(raw)).map(|p| p.display().to_string());
        assert_eq!(check("/etc/passwd").as_deref(), Some("etc/passwd"));
        assert_eq!(check("./a/./b/").as_deref(), Some("a/b"));
        assert_eq!(check("a/../b").as_deref(), Some("b"));
        assert_eq!(check("/").as_deref(), Some(""));
        assert_eq!(check("./").as_deref(), Some(""));
        assert_eq!(check("../x"), None);
        assert_eq!(check("a/../../x"), None);
        assert_eq!(check("/../x").as_deref(), Some("x"));
    }
}

//! Applying an unpacked overlay-format layer onto a flat root filesystem, for hosts without
//! overlayfs: whiteouts (0:0 character devices) delete, opaque directories replace what is
//! below them. The layer's content came from an image, so both trees are walked through
//! directory descriptors as in [`crate::unpack`]: no symlink is followed on either side, a
//! FIFO is recreated rather than read, and files are copied (never hard-linked: a writable
//! instance must not share an inode with the cached layer).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType};

use crate::beneath::{self, Meta};
use crate::unpack::OVERLAY_OPAQUE_XATTR;

#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct CopyError {
    context: String,
    source: io::Error,
}

fn ctx(context: impl std::fmt::Display, rel: &Path) -> impl FnOnce(io::Error) -> CopyError {
    let context = format!("{context} {}", rel.display());
    move |source| CopyError { context, source }
}

/// Applies the layer directory `layer` onto `dest`.
pub fn copy_layer(layer: &Path, dest: &Path) -> Result<(), CopyError> {
    let src = beneath::open_root(layer).map_err(ctx("opening", layer))?;
    let dst = beneath::open_root(dest).map_err(ctx("opening", dest))?;
    let as_root = nix::unistd::geteuid().is_root();
    copy_dir(src.as_fd(), dst.as_fd(), Path::new(""), as_root)
}

fn meta_of(fd: BorrowedFd<'_>, rel: &Path) -> Result<Meta, CopyError> {
    let st = rustix::fs::fstat(fd).map_err(|e| ctx("inspecting", rel)(e.into()))?;
    Ok(Meta { mode: st.st_mode & 0o7777, owner: Some((st.st_uid, st.st_gid)), mtime: Some(st.st_mtime) })
}

fn copy_dir(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, rel: &Path, as_root: bool) -> Result<(), CopyError> {
    for name in beneath::list(src).map_err(ctx("listing", rel))? {
        let rel = rel.join(&name);
        let st = rustix::fs::statat(src, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW).map_err(|e| ctx("inspecting", &rel)(e.into()))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind == FileType::CharacterDevice && st.st_rdev == 0 {
            beneath::remove(dst, &name).map_err(ctx("applying the whiteout", &rel))?;
            continue;
        }
        if kind == FileType::Directory {
            let from = beneath::open_node(src, &name, FileType::Directory).map_err(ctx("opening", &rel))?;
            let opaque =
                beneath::get_xattr(from.as_fd(), OVERLAY_OPAQUE_XATTR).map_err(ctx("inspecting", &rel))?.is_some_and(|v| v == b"y");
            let to = ensure_dir(dst, &name, opaque).map_err(ctx("creating", &rel))?;
            copy_dir(from.as_fd(), to.as_fd(), &rel, as_root)?;
            beneath::apply_meta(to.as_fd(), &meta_of(from.as_fd(), &rel)?, as_root).map_err(ctx("setting the metadata of", &rel))?;
            continue;
        }
        beneath::remove(dst, &name).map_err(ctx("replacing", &rel))?;
        match kind {
            FileType::RegularFile => {
                let mut from = File::from(beneath::open_node(src, &name, FileType::RegularFile).map_err(ctx("opening", &rel))?);
                let mut to = beneath::create_file(dst, &name).map_err(ctx("creating", &rel))?;
                io::copy(&mut from, &mut to).map_err(ctx("copying", &rel))?;
                beneath::apply_meta(to.as_fd(), &meta_of(from.as_fd(), &rel)?, as_root).map_err(ctx("setting the metadata of", &rel))?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, name.as_os_str(), Vec::new()).map_err(|e| ctx("reading", &rel)(e.into()))?;
                let target = Path::new(OsStr::from_bytes(target.as_bytes()));
                beneath::create_symlink(dst, &name, target).map_err(ctx("creating", &rel))?;
                let meta = Meta { mode: 0o777, owner: Some((st.st_uid, st.st_gid)), mtime: Some(st.st_mtime) };
                beneath::apply_symlink_meta(dst, &name, &meta, as_root).map_err(ctx("setting the metadata of", &rel))?;
            }
            FileType::Fifo => {
                let fd = beneath::create_fifo(dst, &name).map_err(ctx("creating", &rel))?;
                let meta = Meta { mode: st.st_mode & 0o7777, owner: Some((st.st_uid, st.st_gid)), mtime: Some(st.st_mtime) };
                beneath::apply_meta(fd.as_fd(), &meta, as_root).map_err(ctx("setting the metadata of", &rel))?;
            }
            // Unpacking makes nothing else; anything else is not copied.
            _ => tracing::warn!(entry = %rel.display(), "skipping a node of an unexpected type in a cached layer"),
        }
    }
    Ok(())
}

/// The directory `name` in `dst`: kept when it is one (emptied when `opaque`), otherwise made
/// in place of whatever is there.
fn ensure_dir(dst: BorrowedFd<'_>, name: &OsStr, opaque: bool) -> io::Result<OwnedFd> {
    match beneath::kind_of(dst, name)? {
        Some(FileType::Directory) if !opaque => {}
        Some(_) => {
            beneath::remove(dst, name)?;
            rustix::fs::mkdirat(dst, name, rustix::fs::Mode::from_raw_mode(0o700))?;
        }
        None => rustix::fs::mkdirat(dst, name, rustix::fs::Mode::from_raw_mode(0o700))?,
    }
    beneath::open_node(dst, name, FileType::Directory)
}

//! Files from secrets in an instance: each directory of them is a tmpfs of its own (so values
//! never reach a disk; the bundle, whose spec holds the environment, is one too), bind-mounted read-only into the instance. The files are links into a
//! generation directory named by `..data`, and a new set is written as a new generation and
//! switched to by renaming a new `..data` link over the old one, as Kubernetes does: a reader
//! sees the old set or the new one, never a mix or a half-written file.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

const DATA: &str = "..data";

/// Whether `name` may be a file's name here: one path component, not hidden behind `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && !name.contains('/') && !name.contains('\0') && !name.starts_with("..") && name != "."
}

/// Mounts a small tmpfs with root directory mode `mode` on `dir` (made if missing).
pub fn mount_tmpfs(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let options = format!("size=2m,mode={mode:o}");
    mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some(options.as_str()))
        .map_err(std::io::Error::from)
}

/// Unmounts the tmpfs on `dir`, if one is there.
pub fn unmount(dir: &Path) {
    let _ = umount2(dir, MntFlags::MNT_DETACH);
}

/// Writes `files` (name → content, each `0400` owned by `uid:gid`) as the new generation in `dir`
/// and switches to it; files no longer in the set disappear.
pub fn write(dir: &Path, files: &BTreeMap<String, Vec<u8>>, uid: u32, gid: u32) -> std::io::Result<()> {
    if let Some(bad) = files.keys().find(|n| !valid_name(n)) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("`{bad}` is not a file name")));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let generation = format!("..{nanos}");
    let gen_dir = dir.join(&generation);
    std::fs::create_dir(&gen_dir)?;
    for (name, content) in files {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(gen_dir.join(name))?;
        f.write_all(content)?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    std::os::unix::fs::chown(&gen_dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(&gen_dir, std::fs::Permissions::from_mode(0o500))?;
    // The switch: one rename.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&generation, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    for name in files.keys() {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("{DATA}/{name}"), &link)?;
        }
    }
    // Links to files gone from the set, and older generations.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale_link = !name.starts_with("..") && !files.contains_key(&name);
        let old_generation = name.starts_with("..") && name != DATA && name != generation;
        if stale_link {
            let _ = std::fs::remove_file(e.path());
        } else if old_generation {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_set_replaces_the_old_at_once_and_leaves_nothing_behind() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (uid, gid) = (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw());
        let one: BTreeMap<String, Vec<u8>> = [("password".to_owned(), b"one".to_vec()), ("user".to_owned(), b"gb".to_vec())].into();
        write(dir.path(), &one, uid, gid)?;
        assert_eq!(std::fs::read(dir.path().join("password"))?, b"one");
        let mode = std::fs::metadata(dir.path().join("password"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let two: BTreeMap<String, Vec<u8>> = [("password".to_owned(), b"two".to_vec())].into();
        write(dir.path(), &two, uid, gid)?;
        assert_eq!(std::fs::read(dir.path().join("password"))?, b"two");
        assert!(std::fs::symlink_metadata(dir.path().join("user")).is_err(), "a file gone from the set stays");
        let generations = std::fs::read_dir(dir.path())?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..") && e.file_name() != DATA)
            .count();
        assert_eq!(generations, 1, "old generations stay");
        let bad: BTreeMap<String, Vec<u8>> = [("../escape".to_owned(), b"x".to_vec())].into();
        assert!(write(dir.path(), &bad, uid, gid).is_err());
        assert!(!valid_name("..data") && !valid_name("a/b") && valid_name("db-password"));
        Ok(())
    }
}

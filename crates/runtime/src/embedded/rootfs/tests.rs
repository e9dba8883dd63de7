use super::*;
use std::os::unix::fs::FileTypeExt;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Two overlay-format layers: the upper one deletes `/etc/old`, replaces `/etc/motd`, and makes
/// `/var/cache` opaque.
fn layers(base: &Path) -> Result<Vec<PathBuf>> {
    let (l1, l2) = (base.join("l1"), base.join("l2"));
    fs::create_dir_all(l1.join("etc"))?;
    fs::create_dir_all(l1.join("var/cache"))?;
    fs::write(l1.join("etc/old"), b"old")?;
    fs::write(l1.join("etc/motd"), b"v1")?;
    fs::write(l1.join("var/cache/stale"), b"x")?;
    fs::create_dir_all(l2.join("etc"))?;
    fs::create_dir_all(l2.join("var/cache"))?;
    fs::write(l2.join("etc/motd"), b"v2")?;
    fs::write(l2.join("var/cache/fresh"), b"y")?;
    nix::sys::stat::mknod(&l2.join("etc/old"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)?;
    xattr::set(l2.join("var/cache"), "trusted.overlay.opaque", b"y")?;
    Ok(vec![l1, l2])
}

fn check_view(root: &Path) -> Result {
    assert_eq!(fs::read(root.join("etc/motd"))?, b"v2");
    assert!(!root.join("etc/old").exists(), "whiteout ignored");
    assert!(!root.join("var/cache/stale").exists(), "opaque directory ignored");
    assert_eq!(fs::read(root.join("var/cache/fresh"))?, b"y");
    Ok(())
}

/// Unmounts and removes the root filesystem even when an assertion fails.
struct Cleanup(Option<Rootfs>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            let _ = r.remove();
        }
    }
}

fn require_root() -> Result {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("root filesystems need mount and mknod: this test runs as root (CI does)".into())
    }
}

#[test]
fn overlay_merges_layers_and_keeps_them_read_only() -> Result {
    require_root()?;
    if !overlay_supported() {
        return Err("this kernel has no overlayfs".into());
    }
    let dir = tempfile::tempdir()?;
    let layers = layers(dir.path())?;
    let inst = dir.path().join("instance");
    let rootfs = Rootfs::assemble(&inst, &layers, RootfsKind::Overlay)?;
    let _guard = Cleanup(Some(rootfs.clone()));
    assert!(is_mountpoint(&rootfs.path)?);
    check_view(&rootfs.path)?;
    // Writes land in the instance's upper directory, never in a shared layer.
    fs::write(rootfs.path.join("etc/motd"), b"changed")?;
    fs::remove_file(rootfs.path.join("var/cache/fresh"))?;
    assert_eq!(fs::read(layers[1].join("etc/motd"))?, b"v2");
    assert!(layers[1].join("var/cache/fresh").exists());
    assert_eq!(fs::read(inst.join("upper/etc/motd"))?, b"changed");
    // Assembling again is a no-op.
    assert_eq!(Rootfs::assemble(&inst, &layers, RootfsKind::Overlay)?, rootfs);
    rootfs.remove()?;
    assert!(!is_mountpoint(&inst.join("rootfs"))?);
    assert_eq!(fs::read_dir(&inst)?.count(), 0, "left something behind");
    Ok(())
}

#[test]
fn copy_fallback_gives_the_same_view() -> Result {
    require_root()?;
    let dir = tempfile::tempdir()?;
    let layers = layers(dir.path())?;
    let inst = dir.path().join("instance");
    let rootfs = Rootfs::assemble(&inst, &layers, RootfsKind::Copy)?;
    let _guard = Cleanup(Some(rootfs.clone()));
    check_view(&rootfs.path)?;
    assert!(!fs::symlink_metadata(rootfs.path.join("etc"))?.file_type().is_char_device());
    rootfs.remove()?;
    assert_eq!(fs::read_dir(&inst)?.count(), 0);
    Ok(())
}

#[test]
fn missing_layers_are_named() {
    let err = Rootfs::assemble(Path::new("/nonexistent/instance"), &[PathBuf::from("/nonexistent/layer")], RootfsKind::Overlay);
    assert_eq!(err.err().map(|e| e.to_string()).unwrap_or_default(), "layer directory /nonexistent/layer is missing; pull the image again");
    assert!(matches!(Rootfs::assemble(Path::new("/x"), &[], RootfsKind::Copy), Err(RootfsError::NoLayers)));
}

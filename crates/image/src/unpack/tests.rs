use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One crafted tar entry; names are written raw, so malicious paths survive.
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
    Block(&'a str),
    Owned(&'a str, u64, u64),
    Xattr(&'a str, &'a str, &'a [u8]),
}

fn raw_header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    if let Some(g) = h.as_gnu_mut() {
        g.name = [0; 100];
        g.name[..name.len()].copy_from_slice(name.as_bytes());
    }
    h
}

fn link_name(h: &mut tar::Header, target: &str) {
    if let Some(g) = h.as_gnu_mut() {
        g.linkname = [0; 100];
        g.linkname[..target.len()].copy_from_slice(target.as_bytes());
    }
}

fn tarball(entries: &[E<'_>]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h;
        let mut data: &[u8] = &[];
        match e {
            E::File(n, d, m) => {
                h = raw_header(n, tar::EntryType::Regular, *m, d.len() as u64);
                data = d;
            }
            E::Dir(n, m) => h = raw_header(n, tar::EntryType::Directory, *m, 0),
            E::Symlink(n, t) => {
                h = raw_header(n, tar::EntryType::Symlink, 0o777, 0);
                link_name(&mut h, t);
            }
            E::Hardlink(n, t) => {
                h = raw_header(n, tar::EntryType::Link, 0o644, 0);
                link_name(&mut h, t);
            }
            E::Fifo(n) => h = raw_header(n, tar::EntryType::Fifo, 0o640, 0),
            E::Char(n) => h = raw_header(n, tar::EntryType::Char, 0o666, 0),
            E::Block(n) => h = raw_header(n, tar::EntryType::Block, 0o666, 0),
            E::Owned(n, uid, gid) => {
                h = raw_header(n, tar::EntryType::Regular, 0o4755, 2);
                h.set_uid(*uid);
                h.set_gid(*gid);
                data = b"ok";
            }
            E::Xattr(n, key, value) => {
                let mut pax = Vec::new();
                let rec = |k: &str, v: &[u8]| {
                    let body_len = k.len() + v.len() + 3;
                    let mut len = body_len + body_len.to_string().len();
                    if len.to_string().len() != body_len.to_string().len() {
                        len += 1;
                    }
                    let mut r = format!("{len} {k}=").into_bytes();
                    r.extend_from_slice(v);
                    r.push(b'\n');
                    r
                };
                pax.extend(rec(&format!("SCHILY.xattr.{key}"), value));
                let ph = raw_header("PaxHeaders/x", tar::EntryType::XHeader, 0o644, pax.len() as u64);
                let mut ph = ph;
                ph.set_cksum();
                b.append(&ph, pax.as_slice())?;
                h = raw_header(n, tar::EntryType::Regular, 0o644, 1);
                data = b"x";
            }
        }
        h.set_cksum();
        b.append(&h, data)?;
    }
    Ok(b.into_inner()?)
}

fn unpack(entries: &[E<'_>], root: &Path, mode: UnpackMode) -> std::result::Result<UnpackStats, UnpackError> {
    let tar = tarball(entries).map_err(|e| UnpackError::Tar(io::Error::other(e.to_string())))?;
    unpack_layer(tar.as_slice(), root, mode)
}

/// A root inside a sandbox whose sibling `outside/` must stay untouched.
fn sandbox() -> Result<(tempfile::TempDir, PathBuf, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir(&root)?;
    fs::create_dir(&outside)?;
    fs::write(outside.join("sentinel"), b"untouched")?;
    Ok((dir, root, outside))
}

fn outside_untouched(outside: &Path) -> Result<bool> {
    let names: Vec<_> = fs::read_dir(outside)?.map(|e| e.map(|e| e.file_name())).collect::<io::Result<_>>()?;
    Ok(names.len() == 1 && fs::read(outside.join("sentinel"))? == b"untouched")
}

#[test]
fn unpacks_every_kind_of_entry() -> Result {
    let (_d, root, _) = sandbox()?;
    let stats = unpack(
        &[
            E::Dir("etc/", 0o755),
            E::File("etc/hostname", b"berth\n", 0o644),
            E::File("./bin/tool", b"#!/bin/sh\n", 0o755),
            E::Symlink("bin/alias", "tool"),
            E::Symlink("abs", "/etc/hostname"),
            E::Hardlink("etc/hostname2", "etc/hostname"),
            E::Fifo("run/pipe"),
            E::Dir("locked/", 0o555),
            E::File("locked/inside", b"x", 0o400),
            E::Xattr("tagged", "user.berth", b"v1"),
        ],
        &root,
        UnpackMode::Flatten,
    )?;
    assert_eq!(stats.entries, 10); // the pax header belongs to the entry after it
    assert_eq!(fs::read(root.join("etc/hostname"))?, b"berth\n");
    assert_eq!(fs::metadata(root.join("bin/tool"))?.mode() & 0o7777, 0o755);
    assert_eq!(fs::read_link(root.join("bin/alias"))?, Path::new("tool"));
    // An absolute symlink target is kept as it is: it is only ever resolved inside the container.
    assert_eq!(fs::read_link(root.join("abs"))?, Path::new("/etc/hostname"));
    assert_eq!(fs::metadata(root.join("etc/hostname2"))?.ino(), fs::metadata(root.join("etc/hostname"))?.ino());
    assert!(fs::symlink_metadata(root.join("run/pipe"))?.file_type().is_fifo());
    assert_eq!(fs::metadata(root.join("locked"))?.mode() & 0o7777, 0o555);
    assert_eq!(fs::read(root.join("locked/inside"))?, b"x");
    assert_eq!(fs::metadata(root.join("etc/hostname"))?.mtime(), 1_700_000_000);
    assert_eq!(xattr::get(root.join("tagged"), "user.berth")?.as_deref(), Some(&b"v1"[..]));
    Ok(())
}

#[test]
fn applies_ownership_and_setuid_as_root() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("this test checks chown and runs as root (CI does)".into());
    }
    let (_d, root, _) = sandbox()?;
    unpack(&[E::Owned("usr/bin/su", 1234, 5678)], &root, UnpackMode::Flatten)?;
    let m = fs::metadata(root.join("usr/bin/su"))?;
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o4755));
    Ok(())
}

#[test]
fn refuses_escapes_and_devices() -> Result {
    let cases: Vec<(&str, Vec<E<'_>>)> = vec![
        ("dotdot", vec![E::File("../evil", b"x", 0o644)]),
        ("nested dotdot", vec![E::File("a/../../evil", b"x", 0o644)]),
        ("absolute", vec![E::File("/evil", b"x", 0o644)]),
        ("through symlink to outside", vec![E::Symlink("out", "../outside"), E::File("out/evil", b"x", 0o644)]),
        ("through absolute symlink", vec![E::Symlink("out", "/"), E::File("out/tmp/evil", b"x", 0o644)]),
        ("through symlinked dir", vec![E::Dir("d/", 0o755), E::Symlink("d/up", ".."), E::File("d/up/x", b"x", 0o644)]),
        ("hardlink outside", vec![E::Hardlink("pw", "../outside/sentinel")]),
        ("hardlink absolute", vec![E::Hardlink("pw", "/etc/passwd")]),
        ("hardlink through symlink", vec![E::Symlink("out", "../outside"), E::Hardlink("pw", "out/sentinel")]),
        ("char device", vec![E::Char("dev/mem")]),
        ("block device", vec![E::Block("dev/sda")]),
        ("whiteout of parent", vec![E::File("a/.wh...", b"", 0o644)]),
    ];
    let mut report = String::new();
    for (name, entries) in cases {
        let (_d, root, outside) = sandbox()?;
        let res = unpack(&entries, &root, UnpackMode::Flatten);
        report.push_str(&format!("{name}: {}\n", res.err().map(|e| e.to_string()).unwrap_or_else(|| "ACCEPTED".into())));
        assert!(outside_untouched(&outside)?, "{name} touched the outside");
    }
    expect_test::expect![[r#"
        dotdot: layer entry `../evil` contains `..` and would escape the root filesystem
        nested dotdot: layer entry `a/../../evil` contains `..` and would escape the root filesystem
        absolute: layer entry `/evil` is an absolute path; layer entries must be relative to the root
        through symlink to outside: layer entry `out/evil` would be written through the symlink `out`
        through absolute symlink: layer entry `out/tmp/evil` would be written through the symlink `out`
        through symlinked dir: layer entry `d/up/x` would be written through the symlink `d/up`
        hardlink outside: hard link `pw` points at `../outside/sentinel`, which is outside the root filesystem
        hardlink absolute: hard link `pw` points at `/etc/passwd`, which is outside the root filesystem
        hardlink through symlink: hard link `pw` points at `out/sentinel`, which is reached through a symlink or a non-directory
        char device: layer entry `dev/mem` is a device node; images may not contain device nodes
        block device: layer entry `dev/sda` is a device node; images may not contain device nodes
        whiteout of parent: layer entry `a/.wh...` contains `..` and would escape the root filesystem
    "#]]
    .assert_eq(&report);
    Ok(())
}

#[test]
fn a_symlink_planted_at_a_file_path_is_replaced_not_followed() -> Result {
    let (_d, root, outside) = sandbox()?;
    unpack(&[E::Symlink("victim", "../outside/sentinel"), E::File("victim", b"new", 0o644)], &root, UnpackMode::Flatten)?;
    assert!(outside_untouched(&outside)?);
    assert_eq!(fs::read(root.join("victim"))?, b"new");
    assert!(!fs::symlink_metadata(root.join("victim"))?.file_type().is_symlink());
    Ok(())
}

#[test]
fn flatten_applies_whiteouts_and_opaque_directories() -> Result {
    let (_d, root, _) = sandbox()?;
    unpack(
        &[E::File("a/b", b"1", 0o644), E::File("a/c", b"1", 0o644), E::File("d", b"1", 0o644), E::File("e/f", b"1", 0o644)],
        &root,
        UnpackMode::Flatten,
    )?;
    unpack(
        &[
            E::File("a/new", b"2", 0o644),
            E::File("a/.wh..wh..opq", b"", 0o644),
            E::File(".wh.d", b"", 0o644),
            E::File("e/.wh.f", b"", 0o644),
            E::File(".wh.missing", b"", 0o644),
        ],
        &root,
        UnpackMode::Flatten,
    )?;
    let mut names: Vec<String> = Vec::new();
    for dir in ["", "a", "e"] {
        for e in fs::read_dir(root.join(dir))? {
            names.push(format!("{dir}/{}", e?.file_name().to_string_lossy()));
        }
    }
    names.sort();
    assert_eq!(names, ["/a", "/e", "a/new"]);
    Ok(())
}

#[test]
fn overlay_layers_get_overlayfs_whiteouts() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("overlay whiteouts are character devices and trusted xattrs: this test runs as root (CI does)".into());
    }
    let (_d, root, _) = sandbox()?;
    unpack(
        &[E::File("a/.wh..wh..opq", b"", 0o644), E::File("a/keep", b"1", 0o644), E::File(".wh.gone", b"", 0o644)],
        &root,
        UnpackMode::OverlayLayer,
    )?;
    let m = fs::symlink_metadata(root.join("gone"))?;
    assert!(m.file_type().is_char_device() && m.rdev() == 0);
    assert_eq!(xattr::get(root.join("a"), OVERLAY_OPAQUE_XATTR)?.as_deref(), Some(&b"y"[..]));
    // An image cannot forge overlayfs attributes of its own.
    let (_d2, root2, _) = sandbox()?;
    unpack(&[E::Xattr("f", "trusted.overlay.opaque", b"y")], &root2, UnpackMode::OverlayLayer)?;
    assert_eq!(xattr::get(root2.join("f"), OVERLAY_OPAQUE_XATTR)?, None);
    Ok(())
}

#[test]
fn garbage_is_a_tar_error_not_a_panic() {
    let res = unpack_layer(
        &b"definitely not a tarball, but long enough to hold a header block or two....."[..],
        Path::new("/nonexistent"),
        UnpackMode::Flatten,
    );
    assert!(matches!(res, Err(UnpackError::Tar(_))), "{res:?}");
}

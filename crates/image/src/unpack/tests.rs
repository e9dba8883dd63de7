use super::*;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::sync::mpsc;

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
    /// A directory entry with an owner.
    OwnedDir(&'a str, u32, u64, u64),
    Xattr(&'a str, &'a str, &'a [u8]),
    /// A file whose name is given by a PAX `path` record (no length limit).
    Pax(&'a str),
}

/// One PAX extended header record: `<len> <key>=<value>\n`, the length counting itself.
fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body_len = k.len() + v.len() + 3;
    let mut len = body_len + body_len.to_string().len();
    if len.to_string().len() != body_len.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
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
            E::OwnedDir(n, m, uid, gid) => {
                h = raw_header(n, tar::EntryType::Directory, *m, 0);
                h.set_uid(*uid);
                h.set_gid(*gid);
            }
            E::Owned(n, uid, gid) => {
                h = raw_header(n, tar::EntryType::Regular, 0o4755, 2);
                h.set_uid(*uid);
                h.set_gid(*gid);
                data = b"ok";
            }
            E::Xattr(n, key, value) => {
                let pax = pax_record(&format!("SCHILY.xattr.{key}"), value);
                let mut ph = raw_header("PaxHeaders/x", tar::EntryType::XHeader, 0o644, pax.len() as u64);
                ph.set_cksum();
                b.append(&ph, pax.as_slice())?;
                h = raw_header(n, tar::EntryType::Regular, 0o644, 1);
                data = b"x";
            }
            E::Pax(n) => {
                let pax = pax_record("path", n.as_bytes());
                let mut ph = raw_header("PaxHeaders/x", tar::EntryType::XHeader, 0o644, pax.len() as u64);
                ph.set_cksum();
                b.append(&ph, pax.as_slice())?;
                h = raw_header("placeholder", tar::EntryType::Regular, 0o644, 0);
            }
        }
        h.set_cksum();
        b.append(&h, data)?;
    }
    Ok(b.into_inner()?)
}

fn unpack(entries: &[E<'_>], root: &Path, mode: UnpackMode) -> std::result::Result<UnpackStats, UnpackError> {
    unpack_within(entries, root, mode, &mut UnpackBudget::new(UnpackLimits::default()))
}

fn unpack_within(
    entries: &[E<'_>],
    root: &Path,
    mode: UnpackMode,
    budget: &mut UnpackBudget,
) -> std::result::Result<UnpackStats, UnpackError> {
    let tar = tarball(entries).map_err(|e| UnpackError::Tar(io::Error::other(e.to_string())))?;
    unpack_layer(tar.as_slice(), root, mode, budget)
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
    let pipe = fs::symlink_metadata(root.join("run/pipe"))?;
    assert!(pipe.file_type().is_fifo());
    assert_eq!(pipe.mode() & 0o7777, 0o640);
    assert_eq!(fs::metadata(root.join("locked"))?.mode() & 0o7777, 0o555);
    assert_eq!(fs::read(root.join("locked/inside"))?, b"x");
    assert_eq!(fs::metadata(root.join("etc/hostname"))?.mtime(), 1_700_000_000);
    assert_eq!(fs::metadata(root.join("etc"))?.mtime(), 1_700_000_000, "a directory's time is set after its content");
    assert_eq!(xattr::get(root.join("tagged"), "user.berth")?.as_deref(), Some(&b"v1"[..]));
    Ok(())
}

#[test]
fn applies_ownership_and_setuid_as_root() -> Result {
    if !nix::unistd::geteuid().is_root() {
        return Err("this test checks chown and runs as root (CI does)".into());
    }
    let (_d, root, _) = sandbox()?;
    unpack(&[E::Owned("usr/bin/su", 1234, 5678), E::OwnedDir("home/app/", 0o750, 1000, 1000)], &root, UnpackMode::Flatten)?;
    let m = fs::metadata(root.join("usr/bin/su"))?;
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1234, 5678, 0o4755));
    let m = fs::metadata(root.join("home/app"))?;
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o750));
    Ok(())
}

/// What containerd and moby accept, berth accepts: absolute names (umoci writes them), a `/` or
/// `./` entry for the root directory itself, `..` that stays inside, and device nodes (skipped).
#[test]
fn accepts_what_other_runtimes_accept() -> Result {
    let (_d, root, outside) = sandbox()?;
    unpack(
        &[
            E::Dir("/", 0o750),
            E::Dir("/etc/", 0o755),
            E::File("/etc/os-release", b"umoci", 0o644),
            E::File("a/../b", b"b", 0o644),
            E::Hardlink("/etc/os-release2", "/etc/os-release"),
            E::Char("dev/null"),
            E::Block("dev/sda"),
        ],
        &root,
        UnpackMode::Flatten,
    )?;
    assert_eq!(fs::read(root.join("etc/os-release"))?, b"umoci");
    assert_eq!(fs::read(root.join("etc/os-release2"))?, b"umoci");
    assert_eq!(fs::read(root.join("b"))?, b"b");
    assert_eq!(fs::metadata(&root)?.mode() & 0o7777, 0o750, "the root entry sets the root's mode");
    assert!(!root.join("dev/null").exists() && !root.join("dev/sda").exists(), "device nodes are skipped");
    let (_d2, root2, _) = sandbox()?;
    unpack(&[E::Dir("./", 0o711), E::File("./x", b"x", 0o644)], &root2, UnpackMode::Flatten)?;
    assert_eq!(fs::metadata(&root2)?.mode() & 0o7777, 0o711);
    assert!(outside_untouched(&outside)?);
    Ok(())
}

#[test]
fn refuses_escapes() -> Result {
    let cases: Vec<(&str, Vec<E<'_>>)> = vec![
        ("dotdot", vec![E::File("../evil", b"x", 0o644)]),
        ("nested dotdot", vec![E::File("a/../../evil", b"x", 0o644)]),
        ("through symlink to outside", vec![E::Symlink("out", "../outside"), E::File("out/evil", b"x", 0o644)]),
        ("through absolute symlink", vec![E::Symlink("out", "/"), E::File("out/tmp/evil", b"x", 0o644)]),
        ("through symlinked dir", vec![E::Dir("d/", 0o755), E::Symlink("d/up", ".."), E::File("d/up/x", b"x", 0o644)]),
        ("through a symlink loop", vec![E::Symlink("a", "b"), E::Symlink("b", "a"), E::File("a/x", b"x", 0o644)]),
        ("hardlink outside", vec![E::Hardlink("pw", "../outside/sentinel")]),
        ("hardlink absolute", vec![E::Hardlink("pw", "/etc/passwd")]),
        ("hardlink through symlink", vec![E::Symlink("out", "../outside"), E::Hardlink("pw", "out/sentinel")]),
        ("hardlink to itself", vec![E::File("f", b"x", 0o644), E::Hardlink("f", "f")]),
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
        through symlink to outside: layer entry `out/evil` would be written through the symlink `out`
        through absolute symlink: layer entry `out/tmp/evil` would be written through the symlink `out`
        through symlinked dir: layer entry `d/up/x` would be written through the symlink `d/up`
        through a symlink loop: layer entry `a/x` would be written through the symlink `a`
        hardlink outside: hard link `pw` points at `../outside/sentinel`, which is outside the root filesystem
        hardlink absolute: hard link `pw` points at `/etc/passwd`, which is reached through a symlink or a non-directory, or does not exist
        hardlink through symlink: hard link `pw` points at `out/sentinel`, which is reached through a symlink or a non-directory, or does not exist
        hardlink to itself: hard link `f` points at `f`, which is itself
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

/// The host side of the hostile corpus: a directory with a child directory and a file, a file,
/// a FIFO and (as root) a character device, each with a known mode and time.
struct Host {
    dir: PathBuf,
}

const HOST_TIME: i64 = 1_600_000_000;

impl Host {
    fn new(base: &Path) -> Result<Host> {
        let dir = base.join("host");
        fs::create_dir_all(dir.join("sentinel-dir/b"))?;
        fs::write(dir.join("sentinel-dir/keep"), b"keep")?;
        fs::write(dir.join("sentinel"), b"untouched")?;
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600))?;
        if nix::unistd::geteuid().is_root() {
            let dev = nix::sys::stat::makedev(1, 3);
            nix::sys::stat::mknod(&dir.join("null"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o600), dev)?;
        }
        for p in ["sentinel-dir/b", "sentinel-dir/keep", "sentinel-dir", "sentinel", "fifo", "null"] {
            let p = dir.join(p);
            if fs::symlink_metadata(&p).is_ok() {
                let mode = if p.is_dir() { 0o755 } else { 0o600 };
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
                let t = nix::sys::time::TimeSpec::new(HOST_TIME, 0);
                nix::sys::stat::utimensat(None, &p, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)?;
            }
        }
        Ok(Host { dir })
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    /// Everything the host has, with its type, mode and time: must not change.
    fn snapshot(&self) -> Result<String> {
        let mut out = String::new();
        let mut stack = vec![self.dir.clone()];
        let mut lines = Vec::new();
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)? {
                let p = e?.path();
                let m = fs::symlink_metadata(&p)?;
                let content = if m.is_file() { String::from_utf8_lossy(&fs::read(&p)?).into_owned() } else { String::new() };
                lines.push(format!("{} {:o} {} {content}", p.strip_prefix(&self.dir)?.display(), m.mode(), m.mtime()));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
        lines.sort();
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        Ok(out)
    }
}

/// Unpacks `layers` in `mode` on a thread, giving up when it takes more than a few seconds
/// (a hang is a failure). In overlay mode each layer goes into a directory of its own and the
/// layers are then copied onto one root, as on hosts without overlayfs.
fn unpack_layers_guarded(layers: Vec<Vec<u8>>, base: &Path, mode: UnpackMode) -> Result<std::result::Result<(), String>> {
    let base = base.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let run = || -> std::result::Result<(), String> {
            let root = base.join("root");
            fs::create_dir_all(&root).map_err(|e| e.to_string())?;
            let mut budget = UnpackBudget::new(UnpackLimits::default());
            for (i, layer) in layers.iter().enumerate() {
                match mode {
                    UnpackMode::Flatten => {
                        unpack_layer(layer.as_slice(), &root, mode, &mut budget).map_err(|e| e.to_string())?;
                    }
                    UnpackMode::OverlayLayer => {
                        let dir = base.join(format!("layer{i}"));
                        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                        unpack_layer(layer.as_slice(), &dir, mode, &mut budget).map_err(|e| e.to_string())?;
                        crate::copy_layer(&dir, &root).map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        };
        let _ = tx.send(run());
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).map_err(|_| "unpacking hung".into())
}

/// A corpus of hostile layers, each in both modes: whatever an image does, nothing outside its
/// root changes (not a mode, a time, a byte or an entry) and nothing hangs.
#[test]
fn hostile_layers_leave_the_host_untouched() -> Result {
    let root_user = nix::unistd::geteuid().is_root();
    let base = tempfile::tempdir()?;
    let host = Host::new(base.path())?;
    let before = host.snapshot()?;
    let (dir, file, fifo, null) = (host.path("sentinel-dir"), host.path("sentinel"), host.path("fifo"), host.path("null"));
    let via_host_root = format!("r{file}");
    type Layers<'a> = Vec<Vec<E<'a>>>;
    let mut cases: Vec<(&str, Layers<'_>)> = vec![
        ("dir metadata through a later symlink to a file", vec![vec![E::Dir("d/", 0o6777), E::Symlink("d", &file)]]),
        ("dir metadata through a later symlink to a dir", vec![vec![E::Dir("d/", 0o777), E::Symlink("d", &dir)]]),
        (
            "nested dir metadata through a symlinked ancestor",
            vec![vec![E::Dir("a/", 0o755), E::Dir("a/b/", 0o6777), E::Symlink("a", &dir)]],
        ),
        ("dir metadata through a relative symlink", vec![vec![E::Dir("d/", 0o777), E::Symlink("d", "../host/sentinel-dir")]]),
        ("dir metadata through a symlink to a FIFO", vec![vec![E::Dir("p/", 0o777), E::Symlink("p", &fifo)]]),
        ("root metadata then a symlink", vec![vec![E::Dir("./", 0o755), E::Dir("x/", 0o777), E::Symlink("x", &dir), E::Dir("x/", 0o700)]]),
        ("write through a lower layer's symlink", vec![vec![E::Symlink("etc", &dir)], vec![E::File("etc/evil", b"x", 0o644)]]),
        ("dir through a lower layer's symlink", vec![vec![E::Symlink("etc", &dir)], vec![E::Dir("etc/b/", 0o6777)]]),
        ("replace a lower symlink with a dir", vec![vec![E::Symlink("d", &dir)], vec![E::Dir("d/", 0o6777)]]),
        ("whiteout through a lower layer's symlink", vec![vec![E::Symlink("w", &dir)], vec![E::File("w/.wh.keep", b"", 0o644)]]),
        ("whiteout of a lower symlink", vec![vec![E::Symlink("w", &dir)], vec![E::File(".wh.w", b"", 0o644)]]),
        ("opaque through a lower layer's symlink", vec![vec![E::Symlink("o", &dir)], vec![E::File("o/.wh..wh..opq", b"", 0o644)]]),
        ("opaque through a symlink of the same layer", vec![vec![E::Symlink("o", &dir), E::File("o/.wh..wh..opq", b"", 0o644)]]),
        ("hard link through a lower layer's symlink", vec![vec![E::Symlink("s", &dir)], vec![E::Hardlink("pw", "s/keep")]]),
        ("hard link to a symlink, then written", vec![vec![E::Symlink("l", &file), E::Hardlink("h", "l"), E::File("h", b"evil", 0o6777)]]),
        ("hard link to a symlink, then a dir", vec![vec![E::Symlink("l", &file), E::Hardlink("h", "l"), E::Dir("h/", 0o6777)]]),
        ("hard link to a lower symlink", vec![vec![E::Symlink("l", &file)], vec![E::Hardlink("h", "l"), E::Xattr("h", "user.evil", b"1")]]),
        ("file over a lower symlink to a FIFO", vec![vec![E::Symlink("p", &fifo)], vec![E::File("p", b"x", 0o6777)]]),
        (
            "symlink loop replaced by a dir",
            vec![vec![E::Symlink("a", "b"), E::Symlink("b", "a"), E::Dir("a/", 0o777), E::File("a/x", b"x", 0o644)]],
        ),
        ("symlink to the host root", vec![vec![E::Symlink("r", "/")], vec![E::File(&via_host_root, b"x", 0o644)]]),
    ];
    if root_user {
        cases.push(("dir metadata through a symlink to a device", vec![vec![E::Dir("n/", 0o666), E::Symlink("n", &null)]]));
        cases.push(("fifo over a lower symlink to a device", vec![vec![E::Symlink("n", &null)], vec![E::Fifo("n")]]));
    }
    let mut report = String::new();
    for (name, layers) in &cases {
        for mode in [UnpackMode::Flatten, UnpackMode::OverlayLayer] {
            let work = tempfile::tempdir_in(base.path())?;
            let blobs = layers.iter().map(|l| tarball(l)).collect::<Result<Vec<_>>>()?;
            let outcome = unpack_layers_guarded(blobs, work.path(), mode)?;
            assert_eq!(host.snapshot()?, before, "{name} ({mode:?}) changed the host");
            // The device cases run only as root; the table is the same for everyone.
            if mode == UnpackMode::Flatten && !name.contains("device") {
                report.push_str(&format!("{name}: {}\n", outcome.err().unwrap_or_else(|| "ok".into())));
            }
        }
    }
    expect_test::expect![[r#"
        dir metadata through a later symlink to a file: ok
        dir metadata through a later symlink to a dir: ok
        nested dir metadata through a symlinked ancestor: ok
        dir metadata through a relative symlink: ok
        dir metadata through a symlink to a FIFO: ok
        root metadata then a symlink: ok
        write through a lower layer's symlink: layer entry `etc/evil` would be written through the symlink `etc`
        dir through a lower layer's symlink: layer entry `etc/b` would be written through the symlink `etc`
        replace a lower symlink with a dir: ok
        whiteout through a lower layer's symlink: layer entry `w/keep` would be written through the symlink `w`
        whiteout of a lower symlink: ok
        opaque through a lower layer's symlink: layer entry `o/.wh..wh..opq` would be written through the symlink `o`
        opaque through a symlink of the same layer: layer entry `o/.wh..wh..opq` would be written through the symlink `o`
        hard link through a lower layer's symlink: hard link `pw` points at `s/keep`, which is reached through a symlink or a non-directory, or does not exist
        hard link to a symlink, then written: ok
        hard link to a symlink, then a dir: ok
        hard link to a lower symlink: ok
        file over a lower symlink to a FIFO: ok
        symlink loop replaced by a dir: ok
        symlink to the host root: layer entry `r/TMP` would be written through the symlink `r`
    "#]]
    .assert_eq(&report.replace(&host.path("sentinel"), "/TMP").replace(&format!("r{}", host.path("sentinel")), "r/TMP"));
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

fn small_limits() -> UnpackLimits {
    UnpackLimits {
        layer_bytes: 1 << 20,
        layer_entries: 10,
        image_bytes: 3 << 19,
        image_entries: 15,
        min_free_bytes: 0,
        ..UnpackLimits::default()
    }
}

/// Limits hold while the stream is read: a compressed bomb stops at the limit, not at a full disk.
#[test]
fn limits_stop_bombs_while_streaming() -> Result {
    let (_d, root, _) = sandbox()?;
    let zeros = vec![0u8; 64 << 20];
    let mut budget = UnpackBudget::new(small_limits());
    let err = unpack_within(&[E::File("bomb", &zeros, 0o644)], &root, UnpackMode::Flatten, &mut budget).err().map(|e| e.to_string());
    assert_eq!(
        err.as_deref(),
        Some("a layer expands to more than 1 MiB (image.max_layer_mib); if the image is genuine, raise the limit in the server's configuration")
    );
    assert!(fs::metadata(root.join("bomb"))?.len() <= 1 << 20, "wrote past the limit");

    let many: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
    let entries: Vec<E<'_>> = many.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let err = unpack_within(&entries, &root, UnpackMode::Flatten, &mut UnpackBudget::new(small_limits())).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.starts_with("a layer has more than 10 entries")));

    // Per image: two layers that each fit, but not together.
    let half = vec![1u8; 800 << 10];
    let mut budget = UnpackBudget::new(small_limits());
    unpack_within(&[E::File("one", &half, 0o644)], &root, UnpackMode::Flatten, &mut budget)?;
    let err = unpack_within(&[E::File("two", &half, 0o644)], &root, UnpackMode::Flatten, &mut budget).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.starts_with("the image expands to more than 1536 KiB")));
    let mut budget = UnpackBudget::new(small_limits());
    budget.charge(UnpackStats { entries: 14, bytes: 0 })?;
    let err = unpack_within(&entries[..2], &root, UnpackMode::Flatten, &mut budget).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.starts_with("the image has more than 15 entries")));

    let mut late = UnpackBudget::new(UnpackLimits { timeout: std::time::Duration::ZERO, ..small_limits() });
    std::thread::sleep(std::time::Duration::from_millis(5));
    let err = unpack_within(&[E::File("x", b"x", 0o644)], &root, UnpackMode::Flatten, &mut late).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.starts_with("unpacking the image took longer than 0 s")));

    let mut full = UnpackBudget::new(UnpackLimits { min_free_bytes: u64::MAX, ..UnpackLimits::default() });
    let err = unpack_within(&[E::File("x", b"x", 0o644)], &root, UnpackMode::Flatten, &mut full).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("free some space")));

    let long = "a/".repeat(2100) + "x";
    let err =
        unpack_within(&[E::Pax(&long)], &root, UnpackMode::Flatten, &mut UnpackBudget::new(small_limits())).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("longer than 4096 bytes")));
    Ok(())
}

#[test]
fn garbage_is_a_tar_error_not_a_panic() -> Result {
    let dir = tempfile::tempdir()?;
    let res = unpack_layer(
        &b"definitely not a tarball, but long enough to hold a header block or two....."[..],
        dir.path(),
        UnpackMode::Flatten,
        &mut UnpackBudget::new(UnpackLimits::default()),
    );
    assert!(matches!(res, Err(UnpackError::Tar(_))), "{res:?}");
    Ok(())
}

/// A layer that ends right after its last file's content (no padding, no end blocks), as umoci
/// writes them, is read to its end; one that ends inside a file's content is an error.
#[test]
fn layers_without_end_blocks_are_read_but_cut_content_is_not() -> Result {
    let full = tarball(&[E::Dir("/", 0o755), E::File("app/x", b"hi\n", 0o644)])?;
    // Header blocks for `/` and `app/x`, then the three bytes of content.
    let unpadded = &full[..512 * 2 + 3];
    let (_d, root, _) = sandbox()?;
    unpack_layer(unpadded, &root, UnpackMode::Flatten, &mut UnpackBudget::new(UnpackLimits::default()))?;
    assert_eq!(fs::read(root.join("app/x"))?, b"hi\n");
    let (_d, root, _) = sandbox()?;
    let cut = &full[..512 * 2 + 2];
    let err = unpack_layer(cut, &root, UnpackMode::Flatten, &mut UnpackBudget::new(UnpackLimits::default())).err().map(|e| e.to_string());
    assert_eq!(err.as_deref(), Some("layer is not a valid tar stream: the layer ends inside a file's content"));
    Ok(())
}

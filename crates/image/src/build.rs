//! Building OCI images without Docker: one layer from a directory (or from a binary plus the
//! shared libraries it needs), a config with entrypoint, command, environment, exposed port and
//! user, and an OCI image manifest. Builds are reproducible: entries sorted, times zeroed,
//! owned by root.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth_core::Digest;

pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path} has a file type an image cannot hold (sockets and devices are skipped only when asked)")]
    UnsupportedFile { path: PathBuf },
    #[error("listing the shared libraries of {binary} failed: {reason}")]
    Libraries { binary: PathBuf, reason: String },
    #[error("{binary} is dynamically linked (its loader is {loader}), and the image would hold none of its libraries: add --with-libs, or link it statically")]
    DynamicBinary { binary: PathBuf, loader: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// The runtime settings recorded in the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSettings {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub workdir: Option<String>,
}

/// A blob of a built image.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: Digest,
    pub media_type: &'static str,
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>) -> Blob {
        Blob { digest: Digest::sha256_of(&data), media_type, data }
    }
}

/// A built image: its blobs (config first, then the layer) and its manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
}

/// What goes into the layer: a path inside the image and where its content comes from.
enum Source {
    Dir,
    File(PathBuf, u32),
    Symlink(PathBuf),
}

fn collect_dir(base: &Path, rel: &Path, out: &mut Vec<(PathBuf, Source)>) -> Result<(), BuildError> {
    let dir = base.join(rel);
    let mut entries: Vec<_> =
        fs::read_dir(&dir).map_err(io_ctx(format!("listing {}", dir.display())))?.collect::<Result<_, _>>().map_err(io_ctx("listing"))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let meta = fs::symlink_metadata(e.path()).map_err(io_ctx(format!("inspecting {}", e.path().display())))?;
        let ft = meta.file_type();
        use std::os::unix::fs::PermissionsExt;
        if ft.is_symlink() {
            out.push((path, Source::Symlink(fs::read_link(e.path()).map_err(io_ctx("reading a symlink"))?)));
        } else if ft.is_dir() {
            out.push((path.clone(), Source::Dir));
            collect_dir(base, &path, out)?;
        } else if ft.is_file() {
            out.push((path, Source::File(e.path(), meta.permissions().mode() & 0o7777)));
        } else {
            return Err(BuildError::UnsupportedFile { path: e.path() });
        }
    }
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A gzip layer and the digest of its uncompressed tar (the config's diff id).
fn layer(entries: &[(PathBuf, Source)]) -> Result<(Blob, Digest), BuildError> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, src) in entries {
        let err = |e: io::Error| BuildError::Io { context: format!("adding {} to the layer", path.display()), source: e };
        match src {
            Source::Dir => {
                let mut h = header(tar::EntryType::Directory, 0o755, 0);
                tar.append_data(&mut h, path, io::empty()).map_err(err)?;
            }
            Source::File(from, mode) => {
                let data = fs::read(from).map_err(io_ctx(format!("reading {}", from.display())))?;
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                tar.append_data(&mut h, path, data.as_slice()).map_err(err)?;
            }
            Source::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut h, path, target).map_err(err)?;
            }
        }
    }
    let raw = tar.into_inner().map_err(io_ctx("finishing the layer"))?;
    let diff_id = Digest::sha256_of(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).map_err(io_ctx("compressing the layer"))?;
    let data = gz.finish().map_err(io_ctx("compressing the layer"))?;
    Ok((Blob::new(LAYER_MEDIA_TYPE, data), diff_id))
}

fn assemble(entries: &[(PathBuf, Source)], settings: &ImageSettings) -> Result<BuiltImage, BuildError> {
    let (layer, diff_id) = layer(entries)?;
    let (_, arch) = crate::pull::host_platform();
    let mut env = settings.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    let mut cfg = serde_json::json!({ "Env": env });
    if !settings.entrypoint.is_empty() {
        cfg["Entrypoint"] = settings.entrypoint.clone().into();
    }
    if !settings.cmd.is_empty() {
        cfg["Cmd"] = settings.cmd.clone().into();
    }
    if let Some(p) = settings.port {
        cfg["ExposedPorts"] = serde_json::json!({ format!("{p}/tcp"): {} });
    }
    if let Some(u) = &settings.user {
        cfg["User"] = u.clone().into();
    }
    if let Some(w) = &settings.workdir {
        cfg["WorkingDir"] = w.clone().into();
    }
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": cfg,
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{ "created_by": "berth image build" }],
    });
    let config = Blob::new(CONFIG_MEDIA_TYPE, config.to_string().into_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": { "mediaType": CONFIG_MEDIA_TYPE, "digest": config.digest.to_string(), "size": config.data.len() },
        "layers": [{ "mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest.to_string(), "size": layer.data.len() }],
    });
    let manifest = Blob::new(MANIFEST_MEDIA_TYPE, manifest.to_string().into_bytes());
    Ok(BuiltImage { config, layers: vec![layer], manifest })
}

/// An image whose root filesystem is the content of `dir`.
pub fn build_from_dir(dir: &Path, settings: &ImageSettings) -> Result<BuiltImage, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::NotADirectory(dir.to_owned()));
    }
    let mut entries = Vec::new();
    collect_dir(dir, Path::new(""), &mut entries)?;
    assemble(&entries, settings)
}

/// An image holding one binary at `/app/<name>` (its entrypoint unless one is given) and, with
/// `with_libs`, the shared libraries and loader it needs at their host paths.
pub fn build_from_binary(binary: &Path, with_libs: bool, settings: &ImageSettings) -> Result<BuiltImage, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let name = binary.file_name().ok_or_else(|| BuildError::NotADirectory(binary.to_owned()))?;
    let mode = fs::metadata(binary).map_err(io_ctx(format!("reading {}", binary.display())))?.permissions().mode() & 0o7777;
    let mut files: Vec<(PathBuf, Source)> = vec![(PathBuf::from("app").join(name), Source::File(binary.to_owned(), mode | 0o111))];
    if !with_libs {
        let head = fs::read(binary).map_err(io_ctx(format!("reading {}", binary.display())))?;
        if let Some(loader) = elf_interpreter(&head) {
            return Err(BuildError::DynamicBinary { binary: binary.to_owned(), loader });
        }
    }
    if with_libs {
        for lib in shared_libraries(binary)? {
            let rel = lib.strip_prefix("/").unwrap_or(&lib).to_owned();
            let real = fs::canonicalize(&lib).map_err(io_ctx(format!("resolving {}", lib.display())))?;
            files.push((rel, Source::File(real, 0o755)));
        }
    }
    let mut entries: Vec<(PathBuf, Source)> = Vec::new();
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .flat_map(|(p, _)| p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf).collect::<Vec<_>>())
        .collect();
    dirs.sort();
    dirs.dedup();
    entries.extend(dirs.into_iter().map(|d| (d, Source::Dir)));
    files.sort_by(|a, b| a.0.cmp(&b.0));
    entries.extend(files);
    let mut settings = settings.clone();
    if settings.entrypoint.is_empty() {
        settings.entrypoint = vec![format!("/app/{}", name.to_string_lossy())];
    }
    assemble(&entries, &settings)
}

/// The program interpreter (dynamic loader) a 64-bit little-endian ELF executable names, if it
/// names one: a dynamically linked program.
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| elf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at =
        |at: usize| elf.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes).and_then(|v| usize::try_from(v).ok());
    let (phoff, phentsize, phnum) = (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?);
    (0..phnum).find_map(|i| {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        // PT_INTERP = 3.
        if elf.get(ph..ph + 4)? != [3, 0, 0, 0] {
            return None;
        }
        let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
        let name = elf.get(offset..offset.checked_add(size)?)?;
        Some(String::from_utf8_lossy(name).trim_end_matches('\0').to_owned())
    })
}

/// The shared libraries (and loader) a dynamic binary needs, from `ldd`. Empty for static ones.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| BuildError::Libraries { binary: binary.to_owned(), reason: format!("running ldd: {e}") })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(BuildError::Libraries { binary: binary.to_owned(), reason: format!("missing library: {line}") });
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`
        let path = line.split("=>").nth(1).unwrap_or(line).split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ImageSettings {
        ImageSettings { entrypoint: vec!["/bin/app".into()], port: Some(8080), env: vec!["A=1".into()], ..ImageSettings::default() }
    }

    #[test]
    fn builds_are_reproducible_and_unpack_back() -> Result<(), Box<dyn std::error::Error>> {
        let src = tempfile::tempdir()?;
        fs::create_dir_all(src.path().join("bin"))?;
        fs::write(src.path().join("bin/app"), b"#!/bin/sh\necho hi\n")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(src.path().join("bin/app"), fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::symlink("app", src.path().join("bin/alias"))?;
        let a = build_from_dir(src.path(), &settings())?;
        let b = build_from_dir(src.path(), &settings())?;
        assert_eq!(a.manifest.digest, b.manifest.digest, "same input, same image");
        let config: serde_json::Value = serde_json::from_slice(&a.config.data)?;
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/bin/app"]));
        assert_eq!(config["config"]["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
        assert_eq!(config["config"]["Env"][1], "A=1");

        let out = tempfile::tempdir()?;
        crate::flatten(
            out.path(),
            [(LAYER_MEDIA_TYPE, Box::new(a.layers[0].data.as_slice()) as Box<dyn io::Read>)],
            &mut crate::UnpackBudget::new(Default::default()),
        )?;
        assert_eq!(fs::read(out.path().join("bin/app"))?, b"#!/bin/sh\necho hi\n");
        assert_eq!(fs::read_link(out.path().join("bin/alias"))?, Path::new("app"));
        Ok(())
    }

    #[test]
    fn a_dynamic_binary_brings_its_libraries() -> Result<(), Box<dyn std::error::Error>> {
        let img = build_from_binary(Path::new("/bin/ls"), true, &ImageSettings::default())?;
        let out = tempfile::tempdir()?;
        crate::flatten(
            out.path(),
            [(LAYER_MEDIA_TYPE, Box::new(img.layers[0].data.as_slice()) as Box<dyn io::Read>)],
            &mut crate::UnpackBudget::new(Default::default()),
        )?;
        assert!(out.path().join("app/ls").is_file());
        let libs: Vec<_> = shared_libraries(Path::new("/bin/ls"))?;
        assert!(!libs.is_empty());
        for l in libs {
            assert!(out.path().join(l.strip_prefix("/")?).is_file(), "{} missing", l.display());
        }
        let config: serde_json::Value = serde_json::from_slice(&img.config.data)?;
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/app/ls"]));
        // Without its libraries it could never start: refused, saying what to do.
        let err =
            build_from_binary(Path::new("/bin/ls"), false, &ImageSettings::default()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("dynamically linked (its loader is /lib") && err.contains("--with-libs"), "{err}");
        // A script or a static binary has no loader.
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
        Ok(())
    }
}

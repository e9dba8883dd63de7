//! Pulling an image into the layer cache: resolve a tag or digest to a manifest (picking this
//! host's platform from an index), verify every digest, read the config, and unpack each layer
//! not cached yet. Content comes from an [`ImageSource`]: berth's own registry in-process, or
//! another registry over HTTP.

use std::io;
use std::path::{Path, PathBuf};

use berth_core::Digest;
use serde::Deserialize;

use crate::cache::{CacheError, LayerCache};
use crate::unpack::{UnpackBudget, UnpackLimits};

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    NotFound(String),
    #[error("manifest of {reference} has digest {actual}, not {expected}")]
    ManifestDigest { reference: String, expected: Digest, actual: Digest },
    #[error("{what} {digest} has digest {actual}; refusing it")]
    BlobDigest { what: &'static str, digest: Digest, actual: Digest },
    #[error("image {reference} is invalid: {reason}")]
    Invalid { reference: String, reason: String },
    #[error("image {reference} has no manifest for {os}/{arch}")]
    NoPlatform { reference: String, os: String, arch: String },
    #[error("fetching image content failed: {0}")]
    Source(String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

/// Where image content comes from.
#[async_trait::async_trait]
pub trait ImageSource: Send + Sync {
    /// The manifest `reference` (a tag or a digest) of `repository`: its media type and bytes.
    async fn manifest(&self, repository: &str, reference: &str) -> Result<(String, Vec<u8>), PullError>;
    /// Writes the blob `digest` of `repository` to the file `dest`.
    async fn blob(&self, repository: &str, digest: &Digest, dest: &Path) -> Result<(), PullError>;
}

/// The runtime settings of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub exposed_ports: Vec<u16>,
}

/// A pulled image: everything a runtime needs to assemble its root filesystem and process.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The digest of the platform image manifest.
    pub digest: Digest,
    pub config: ImageConfig,
    /// Layer digests, bottom first; each is unpacked at [`LayerCache::path`].
    pub layers: Vec<Digest>,
    /// Layer directories, bottom first.
    pub layer_dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    exposed_ports: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RawConfig>,
}

fn parse_digest(s: &str, reference: &str) -> Result<Digest, PullError> {
    s.parse().map_err(|e: berth_core::DigestError| PullError::Invalid { reference: reference.to_owned(), reason: e.to_string() })
}

/// This host's platform as image indexes name it.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

async fn fetch_manifest(source: &dyn ImageSource, repository: &str, reference: &str) -> Result<(Manifest, Digest), PullError> {
    let (_, bytes) = source.manifest(repository, reference).await?;
    let actual = match reference.parse::<Digest>() {
        Ok(expected) => {
            let actual = Digest::compute(expected.algorithm(), &bytes);
            if actual != expected {
                return Err(PullError::ManifestDigest { reference: format!("{repository}@{reference}"), expected, actual });
            }
            actual
        }
        Err(_) => Digest::sha256_of(&bytes),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| PullError::Invalid {
        reference: format!("{repository}:{reference}"),
        reason: format!("manifest is not valid JSON: {e}"),
    })?;
    Ok((m, actual))
}

/// A pull's own staging directory under the shared one, removed with everything in it when
/// the pull ends (finished, failed or dropped): pulls of one image at once (two services of one
/// build starting together) never write or delete each other's downloads.
struct Staging(std::path::PathBuf);

impl Staging {
    async fn new(under: &Path) -> Result<Staging, PullError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = under.join(format!("pull-{}-{n}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.map_err(|e| PullError::Io { context: format!("creating {}", dir.display()), source: e })?;
        Ok(Staging(dir))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pulls `repository:reference` into `cache` within `limits`, staging downloads under `tmp`.
pub async fn pull(
    source: &dyn ImageSource,
    cache: &LayerCache,
    repository: &str,
    reference: &str,
    tmp: &Path,
    limits: UnpackLimits,
) -> Result<PulledImage, PullError> {
    let name = format!("{repository}:{reference}");
    let (mut manifest, mut digest) = fetch_manifest(source, repository, reference).await?;
    if !manifest.manifests.is_empty() || manifest.config.is_none() {
        let (os, arch) = host_platform();
        let pick = manifest
            .manifests
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch))
            .ok_or_else(|| PullError::NoPlatform { reference: name.clone(), os: os.into(), arch: arch.into() })?;
        let child = pick.digest.clone();
        (manifest, digest) = fetch_manifest(source, repository, &child).await?;
    }
    if manifest.media_type.as_deref().is_some_and(|t| t.contains("index") || t.contains("list")) {
        return Err(PullError::Invalid { reference: name, reason: "nested indexes are not supported".into() });
    }
    let config_desc =
        manifest.config.as_ref().ok_or_else(|| PullError::Invalid { reference: name.clone(), reason: "manifest has no config".into() })?;
    let config_digest = parse_digest(&config_desc.digest, &name)?;
    let staging = Staging::new(tmp).await?;
    let config_path = staging.0.join(format!("config-{}", config_digest.hex()));
    source.blob(repository, &config_digest, &config_path).await?;
    let config_bytes =
        tokio::fs::read(&config_path).await.map_err(|e| PullError::Io { context: "reading the image config".into(), source: e })?;
    let _ = tokio::fs::remove_file(&config_path).await;
    let actual = Digest::compute(config_digest.algorithm(), &config_bytes);
    if actual != config_digest {
        return Err(PullError::BlobDigest { what: "config", digest: config_digest, actual });
    }
    let raw: ConfigFile = serde_json::from_slice(&config_bytes)
        .map_err(|e| PullError::Invalid { reference: name.clone(), reason: format!("config is not valid JSON: {e}") })?;
    let raw = raw.config.unwrap_or_default();
    let config = ImageConfig {
        entrypoint: raw.entrypoint.unwrap_or_default(),
        cmd: raw.cmd.unwrap_or_default(),
        env: raw.env.unwrap_or_default(),
        user: raw.user.filter(|u| !u.is_empty()),
        workdir: raw.working_dir.filter(|w| !w.is_empty()),
        exposed_ports: raw.exposed_ports.unwrap_or_default().keys().filter_map(|k| k.split('/').next()?.parse().ok()).collect(),
    };

    let mut layers = Vec::new();
    let mut layer_dirs = Vec::new();
    let mut budget = UnpackBudget::new(limits);
    for l in &manifest.layers {
        let d = parse_digest(&l.digest, &name)?;
        if cache.contains(&d) {
            budget.charge(cache.stats(&d)).map_err(|source| CacheError::Unpack { digest: d.clone(), source })?;
        } else {
            let file = staging.0.join(format!("layer-{}", d.hex()));
            source.blob(repository, &d, &file).await?;
            let (cache_root, media_type, dd, f2) = (cache.root().to_owned(), l.media_type.clone(), d.clone(), file.clone());
            let mut b = budget.clone();
            let res = tokio::task::spawn_blocking(move || -> Result<UnpackBudget, PullError> {
                let cache = LayerCache::open_existing(&cache_root);
                let blob =
                    std::fs::File::open(&f2).map_err(|e| PullError::Io { context: "opening a downloaded layer".into(), source: e })?;
                cache.ensure(&dd, &media_type, std::io::BufReader::with_capacity(1 << 20, blob), &mut b)?;
                Ok(b)
            })
            .await
            .map_err(|e| PullError::Source(format!("unpack task failed: {e}")))?;
            let _ = tokio::fs::remove_file(&file).await;
            budget = res?;
        }
        layer_dirs.push(cache.path(&d));
        layers.push(d);
    }
    Ok(PulledImage { digest, config, layers, layer_dirs })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// One image; blobs are written in two halves with a pause between, and every file they are
    /// written to is remembered.
    struct SlowSource {
        manifest: Vec<u8>,
        blobs: HashMap<Digest, Vec<u8>>,
        written_to: Mutex<Vec<PathBuf>>,
    }

    #[async_trait::async_trait]
    impl ImageSource for SlowSource {
        async fn manifest(&self, _repository: &str, _reference: &str) -> std::result::Result<(String, Vec<u8>), PullError> {
            Ok(("application/vnd.oci.image.manifest.v1+json".into(), self.manifest.clone()))
        }

        async fn blob(&self, _repository: &str, digest: &Digest, dest: &Path) -> std::result::Result<(), PullError> {
            self.written_to.lock().unwrap_or_else(|p| p.into_inner()).push(dest.to_owned());
            let bytes = self.blobs.get(digest).ok_or_else(|| PullError::NotFound(digest.to_string()))?;
            let io = |e: io::Error| PullError::Io { context: "writing a blob".into(), source: e };
            let mut f = std::fs::File::create(dest).map_err(io)?;
            f.write_all(&bytes[..bytes.len() / 2]).map_err(io)?;
            tokio::time::sleep(Duration::from_millis(30)).await;
            f.write_all(&bytes[bytes.len() / 2..]).map_err(io)?;
            Ok(())
        }
    }

    fn image() -> Result<SlowSource> {
        let mut tar = tar::Builder::new(Vec::new());
        let data = vec![7u8; 256 << 10];
        let mut h = tar::Header::new_gnu();
        h.set_path("app/data")?;
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, data.as_slice())?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar.into_inner()?)?;
        let layer = gz.finish()?;
        let config =
            br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["/app/run"]},"rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
        let (ld, cd) = (Digest::sha256_of(&layer), Digest::sha256_of(&config));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}],
        });
        Ok(SlowSource {
            manifest: serde_json::to_vec(&manifest)?,
            blobs: [(ld, layer), (cd, config)].into(),
            written_to: Mutex::new(Vec::new()),
        })
    }

    /// Two services of one build start at once: both pulls succeed, neither writes or removes
    /// the other's downloads (they shared one file per blob, and the second truncated what the
    /// first was unpacking), and nothing is left staged.
    #[tokio::test]
    async fn pulls_of_one_image_at_once_keep_to_their_own_downloads() -> Result {
        let dir = tempfile::tempdir()?;
        let cache = LayerCache::open(&dir.path().join("cache"))?;
        let staging = dir.path().join("tmp");
        let source = image()?;
        let limits = UnpackLimits::default();
        let (a, b) = tokio::join!(
            pull(&source, &cache, "guestbook", "v1", &staging, limits),
            pull(&source, &cache, "guestbook", "v1", &staging, limits),
        );
        let (a, b) = (a?, b?);
        assert_eq!(a.layers, b.layers);
        assert!(cache.contains(&a.layers[0]));
        let written = source.written_to.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let distinct: std::collections::HashSet<&PathBuf> = written.iter().collect();
        assert_eq!(distinct.len(), written.len(), "two pulls wrote one file: {written:?}");
        assert_eq!(std::fs::read_dir(&staging)?.count(), 0, "downloads were left behind");
        Ok(())
    }
}

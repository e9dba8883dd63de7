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

/// Pulls `repository:reference` into `cache` within `limits`, staging downloads in `tmp`.
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
    tokio::fs::create_dir_all(tmp).await.map_err(|e| PullError::Io { context: format!("creating {}", tmp.display()), source: e })?;
    let config_path = tmp.join(format!("config-{}", config_digest.hex()));
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
            let file = tmp.join(format!("layer-{}", d.hex()));
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

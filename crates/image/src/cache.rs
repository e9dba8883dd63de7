//! The content-addressed layer cache shared by all instances: each layer unpacked once, as an
//! overlayfs lower directory at `layers/<alg>/<hex>`, keyed by the digest of its blob, with what
//! it holds (entries, bytes) at `stats/<alg>/<hex>` so that an image's limits count cached layers
//! too. A layer appears only by rename after it was unpacked completely and its digest verified;
//! concurrent unpacks of one layer are harmless (the first rename wins).

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use berth_core::{Digest, Hasher};

use crate::decompress::{decompressor, Compression};
use crate::unpack::{unpack_layer, UnpackBudget, UnpackError, UnpackMode, UnpackStats};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("layer {expected} has digest {actual}; refusing it")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("unpacking layer {digest}: {source}")]
    Unpack { digest: Digest, source: UnpackError },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> CacheError {
    let context = context.into();
    move |source| CacheError::Io { context, source }
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub struct LayerCache {
    root: PathBuf,
}

impl LayerCache {
    /// Opens the cache at `root`, discarding unpacks a crash left half done.
    pub fn open(root: &Path) -> Result<LayerCache, CacheError> {
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_ctx("clearing the layer cache's temporary directory"))?;
        }
        for d in ["layers", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(io_ctx(format!("creating {}", root.join(d).display())))?;
        }
        Ok(LayerCache { root: root.to_owned() })
    }

    /// A handle on a cache another handle opened (no clearing of its temporary directory).
    pub fn open_existing(root: &Path) -> LayerCache {
        LayerCache { root: root.to_owned() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where layer `digest` is (or would be) unpacked.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.algorithm().as_str()).join(digest.hex())
    }

    fn stats_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("stats").join(digest.algorithm().as_str()).join(digest.hex())
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_dir()
    }

    /// What the cached layer `digest` holds (zero for layers cached before this was recorded).
    pub fn stats(&self, digest: &Digest) -> UnpackStats {
        fs::read(self.stats_path(digest)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    /// Returns the unpacked layer, unpacking `blob` (the layer's compressed bytes) within `budget`
    /// when it is not cached yet; a cached layer is counted against `budget` too. The bytes read
    /// must have `digest`, or nothing is cached.
    pub fn ensure(
        &self,
        digest: &Digest,
        media_type: &str,
        blob: impl Read,
        budget: &mut UnpackBudget,
    ) -> Result<(PathBuf, Option<UnpackStats>), CacheError> {
        let dst = self.path(digest);
        if dst.is_dir() {
            budget.charge(self.stats(digest)).map_err(|source| CacheError::Unpack { digest: digest.clone(), source })?;
            return Ok((dst, None));
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}-{}-{n}", digest.hex(), std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io_ctx("creating a layer directory"))?;
        let result = self.unpack_verified(digest, media_type, blob, &tmp, budget);
        let stats = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let stats_path = self.stats_path(digest);
        for p in [&dst, &stats_path] {
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(io_ctx("creating the layer cache"))?;
            }
        }
        let record = serde_json::to_vec(&stats).map_err(|e| io_ctx("recording layer stats")(e.into()))?;
        fs::write(&stats_path, record).map_err(io_ctx("recording layer stats"))?;
        if let Err(e) = fs::rename(&tmp, &dst) {
            let _ = fs::remove_dir_all(&tmp);
            // Someone else finished the same layer first.
            if !dst.is_dir() {
                return Err(io_ctx(format!("installing layer {digest}"))(e));
            }
        }
        Ok((dst, Some(stats)))
    }

    fn unpack_verified(
        &self,
        digest: &Digest,
        media_type: &str,
        blob: impl Read,
        into: &Path,
        budget: &mut UnpackBudget,
    ) -> Result<UnpackStats, CacheError> {
        let mut hashing = HashingReader { inner: blob, hasher: Hasher::new(digest.algorithm()) };
        let stats = {
            let decompressed = decompressor(&mut hashing, Compression::from_media_type(media_type)).map_err(io_ctx("reading the layer"))?;
            unpack_layer(decompressed, into, UnpackMode::OverlayLayer, budget)
                .map_err(|source| CacheError::Unpack { digest: digest.clone(), source })?
        };
        // The tarball may end before its blob does (padding, compression trailers).
        io::copy(&mut hashing, &mut io::sink()).map_err(io_ctx("reading the layer"))?;
        let actual = hashing.hasher.finish();
        if &actual != digest {
            return Err(CacheError::DigestMismatch { expected: digest.clone(), actual });
        }
        Ok(stats)
    }

    /// Every cached layer.
    pub fn layers(&self) -> Result<Vec<Digest>, CacheError> {
        let mut out = Vec::new();
        let base = self.root.join("layers");
        for alg in fs::read_dir(&base).map_err(io_ctx("listing the layer cache"))? {
            let alg = alg.map_err(io_ctx("listing the layer cache"))?;
            for l in fs::read_dir(alg.path()).map_err(io_ctx("listing the layer cache"))? {
                let l = l.map_err(io_ctx("listing the layer cache"))?;
                if let Ok(d) = format!("{}:{}", alg.file_name().to_string_lossy(), l.file_name().to_string_lossy()).parse() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Removes every cached layer not in `in_use`, returning what it removed.
    pub fn collect(&self, in_use: &HashSet<Digest>) -> Result<Vec<Digest>, CacheError> {
        let mut removed = Vec::new();
        for d in self.layers()? {
            if !in_use.contains(&d) {
                // Rename first so a half-deleted layer is never mistaken for a cached one.
                let doomed = self.root.join("tmp").join(format!("gc-{}", d.hex()));
                fs::rename(self.path(&d), &doomed).map_err(io_ctx(format!("removing layer {d}")))?;
                fs::remove_dir_all(&doomed).map_err(io_ctx(format!("removing layer {d}")))?;
                let _ = fs::remove_file(self.stats_path(&d));
                removed.push(d);
            }
        }
        Ok(removed)
    }
}

/// Applies layers in order onto `dest` within `budget`, deleting what their whiteouts hide.
pub fn flatten<'a>(
    dest: &Path,
    layers: impl IntoIterator<Item = (&'a str, Box<dyn Read + 'a>)>,
    budget: &mut UnpackBudget,
) -> Result<UnpackStats, UnpackError> {
    let mut total = UnpackStats::default();
    for (media_type, blob) in layers {
        let decompressed = decompressor(blob, Compression::from_media_type(media_type)).map_err(UnpackError::Tar)?;
        let s = unpack_layer(decompressed, dest, UnpackMode::Flatten, budget)?;
        total.entries += s.entries;
        total.bytes += s.bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UnpackLimits;
    use std::io::Write;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn layer(files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_path(name)?;
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append(&h, *data)?;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b.into_inner()?)?;
        Ok(gz.finish()?)
    }

    const GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    #[test]
    fn caches_verified_layers_once() -> Result {
        let dir = tempfile::tempdir()?;
        let cache = LayerCache::open(dir.path())?;
        let blob = layer(&[("etc/os-release", b"berth")])?;
        let d = Digest::sha256_of(&blob);
        let mut budget = UnpackBudget::new(UnpackLimits::default());
        let (path, stats) = cache.ensure(&d, GZ, blob.as_slice(), &mut budget)?;
        assert_eq!(stats.map(|s| s.entries), Some(1));
        assert_eq!(fs::read(path.join("etc/os-release"))?, b"berth");
        // Cached: not read again, but counted against an image's limits all the same.
        let (again, stats) = cache.ensure(&d, GZ, io::empty(), &mut budget)?;
        assert_eq!((again, stats), (path, None));
        assert_eq!(cache.stats(&d), UnpackStats { entries: 1, bytes: 5 });
        let mut tight = UnpackBudget::new(UnpackLimits { image_bytes: 4, ..UnpackLimits::default() });
        let err = cache.ensure(&d, GZ, io::empty(), &mut tight).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("the image expands to more than 4 bytes"), "{err}");
        assert_eq!(cache.layers()?, vec![d.clone()]);
        assert_eq!(cache.collect(&HashSet::from([d.clone()]))?, vec![]);
        assert_eq!(cache.collect(&HashSet::new())?, vec![d.clone()]);
        assert!(!cache.contains(&d));
        Ok(())
    }

    #[test]
    fn a_wrong_digest_caches_nothing() -> Result {
        let dir = tempfile::tempdir()?;
        let cache = LayerCache::open(dir.path())?;
        let blob = layer(&[("a", b"1")])?;
        let claimed = Digest::sha256_of(b"something else");
        let err = cache
            .ensure(&claimed, GZ, blob.as_slice(), &mut UnpackBudget::new(UnpackLimits::default()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("refusing it"), "{err}");
        assert!(!cache.contains(&claimed));
        assert_eq!(fs::read_dir(dir.path().join("tmp"))?.count(), 0);
        Ok(())
    }

    #[test]
    fn flattens_layers_in_order() -> Result {
        let dir = tempfile::tempdir()?;
        let l1 = layer(&[("a", b"1"), ("b", b"1")])?;
        let l2 = layer(&[("a", b"2"), (".wh.b", b"")])?;
        let layers: Vec<(&str, Box<dyn Read>)> = vec![(GZ, Box::new(l1.as_slice())), (GZ, Box::new(l2.as_slice()))];
        flatten(dir.path(), layers, &mut UnpackBudget::new(UnpackLimits::default()))?;
        assert_eq!(fs::read(dir.path().join("a"))?, b"2");
        assert!(!dir.path().join("b").exists());
        Ok(())
    }
}

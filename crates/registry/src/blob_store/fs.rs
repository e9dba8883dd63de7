//! The local-filesystem [`BlobStore`]: blobs at `blobs/<alg>/<2 hex>/<hex>`, uploads at
//! `uploads/<id>/{data,repository}`, small writes staged in `tmp/`. A blob file appears only by rename after fsync of its content,
//! so a crash at any point leaves either no blob or a complete, verified one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_core::{Algorithm, Digest, Hasher};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{BlobInfo, BlobStore, BlobStoreError, ByteStream, Result, UploadInfo};

/// Bytes gathered from the request before one write to disk.
const WRITE_BATCH: usize = 1 << 20;
/// Bytes per body chunk when serving a blob.
const READ_CHUNK: usize = 2 << 20;
/// Reads at least this long are served from a memory map of the blob, not copied into memory.
const MMAP_THRESHOLD: u64 = 1 << 20;

/// Running state of an upload kept between requests: the hasher over the bytes so far. Lost on
/// restart, when it is rebuilt from the data file.
struct UploadState {
    hasher: Option<(u64, Hasher)>,
}

pub struct FsBlobStore {
    root: PathBuf,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<UploadState>>>>,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BlobStoreError {
    let what = what.into();
    move |e| BlobStoreError::Io(what, e)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobStoreError::Io("blob task".into(), io::Error::other(e.to_string())))?
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl FsBlobStore {
    /// Opens the store rooted at `root`, creating its directories.
    pub fn open(root: &Path) -> Result<FsBlobStore> {
        // Half-written small blobs of a previous run are garbage.
        let _ = fs::remove_dir_all(root.join("tmp"));
        for d in ["blobs", "uploads", "tmp"] {
            fs::create_dir_all(root.join(d)).map_err(io_err(format!("creating {}", root.join(d).display())))?;
        }
        Ok(FsBlobStore { root: root.to_owned(), uploads: Mutex::new(HashMap::new()) })
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs").join(d.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    fn state(&self, id: &str) -> Arc<tokio::sync::Mutex<UploadState>> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.to_owned()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(UploadState { hasher: None }))).clone()
    }

    fn forget_state(&self, id: &str) {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Moves a verified, fsynced file into place at `dst`. Identical content is kept once.
fn install(src: &Path, dst: &Path) -> Result<()> {
    if dst.exists() {
        fs::remove_file(src).map_err(io_err("removing duplicate upload"))?;
        return Ok(());
    }
    let dir = dst.parent().ok_or_else(|| BlobStoreError::Io("blob path".into(), io::ErrorKind::InvalidInput.into()))?;
    fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
    fs::rename(src, dst).map_err(io_err(format!("installing blob {}", dst.display())))?;
    fsync_dir(dir).map_err(io_err("syncing blob directory"))?;
    Ok(())
}

/// Maps `len` bytes of a blob file at `offset`, as shared bytes.
#[allow(unsafe_code)]
fn map_blob(f: &File, offset: u64, len: u64) -> Result<Bytes> {
    // SAFETY: the mapping is read-only and blob files are immutable once installed: they are
    // written only under `uploads/` or `tmp/`, renamed into place after fsync, and later only
    // unlinked, which leaves existing mappings valid. Nothing in berth truncates or rewrites a
    // blob file in place.
    let map = unsafe { memmap2::MmapOptions::new().offset(offset).len(len as usize).populate().map(f) }.map_err(io_err("mapping blob"))?;
    Ok(Bytes::from_owner(map))
}

fn hash_file(path: &Path, algorithm: Algorithm) -> Result<(u64, Hasher)> {
    let mut f = File::open(path).map_err(io_err("opening upload"))?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("reading upload"))?;
        if n == 0 {
            return Ok((n_total, h));
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
}

#[async_trait::async_trait]
impl BlobStore for FsBlobStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobStoreError::Io(format!("stat blob {digest}"), e)),
        }
    }

    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream> {
        let path = self.blob_path(digest);
        let file = blocking(move || File::open(&path).map_err(io_err("opening blob"))).await?;
        if len < MMAP_THRESHOLD {
            let content = blocking(move || {
                let mut f = file;
                f.seek(SeekFrom::Start(offset)).map_err(io_err("seeking blob"))?;
                let mut buf = Vec::with_capacity(len as usize);
                (&mut f).take(len).read_to_end(&mut buf).map_err(io_err("reading blob"))?;
                Ok(Bytes::from(buf))
            })
            .await?;
            if (content.len() as u64) < len {
                return Err(BlobStoreError::Io(format!("blob {digest} is shorter than recorded"), io::ErrorKind::UnexpectedEof.into()));
            }
            return Ok(Box::pin(futures_util::stream::once(async { Ok(content) })));
        }
        // Large reads: one memory-mapped window per chunk, unmapped once sent, so the body costs
        // no copy into user memory and at most a few windows of resident pages.
        let file = Arc::new(file);
        let end = offset + len;
        let stream = futures_util::stream::unfold(offset, move |at| {
            let file = file.clone();
            async move {
                if at >= end {
                    return None;
                }
                let n = (end - at).min(READ_CHUNK as u64);
                let window = tokio::task::spawn_blocking(move || map_blob(&file, at, n))
                    .await
                    .unwrap_or_else(|e| Err(BlobStoreError::Io("blob task".into(), io::Error::other(e.to_string()))));
                match window {
                    Ok(bytes) => Some((Ok(bytes), at + n)),
                    Err(e) => Some((Err(io::Error::other(e.to_string())), end)),
                }
            }
        });
        Ok(Box::pin(stream))
    }

    async fn put(&self, digest: &Digest, content: Bytes) -> Result<()> {
        if self.stat(digest).await?.is_some() {
            return Ok(());
        }
        let tmp = self.root.join("tmp").join(hex::encode(rand::random::<[u8; 16]>()));
        let dst = self.blob_path(digest);
        blocking(move || {
            let mut f = File::create(&tmp).map_err(io_err("creating blob"))?;
            f.write_all(&content).map_err(io_err("writing blob"))?;
            f.sync_all().map_err(io_err("syncing blob"))?;
            install(&tmp, &dst)
        })
        .await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobStoreError::Io(format!("deleting blob {digest}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>> {
        let root = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in fs::read_dir(&root).map_err(io_err("listing blobs"))? {
                let alg = alg.map_err(io_err("listing blobs"))?;
                let alg_name = alg.file_name().to_string_lossy().into_owned();
                for prefix in fs::read_dir(alg.path()).map_err(io_err("listing blobs"))? {
                    for f in fs::read_dir(prefix.map_err(io_err("listing blobs"))?.path()).map_err(io_err("listing blobs"))? {
                        let f = f.map_err(io_err("listing blobs"))?;
                        let Ok(digest) = format!("{alg_name}:{}", f.file_name().to_string_lossy()).parse::<Digest>() else {
                            continue;
                        };
                        let meta = f.metadata().map_err(io_err("stat blob"))?;
                        out.push(BlobInfo { digest, size: meta.len(), modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH) });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn create_upload(&self, repository: &str) -> Result<String> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let dir = self.upload_dir(&id);
        let repo = repository.to_owned();
        blocking(move || {
            fs::create_dir(&dir).map_err(io_err("creating upload"))?;
            fs::write(dir.join("repository"), repo).map_err(io_err("creating upload"))?;
            File::create(dir.join("data")).map_err(io_err("creating upload"))?;
            Ok(())
        })
        .await?;
        Ok(id)
    }

    async fn upload_info(&self, id: &str) -> Result<Option<UploadInfo>> {
        if !valid_upload_id(id) {
            return Ok(None);
        }
        let dir = self.upload_dir(id);
        let id = id.to_owned();
        blocking(move || {
            let repository = match fs::read_to_string(dir.join("repository")) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(BlobStoreError::Io("reading upload".into(), e)),
            };
            let meta = match fs::metadata(dir.join("data")) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(BlobStoreError::Io("reading upload".into(), e)),
            };
            let started_at = fs::metadata(dir.join("repository")).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            Ok(Some(UploadInfo { id, repository, size: meta.len(), started_at }))
        })
        .await
    }

    async fn append(&self, id: &str, offset: Option<u64>, mut body: ByteStream) -> Result<u64> {
        if !valid_upload_id(id) {
            return Err(BlobStoreError::UploadUnknown(id.to_owned()));
        }
        let state = self.state(id);
        let mut state = state.lock().await;
        let path = self.upload_dir(id).join("data");
        let prev = state.hasher.take();
        let (mut file, size, mut hasher) = blocking({
            let id = id.to_owned();
            move || {
                let file = match OpenOptions::new().append(true).open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobStoreError::UploadUnknown(id)),
                    Err(e) => return Err(BlobStoreError::Io("opening upload".into(), e)),
                };
                let size = file.metadata().map_err(io_err("stat upload"))?.len();
                let hasher = match prev {
                    Some((n, h)) if n == size => h,
                    _ => hash_file(&path, Algorithm::Sha256)?.1,
                };
                Ok((file, size, hasher))
            }
        })
        .await?;
        if let Some(o) = offset {
            if o != size {
                state.hasher = Some((size, hasher));
                return Err(BlobStoreError::OffsetMismatch { expected: size, actual: o });
            }
        }
        let mut written = size;
        let mut batch = BytesMut::with_capacity(WRITE_BATCH);
        let mut body_err = None;
        loop {
            let next = body.next().await;
            let done = match next {
                Some(Ok(chunk)) => {
                    batch.extend_from_slice(&chunk);
                    false
                }
                Some(Err(e)) => {
                    body_err = Some(e);
                    true
                }
                None => true,
            };
            if batch.len() >= WRITE_BATCH || (done && !batch.is_empty()) {
                let buf = batch.split().freeze();
                let n = buf.len() as u64;
                let res = blocking(move || {
                    hasher.update(&buf);
                    file.write_all(&buf).map_err(io_err("writing upload"))?;
                    Ok((file, hasher))
                })
                .await;
                match res {
                    Ok((f, h)) => {
                        file = f;
                        hasher = h;
                        written += n;
                    }
                    Err(e) => return Err(e),
                }
            }
            if done {
                break;
            }
        }
        state.hasher = Some((written, hasher));
        match body_err {
            Some(e) => Err(BlobStoreError::Body(e)),
            None => Ok(written),
        }
    }

    async fn finish(&self, id: &str, expected: &Digest, expected_size: Option<u64>) -> Result<u64> {
        if !valid_upload_id(id) {
            return Err(BlobStoreError::UploadUnknown(id.to_owned()));
        }
        let state = self.state(id);
        let mut guard = state.lock().await;
        let dir = self.upload_dir(id);
        let prev = guard.hasher.take();
        let expected_c = expected.clone();
        let res = blocking({
            let dir = dir.clone();
            let id = id.to_owned();
            move || {
                let path = dir.join("data");
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(BlobStoreError::UploadUnknown(id)),
                    Err(e) => return Err(BlobStoreError::Io("opening upload".into(), e)),
                };
                let size = file.metadata().map_err(io_err("stat upload"))?.len();
                let actual = match prev {
                    Some((n, h)) if n == size && expected_c.algorithm() == Algorithm::Sha256 => h.finish(),
                    _ => hash_file(&path, expected_c.algorithm())?.1.finish(),
                };
                if actual != expected_c {
                    return Err(BlobStoreError::DigestMismatch { expected: expected_c, actual });
                }
                if let Some(want) = expected_size {
                    if want != size {
                        return Err(BlobStoreError::SizeMismatch { expected: want, actual: size });
                    }
                }
                file.sync_all().map_err(io_err("syncing upload"))?;
                Ok((path, size))
            }
        })
        .await;
        let (path, size) = match res {
            Ok(v) => v,
            Err(e @ (BlobStoreError::DigestMismatch { .. } | BlobStoreError::SizeMismatch { .. })) => {
                drop(guard);
                self.cancel(id).await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let dst = self.blob_path(expected);
        blocking(move || {
            install(&path, &dst)?;
            fs::remove_dir_all(&dir).map_err(io_err("removing finished upload"))
        })
        .await?;
        drop(guard);
        self.forget_state(id);
        Ok(size)
    }

    async fn cancel(&self, id: &str) -> Result<bool> {
        if !valid_upload_id(id) {
            return Ok(false);
        }
        let state = self.state(id);
        let _guard = state.lock().await;
        let res = match tokio::fs::remove_dir_all(self.upload_dir(id)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobStoreError::Io("removing upload".into(), e)),
        };
        self.forget_state(id);
        res
    }

    async fn list_uploads(&self) -> Result<Vec<UploadInfo>> {
        let root = self.root.join("uploads");
        let ids = blocking(move || {
            let mut ids = Vec::new();
            for e in fs::read_dir(&root).map_err(io_err("listing uploads"))? {
                let e = e.map_err(io_err("listing uploads"))?;
                ids.push(e.file_name().to_string_lossy().into_owned());
            }
            Ok(ids)
        })
        .await?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(info) = self.upload_info(&id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;

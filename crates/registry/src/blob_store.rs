//! Content-addressed blob storage behind the [`BlobStore`] trait: finished blobs keyed by digest,
//! and upload sessions that become blobs only once their digest is verified. The local
//! filesystem backend is [`FsBlobStore`]; an S3-compatible store fits behind the same trait.

mod fs;

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use berth_core::Digest;
use bytes::Bytes;
use futures_util::Stream;

pub use fs::FsBlobStore;

/// A stream of body bytes, in or out.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum BlobStoreError {
    #[error("upload `{0}` is unknown")]
    UploadUnknown(String),
    #[error("content digest {actual} does not match {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("chunk starts at {actual}, upload has {expected} bytes")]
    OffsetMismatch { expected: u64, actual: u64 },
    #[error("upload has {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("reading the request body failed: {0}")]
    Body(io::Error),
    #[error("{0}: {1}")]
    Io(String, io::Error),
}

pub type Result<T, E = BlobStoreError> = std::result::Result<T, E>;

/// An upload session in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub id: String,
    pub repository: String,
    /// Bytes received so far.
    pub size: u64,
    pub started_at: SystemTime,
}

/// A finished blob as the collector sees it.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    /// When its content was last written; the collector spares recent blobs.
    pub modified: SystemTime,
}

#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The size of a finished blob, if present.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Streams `len` bytes of the blob starting at `offset`.
    async fn read(&self, digest: &Digest, offset: u64, len: u64) -> Result<ByteStream>;
    /// Stores small content whose digest the caller has already computed (manifests).
    async fn put(&self, digest: &Digest, content: Bytes) -> Result<()>;
    /// Deletes a finished blob. Returns false when absent.
    async fn delete(&self, digest: &Digest) -> Result<bool>;
    /// Every finished blob.
    async fn list(&self) -> Result<Vec<BlobInfo>>;

    /// Starts an upload session for `repository`, returning its id.
    async fn create_upload(&self, repository: &str) -> Result<String>;
    async fn upload_info(&self, id: &str) -> Result<Option<UploadInfo>>;
    /// Appends `body` to the upload. When `offset` is given it must equal the bytes received so
    /// far. Returns the new size. Bytes received before a body error are kept.
    async fn append(&self, id: &str, offset: Option<u64>, body: ByteStream) -> Result<u64>;
    /// Verifies the upload against `expected` (and `expected_size` when known), then makes it a
    /// blob atomically and ends the session. A mismatch discards the upload. Returns the size.
    async fn finish(&self, id: &str, expected: &Digest, expected_size: Option<u64>) -> Result<u64>;
    /// Ends the session and discards what it received. Returns false when unknown.
    async fn cancel(&self, id: &str) -> Result<bool>;
    /// Every upload session, for the collector to expire stale ones.
    async fn list_uploads(&self) -> Result<Vec<UploadInfo>>;
}

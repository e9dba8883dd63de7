//! The registry as an [`ImageSource`]: the runtime pulls images from berth's own registry
//! in-process, with no HTTP and no credentials (the server trusts itself).

use std::path::Path;

use berth_core::{Digest, Reference};
use berth_image::{ImageSource, PullError};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::{Code, Registry, RegistryError};

fn source_error(e: RegistryError) -> PullError {
    match e.code {
        Code::ManifestUnknown | Code::BlobUnknown | Code::NameUnknown => PullError::NotFound(e.message),
        _ => PullError::Source(e.message),
    }
}

#[async_trait::async_trait]
impl ImageSource for Registry {
    async fn manifest(&self, repository: &str, reference: &str) -> Result<(String, Vec<u8>), PullError> {
        let reference: Reference = reference.parse().map_err(|e: berth_core::NameError| PullError::Invalid {
            reference: format!("{repository}:{reference}"),
            reason: e.to_string(),
        })?;
        let m = Registry::manifest(self, repository, &reference).await.map_err(source_error)?;
        Ok((m.record.media_type, m.content.to_vec()))
    }

    async fn blob(&self, repository: &str, digest: &Digest, dest: &Path) -> Result<(), PullError> {
        let size = self
            .store
            .linked_blob(repository, digest)
            .await
            .map_err(|e| PullError::Source(e.to_string()))?
            .ok_or_else(|| PullError::NotFound(format!("blob {digest} is not in repository `{repository}`")))?;
        let mut stream = self.blobs.read(digest, 0, size).await.map_err(|e| PullError::Source(e.to_string()))?;
        let io = |e: std::io::Error| PullError::Io { context: format!("writing {}", dest.display()), source: e };
        let mut f = tokio::fs::File::create(dest).await.map_err(io)?;
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk.map_err(io)?).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
        Ok(())
    }
}

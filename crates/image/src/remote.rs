//! Pulling from any OCI registry over HTTP(S) with oci-client: the Docker token flow, Basic
//! credentials, plain HTTP for registries on loopback or marked insecure. Digests are checked
//! by [`pull`](crate::pull) as for every source.

use std::path::Path;

use berth_core::Digest;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::pull::{ImageSource, PullError};

const ACCEPTED: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A registry reached over the network, such as `registry.example.com` or `127.0.0.1:5000`.
pub struct RemoteRegistry {
    client: Client,
    registry: String,
    auth: RegistryAuth,
}

impl RemoteRegistry {
    /// `insecure` uses plain HTTP (for loopback or lab registries); `credentials` are a user name
    /// and a password or token.
    pub fn new(registry: &str, insecure: bool, credentials: Option<(String, String)>) -> RemoteRegistry {
        let protocol = if insecure { ClientProtocol::Http } else { ClientProtocol::Https };
        let client = Client::new(ClientConfig { protocol, ..Default::default() });
        let auth = match credentials {
            Some((u, p)) => RegistryAuth::Basic(u, p),
            None => RegistryAuth::Anonymous,
        };
        RemoteRegistry { client, registry: registry.to_owned(), auth }
    }

    fn reference(&self, repository: &str, reference: &str) -> Reference {
        if reference.contains(':') {
            Reference::with_digest(self.registry.clone(), repository.to_owned(), reference.to_owned())
        } else {
            Reference::with_tag(self.registry.clone(), repository.to_owned(), reference.to_owned())
        }
    }
}

fn source_error(e: oci_client::errors::OciDistributionError) -> PullError {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::ImageManifestNotFoundError(m) => PullError::NotFound(m),
        other => PullError::Source(other.to_string()),
    }
}

#[async_trait::async_trait]
impl ImageSource for RemoteRegistry {
    async fn manifest(&self, repository: &str, reference: &str) -> Result<(String, Vec<u8>), PullError> {
        let r = self.reference(repository, reference);
        let (bytes, _digest) = self.client.pull_manifest_raw(&r, &self.auth, ACCEPTED).await.map_err(source_error)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_default();
        Ok((media_type, bytes.to_vec()))
    }

    async fn blob(&self, repository: &str, digest: &Digest, dest: &Path) -> Result<(), PullError> {
        let r = self.reference(repository, &digest.to_string());
        // Authenticates for this repository first (pull_blob itself does not).
        self.client.store_auth_if_needed(r.resolve_registry(), &self.auth).await;
        let file = tokio::fs::File::create(dest)
            .await
            .map_err(|e| PullError::Io { context: format!("creating {}", dest.display()), source: e })?;
        self.client.pull_blob(&r, digest.to_string().as_str(), file).await.map_err(source_error)
    }
}

//! berth's image registry: the OCI Distribution Spec v1.1 under `/v2/`, content-addressed blob
//! storage, ECR-style tag mutability, lifecycle rules, a garbage collector and push events.
//!
//! Invariants: the registry never runs containers; it decides no access itself but asks the
//! [`Principal`](berth_core::Principal) the API layer attached to the request; a blob is visible
//! only once complete and verified; a manifest is stored only when everything it references is.

pub mod blob_store;
mod distribution;
mod error;
pub mod gc;
pub mod manifest;
mod source;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::{Digest, LifecycleRule, Reference, RepositoryName, TagPolicy};
use berth_store::{ManifestRecord, PushEvent, RepositoryRecord, SharedStore, StoreError, TagRecord, TagWrite};
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::sync::broadcast;

pub use blob_store::{BlobStore, FsBlobStore};
pub use distribution::router;
pub use error::{Code, RegistryError};

/// Registry settings.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Tag policy of repositories created by a push.
    pub default_policy: TagPolicy,
    /// Blobs younger than this are never collected, so pushes in flight are safe.
    pub gc_grace: Duration,
    /// Upload sessions idle for longer than this are discarded by the collector.
    pub upload_expiry: Duration,
    /// The Docker token endpoint announced in challenges; derived from the request's Host when unset.
    pub token_realm: Option<String>,
    /// The `service` announced in challenges.
    pub service: String,
    /// Upload sessions one repository may have open at once.
    pub max_uploads_per_repository: usize,
    /// Upload sessions one token may have open at once.
    pub max_uploads_per_token: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            default_policy: TagPolicy::default(),
            gc_grace: Duration::from_secs(3600),
            upload_expiry: Duration::from_secs(24 * 3600),
            token_realm: None,
            service: "berth".into(),
            max_uploads_per_repository: 256,
            max_uploads_per_token: 64,
        }
    }
}

/// The registry: repositories, manifests, tags and blobs over a [`Store`](berth_store::Store)
/// and a [`BlobStore`].
pub struct Registry {
    store: SharedStore,
    blobs: Arc<dyn BlobStore>,
    config: RegistryConfig,
    events: broadcast::Sender<PushEvent>,
    /// Manifest writes hold it shared; the collector's delete phase holds it exclusively, so a
    /// blob cannot vanish between a manifest's reference check and its commit.
    gc_lock: tokio::sync::RwLock<()>,
    uploads: tokio::sync::Mutex<OpenUploads>,
}

/// Upload sessions in progress, with the repository and the token that opened each (unknown for
/// sessions found on disk at start), to cap them.
#[derive(Default)]
struct OpenUploads {
    loaded: bool,
    sessions: std::collections::HashMap<String, (String, Option<String>)>,
}

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(crate) fn parse_name(name: &str) -> Result<RepositoryName, RegistryError> {
    name.parse().map_err(|e: berth_core::NameError| RegistryError::new(Code::NameInvalid, e.to_string()))
}

/// A manifest as served: its record and its bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub record: ManifestRecord,
    pub content: Bytes,
}

impl Registry {
    pub fn new(store: SharedStore, blobs: Arc<dyn BlobStore>, config: RegistryConfig) -> Registry {
        let (events, _) = broadcast::channel(1024);
        Registry { store, blobs, config, events, gc_lock: tokio::sync::RwLock::new(()), uploads: Default::default() }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Opens an upload session for `repository` on behalf of `token`, within the caps on open
    /// sessions per repository and per token.
    pub(crate) async fn open_upload(&self, repository: &str, token: &str, token_name: &str) -> Result<String, RegistryError> {
        let mut open = self.uploads.lock().await;
        if !open.loaded {
            for u in self.blobs.list_uploads().await? {
                open.sessions.insert(u.id, (u.repository, None));
            }
            open.loaded = true;
        }
        let per_repo = open.sessions.values().filter(|(r, _)| r == repository).count();
        let per_token = open.sessions.values().filter(|(_, t)| t.as_deref() == Some(token)).count();
        let busy = |what: String, cap: usize| {
            RegistryError::new(
                Code::TooManyRequests,
                format!(
                    "{what} has {cap} uploads in progress, the most it may; finish or cancel some (they expire after {} s)",
                    self.config.upload_expiry.as_secs()
                ),
            )
        };
        if per_repo >= self.config.max_uploads_per_repository {
            return Err(busy(format!("repository `{repository}`"), self.config.max_uploads_per_repository));
        }
        if per_token >= self.config.max_uploads_per_token {
            return Err(busy(format!("token `{token_name}`"), self.config.max_uploads_per_token));
        }
        let id = self.blobs.create_upload(repository).await?;
        open.sessions.insert(id.clone(), (repository.to_owned(), Some(token.to_owned())));
        Ok(id)
    }

    /// Forgets upload sessions that ended (finished, cancelled, discarded or expired).
    pub(crate) async fn close_uploads(&self, ids: impl IntoIterator<Item = &str>) {
        let mut open = self.uploads.lock().await;
        for id in ids {
            if self.blobs.upload_info(id).await.ok().flatten().is_none() {
                open.sessions.remove(id);
            }
        }
    }

    /// Push events as they happen. A subscriber that falls behind, or that starts late, catches up
    /// from the store with [`Registry::events`].
    pub fn subscribe(&self) -> broadcast::Receiver<PushEvent> {
        self.events.subscribe()
    }

    /// Recorded push events after id `after`, oldest first.
    pub async fn events(&self, repository: Option<&str>, after: i64, limit: usize) -> Result<Vec<PushEvent>, RegistryError> {
        Ok(self.store.push_events(repository, after, limit).await?)
    }

    pub async fn create_repository(&self, name: &str, policy: TagPolicy) -> Result<RepositoryRecord, RegistryError> {
        parse_name(name)?;
        let rec = RepositoryRecord { name: name.to_owned(), created_at: now(), tag_policy: policy, lifecycle: Vec::new() };
        match self.store.create_repository(rec.clone()).await {
            Ok(()) => Ok(rec),
            Err(StoreError::RepositoryExists(n)) => Err(RegistryError::new(Code::NameInvalid, format!("repository `{n}` already exists"))
                .with_status(axum::http::StatusCode::CONFLICT)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn repository(&self, name: &str) -> Result<RepositoryRecord, RegistryError> {
        self.store.get_repository(name).await?.ok_or_else(|| unknown_repository(name))
    }

    pub async fn repositories(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepositoryRecord>, RegistryError> {
        Ok(self.store.list_repositories(after, limit).await?)
    }

    pub async fn set_tag_policy(&self, name: &str, policy: &TagPolicy) -> Result<(), RegistryError> {
        match self.store.set_tag_policy(name, policy).await {
            Err(StoreError::RepositoryNotFound(n)) => Err(unknown_repository(&n)),
            r => Ok(r?),
        }
    }

    pub async fn set_lifecycle(&self, name: &str, rules: &[LifecycleRule]) -> Result<(), RegistryError> {
        match self.store.set_lifecycle(name, rules).await {
            Err(StoreError::RepositoryNotFound(n)) => Err(unknown_repository(&n)),
            r => Ok(r?),
        }
    }

    /// Deletes a repository with its tags and manifests; blobs nobody else references are left to
    /// the collector.
    pub async fn delete_repository(&self, name: &str) -> Result<(), RegistryError> {
        if self.store.delete_repository(name).await? {
            Ok(())
        } else {
            Err(unknown_repository(name))
        }
    }

    /// Tags of repository `name` in lexical order after `after`, at most `limit`.
    pub async fn tags(&self, name: &str, after: Option<&str>, limit: usize) -> Result<Vec<TagRecord>, RegistryError> {
        self.repository(name).await?;
        Ok(self.store.list_tags_page(name, after, limit).await?)
    }

    pub async fn tag_count(&self, name: &str) -> Result<u64, RegistryError> {
        Ok(self.store.count_tags(name).await?)
    }

    /// Stores a manifest under `reference` (a tag, or the digest it must have).
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<ManifestRecord, RegistryError> {
        parse_name(name)?;
        if body.len() > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::new(Code::SizeInvalid, "manifest is larger than 4 MiB")
                .with_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE));
        }
        let parsed = manifest::parse(content_type, &body).map_err(|e| RegistryError::new(Code::ManifestInvalid, e.to_string()))?;
        let digest = match reference {
            Reference::Digest(want) => {
                let got = Digest::compute(want.algorithm(), &body);
                if &got != want {
                    return Err(RegistryError::new(Code::DigestInvalid, format!("manifest content has digest {got}, not {want}")));
                }
                got
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let repo = self.store.ensure_repository(name, &self.config.default_policy, now()).await?;
        let _gc = self.gc_lock.read().await;
        for b in &parsed.blobs {
            if self.store.linked_blob(name, b).await?.is_none() {
                return Err(RegistryError::new(
                    Code::ManifestBlobUnknown,
                    format!("blob {b} is not in repository `{name}`; push it first"),
                )
                .with_detail(serde_json::json!({ "digest": b.to_string() })));
            }
        }
        for (m, _) in &parsed.manifests {
            if self.store.get_manifest(name, m).await?.is_none() {
                return Err(RegistryError::new(
                    Code::ManifestBlobUnknown,
                    format!("manifest {m} is not in repository `{name}`; push it first"),
                )
                .with_detail(serde_json::json!({ "digest": m.to_string() })));
            }
        }
        self.blobs.put(&digest, body.clone()).await?;
        self.store.link_blob(name, &digest, body.len() as u64, now()).await?;
        let record = ManifestRecord {
            repository: name.to_owned(),
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            size: body.len() as u64,
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject.clone(),
            annotations: parsed.annotations.clone(),
            references: parsed.blobs.iter().cloned().chain(parsed.manifests.iter().map(|(d, _)| d.clone())).collect(),
            created_at: now(),
        };
        let tag = match reference {
            Reference::Tag(t) => Some(TagWrite { tag: t.as_str(), immutable: repo.tag_policy.is_immutable(t.as_str()) }),
            Reference::Digest(_) => None,
        };
        match self.store.put_manifest(&record, tag, now()).await {
            Ok(Some(event)) => {
                tracing::info!(repository = name, tag = ?event.tag, digest = %event.digest, "image pushed");
                let _ = self.events.send(event);
            }
            Ok(None) => {}
            Err(StoreError::TagImmutable { tag, current }) => {
                return Err(RegistryError::new(
                    Code::TagInvalid,
                    format!(
                        "tag `{tag}` is immutable in repository `{name}` (policy {}) and already points at {current}; push a new tag or add an exclusion",
                        repo.tag_policy.describe()
                    ),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(record)
    }

    /// Resolves a reference to a stored manifest.
    pub async fn manifest(&self, name: &str, reference: &Reference) -> Result<StoredManifest, RegistryError> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self
                .store
                .resolve_tag(name, t.as_str())
                .await?
                .ok_or_else(|| RegistryError::new(Code::ManifestUnknown, format!("tag `{t}` is not in repository `{name}`")))?,
        };
        let record = self
            .store
            .get_manifest(name, &digest)
            .await?
            .ok_or_else(|| RegistryError::new(Code::ManifestUnknown, format!("manifest {digest} is not in repository `{name}`")))?;
        let chunks: Vec<Bytes> = self
            .blobs
            .read(&digest, 0, record.size)
            .await?
            .try_collect()
            .await
            .map_err(|e| RegistryError::internal("reading manifest", e))?;
        Ok(StoredManifest { record, content: Bytes::from(chunks.concat()) })
    }

    /// Deletes a tag, or a manifest with every tag pointing at it.
    pub async fn delete_manifest(&self, name: &str, reference: &Reference) -> Result<(), RegistryError> {
        let found = match reference {
            Reference::Tag(t) => self.store.delete_tag(name, t.as_str()).await?,
            Reference::Digest(d) => self.store.delete_manifest(name, d).await?,
        };
        if found {
            Ok(())
        } else {
            Err(RegistryError::new(Code::ManifestUnknown, format!("{reference} is not in repository `{name}`")))
        }
    }

    /// Links a finished upload's blob to the repository.
    pub(crate) async fn link_blob(&self, name: &str, digest: &Digest, size: u64) -> Result<(), RegistryError> {
        self.store.ensure_repository(name, &self.config.default_policy, now()).await?;
        self.store.link_blob(name, digest, size, now()).await?;
        Ok(())
    }
}

pub(crate) fn unknown_repository(name: &str) -> RegistryError {
    RegistryError::new(Code::NameUnknown, format!("repository `{name}` does not exist"))
}

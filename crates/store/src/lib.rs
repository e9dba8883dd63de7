//! berth's state: repositories and their policies, manifests, tags, blob links, push events and
//! API tokens. Callers see only the [`Store`] trait and the record types; SQLite is the one
//! backend today (PostgreSQL can be added behind the same trait).
//!
//! Invariant: the store knows nothing of HTTP or of registry protocol rules; it offers atomic
//! operations (a manifest write with its tag move and push event is one transaction) and the
//! caller decides policy.

pub mod history;
mod records;
mod sqlite;

use std::sync::Arc;

use berth_core::{Digest, LifecycleRule, TagPolicy};

pub use records::*;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("repository `{0}` already exists")]
    RepositoryExists(String),
    #[error("repository `{0}` does not exist")]
    RepositoryNotFound(String),
    #[error("tag `{tag}` already points at {current}")]
    TagImmutable { tag: String, current: Digest },
    #[error("token `{0}` already exists")]
    TokenExists(String),
    #[error("service `{0}` already exists")]
    ServiceExists(String),
    #[error("service `{0}` does not exist")]
    ServiceNotFound(String),
    #[error("network `{0}` already exists")]
    NetworkExists(String),
    #[error("secret `{0}` already exists")]
    SecretExists(String),
    #[error("secret `{0}` does not exist")]
    SecretNotFound(String),
    #[error("state database error: {0}")]
    Database(rusqlite::Error),
    #[error("the disk holding the state database is full; free space on it (`berth registry gc` removes unused blobs) and try again")]
    StorageFull,
    #[error("state database holds a malformed value: {0}")]
    Corrupt(String),
    #[error("state database migration failed: {0}")]
    Migration(String),
    #[error("the state database is damaged ({0}); stop berth and restore state.db from a backup")]
    Damaged(String),
    #[error("state database task failed: {0}")]
    Task(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::StorageFull,
            _ => StoreError::Database(e),
        }
    }
}

/// Desired and observed state. Every method is one transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    // Services: documents owned by berth-services, keyed here.
    async fn create_service(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    async fn put_service(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    async fn get_service(&self, name: &str) -> Result<Option<DocRecord>>;
    async fn list_services(&self) -> Result<Vec<DocRecord>>;
    /// Deletes the service and its revisions; its operations and events stay readable.
    async fn delete_service(&self, name: &str) -> Result<bool>;

    /// Creates a network (a JSON document); `NetworkExists` if the name is taken.
    async fn create_network(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    async fn get_network(&self, name: &str) -> Result<Option<DocRecord>>;
    /// Every network, by name.
    async fn list_networks(&self) -> Result<Vec<DocRecord>>;
    /// Whether it existed.
    async fn delete_network(&self, name: &str) -> Result<bool>;

    // Secrets: documents owned by berth-secrets (sealed; no value in the clear ever reaches the
    // store).
    /// `SecretExists` if the name is taken.
    async fn create_secret(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    /// Replaces an existing secret's document; `SecretNotFound` if there is none.
    async fn put_secret(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    async fn get_secret(&self, name: &str) -> Result<Option<DocRecord>>;
    /// Every secret, by name.
    async fn list_secrets(&self) -> Result<Vec<DocRecord>>;
    /// Removes it for good; whether it existed.
    async fn purge_secret(&self, name: &str) -> Result<bool>;
    /// A value about the secrets' key material (e.g. the master key's fingerprint).
    async fn secret_meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_secret_meta(&self, key: &str, value: &str) -> Result<()>;
    /// Records `entry`, keeping the newest `keep` entries of its secret.
    async fn add_secret_audit(&self, entry: &SecretAudit, keep: usize) -> Result<()>;
    /// A secret's audit trail, newest first.
    async fn secret_audit(&self, secret: &str, limit: usize) -> Result<Vec<SecretAudit>>;
    /// Stores a revision under the next number of the service, returned.
    async fn create_revision(&self, service: &str, doc: &serde_json::Value, now: i64) -> Result<u32>;
    /// A revision (`key` is its number).
    async fn get_revision(&self, service: &str, number: u32) -> Result<Option<DocRecord>>;
    async fn list_revisions(&self, service: &str) -> Result<Vec<DocRecord>>;
    /// Creates or replaces an operation; `open` while it has not ended.
    async fn put_operation(&self, id: &str, service: &str, open: bool, doc: &serde_json::Value, started_at: i64) -> Result<()>;
    async fn get_operation(&self, id: &str) -> Result<Option<DocRecord>>;
    /// Newest first (by start time, then creation), after the operation `after` in that order.
    async fn list_operations(&self, service: Option<&str>, open_only: bool, after: Option<&str>, limit: usize) -> Result<Vec<DocRecord>>;
    async fn add_service_event(&self, service: &str, at: i64, kind: &str, message: &str) -> Result<()>;
    /// Newest first, older than the event `before` when given.
    async fn service_events(&self, service: &str, before: Option<i64>, limit: usize) -> Result<Vec<ServiceEvent>>;
    /// Events from `from` to `to` (seconds, inclusive), oldest first, at most `limit`.
    async fn service_events_between(&self, service: &str, from: i64, to: i64, limit: usize) -> Result<Vec<ServiceEvent>>;

    // Metrics history (see [`history`]).
    /// Merges each service's points into both resolutions, and records how far each router run's
    /// traffic has been taken — all in one transaction.
    async fn merge_metrics(&self, points: Vec<(String, berth_core::metrics::Point)>, runs: Vec<(String, u64)>) -> Result<()>;
    /// How far each router run's traffic has been taken.
    async fn metric_runs(&self) -> Result<Vec<(String, u64)>>;
    /// The service's points of `resolution` from `from` to `to` (seconds), in time order.
    async fn metrics(&self, service: &str, resolution: u64, from: u64, to: u64) -> Result<Vec<berth_core::metrics::Point>>;
    /// Removes points older than their resolution keeps them at `now`, and runs not heard of for
    /// as long as ten-second points are kept.
    async fn prune_metrics(&self, now: u64) -> Result<()>;
    /// The bytes the metrics history takes: the chunks' sizes, of every service or of one.
    async fn metrics_size(&self, service: Option<&str>) -> Result<u64>;

    // Repositories.
    async fn create_repository(&self, repo: RepositoryRecord) -> Result<()>;
    /// Returns the repository, creating it with `default_policy` when it does not exist.
    async fn ensure_repository(&self, name: &str, default_policy: &TagPolicy, now: i64) -> Result<RepositoryRecord>;
    async fn get_repository(&self, name: &str) -> Result<Option<RepositoryRecord>>;
    /// Repositories in name order, after `after`, at most `limit`.
    async fn list_repositories(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepositoryRecord>>;
    async fn set_tag_policy(&self, name: &str, policy: &TagPolicy) -> Result<()>;
    async fn set_lifecycle(&self, name: &str, rules: &[LifecycleRule]) -> Result<()>;
    /// Deletes the repository with its tags, manifests, blob links and events. Returns false when absent.
    async fn delete_repository(&self, name: &str) -> Result<bool>;

    // Blob links: which repository may serve which blob.
    async fn link_blob(&self, repository: &str, digest: &Digest, size: u64, now: i64) -> Result<()>;
    /// The size of a blob linked to the repository.
    async fn linked_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>>;
    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool>;
    /// Removes every repository's link to the blob (it is about to be deleted).
    async fn forget_blob(&self, digest: &Digest) -> Result<()>;

    // Manifests and tags.
    /// Stores the manifest (idempotent) and, when `tag` is given, points the tag at it. When the tag
    /// points elsewhere and `tag.immutable`, fails with [`StoreError::TagImmutable`]. A new
    /// manifest or a moved tag records a push event, returned.
    async fn put_manifest(&self, manifest: &ManifestRecord, tag: Option<TagWrite<'_>>, now: i64) -> Result<Option<PushEvent>>;
    async fn get_manifest(&self, repository: &str, digest: &Digest) -> Result<Option<ManifestRecord>>;
    async fn resolve_tag(&self, repository: &str, tag: &str) -> Result<Option<Digest>>;
    /// Tag names in lexical order after `after`, at most `limit`.
    async fn list_tag_names(&self, repository: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>>;
    /// Every tag of the repository, most recently moved first.
    async fn list_tags(&self, repository: &str) -> Result<Vec<TagRecord>>;
    /// Tags in lexical order after `after`, at most `limit`.
    async fn list_tags_page(&self, repository: &str, after: Option<&str>, limit: usize) -> Result<Vec<TagRecord>>;
    async fn count_tags(&self, repository: &str) -> Result<u64>;
    /// The tags pointing at `digest`, in lexical order.
    async fn tags_at(&self, repository: &str, digest: &Digest) -> Result<Vec<String>>;
    async fn list_manifests(&self, repository: &str) -> Result<Vec<ManifestRecord>>;
    /// Manifests in the repository whose subject is `subject`.
    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<ManifestRecord>>;
    /// Deletes the manifest and every tag pointing at it. Returns false when absent.
    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<bool>;
    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool>;

    // Push events.
    /// Events with id greater than `after`, oldest first, optionally of one repository.
    async fn push_events(&self, repository: Option<&str>, after: i64, limit: usize) -> Result<Vec<PushEvent>>;

    // Tokens.
    async fn create_token(&self, token: &TokenRecord) -> Result<()>;
    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Marks the token revoked. Returns false when absent or already revoked.
    async fn revoke_token(&self, id: &str, now: i64) -> Result<bool>;
    async fn touch_token(&self, id: &str, now: i64) -> Result<()>;

    // Webhooks.
    /// The id of the newest service event, if there is one.
    async fn newest_event_id(&self) -> Result<Option<i64>>;
    /// Events of every service with id greater than `after`, oldest first.
    async fn service_events_after(&self, after: i64, limit: usize) -> Result<Vec<ServiceEvent>>;
    /// Stores a webhook; false when one of that name exists.
    async fn put_webhook(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<bool>;
    async fn list_webhooks(&self) -> Result<Vec<DocRecord>>;
    /// Deletes a webhook with its deliveries; false when there was none.
    async fn delete_webhook(&self, name: &str) -> Result<bool>;
    /// Stores (or replaces) the AWS-compatible APIs' document `name` of `kind`.
    async fn put_aws_resource(&self, kind: &str, name: &str, doc: &serde_json::Value, now: i64) -> Result<()>;
    async fn get_aws_resource(&self, kind: &str, name: &str) -> Result<Option<DocRecord>>;
    /// Every document of `kind`, by name.
    async fn list_aws_resources(&self, kind: &str) -> Result<Vec<DocRecord>>;
    async fn delete_aws_resource(&self, kind: &str, name: &str) -> Result<bool>;
    /// The last service event turned into deliveries, if any was.
    async fn webhook_cursor(&self) -> Result<Option<i64>>;
    /// Adds deliveries (pending, due at their `created_at`) and moves the cursor, in one
    /// transaction.
    async fn enqueue_deliveries(&self, deliveries: Vec<DeliveryRecord>, cursor: i64) -> Result<()>;
    /// Pending deliveries due at `now`, soonest first.
    async fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRecord>>;
    /// Records an attempt's outcome (status, attempts, next time, last code and error, end).
    async fn update_delivery(&self, delivery: &DeliveryRecord) -> Result<()>;
    /// A webhook's deliveries, newest first.
    async fn deliveries(&self, webhook: &str, limit: usize) -> Result<Vec<DeliveryRecord>>;

    // Console sessions.
    async fn create_session(&self, session: &SessionRecord) -> Result<()>;
    async fn get_session(&self, id_sha256: &str) -> Result<Option<SessionRecord>>;
    /// Returns false when there was none.
    async fn delete_session(&self, id_sha256: &str) -> Result<bool>;
    /// Removes the sessions expired at `now`.
    async fn prune_sessions(&self, now: i64) -> Result<()>;
}

pub type SharedStore = Arc<dyn Store>;

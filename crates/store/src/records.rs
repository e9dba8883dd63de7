//! The records the store keeps. Times are unix seconds.

use berth_core::{Digest, LifecycleRule, Scope, TagPolicy};

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RepositoryRecord {
    pub name: String,
    pub created_at: i64,
    pub tag_policy: TagPolicy,
    pub lifecycle: Vec<LifecycleRule>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ManifestRecord {
    pub repository: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's `annotations`, as a JSON object, when it has any.
    pub annotations: Option<serde_json::Value>,
    /// Blobs and child manifests the manifest references.
    pub references: Vec<Digest>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TagRecord {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub updated_at: i64,
}

/// A tag to point at a manifest being stored.
#[derive(Debug, Clone, Copy)]
pub struct TagWrite<'a> {
    pub tag: &'a str,
    /// Whether the repository's policy forbids moving this tag.
    pub immutable: bool,
}

/// A manifest push or tag move, as a later deployer consumes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PushEvent {
    pub id: i64,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Digest,
    pub previous_digest: Option<Digest>,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    /// sha256 of the token's secret part, hex.
    #[serde(skip)]
    pub secret_sha256: String,
    pub scopes: Vec<Scope>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Whether the token also signs AWS requests, as an access key (`berth token create --aws`).
    pub aws: bool,
}

/// One event posted to one webhook: its body and how its attempts went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    pub webhook: String,
    pub event_id: i64,
    pub kind: String,
    pub service: String,
    /// The JSON posted.
    pub body: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i64,
    /// When the next attempt is due (while pending).
    pub next_at: i64,
    pub last_code: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub done_at: Option<i64>,
}

/// A console session: the browser holds its secret; the store only its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id_sha256: String,
    pub token_id: String,
    pub csrf: String,
    pub created_at: i64,
    pub expires_at: i64,
}

/// A JSON document with its key (name, number or id) and its creation time.
#[derive(Debug, Clone, PartialEq)]
pub struct DocRecord {
    pub key: String,
    pub doc: serde_json::Value,
    pub at: i64,
}

/// Who read or changed a secret, how and which version, when; never a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretAudit {
    pub at: i64,
    pub secret: String,
    /// The token that did it.
    pub actor: String,
    /// `create`, `put`, `read`, `label`, `delete`, `restore`, `purge`, …
    pub action: String,
    pub version: Option<String>,
}

/// Something that happened to a service: a status change, an instance replaced, a crash loop.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceEvent {
    pub id: i64,
    pub service: String,
    pub at: i64,
    pub kind: String,
    pub message: String,
}

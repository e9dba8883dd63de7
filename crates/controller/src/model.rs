//! The documents the controller keeps in the store — service, revision, operation — and the
//! views the API shows.

use berth_core::{Digest, OperationStatus, OperationType, ServiceSpec, ServiceStatus};
use berth_store::DocRecord;
use serde::{Deserialize, Serialize};

use crate::ControllerError;

/// A service as stored: the spec of the revision serving (or being created), its status and the
/// revision serving. Only its supervisor writes it once created.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceDoc {
    pub spec: ServiceSpec,
    pub status: ServiceStatus,
    /// The revision serving (or last serving, when paused).
    pub current_revision: Option<u32>,
    #[serde(default)]
    pub paused: bool,
}

/// An immutable deployment unit: the configuration snapshot, the digest, and the tags that
/// pointed at the digest when it was deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevisionDoc {
    pub spec: ServiceSpec,
    pub repository: String,
    pub digest: Digest,
    pub tags: Vec<String>,
    /// The version of each secret `spec.image_config.secret_env` names, pinned when the
    /// revision was made: every instance of the revision gets the same values.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secret_versions: std::collections::BTreeMap<String, String>,
    /// Who made it: a token's name, `auto-deploy`, or what else started its deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    pub service: String,
    pub number: u32,
    /// `<service>-<number>`, e.g. `web-0003`.
    pub id: String,
    pub created_at: i64,
    #[serde(flatten)]
    pub doc: RevisionDoc,
    /// The tags pointing at the digest now (`tags` are those at deploy time); filled in for views.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags_now: Option<Vec<String>>,
}

impl Revision {
    pub(crate) fn from_record(service: &str, r: DocRecord) -> Result<Revision, ControllerError> {
        let number: u32 = r.key.parse().map_err(|_| ControllerError::Corrupt(format!("revision number `{}`", r.key)))?;
        let doc: RevisionDoc = serde_json::from_value(r.doc).map_err(|e| ControllerError::Corrupt(e.to_string()))?;
        Ok(Revision { service: service.to_owned(), number, id: revision_id(service, number), created_at: r.at, doc, tags_now: None })
    }
}

pub fn revision_id(service: &str, number: u32) -> String {
    format!("{service}-{number:04}")
}

/// Parses `web-0003` or `3` into a revision number of `service`.
pub fn parse_revision(service: &str, text: &str) -> Option<u32> {
    let digits = text.strip_prefix(service).and_then(|r| r.strip_prefix('-')).unwrap_or(text);
    digits.parse().ok()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix seconds.
    pub at: i64,
    /// Unix milliseconds, for measuring steps.
    #[serde(default)]
    pub at_ms: i64,
    pub message: String,
}

/// A long-running change to a service, as App Runner reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    pub service: String,
    #[serde(rename = "type")]
    pub kind: OperationType,
    pub status: OperationStatus,
    /// The revision being deployed (deployments, creates, updates, rollbacks).
    pub target_revision: Option<u32>,
    /// The revision serving when the operation started.
    pub previous_revision: Option<u32>,
    pub log: Vec<LogLine>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// Who started it: a token's name, `auto-deploy`, … (none for operations berth starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Operation {
    pub(crate) fn new(service: &str, kind: OperationType, target: Option<u32>, previous: Option<u32>) -> Operation {
        Operation {
            id: format!("op-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
            service: service.to_owned(),
            kind,
            status: OperationStatus::Pending,
            target_revision: target,
            previous_revision: previous,
            log: Vec::new(),
            started_at: now(),
            ended_at: None,
            by: None,
        }
    }

    pub(crate) fn say(&mut self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(service = %self.service, operation = %self.id, "{message}");
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        self.log.push(LogLine { at: at_ms / 1000, at_ms, message });
    }
}

/// One instance as the service shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub revision: u32,
    pub address: Option<String>,
    /// `starting`, `ready`, `unhealthy` or `draining`.
    pub state: &'static str,
}

/// A service as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub status: ServiceStatus,
    pub url: String,
    pub spec: ServiceSpec,
    pub current_revision: Option<Revision>,
    pub instances: Vec<InstanceView>,
    pub operation_in_progress: Option<String>,
    pub created_at: i64,
    /// Connections its instances tried that their network rules refused, by destination class
    /// (`host`, `instances`, `metadata`, `link_local`, `private`, `internet`).
    pub denied: std::collections::BTreeMap<String, u64>,
}

/// A revision that uses a secret: the version it pinned, and its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretConsumer {
    pub service: String,
    /// `<service>-<number>`.
    pub revision: String,
    pub version: String,
    /// `env` (pinned by the revision) or `files` (following CURRENT).
    pub how: &'static str,
    pub instances: Vec<String>,
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

//! A secret as stored (sealed) and as shown (no values), references (`name#key`) and version
//! selectors.

use std::fmt;
use std::str::FromStr;

use crate::crypto::Key;
use crate::{Result, SecretError, MAX_VALUE_BYTES};

pub const CURRENT: &str = "CURRENT";
pub const PENDING: &str = "PENDING";
pub const PREVIOUS: &str = "PREVIOUS";

/// The associated data of a secret's sealed data key.
pub(crate) fn key_aad(name: &str) -> String {
    format!("berth data key\0{name}")
}

fn value_aad(name: &str, version: &str) -> String {
    format!("berth secret value\0{name}\0{version}")
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    if berth_core::service::secret_name(name) == Some(name) {
        Ok(())
    } else {
        Err(SecretError::InvalidName(name.to_owned()))
    }
}

pub(crate) fn check_label(label: &str) -> Result<()> {
    let ok = (1..=64).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(SecretError::InvalidLabel(label.to_owned()))
    }
}

pub(crate) fn check_value(value: &str) -> Result<()> {
    match value.len() {
        0 => Err(SecretError::Empty),
        n if n > MAX_VALUE_BYTES => Err(SecretError::TooLarge(n)),
        _ => Ok(()),
    }
}

/// A value in the clear. Its `Debug` does not show it; [`Plain::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct Plain(pub(crate) String);

impl Plain {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Plain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Plain(<redacted>)")
    }
}

/// What a consumer names: a whole secret, or one key of a secret that is a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub name: String,
    pub key: Option<String>,
}

impl FromStr for Reference {
    type Err = SecretError;

    /// `name` or `name#key`.
    fn from_str(s: &str) -> Result<Reference> {
        let (name, key) = match s.split_once('#') {
            Some((n, k)) if !k.is_empty() => (n, Some(k.to_owned())),
            Some(_) => return Err(SecretError::InvalidName(s.to_owned())),
            None => (s, None),
        };
        check_name(name)?;
        Ok(Reference { name: name.to_owned(), key })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}#{k}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Reference {
    /// The part of a version's value this reference names: a string key as it is, any other
    /// JSON value as JSON text.
    pub(crate) fn pick(&self, value: Plain) -> Result<Plain> {
        let Some(key) = &self.key else { return Ok(value) };
        let not_json = || SecretError::NotJson { name: self.name.clone(), key: key.clone() };
        let doc: serde_json::Value = serde_json::from_str(value.expose()).map_err(|_| not_json())?;
        let object = doc.as_object().ok_or_else(not_json)?;
        match object.get(key) {
            Some(serde_json::Value::String(s)) => Ok(Plain(s.clone())),
            Some(other) => Ok(Plain(other.to_string())),
            None => Err(SecretError::NoKey { name: self.name.clone(), key: key.clone() }),
        }
    }
}

/// Which version: the one holding a label, or one by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Label(String),
    Version(String),
}

impl Default for Selector {
    fn default() -> Self {
        Selector::Label(CURRENT.to_owned())
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Label(l) => write!(f, "labelled {l}"),
            Selector::Version(v) => write!(f, "`{v}`"),
        }
    }
}

/// A version as shown: no value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    pub id: String,
    pub created_at: i64,
    pub labels: Vec<String>,
}

/// A secret as shown: no value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretInfo {
    pub name: String,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set while the secret is deleted and can still be restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
    /// Newest first.
    pub versions: Vec<VersionInfo>,
    /// How the secret is rotated and where its rotation stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation: Option<crate::rotation::Rotation>,
}

/// A version as stored: its value sealed under the secret's data key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct VersionDoc {
    pub id: String,
    pub created_at: i64,
    #[serde(default)]
    pub labels: Vec<String>,
    pub sealed: String,
}

impl VersionDoc {
    pub(crate) fn open(&self, data: &Key, name: &str) -> Result<Plain> {
        let bytes = data.open(&value_aad(name, &self.id), &self.sealed)?;
        String::from_utf8(bytes).map(Plain).map_err(|_| SecretError::Corrupt(format!("secret `{name}` version {} is not text", self.id)))
    }
}

/// A secret as stored.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct SecretDoc {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The data key, sealed under the master key.
    pub data_key: String,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_at: Option<i64>,
    /// Oldest first.
    pub versions: Vec<VersionDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<crate::rotation::Rotation>,
}

impl SecretDoc {
    pub(crate) fn new(name: &str, description: &str, data_key: String, now: i64) -> SecretDoc {
        SecretDoc {
            name: name.to_owned(),
            description: description.to_owned(),
            data_key,
            created_at: now,
            updated_at: now,
            deleted_at: None,
            purge_at: None,
            versions: Vec::new(),
            rotation: None,
        }
    }

    /// Seals `value` as a new version holding `labels` (taken from the versions that had them).
    pub(crate) fn add_version(&mut self, data: &Key, value: &str, labels: &[String], id: Option<&str>, now: i64) -> Result<String> {
        let id = match id {
            None => hex::encode(crate::crypto::random::<16>()?),
            Some(id) if !(32..=64).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
                return Err(SecretError::InvalidVersionId(id.to_owned()))
            }
            Some(id) if self.versions.iter().any(|v| v.id == id) => {
                return Err(SecretError::VersionExists { name: self.name.clone(), id: id.to_owned() })
            }
            Some(id) => id.to_owned(),
        };
        let sealed = data.seal(&value_aad(&self.name, &id), value.as_bytes())?;
        self.versions.push(VersionDoc { id: id.clone(), created_at: now, labels: Vec::new(), sealed });
        for l in labels {
            self.move_label(l, &id);
        }
        self.updated_at = now;
        Ok(id)
    }

    /// Gives `label` to version `id` alone. When `CURRENT` moves to another version, the one
    /// that had it becomes `PREVIOUS`.
    pub(crate) fn move_label(&mut self, label: &str, id: &str) {
        let had = self.versions.iter().find(|v| v.labels.iter().any(|l| l == label)).map(|v| v.id.clone());
        if had.as_deref() == Some(id) {
            return;
        }
        for v in &mut self.versions {
            v.labels.retain(|l| l != label);
        }
        if let Some(v) = self.versions.iter_mut().find(|v| v.id == id) {
            v.labels.push(label.to_owned());
        }
        if let (CURRENT, Some(old)) = (label, had) {
            self.move_label(PREVIOUS, &old);
        }
    }

    /// Drops the oldest versions without a label beyond the newest `keep` such.
    pub(crate) fn prune(&mut self, keep: usize) {
        let unlabeled = self.versions.iter().filter(|v| v.labels.is_empty()).count();
        let mut drop = unlabeled.saturating_sub(keep);
        self.versions.retain(|v| {
            if drop > 0 && v.labels.is_empty() {
                drop -= 1;
                false
            } else {
                true
            }
        });
    }

    pub(crate) fn select(&self, selector: &Selector) -> Result<&VersionDoc> {
        let found = match selector {
            Selector::Label(l) => self.versions.iter().find(|v| v.labels.iter().any(|x| x == l)),
            Selector::Version(id) => self.versions.iter().find(|v| &v.id == id),
        };
        found.ok_or_else(|| SecretError::NoVersion { name: self.name.clone(), selector: selector.to_string() })
    }

    pub(crate) fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            purge_at: self.purge_at,
            versions: self
                .versions
                .iter()
                .rev()
                .map(|v| VersionInfo { id: v.id.clone(), created_at: v.created_at, labels: v.labels.clone() })
                .collect(),
            rotation: self.rotation.clone(),
        }
    }
}

//! berth's secrets. A secret is a named string (often a JSON object, whose keys are referenced
//! as `name#key`) with versions; staging labels (`CURRENT`, `PENDING`, `PREVIOUS` and any of the
//! caller's) point at versions, as in AWS Secrets Manager.
//!
//! At rest every version is sealed (AES-256-GCM) under the secret's own data key, and the data
//! key under the master key (a file berth makes at first start, a file of the caller's, or a
//! command that prints it, so a KMS can hold it). The store sees sealed bytes only. A master key
//! that does not match the one secrets were sealed with, or that is missing while secrets
//! exist, is an error at open, never a silent new key.
//!
//! Values are never in an error, a `Debug` output or a description: reading one is
//! [`Secrets::read`], and every read and change leaves an audit entry (who, what, which version,
//! when).

mod crypto;
mod model;
pub mod rotation;

use std::sync::Arc;

use berth_store::{SecretAudit, Store, StoreError};

pub use crypto::KeySource;
pub use model::{Plain, Reference, SecretInfo, Selector, VersionInfo, CURRENT, PENDING, PREVIOUS};

use crypto::Key;
use model::SecretDoc;

/// A value's largest size, as Secrets Manager's.
pub const MAX_VALUE_BYTES: usize = 64 << 10;
/// Versions kept without a label, newest first; older ones are removed.
const UNLABELED_KEPT: usize = 10;
/// The recovery window of a deletion, in days.
pub const RECOVERY_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
const FINGERPRINT: &str = "master_key_fingerprint";
/// Audit entries kept per secret, newest first (every instance start of a consumer adds one).
const AUDIT_KEPT: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{0}` does not exist")]
    NotFound(String),
    #[error("secret `{0}` already exists; put a new version with `berth secret put`")]
    Exists(String),
    #[error("secret name `{0}` is invalid: use 1–128 letters, digits and `/_+=.@-`")]
    InvalidName(String),
    #[error("label `{0}` is invalid: use 1–64 letters, digits, `_` and `-`")]
    InvalidLabel(String),
    #[error("the value is {0} bytes; a secret holds at most 65536")]
    TooLarge(usize),
    #[error("the value is empty")]
    Empty,
    #[error("secret `{name}` is not a JSON object, so `#{key}` cannot be taken from it; reference the whole secret as `{name}`")]
    NotJson { name: String, key: String },
    #[error("secret `{name}` has no key `{key}`")]
    NoKey { name: String, key: String },
    #[error("version id `{0}` is invalid: use 32–64 letters, digits and `-`")]
    InvalidVersionId(String),
    #[error("secret `{name}` already has a version `{id}`")]
    VersionExists { name: String, id: String },
    #[error("secret `{name}` has no version {selector}")]
    NoVersion { name: String, selector: String },
    #[error("secret `{name}` is deleted and will be purged at {purge_at} (Unix time); `berth secret restore {name}` brings it back")]
    Deleted { name: String, purge_at: i64 },
    #[error("secret `{0}` is not deleted")]
    NotDeleted(String),
    #[error("a recovery window is {min}–{max} days, not {0}", min = RECOVERY_DAYS.start(), max = RECOVERY_DAYS.end())]
    RecoveryWindow(u32),
    #[error("label `{label}` cannot be removed from secret `{name}`: move it to another version instead")]
    LabelNeeded { name: String, label: String },
    #[error("rotation: {0}")]
    Rotation(String),
    /// A rotation is under way and the request would cut into it.
    #[error("rotation: {0}")]
    RotationBusy(String),
    #[error("the master key: {0}")]
    KeySource(String),
    #[error(
        "the master key does not match the one the secrets were sealed with; give berth the key it had (the data directory's master.key, or the configured key file or command)"
    )]
    WrongMasterKey,
    #[error("encryption: {0}")]
    Crypto(&'static str),
    #[error("a stored secret is malformed: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = SecretError> = std::result::Result<T, E>;

/// The secrets of one berth, over its store, with the master key loaded.
pub struct Secrets {
    store: Arc<dyn Store>,
    master: Key,
    /// Counts changes (a version, a label, a deletion or restore), for consumers to follow.
    changes: tokio::sync::watch::Sender<u64>,
    /// Held while a secret is read, changed and written back, so that two changes (a put and
    /// a rotation step) never lose one another.
    write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets").finish_non_exhaustive()
    }
}

impl Secrets {
    /// Loads the master key from `source` and checks it against the fingerprint stored when the
    /// first key was made or first used. A key file berth owns is made only then.
    pub async fn open(store: Arc<dyn Store>, source: &KeySource) -> Result<Secrets> {
        let known = store.secret_meta(FINGERPRINT).await?;
        let (master, _) = crypto::load_master(source, known.is_none())?;
        match known {
            Some(f) if f != master.fingerprint() => return Err(SecretError::WrongMasterKey),
            Some(_) => {}
            None => store.set_secret_meta(FINGERPRINT, &master.fingerprint()).await?,
        }
        Ok(Secrets { store, master, changes: tokio::sync::watch::channel(0).0, write: tokio::sync::Mutex::new(()) })
    }

    /// Changes whenever a secret does (a version added, a label moved, a deletion or restore).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn load(&self, name: &str) -> Result<SecretDoc> {
        let rec = self.store.get_secret(name).await?.ok_or_else(|| SecretError::NotFound(name.to_owned()))?;
        serde_json::from_value(rec.doc).map_err(|e| SecretError::Corrupt(format!("secret `{name}`: {e}")))
    }

    /// The secret, refusing one that is deleted.
    async fn live(&self, name: &str) -> Result<SecretDoc> {
        let doc = self.load(name).await?;
        match doc.purge_at {
            Some(purge_at) => Err(SecretError::Deleted { name: name.to_owned(), purge_at }),
            None => Ok(doc),
        }
    }

    async fn save(&self, doc: &SecretDoc, now: i64) -> Result<()> {
        let json = serde_json::to_value(doc).map_err(|e| SecretError::Corrupt(e.to_string()))?;
        self.store.put_secret(&doc.name, &json, now).await?;
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn audit(&self, secret: &str, actor: &str, action: &str, version: Option<&str>, now: i64) -> Result<()> {
        let entry = SecretAudit {
            at: now,
            secret: secret.to_owned(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            version: version.map(str::to_owned),
        };
        Ok(self.store.add_secret_audit(&entry, AUDIT_KEPT).await?)
    }

    fn data_key(&self, doc: &SecretDoc) -> Result<Key> {
        Key::unwrap(&doc.data_key, &self.master, &model::key_aad(&doc.name))
    }

    /// Creates a secret with its first version, labelled `CURRENT`. Returns that version.
    pub async fn create(&self, name: &str, description: &str, value: &str, actor: &str, now: i64) -> Result<VersionInfo> {
        self.create_version(name, description, value, None, actor, now).await
    }

    /// [`Secrets::create`], the first version's id chosen by the caller (32–64 letters, digits
    /// and `-`, as AWS clients' request tokens are) or made up when `None`.
    pub async fn create_version(
        &self,
        name: &str,
        description: &str,
        value: &str,
        id: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<VersionInfo> {
        model::check_name(name)?;
        model::check_value(value)?;
        let data = Key::generate()?;
        let mut doc = SecretDoc::new(name, description, data.wrap(&self.master, &model::key_aad(name))?, now);
        let id = doc.add_version(&data, value, &[CURRENT.to_owned()], id, now)?;
        let json = serde_json::to_value(&doc).map_err(|e| SecretError::Corrupt(e.to_string()))?;
        self.store.create_secret(name, &json, now).await.map_err(|e| match e {
            StoreError::SecretExists(n) => SecretError::Exists(n),
            e => e.into(),
        })?;
        self.audit(name, actor, "create", Some(&id), now).await?;
        doc.info().versions.into_iter().find(|v| v.id == id).ok_or_else(|| SecretError::Corrupt("the new version is gone".into()))
    }

    /// Adds a version with `labels` (`CURRENT` when none are given: the version that had it
    /// becomes `PREVIOUS`). Returns the new version.
    pub async fn put(&self, name: &str, value: &str, labels: &[String], actor: &str, now: i64) -> Result<VersionInfo> {
        self.put_version(name, value, labels, None, actor, now).await
    }

    /// [`Secrets::put`], the version's id chosen by the caller as for [`Secrets::create_version`].
    pub async fn put_version(
        &self,
        name: &str,
        value: &str,
        labels: &[String],
        id: Option<&str>,
        actor: &str,
        now: i64,
    ) -> Result<VersionInfo> {
        let _w = self.write.lock().await;
        model::check_value(value)?;
        let labels = if labels.is_empty() { vec![CURRENT.to_owned()] } else { labels.to_vec() };
        for l in &labels {
            model::check_label(l)?;
        }
        let mut doc = self.live(name).await?;
        let data = self.data_key(&doc)?;
        let id = doc.add_version(&data, value, &labels, id, now)?;
        doc.prune(UNLABELED_KEPT);
        self.save(&doc, now).await?;
        self.audit(name, actor, "put", Some(&id), now).await?;
        doc.info().versions.into_iter().find(|v| v.id == id).ok_or_else(|| SecretError::Corrupt("the new version is gone".into()))
    }

    /// The value `reference` points at in the version `selector` picks, with that version's id.
    pub async fn read(&self, reference: &Reference, selector: &Selector, actor: &str, now: i64) -> Result<(Plain, String)> {
        let doc = self.live(&reference.name).await?;
        let version = doc.select(selector)?;
        let data = self.data_key(&doc)?;
        let plain = version.open(&data, &doc.name)?;
        let value = reference.pick(plain)?;
        self.audit(&doc.name, actor, "read", Some(&version.id), now).await?;
        Ok((value, version.id.clone()))
    }

    /// The id of the version `reference` resolves to now (CURRENT), after checking that it does
    /// resolve — the secret exists and is not deleted, and a `#key` is in its JSON value — with
    /// no value leaving this crate. Consumers pin it.
    pub async fn pin(&self, reference: &Reference) -> Result<String> {
        let doc = self.live(&reference.name).await?;
        let version = doc.select(&Selector::default())?;
        reference.pick(version.open(&self.data_key(&doc)?, &doc.name)?)?;
        Ok(version.id.clone())
    }

    /// Moves `label` to `version` (an id); `CURRENT` moving makes its old version `PREVIOUS`.
    pub async fn label(&self, name: &str, label: &str, version: &str, actor: &str, now: i64) -> Result<()> {
        let _w = self.write.lock().await;
        model::check_label(label)?;
        let mut doc = self.live(name).await?;
        doc.select(&Selector::Version(version.to_owned()))?;
        doc.move_label(label, version);
        doc.prune(UNLABELED_KEPT);
        self.save(&doc, now).await?;
        self.audit(name, actor, &format!("label {label}"), Some(version), now).await
    }

    /// Removes `label` from whichever version has it; `CURRENT` cannot be removed, only moved.
    pub async fn unlabel(&self, name: &str, label: &str, actor: &str, now: i64) -> Result<()> {
        if label == CURRENT {
            return Err(SecretError::LabelNeeded { name: name.to_owned(), label: label.to_owned() });
        }
        let _w = self.write.lock().await;
        let mut doc = self.live(name).await?;
        let had = doc.versions.iter().find(|v| v.labels.iter().any(|l| l == label)).map(|v| v.id.clone());
        for v in &mut doc.versions {
            v.labels.retain(|l| l != label);
        }
        doc.prune(UNLABELED_KEPT);
        self.save(&doc, now).await?;
        self.audit(name, actor, &format!("unlabel {label}"), had.as_deref(), now).await
    }

    /// A secret without its values, also when deleted.
    pub async fn describe(&self, name: &str) -> Result<SecretInfo> {
        Ok(self.load(name).await?.info())
    }

    /// Every secret without its values, by name; deleted ones too (they say so).
    pub async fn list(&self) -> Result<Vec<SecretInfo>> {
        let mut out = Vec::new();
        for rec in self.store.list_secrets().await? {
            let doc: SecretDoc = serde_json::from_value(rec.doc).map_err(|e| SecretError::Corrupt(format!("secret `{}`: {e}", rec.key)))?;
            out.push(doc.info());
        }
        Ok(out)
    }

    /// Schedules the secret's purge `days` from now; until then it can be restored, and nothing
    /// can read it.
    pub async fn delete(&self, name: &str, days: u32, actor: &str, now: i64) -> Result<i64> {
        let _w = self.write.lock().await;
        if !RECOVERY_DAYS.contains(&days) {
            return Err(SecretError::RecoveryWindow(days));
        }
        let mut doc = self.live(name).await?;
        let purge_at = now + i64::from(days) * 86_400;
        (doc.deleted_at, doc.purge_at) = (Some(now), Some(purge_at));
        self.save(&doc, now).await?;
        self.audit(name, actor, "delete", None, now).await?;
        Ok(purge_at)
    }

    pub async fn restore(&self, name: &str, actor: &str, now: i64) -> Result<()> {
        let _w = self.write.lock().await;
        let mut doc = self.load(name).await?;
        if doc.purge_at.is_none() {
            return Err(SecretError::NotDeleted(name.to_owned()));
        }
        (doc.deleted_at, doc.purge_at) = (None, None);
        self.save(&doc, now).await?;
        self.audit(name, actor, "restore", None, now).await
    }

    /// Changes the secret's description.
    pub async fn set_description(&self, name: &str, description: &str, actor: &str, now: i64) -> Result<()> {
        let _w = self.write.lock().await;
        let mut doc = self.live(name).await?;
        doc.description = description.to_owned();
        self.save(&doc, now).await?;
        self.audit(name, actor, "describe", None, now).await
    }

    /// Purges the secret now, with no recovery window (deleted or not).
    pub async fn purge(&self, name: &str, actor: &str, now: i64) -> Result<()> {
        let _w = self.write.lock().await;
        self.load(name).await?;
        self.store.purge_secret(name).await?;
        self.audit(name, actor, "purge", None, now).await
    }

    /// Purges the deleted secrets whose window has passed; their names.
    pub async fn purge_due(&self, now: i64) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for info in self.list().await? {
            if info.purge_at.is_some_and(|t| t <= now) && self.store.purge_secret(&info.name).await? {
                self.audit(&info.name, "berth", "purge", None, now).await?;
                gone.push(info.name);
            }
        }
        Ok(gone)
    }

    /// The secret's audit trail, newest first.
    pub async fn audit_trail(&self, name: &str, limit: usize) -> Result<Vec<SecretAudit>> {
        Ok(self.store.secret_audit(name, limit).await?)
    }
}

/// Now, in Unix seconds.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests;

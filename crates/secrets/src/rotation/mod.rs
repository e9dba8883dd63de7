//! Rotation: a new value for a secret, set where it is used (a database user's password), tested,
//! and made CURRENT — in Secrets Manager's four steps, each idempotent and recorded before it
//! runs, so a rotation cut short (a crash, a kill -9) resumes where it stood at the next start:
//!
//! 1. `create_secret`: a new version labelled PENDING (a version already PENDING is taken).
//! 2. `set_secret`: the database gets it. Before that, every consumer must use CURRENT: with
//!    alternating users the user about to change is then unused, and with a single user the
//!    consumers are settled before their credential changes under them.
//! 3. `test_secret`: a connection with the PENDING credentials.
//! 4. `finish_secret`: CURRENT moves to the new version (the old one becomes PREVIOUS); then
//!    the rotation waits until every consumer uses it ([`Consumers`]: env consumers rolled out,
//!    file consumers rewritten). Only then is the rotation done.
//!
//! A step that fails leaves CURRENT as it was (with one user, a failure after `set_secret` is
//! the documented exception), records why on the secret, and is tried again with backoff.

mod command;
mod schedule;
mod sql;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use schedule::Schedule;

use crate::model::{Plain, Reference, Selector, CURRENT, PENDING};
use crate::{Result, SecretError, Secrets};

/// How long one step may take (a database that does not answer, a custom rotator that hangs).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The first retry after a failure; each next one waits twice as long, up to an hour.
const FIRST_RETRY_SECS: i64 = 15;
const LAST_RETRY_SECS: i64 = 3_600;
/// The actor rotation reads and writes as, in the audit trail.
const ACTOR: &str = "rotation";

/// What sets a new value where it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatorKind {
    /// MySQL and MariaDB users.
    #[serde(alias = "mariadb")]
    Mysql,
    /// PostgreSQL roles.
    #[serde(alias = "postgres")]
    Postgresql,
    /// An executable of the operator's, called once per step.
    Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One database user whose password changes.
    #[default]
    SingleUser,
    /// Two users, `<user>` and `<user>_clone`, taking turns: the one not in CURRENT gets the new
    /// password, so the credential consumers hold keeps working until the next rotation.
    AlternatingUsers,
}

/// How a secret is rotated, as the operator set it. It holds no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationConfig {
    pub rotator: RotatorKind,
    /// The executable of a `command` rotator (an absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// A secret with a database user that may change other users (and create the clone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret: Option<String>,
    /// When to rotate by itself (see [`Schedule`]); none: only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

impl RotationConfig {
    /// Refuses a configuration that cannot work, saying what to change.
    pub fn check(&self, secret: &str) -> Result<()> {
        let bad = |m: String| Err(SecretError::Rotation(m));
        match (self.rotator, &self.command) {
            (RotatorKind::Command, None) => return bad("a `command` rotator needs the executable's path (--command)".into()),
            (RotatorKind::Command, Some(path)) => {
                let p = std::path::Path::new(path);
                if !p.is_absolute() {
                    return bad(format!("the rotator command `{path}` must be an absolute path"));
                }
                let executable =
                    p.metadata().is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0);
                if !executable {
                    return bad(format!("the rotator command `{path}` is not an executable file on the server"));
                }
            }
            (_, Some(_)) => return bad("--command is for the `command` rotator only".into()),
            (_, None) => {}
        }
        if self.rotator != RotatorKind::Command && self.strategy == Strategy::AlternatingUsers && self.admin_secret.is_none() {
            return bad("alternating users needs an admin secret (--admin-secret) whose user can create and change the clone user".into());
        }
        if let Some(admin) = &self.admin_secret {
            crate::model::check_name(admin)?;
            if admin == secret {
                return bad("the admin secret must be another secret than the one rotated".into());
            }
        }
        if let Some(s) = &self.schedule {
            s.parse::<Schedule>().map_err(SecretError::Rotation)?;
        }
        Ok(())
    }

    fn schedule(&self) -> Option<Schedule> {
        self.schedule.as_deref().and_then(|s| s.parse().ok())
    }
}

/// The step a rotation stands at; recorded before the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
    /// CURRENT moved; waiting until every consumer uses it.
    AwaitConsumers,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::CreateSecret => "create_secret",
            Step::SetSecret => "set_secret",
            Step::TestSecret => "test_secret",
            Step::FinishSecret => "finish_secret",
            Step::AwaitConsumers => "await_consumers",
        }
    }
}

/// Where a secret's rotation stands. No value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationStatus {
    /// The step of the rotation in progress; none: no rotation in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// The PENDING version of the rotation in progress, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// What the rotation in progress waits for (consumers still on the old version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_at: Option<i64>,
    /// When the schedule rotates next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<i64>,
    #[serde(default)]
    pub rotations: u64,
    /// Failed attempts of the rotation in progress, in a row.
    #[serde(default)]
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<i64>,
}

/// A secret's rotation: how, and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub config: RotationConfig,
    /// Whether the schedule runs (`cancel-rotation` turns it off; `rotate` on).
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub status: RotationStatus,
}

/// No services: nothing to wait for, no names of berth's own (a server without a runtime).
pub struct NoConsumers;

#[async_trait::async_trait]
impl Consumers for NoConsumers {
    async fn lagging(&self, _secret: &str, _version: &str) -> Vec<String> {
        Vec::new()
    }

    async fn resolve(&self, _host: &str) -> Option<IpAddr> {
        None
    }
}

/// What rotation needs to know of the services using a secret.
#[async_trait::async_trait]
pub trait Consumers: Send + Sync {
    /// The consumers of `secret` that do not use `version` yet, each said in words (`service
    /// web: 2 instances on version …`); empty when all do (or there are none).
    async fn lagging(&self, secret: &str, version: &str) -> Vec<String>;
    /// The address of a name only berth resolves (`mariadb.db.internal`), if it is one.
    async fn resolve(&self, host: &str) -> Option<IpAddr>;
}

/// What a rotator's step gets: the values in the clear (never logged).
pub(crate) struct StepInput {
    pub secret: String,
    pub version: String,
    pub strategy: Strategy,
    pub current: Plain,
    pub pending: Option<Plain>,
    pub admin: Option<Plain>,
}

/// Letters and digits from the system's random generator: no quoting trouble in SQL, a shell,
/// a URL or a connection string; 32 of them hold 190 bits.
pub fn random_password(len: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in crate::crypto::random::<64>()? {
            // 248 = 4 × 62: no bias.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[usize::from(b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(out)
}

fn backoff(failures: u32) -> i64 {
    (FIRST_RETRY_SECS << failures.saturating_sub(1).min(16)).min(LAST_RETRY_SECS)
}

impl Secrets {
    /// Sets how `name` is rotated (when `config` is given) and, with `now_too`, starts a rotation
    /// at once. A schedule in the configuration turns scheduled rotation on.
    pub async fn rotate(&self, name: &str, config: Option<RotationConfig>, now_too: bool, actor: &str, now: i64) -> Result<Rotation> {
        if let Some(c) = &config {
            c.check(name)?;
        }
        let _w = self.write.lock().await;
        let mut doc = self.live(name).await?;
        let mut rotation = match (config, doc.rotation.take()) {
            (Some(config), Some(old)) => Rotation { config, ..old },
            (Some(config), None) => Rotation { config, enabled: false, status: RotationStatus::default() },
            (None, Some(old)) => old,
            (None, None) => {
                return Err(SecretError::Rotation(format!(
                    "secret `{name}` has no rotation set up: give a rotator (--rotator mysql|postgresql|command)"
                )))
            }
        };
        if now_too {
            if let Some(step) = rotation.status.step {
                return Err(SecretError::RotationBusy(format!(
                    "secret `{name}` is being rotated (step {}); wait for it, or `berth secret cancel-rotation {name}`",
                    step.name()
                )));
            }
            rotation.status = RotationStatus { step: Some(Step::CreateSecret), started_at: Some(now), ..rotation.status };
        }
        let schedule = rotation.config.schedule();
        rotation.enabled = schedule.is_some();
        rotation.status.next_at = schedule.map(|s| s.next_after(rotation.status.last_rotated_at.unwrap_or(now)).max(now));
        doc.rotation = Some(rotation.clone());
        self.save(&doc, now).await?;
        let action = if now_too { "rotate" } else { "configure rotation" };
        self.audit(name, actor, action, None, now).await?;
        Ok(rotation)
    }

    /// Stops the rotation in progress (when it can be stopped safely) and the schedule.
    pub async fn cancel_rotation(&self, name: &str, actor: &str, now: i64) -> Result<Rotation> {
        let _w = self.write.lock().await;
        let mut doc = self.live(name).await?;
        let Some(mut rotation) = doc.rotation.take() else {
            return Err(SecretError::Rotation(format!("secret `{name}` has no rotation set up")));
        };
        let single = rotation.config.strategy == Strategy::SingleUser && rotation.config.rotator != RotatorKind::Command;
        match rotation.status.step {
            Some(Step::SetSecret | Step::TestSecret | Step::FinishSecret) if single => {
                return Err(SecretError::RotationBusy(format!(
                    "secret `{name}` is past create_secret with a single user: the database may already have the new password, so the rotation must finish (see `berth secret describe {name}`)"
                )))
            }
            Some(Step::AwaitConsumers) | None => {}
            // Before CURRENT moves: the new version keeps no label.
            Some(_) => {
                for v in &mut doc.versions {
                    v.labels.retain(|l| l != PENDING);
                }
            }
        }
        let version = rotation.status.version.clone();
        rotation.enabled = false;
        rotation.status = RotationStatus {
            step: None,
            version: None,
            started_at: None,
            waiting_for: None,
            next_at: None,
            failures: 0,
            last_error: None,
            retry_at: None,
            ..rotation.status
        };
        doc.rotation = Some(rotation.clone());
        self.save(&doc, now).await?;
        self.audit(name, actor, "cancel rotation", version.as_deref(), now).await?;
        Ok(rotation)
    }

    /// Changes the rotation status of `name` with `f`, if the rotation in progress is still the
    /// one at `step` of `version` (a cancel or another rotation makes this one stop).
    async fn advance(&self, name: &str, at: (Step, Option<&str>), now: i64, f: impl FnOnce(&mut RotationStatus)) -> Result<bool> {
        let _w = self.write.lock().await;
        let mut doc = self.live(name).await?;
        let Some(rotation) = doc.rotation.as_mut() else { return Ok(false) };
        if rotation.status.step != Some(at.0) || rotation.status.version.as_deref() != at.1 {
            return Ok(false);
        }
        let before = rotation.status.clone();
        f(&mut rotation.status);
        if rotation.status != before {
            self.save(&doc, now).await?;
        }
        Ok(true)
    }

    /// The version `label` is on, if any.
    async fn labelled(&self, name: &str, label: &str) -> Result<Option<String>> {
        let doc = self.live(name).await?;
        Ok(doc.select(&Selector::Label(label.to_owned())).ok().map(|v| v.id.clone()))
    }

    async fn value(&self, name: &str, selector: Selector, now: i64) -> Result<Plain> {
        let reference = Reference { name: name.to_owned(), key: None };
        Ok(self.read(&reference, &selector, ACTOR, now).await?.0)
    }
}

/// Runs the rotations: the scheduled ones when due, the ones asked for, the ones a crash cut
/// short (from the step they stood at), and failed ones again after their backoff.
pub async fn run(secrets: Arc<Secrets>, consumers: Arc<dyn Consumers>) {
    let mut changes = secrets.changes();
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        let now = crate::now();
        match secrets.list().await {
            Ok(list) => {
                for info in list.into_iter().filter(|i| i.purge_at.is_none()) {
                    let Some(rotation) = &info.rotation else { continue };
                    if running.contains_key(&info.name) {
                        continue;
                    }
                    let status = &rotation.status;
                    let due = match status.step {
                        Some(_) => status.retry_at.is_none_or(|t| t <= now),
                        None => rotation.enabled && status.next_at.is_some_and(|t| t <= now),
                    };
                    if !due {
                        continue;
                    }
                    if status.step.is_none() {
                        // Scheduled: start it as `rotate` would.
                        if let Err(e) = secrets.rotate(&info.name, None, true, "schedule", now).await {
                            tracing::warn!(secret = %info.name, error = %e, "a scheduled rotation could not start");
                            continue;
                        }
                    }
                    let task = tokio::spawn(drive(secrets.clone(), consumers.clone(), info.name.clone()));
                    running.insert(info.name, task);
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing secrets for rotation failed"),
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Carries one rotation on from the step it stands at until it is done, fails (recorded, with
/// a retry time), or was cancelled.
async fn drive(secrets: Arc<Secrets>, consumers: Arc<dyn Consumers>, name: String) {
    loop {
        let info = match secrets.describe(&name).await {
            Ok(i) => i,
            Err(e) => return tracing::warn!(secret = %name, error = %e, "rotation stopped"),
        };
        let Some(rotation) = info.rotation else { return };
        let Some(step) = rotation.status.step else { return };
        let version = rotation.status.version.clone();
        let at = (step, version.as_deref());
        let outcome = tokio::time::timeout(STEP_TIMEOUT * 2, run_step(&secrets, consumers.as_ref(), &name, &rotation, step)).await;
        let outcome = outcome.unwrap_or_else(|_| Err(format!("step {} took over {} s", step.name(), (STEP_TIMEOUT * 2).as_secs())));
        let now = crate::now();
        match outcome {
            Ok(Next::Step(next, new_version)) => {
                tracing::info!(secret = %name, step = next.name(), "rotation step");
                let moved = secrets
                    .advance(&name, at, now, |s| {
                        s.step = Some(next);
                        s.version = new_version.or(s.version.take());
                        s.waiting_for = None;
                    })
                    .await;
                if !matches!(moved, Ok(true)) {
                    return;
                }
            }
            Ok(Next::Wait(why)) => {
                let recorded = secrets.advance(&name, at, now, |s| s.waiting_for = Some(why)).await;
                if !matches!(recorded, Ok(true)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(Next::Done) => {
                let schedule = rotation.config.schedule();
                let done = secrets
                    .advance(&name, at, now, |s| {
                        *s = RotationStatus {
                            last_rotated_at: Some(now),
                            next_at: schedule.map(|sc| sc.next_after(now)),
                            rotations: s.rotations + 1,
                            ..RotationStatus::default()
                        };
                    })
                    .await;
                if let (Ok(true), Some(v)) = (done, &version) {
                    let _ = secrets.audit(&name, ACTOR, "rotated", Some(v), now).await;
                    tracing::info!(secret = %name, version = %v, "rotation finished");
                }
                return;
            }
            Err(why) => {
                tracing::warn!(secret = %name, step = step.name(), error = %why, "rotation step failed");
                // A test that fails is tried again from setting the value.
                let again = if step == Step::TestSecret { Step::SetSecret } else { step };
                let _ = secrets
                    .advance(&name, at, now, |s| {
                        s.failures += 1;
                        s.last_error = Some(format!("{}: {why}", step.name()));
                        s.retry_at = Some(now + backoff(s.failures));
                        s.step = Some(again);
                        s.waiting_for = None;
                    })
                    .await;
                return;
            }
        }
    }
}

enum Next {
    /// Go on with this step (and the PENDING version, once made).
    Step(Step, Option<String>),
    /// Stay at this step: not ready, for this reason.
    Wait(String),
    Done,
}

async fn run_step(secrets: &Secrets, consumers: &dyn Consumers, name: &str, rotation: &Rotation, step: Step) -> Result<Next, String> {
    let config = &rotation.config;
    let now = crate::now();
    let err = |e: SecretError| e.to_string();
    let current_version = secrets.labelled(name, CURRENT).await.map_err(err)?.ok_or("the secret has no CURRENT version")?;
    let version = rotation.status.version.clone();
    match step {
        Step::CreateSecret => {
            // A version already PENDING (put by hand, or made before a crash) is the one.
            if let Some(v) = version.clone().or(secrets.labelled(name, PENDING).await.map_err(err)?) {
                if v != current_version {
                    return Ok(Next::Step(Step::SetSecret, Some(v)));
                }
            }
            let value = rotator_create(config, &inputs(secrets, name, rotation, false, now).await?).await?;
            let made = secrets.put(name, &value, &[PENDING.to_owned()], ACTOR, now).await.map_err(err)?;
            Ok(Next::Step(Step::SetSecret, Some(made.id)))
        }
        Step::SetSecret => {
            let lagging = consumers.lagging(name, &current_version).await;
            if !lagging.is_empty() {
                return Ok(Next::Wait(format!(
                    "before changing the credential, waiting for consumers to use CURRENT: {}",
                    lagging.join("; ")
                )));
            }
            let input = inputs(secrets, name, rotation, true, now).await?;
            match config.rotator {
                RotatorKind::Command => command::step(config, "set_secret", &input).await?,
                kind => sql::set(kind, &input, consumers).await?,
            }
            Ok(Next::Step(Step::TestSecret, None))
        }
        Step::TestSecret => {
            let input = inputs(secrets, name, rotation, true, now).await?;
            match config.rotator {
                RotatorKind::Command => command::step(config, "test_secret", &input).await?,
                kind => sql::test(kind, &input, consumers).await?,
            }
            Ok(Next::Step(Step::FinishSecret, None))
        }
        Step::FinishSecret => {
            let v = version.ok_or("no PENDING version is recorded")?;
            if current_version != v {
                if config.rotator == RotatorKind::Command {
                    command::step(config, "finish_secret", &inputs(secrets, name, rotation, true, now).await?).await?;
                }
                secrets.label(name, CURRENT, &v, ACTOR, now).await.map_err(err)?;
            }
            if secrets.labelled(name, PENDING).await.map_err(err)?.is_some() {
                secrets.unlabel(name, PENDING, ACTOR, now).await.map_err(err)?;
            }
            Ok(Next::Step(Step::AwaitConsumers, None))
        }
        Step::AwaitConsumers => {
            let lagging = consumers.lagging(name, &current_version).await;
            if lagging.is_empty() {
                Ok(Next::Done)
            } else {
                Ok(Next::Wait(format!("consumers moving to the new version: {}", lagging.join("; "))))
            }
        }
    }
}

/// The values a step works with: CURRENT, the admin secret's, and (`with_pending`) PENDING.
async fn inputs(secrets: &Secrets, name: &str, rotation: &Rotation, with_pending: bool, now: i64) -> Result<StepInput, String> {
    let admin = match &rotation.config.admin_secret {
        Some(a) => Some(secrets.value(a, Selector::default(), now).await.map_err(|e| format!("the admin secret: {e}"))?),
        None => None,
    };
    let version = rotation.status.version.clone();
    let pending = match (&version, with_pending) {
        (Some(v), true) => Some(secrets.value(name, Selector::Version(v.clone()), now).await.map_err(|e| e.to_string())?),
        _ => None,
    };
    Ok(StepInput {
        secret: name.to_owned(),
        version: version.unwrap_or_default(),
        strategy: rotation.config.strategy,
        current: secrets.value(name, Selector::default(), now).await.map_err(|e| e.to_string())?,
        pending,
        admin,
    })
}

async fn rotator_create(config: &RotationConfig, input: &StepInput) -> Result<String, String> {
    match config.rotator {
        RotatorKind::Command => command::create(config, input).await,
        _ => sql::create(config.strategy, input),
    }
}

#[cfg(test)]
mod tests;

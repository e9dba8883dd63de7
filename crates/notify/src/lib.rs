//! Notifications: service events — deployments that succeeded or rolled back, instances
//! replaced, crash loops, status changes (paused, resumed, failed), scaling decisions — posted as
//! JSON to webhooks.
//!
//! A webhook names a berth secret (`name` or `name#key`) whose value signs every delivery:
//! `X-Berth-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, so a receiver can
//! check that berth sent it and when (and refuse replays outside a window of its choosing). The
//! key is read from the secret store at each attempt, sealed at rest like any secret, and
//! rotated by putting a new version.
//!
//! [`Webhooks::run`] turns new service events into deliveries (one per matching webhook, in one
//! transaction with the position in the events, so a restart neither loses nor repeats any) and
//! posts the due ones: a 2xx answer delivers; anything else is tried again 10 s, 30 s, 90 s …
//! later (at most an hour apart) until [`MAX_ATTEMPTS`] have failed. Every attempt's outcome is
//! in the delivery log.

use std::sync::Arc;
use std::time::Duration;

use berth_core::Pattern;
use berth_secrets::{Secrets, Selector};
use berth_store::{DeliveryRecord, ServiceEvent, SharedStore};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i64 = 8;
/// How long one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries attempted per round.
const PER_ROUND: usize = 50;
/// The event kinds a webhook can ask for (an empty list asks for all).
pub const KINDS: &[&str] = &[
    "deployed",
    "rollback",
    "instance_replaced",
    "instance_failed",
    "crash_loop",
    "status",
    "scaled",
    "auto_deploy_skipped",
    "secret_not_followed",
    "ping",
];

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("{0}")]
    Invalid(String),
    #[error("webhook `{0}` does not exist")]
    NotFound(String),
    #[error("a webhook named `{0}` already exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

pub type Result<T, E = NotifyError> = std::result::Result<T, E>;

/// Where and what to post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub name: String,
    /// `https://…` (or `http://…`).
    pub url: String,
    /// The berth secret (`name` or `name#key`) whose value signs the deliveries.
    pub secret: String,
    /// Event kinds ([`KINDS`]); empty: every kind.
    #[serde(default)]
    pub events: Vec<String>,
    /// Service name patterns (`web`, `team-*`); empty: every service.
    #[serde(default)]
    pub services: Vec<String>,
}

impl WebhookSpec {
    /// Every problem with the spec, each naming its field.
    pub fn validate(&self) -> Result<()> {
        let mut e = Vec::new();
        let label = |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !label(&self.name) {
            e.push(format!("name: `{}` is not a webhook name (1–64 letters, digits, - and _)", self.name));
        }
        match self.url.split_once("://") {
            Some(("https" | "http", rest)) if !rest.is_empty() && !self.url.contains(char::is_whitespace) => {}
            _ => e.push(format!("url: `{}` is not an http:// or https:// URL", self.url)),
        }
        if berth_core::service::secret_name(&self.secret).is_none() {
            e.push(format!("secret: `{}` is not a secret reference (`name` or `name#key`)", self.secret));
        }
        for k in &self.events {
            if !KINDS.contains(&k.as_str()) {
                e.push(format!("events: `{k}` is not an event kind; use {}", KINDS.join(", ")));
            }
        }
        match e.is_empty() {
            true => Ok(()),
            false => Err(NotifyError::Invalid(e.join("; "))),
        }
    }

    fn wants(&self, event: &ServiceEvent) -> bool {
        (self.events.is_empty() || self.events.contains(&event.kind))
            && (self.services.is_empty() || self.services.iter().any(|p| Pattern::new(p.as_str()).matches(&event.service)))
    }
}

/// The signature header's value for `body` sent at `t`.
pub fn signature(key: &[u8], t: i64, body: &str) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Seconds to wait after failed attempt number `attempts` (from 1): 10, 30, 90 … at most 3600.
pub fn backoff(attempts: i64) -> i64 {
    let exp = u32::try_from(attempts.clamp(1, 10) - 1).unwrap_or(0);
    (10 * 3i64.pow(exp)).min(3600)
}

/// The JSON a delivery posts for an event.
fn body(event: &ServiceEvent) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(event.at)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    serde_json::json!({
        "id": format!("evt-{}", event.id),
        "type": event.kind,
        "service": event.service,
        "at": at,
        "message": event.message,
    })
    .to_string()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The webhooks and their deliveries.
#[derive(Clone)]
pub struct Webhooks {
    store: SharedStore,
    secrets: Arc<Secrets>,
    client: reqwest::Client,
}

impl Webhooks {
    pub fn new(store: SharedStore, secrets: Arc<Secrets>) -> Webhooks {
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Webhooks { store, secrets, client }
    }

    pub async fn create(&self, spec: WebhookSpec) -> Result<WebhookSpec> {
        spec.validate()?;
        let doc = serde_json::to_value(&spec).map_err(|e| NotifyError::Invalid(e.to_string()))?;
        if !self.store.put_webhook(&spec.name, &doc, now()).await? {
            return Err(NotifyError::Exists(spec.name));
        }
        tracing::info!(webhook = %spec.name, url = %spec.url, "webhook created");
        Ok(spec)
    }

    pub async fn list(&self) -> Result<Vec<WebhookSpec>> {
        let records = self.store.list_webhooks().await?;
        Ok(records.into_iter().filter_map(|r| serde_json::from_value(r.doc).ok()).collect())
    }

    pub async fn get(&self, name: &str) -> Result<WebhookSpec> {
        self.list().await?.into_iter().find(|w| w.name == name).ok_or_else(|| NotifyError::NotFound(name.to_owned()))
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        match self.store.delete_webhook(name).await? {
            true => Ok(()),
            false => Err(NotifyError::NotFound(name.to_owned())),
        }
    }

    /// A webhook's deliveries, newest first.
    pub async fn deliveries(&self, name: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.get(name).await?;
        Ok(self.store.deliveries(name, limit).await?)
    }

    /// Queues a `ping` delivery to the webhook, to try it.
    pub async fn ping(&self, name: &str) -> Result<()> {
        self.get(name).await?;
        let event =
            ServiceEvent { id: 0, service: String::new(), at: now(), kind: "ping".into(), message: format!("a test of webhook `{name}`") };
        let cursor = self.store.webhook_cursor().await?.unwrap_or(0);
        let d = delivery(name, &event);
        Ok(self.store.enqueue_deliveries(vec![d], cursor).await?)
    }

    /// Turns events into deliveries and posts the due ones, every second, until dropped.
    pub async fn run(self) {
        // Events before the first start are not posted: webhooks tell of what happens now on.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "webhook deliveries");
            }
        }
    }

    /// One round: new events queued, due deliveries attempted.
    pub async fn round(&self) -> Result<()> {
        self.enqueue().await?;
        for d in self.store.due_deliveries(now(), PER_ROUND).await? {
            self.attempt(d).await?;
        }
        Ok(())
    }

    async fn enqueue(&self) -> Result<()> {
        let cursor = match self.store.webhook_cursor().await? {
            Some(c) => c,
            None => {
                // The first start: from the newest event on.
                let newest = self.store.newest_event_id().await?.unwrap_or(0);
                self.store.enqueue_deliveries(Vec::new(), newest).await?;
                newest
            }
        };
        let events = self.store.service_events_after(cursor, 500).await?;
        let Some(last) = events.last().map(|e| e.id) else { return Ok(()) };
        let hooks = self.list().await?;
        let deliveries: Vec<DeliveryRecord> =
            events.iter().flat_map(|e| hooks.iter().filter(|h| h.wants(e)).map(move |h| delivery(&h.name, e))).collect();
        Ok(self.store.enqueue_deliveries(deliveries, last).await?)
    }

    async fn attempt(&self, mut d: DeliveryRecord) -> Result<()> {
        let outcome = match self.get(&d.webhook).await {
            Ok(hook) => self.post(&hook, &d).await,
            Err(e) => Err((None, e.to_string())),
        };
        d.attempts += 1;
        match outcome {
            Ok(code) => {
                d.status = "delivered".into();
                d.last_code = Some(code);
                d.last_error = None;
                d.done_at = Some(now());
            }
            Err((code, why)) => {
                tracing::info!(webhook = %d.webhook, delivery = d.id, attempt = d.attempts, error = %why, "webhook delivery failed");
                d.last_code = code;
                d.last_error = Some(why);
                if d.attempts >= MAX_ATTEMPTS {
                    d.status = "failed".into();
                    d.done_at = Some(now());
                } else {
                    d.next_at = now() + backoff(d.attempts);
                }
            }
        }
        Ok(self.store.update_delivery(&d).await?)
    }

    /// Posts a delivery: the answer's status when 2xx; else the status (if any) and why.
    async fn post(&self, hook: &WebhookSpec, d: &DeliveryRecord) -> Result<i64, (Option<i64>, String)> {
        let reference: berth_secrets::Reference = hook.secret.parse().map_err(|e| (None, format!("the signing secret: {e}")))?;
        let (key, _) = self
            .secrets
            .read(&reference, &Selector::default(), &format!("webhook {}", hook.name), now())
            .await
            .map_err(|e| (None, format!("reading the signing secret `{}`: {e}", hook.secret)))?;
        let t = now();
        let resp = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-berth-event", &d.kind)
            .header("x-berth-delivery", d.id.to_string())
            .header("x-berth-signature", signature(key.expose().as_bytes(), t, &d.body))
            .body(d.body.clone())
            .send()
            .await
            .map_err(|e| (None, describe(&e)))?;
        let code = i64::from(resp.status().as_u16());
        match resp.status().is_success() {
            true => Ok(code),
            false => Err((Some(code), format!("the receiver answered {}", resp.status()))),
        }
    }
}

/// A request error with its causes, as one line.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn delivery(webhook: &str, e: &ServiceEvent) -> DeliveryRecord {
    DeliveryRecord {
        id: 0,
        webhook: webhook.to_owned(),
        event_id: e.id,
        kind: e.kind.clone(),
        service: e.service.clone(),
        body: body(e),
        status: "pending".into(),
        attempts: 0,
        next_at: now(),
        last_code: None,
        last_error: None,
        created_at: now(),
        done_at: None,
    }
}

#[cfg(test)]
mod tests;

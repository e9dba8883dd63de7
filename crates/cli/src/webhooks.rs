//! `berth webhook`: service events posted to your endpoints, signed with a berth secret.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{segment, Client};
use crate::output::{self, Column, Format};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Post service events to a URL, signed with a secret: `X-Berth-Signature: t=<unix
    /// seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`; failed deliveries are retried with backoff.
    ///
    /// Example: `berth secret create hooks/ops --from-file key.txt && berth webhook create ops --url https://hooks.example.com/berth --secret hooks/ops --event deployed --event rollback`
    Create {
        /// 1–64 letters, digits, `-` and `_`.
        name: String,
        /// Where the events are posted (http:// or https://).
        #[arg(long)]
        url: String,
        /// The berth secret (`name` or `name#key`) whose value signs the deliveries.
        #[arg(long)]
        secret: String,
        /// An event kind to post (deployed, rollback, instance_replaced, instance_failed,
        /// crash_loop, status, scaled, auto_deploy_skipped, secret_not_followed); repeatable;
        /// none: every kind.
        #[arg(long = "event", value_name = "KIND")]
        events: Vec<String>,
        /// A service name pattern (`web`, `team-*`); repeatable; none: every service.
        #[arg(long = "service", value_name = "PATTERN")]
        services: Vec<String>,
    },
    /// List webhooks.
    List,
    /// Delete a webhook and its delivery log.
    Delete { name: String },
    /// A webhook's delivery log, newest first.
    Deliveries {
        name: String,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Post a test event (`ping`) to a webhook.
    Ping { name: String },
}

const COLUMNS: &[Column<'_>] = &[("NAME", "name"), ("URL", "url"), ("SECRET", "secret"), ("EVENTS", "events"), ("SERVICES", "services")];
const DELIVERY_COLUMNS: &[Column<'_>] = &[
    ("ID", "id"),
    ("CREATED", "created_at"),
    ("EVENT", "kind"),
    ("SERVICE", "service"),
    ("STATUS", "status"),
    ("ATTEMPTS", "attempts"),
    ("CODE", "last_code"),
    ("ERROR", "last_error"),
];

pub fn run(c: &Client, fmt: Format, cmd: WebhookCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/webhooks/{}", segment(name));
    match cmd {
        WebhookCommand::Create { name, url, secret, events, services } => {
            let body = json!({ "name": name, "url": url, "secret": secret, "events": events, "services": services });
            let v = c.send("POST", "/api/v1/webhooks", &body)?;
            output::object(fmt, &v, COLUMNS);
        }
        WebhookCommand::List => {
            let v = c.get("/api/v1/webhooks")?;
            let rows: Vec<Value> = v["webhooks"].as_array().cloned().unwrap_or_default();
            output::list(fmt, &v, &rows, COLUMNS);
        }
        WebhookCommand::Delete { name } => {
            c.delete(&path(&name))?;
            eprintln!("deleted webhook `{name}`");
        }
        WebhookCommand::Deliveries { name, limit } => {
            let v = c.get(&format!("{}/deliveries?limit={limit}", path(&name)))?;
            let rows: Vec<Value> = v["deliveries"].as_array().cloned().unwrap_or_default();
            output::list(fmt, &v, &rows, DELIVERY_COLUMNS);
        }
        WebhookCommand::Ping { name } => {
            c.send("POST", &format!("{}/ping", path(&name)), &json!({}))?;
            eprintln!("queued a ping to `{name}`; `berth webhook deliveries {name}` shows how it went");
        }
    }
    Ok(())
}

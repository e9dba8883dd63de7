//! `berth network`: private networks services attach to.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::client::{segment, Client};
use crate::output::{self, Column, Format};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network: a private LAN on this host (an interface or a bridge), machines on it
    /// and host services published to the services attached to it.
    ///
    /// Example: `berth network create db --cidr 10.90.0.0/24 --attach-bridge br-db --host mariadb=10.90.0.10`
    Create {
        /// 1–32 lowercase letters, digits and `-`.
        name: String,
        /// The LAN's IPv4 addresses, e.g. 10.90.0.0/24.
        #[arg(long)]
        cidr: String,
        /// A host interface the LAN is on, e.g. eth1.
        #[arg(long, conflicts_with = "attach_bridge")]
        attach_interface: Option<String>,
        /// A Linux bridge the LAN is on, e.g. br-db.
        #[arg(long)]
        attach_bridge: Option<String>,
        /// A service on this host published to the network's services only, NAME=IP:PORT
        /// (e.g. mysql=127.0.0.1:3306), reached as NAME.<network>.internal on PORT; repeatable.
        #[arg(long = "host-endpoint", value_name = "NAME=IP:PORT")]
        host_endpoints: Vec<String>,
        /// A machine on the LAN, NAME=IP, answered as NAME.<network>.internal; repeatable.
        #[arg(long = "host", value_name = "NAME=IP")]
        hosts: Vec<String>,
    },
    /// List networks.
    List,
    /// Show a network and the services attached to it.
    Show { name: String },
    /// Delete a network no service is attached to.
    Delete { name: String },
}

const NETWORK_COLUMNS: &[Column<'_>] = &[("NAME", "name"), ("CIDR", "cidr"), ("ATTACHED", "device"), ("SERVICES", "services")];

/// `NAME=VALUE` pairs as a JSON object.
fn pairs(flag: &str, items: &[String]) -> anyhow::Result<Value> {
    let mut m = Map::new();
    for item in items {
        let (k, v) = item.split_once('=').with_context(|| format!("--{flag} {item}: expected NAME=VALUE"))?;
        if m.insert(k.to_owned(), v.into()).is_some() {
            bail!("--{flag}: `{k}` is given twice");
        }
    }
    Ok(Value::Object(m))
}

/// Adds the `device` column: the attached interface or bridge.
fn flatten(mut v: Value) -> Value {
    v["device"] = match (&v["attach"]["interface"], &v["attach"]["bridge"]) {
        (Value::String(i), _) => format!("interface {i}").into(),
        (_, Value::String(b)) => format!("bridge {b}").into(),
        _ => Value::Null,
    };
    v
}

pub fn run(c: &Client, fmt: Format, cmd: NetworkCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/networks/{}", segment(name));
    let mut fields = NETWORK_COLUMNS.to_vec();
    fields.extend([("HOSTS", "hosts"), ("HOST ENDPOINTS", "host_endpoints"), ("CREATED", "created_at")]);
    match cmd {
        NetworkCommand::Create { name, cidr, attach_interface, attach_bridge, host_endpoints, hosts } => {
            let mut body = json!({
                "name": name,
                "cidr": cidr,
                "host_endpoints": pairs("host-endpoint", &host_endpoints)?,
                "hosts": pairs("host", &hosts)?,
            });
            if let Some(i) = attach_interface {
                body["attach"] = json!({ "interface": i });
            } else if let Some(b) = attach_bridge {
                body["attach"] = json!({ "bridge": b });
            }
            let v = c.send("POST", "/api/v1/networks", &body)?;
            output::object(fmt, &flatten(v), &fields);
        }
        NetworkCommand::List => {
            let v = c.get_all("/api/v1/networks", "networks")?;
            let rows: Vec<Value> = v["networks"].as_array().cloned().unwrap_or_default().into_iter().map(flatten).collect();
            output::list(fmt, &v, &rows, NETWORK_COLUMNS);
        }
        NetworkCommand::Show { name } => output::object(fmt, &flatten(c.get(&path(&name))?), &fields),
        NetworkCommand::Delete { name } => {
            c.delete(&path(&name))?;
            eprintln!("deleted network `{name}`");
        }
    }
    Ok(())
}

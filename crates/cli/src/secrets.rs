//! `berth secret`: secrets and their versions. Values are read from standard input (or a file),
//! never taken as an argument by default, so that they stay out of shell history and `ps`.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::{segment, Client};
use crate::output::{self, Column, Format};

#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Create a secret; its first version is CURRENT. The value comes from standard input unless
    /// --from-file or --value names it.
    ///
    /// Example: `printf '{"user":"gb","password":"%s"}' "$PW" | berth secret create db-creds`
    Create {
        /// 1–128 letters, digits and `/_+=.@-`.
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        value: ValueSource,
    },
    /// Add a version; CURRENT moves to it (the old CURRENT becomes PREVIOUS) unless --label
    /// names other labels.
    Put {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        /// A staging label the new version takes (CURRENT, PENDING or your own); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Print a value: `NAME` or `NAME#key` (a key of a JSON value), CURRENT unless --label or
    /// --version picks another version. Needs a token with `secrets-read`.
    Get {
        reference: String,
        #[arg(long, conflicts_with = "version")]
        label: Option<String>,
        #[arg(long)]
        version: Option<String>,
    },
    /// List secrets (no values).
    List,
    /// Show a secret: its versions and their labels (no values).
    Describe { name: String },
    /// A secret's versions, newest first, with their labels.
    Versions { name: String },
    /// Move a staging label to a version (CURRENT moving makes its old version PREVIOUS).
    Label { name: String, label: String, version: String },
    /// Remove a staging label (CURRENT can only be moved).
    Unlabel { name: String, label: String },
    /// Delete a secret; it can be restored until the recovery window ends.
    Delete {
        name: String,
        /// Days until it is purged, 7–30.
        #[arg(long, default_value_t = 30)]
        recovery_days: u32,
    },
    /// Restore a deleted secret within its recovery window.
    Restore { name: String },
    /// Who read or changed a secret, which version, when (no values).
    Audit { name: String },
}

/// Where a value comes from.
#[derive(Debug, clap::Args)]
pub struct ValueSource {
    /// Read the value from this file.
    #[arg(long, conflicts_with = "value")]
    from_file: Option<PathBuf>,
    /// The value itself (it then shows in shell history and the process list; prefer stdin).
    #[arg(long)]
    value: Option<String>,
}

impl ValueSource {
    fn read(self) -> anyhow::Result<String> {
        if let Some(v) = self.value {
            return Ok(v);
        }
        if let Some(f) = self.from_file {
            return std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()));
        }
        if std::io::stdin().is_terminal() {
            eprintln!("reading the value from standard input (end it with Ctrl-D)");
        }
        let mut v = String::new();
        std::io::stdin().read_to_string(&mut v).context("reading the value from standard input")?;
        // A value typed or echoed ends with the newline of its last line; that is not part of it.
        if v.ends_with('\n') && !v[..v.len() - 1].contains('\n') {
            v.pop();
        }
        Ok(v)
    }
}

const SECRET_COLUMNS: &[Column<'_>] =
    &[("NAME", "name"), ("DESCRIPTION", "description"), ("UPDATED", "updated_at"), ("PURGE AT", "purge_at")];
const VERSION_COLUMNS: &[Column<'_>] = &[("VERSION", "id"), ("LABELS", "labels"), ("CREATED", "created_at")];

pub fn run(c: &Client, fmt: Format, cmd: SecretCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/secrets/{}", segment(name));
    let mut fields = SECRET_COLUMNS.to_vec();
    fields.extend([("CREATED", "created_at"), ("VERSIONS", "versions"), ("USED BY", "used_by")]);
    let versions = |v: &Value| v["versions"].as_array().cloned().unwrap_or_default();
    match cmd {
        SecretCommand::Create { name, description, value } => {
            let v = c.send("POST", "/api/v1/secrets", &json!({ "name": name, "description": description, "value": value.read()? }))?;
            output::object(fmt, &v["version"], VERSION_COLUMNS);
        }
        SecretCommand::Put { name, value, labels } => {
            let v = c.send("POST", &format!("{}/versions", path(&name)), &json!({ "value": value.read()?, "labels": labels }))?;
            output::object(fmt, &v["version"], VERSION_COLUMNS);
        }
        SecretCommand::Get { reference, label, version } => {
            let (name, key) = match reference.split_once('#') {
                Some((n, k)) => (n.to_owned(), Some(k.to_owned())),
                None => (reference.clone(), None),
            };
            let mut query = Vec::new();
            for (k, v) in [("key", key), ("label", label), ("version", version)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", segment(&v)));
                }
            }
            let q = if query.is_empty() { String::new() } else { format!("?{}", query.join("&")) };
            let v = c.get(&format!("{}/value{q}", path(&name)))?;
            match fmt {
                Format::Json => println!("{v}"),
                Format::Table => println!("{}", v["value"].as_str().unwrap_or_default()),
            }
        }
        SecretCommand::List => {
            let v = c.get_all("/api/v1/secrets", "secrets")?;
            let rows = v["secrets"].as_array().cloned().unwrap_or_default();
            output::list(fmt, &v, &rows, SECRET_COLUMNS);
        }
        SecretCommand::Describe { name } if fmt == Format::Json => output::object(fmt, &c.get(&path(&name))?, &fields),
        SecretCommand::Describe { name } => {
            let mut v = c.get(&path(&name))?;
            // A cell per version: its id and labels.
            v["versions"] = versions(&v)
                .iter()
                .map(|x| {
                    let labels = output::cell_text(&x["labels"]);
                    Value::from(if labels == "-" {
                        x["id"].as_str().unwrap_or_default().to_owned()
                    } else {
                        format!("{} ({labels})", x["id"].as_str().unwrap_or_default())
                    })
                })
                .collect::<Vec<_>>()
                .into();
            // A cell per consuming revision: which version, how many instances.
            v["used_by"] = v["consumers"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| {
                            let n = c["instances"].as_array().map_or(0, Vec::len);
                            Value::from(format!(
                                "{} {} {} ({n} instances)",
                                c["revision"].as_str().unwrap_or_default(),
                                c["how"].as_str().unwrap_or_default(),
                                c["version"].as_str().unwrap_or_default()
                            ))
                        })
                        .collect::<Vec<_>>()
                        .into()
                })
                .unwrap_or(Value::Null);
            output::object(fmt, &v, &fields);
        }
        SecretCommand::Versions { name } => {
            let v = c.get(&path(&name))?;
            output::list(fmt, &v, &versions(&v), VERSION_COLUMNS);
        }
        SecretCommand::Label { name, label, version } => {
            let v = c.send("POST", &format!("{}/labels", path(&name)), &json!({ "label": label, "version": version }))?;
            output::list(fmt, &v, &versions(&v), VERSION_COLUMNS);
        }
        SecretCommand::Unlabel { name, label } => {
            let v = c.delete(&format!("{}/labels/{}", path(&name), segment(&label)))?;
            output::list(fmt, &v, &versions(&v), VERSION_COLUMNS);
        }
        SecretCommand::Delete { name, recovery_days } => {
            let v = c.delete(&format!("{}?recovery_days={recovery_days}", path(&name)))?;
            let at = v["purge_at"].as_i64().map(|s| output::utc_millis(s * 1000)).unwrap_or_default();
            eprintln!("deleted secret `{name}`; it is purged at {at} unless `berth secret restore {name}` brings it back first");
        }
        SecretCommand::Restore { name } => {
            c.send("POST", &format!("{}/restore", path(&name)), &json!({}))?;
            eprintln!("restored secret `{name}`");
        }
        SecretCommand::Audit { name } => {
            let v = c.get(&format!("{}/audit", path(&name)))?;
            let rows = v["entries"].as_array().cloned().unwrap_or_default();
            output::list(fmt, &v, &rows, &[("AT", "at"), ("WHO", "actor"), ("ACTION", "action"), ("VERSION", "version")]);
        }
    }
    Ok(())
}

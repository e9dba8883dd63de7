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
    /// Rotate a secret now: a new value (PENDING), set where it is used, tested, then made
    /// CURRENT once every service using it is ready. The first time, say how (--rotator); flags
    /// given later change only what they name.
    ///
    /// Example: `berth secret rotate db-creds --rotator mariadb --strategy alternating-users
    /// --admin-secret db-admin --schedule 'every 4h' --wait`
    Rotate {
        name: String,
        /// mysql (also MariaDB), postgresql, or command (an executable of yours, --command).
        #[arg(long)]
        rotator: Option<String>,
        /// single-user (default) or alternating-users (`<user>` and `<user>_clone` take turns;
        /// needs --admin-secret).
        #[arg(long)]
        strategy: Option<String>,
        /// A secret whose database user may change other users (and create the clone).
        #[arg(long)]
        admin_secret: Option<String>,
        /// The executable of a `command` rotator: an absolute path on the server.
        #[arg(long)]
        command: Option<String>,
        /// `every 30m|4h|1d`, `rate(4 hours)` or a cron expression in UTC (`0 3 * * *`); at least a
        /// minute apart. `none` turns the schedule off.
        #[arg(long)]
        schedule: Option<String>,
        /// Only set how and when; do not rotate now.
        #[arg(long)]
        no_rotate_now: bool,
        /// Wait until the rotation ends, printing its steps; fail if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Stop the rotation in progress (when that is safe) and the schedule.
    CancelRotation { name: String },
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
    fields.extend([("CREATED", "created_at"), ("VERSIONS", "versions"), ("USED BY", "used_by"), ("ROTATION", "rotation_text")]);
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
            v["rotation_text"] = rotation_text(&v["rotation"]).map_or(Value::Null, Value::from);
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
        SecretCommand::Rotate { name, rotator, strategy, admin_secret, command, schedule, no_rotate_now, wait } => {
            let changed = rotator.is_some() || strategy.is_some() || admin_secret.is_some() || command.is_some() || schedule.is_some();
            let mut body = json!({ "rotate_now": !no_rotate_now });
            let before = c.get(&path(&name))?;
            if changed {
                // Flags change what they name; the rest stays as set before.
                let mut config = before["rotation"]["config"].as_object().cloned().unwrap_or_default();
                for (key, value) in [("rotator", rotator), ("strategy", strategy), ("admin_secret", admin_secret), ("command", command)] {
                    if let Some(v) = value {
                        config.insert(key.into(), v.into());
                    }
                }
                match schedule.as_deref() {
                    Some("none") => {
                        config.remove("schedule");
                    }
                    Some(s) => {
                        config.insert("schedule".into(), s.into());
                    }
                    None => {}
                }
                body["rotation"] = config.into();
            }
            let v = c.send("POST", &format!("{}/rotate", path(&name)), &body)?;
            if no_rotate_now {
                eprintln!("{}", rotation_text(&v["rotation"]).unwrap_or_default());
            } else if wait {
                let done = before["rotation"]["status"]["rotations"].as_u64().unwrap_or(0);
                follow_rotation(c, &path(&name), done)?;
            } else {
                eprintln!("rotating `{name}`; `berth secret describe {name}` shows where it stands");
            }
        }
        SecretCommand::CancelRotation { name } => {
            let v = c.send("POST", &format!("{}/cancel-rotation", path(&name)), &json!({}))?;
            eprintln!("cancelled: {}", rotation_text(&v["rotation"]).unwrap_or_default());
        }
    }
    Ok(())
}

/// A secret's rotation in a line: how, when, and where it stands.
fn rotation_text(r: &Value) -> Option<String> {
    let config = r.get("config")?;
    let st = &r["status"];
    let time = |k: &str| st[k].as_i64().map(|t| output::utc_millis(t * 1000));
    let mut parts =
        vec![format!("{} {}", config["rotator"].as_str().unwrap_or_default(), config["strategy"].as_str().unwrap_or("single-user"))];
    if let Some(a) = config["admin_secret"].as_str() {
        parts.push(format!("admin secret {a}"));
    }
    match (config["schedule"].as_str(), r["enabled"].as_bool()) {
        (Some(s), Some(true)) => parts.push(format!("{s}, next at {}", time("next_at").unwrap_or_default())),
        (Some(s), _) => parts.push(format!("{s} (off)")),
        _ => parts.push("on request".into()),
    }
    parts.push(format!("{} done", st["rotations"].as_u64().unwrap_or(0)));
    if let Some(t) = time("last_rotated_at") {
        parts.push(format!("last at {t}"));
    }
    if let Some(step) = st["step"].as_str() {
        parts.push(format!("in progress: {step}"));
        if let Some(w) = st["waiting_for"].as_str() {
            parts.push(w.to_owned());
        }
    }
    if let Some(e) = st["last_error"].as_str() {
        parts.push(format!("FAILED {}×: {e}; retry at {}", st["failures"].as_u64().unwrap_or(0), time("retry_at").unwrap_or_default()));
    }
    Some(parts.join("; "))
}

/// Prints each step of the rotation in progress until it ends; an error if it failed.
fn follow_rotation(c: &Client, path: &str, done_before: u64) -> anyhow::Result<()> {
    let mut said = String::new();
    loop {
        let v = c.get(path)?;
        let st = &v["rotation"]["status"];
        if st["rotations"].as_u64().unwrap_or(0) > done_before {
            let current = v["versions"]
                .as_array()
                .and_then(|vs| vs.iter().find(|x| x["labels"].as_array().is_some_and(|l| l.iter().any(|l| l == "CURRENT"))));
            eprintln!("rotated: version {} is CURRENT", current.and_then(|x| x["id"].as_str()).unwrap_or_default());
            return Ok(());
        }
        if let Some(e) = st["last_error"].as_str() {
            anyhow::bail!("rotation failed: {e}; it is tried again by itself (`berth secret describe` shows when), or stop it with `berth secret cancel-rotation`");
        }
        let Some(step) = st["step"].as_str() else { anyhow::bail!("the rotation was cancelled") };
        let now = match st["waiting_for"].as_str() {
            Some(w) => format!("{step}: {w}"),
            None => step.to_owned(),
        };
        if now != said {
            eprintln!("{now}");
            said = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

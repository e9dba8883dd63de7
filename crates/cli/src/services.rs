//! `berth service …`: create, change, deploy, roll back, pause, resume and delete services, and
//! read their revisions, operations, events and logs. Mutations print the operation they
//! started; with `--wait` they follow it live and exit non-zero unless it succeeded.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Map, Value};

use crate::client::{segment, Client};
use crate::output::{self, Column, Format};

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service from an image in berth's registry and deploy it.
    ///
    /// Example: `berth service create web --image web:latest --port 8080 --health-check http --health-path /healthz --wait`
    Create {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Change a service's configuration: a new revision, deployed blue/green.
    Update {
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Deploy the service's source again (a tag is resolved anew), or another image.
    Deploy {
        name: String,
        /// `repo:tag` or `repo@sha256:…` to deploy with the service's configuration.
        #[arg(long)]
        image: Option<String>,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List services.
    List,
    /// Show a service: status, URL, serving revision, instances.
    Show { name: String },
    /// Stop every instance, keeping configuration, URL and revisions.
    Pause {
        name: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Start a paused service's last revision again.
    Resume {
        name: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Delete a service and everything it holds.
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// Deploy an earlier revision again, exactly (its digest and configuration).
    Rollback {
        name: String,
        /// A revision id (`web-0001`) or number; see `berth service revisions`.
        revision: String,
        #[command(flatten)]
        wait: WaitArg,
    },
    /// List revisions: digest and tags of each deployment.
    Revisions { name: String },
    /// List operations, newest first.
    Operations { name: String },
    /// Show one operation with its log (ids come from `service operations`).
    Operation { id: String },
    /// List events (status changes, replaced instances, crash loops), newest first.
    Events { name: String },
    /// Show the metrics history: requests by status class, latency percentiles, concurrency,
    /// instances, CPU and memory, per slot (kept at 10 s for a day and 1 min for a week).
    ///
    /// Example: `berth service metrics web --since 6h --step 300`
    Metrics {
        name: String,
        /// How far back: seconds, or a number with s, m, h or d (at most 7d).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Seconds per slot (default: about 360 slots over the span).
        #[arg(long)]
        step: Option<u64>,
    },
    /// Print the instances' logs.
    Logs {
        name: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// Lines per instance to start with.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct WaitArg {
    /// Follow the operation until it ends, printing its progress; exit non-zero unless it succeeded.
    #[arg(long)]
    wait: bool,
}

/// The spec as flags; unset flags keep the current (or default) value.
#[derive(Debug, Default, clap::Args)]
pub struct SpecArgs {
    /// A JSON spec file to start from (the API's ServiceSpec); flags override it.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Source image: `repo:tag` or `repo@sha256:…` in berth's registry.
    #[arg(long)]
    image: Option<String>,
    /// Deploy every new digest pushed to the source tag (default for tags: on).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    auto_deploy: Option<bool>,
    /// The port the app listens on (default 8080); PORT is set to it.
    #[arg(long)]
    port: Option<u16>,
    /// An environment variable, KEY=value; repeatable. Replaces the whole set when given.
    #[arg(long = "env")]
    env: Vec<String>,
    /// An environment variable from a secret, KEY=secret or KEY=secret#key (a key of a JSON
    /// value), e.g. DB_PASSWORD=db-creds#password; repeatable. Replaces the whole set when given.
    /// Each revision pins the versions CURRENT when it is made; when CURRENT moves, the service
    /// is deployed again with the new ones.
    #[arg(long = "secret-env", value_name = "KEY=SECRET[#KEY]")]
    secret_env: Vec<String>,
    /// A file from a secret, PATH=secret or PATH=secret#key, e.g.
    /// /run/secrets/db-password=db-creds#password: read-only, on a tmpfs, 0400 for the app's
    /// user, and replaced in place when the secret's CURRENT moves; repeatable. Replaces the
    /// whole set when given.
    #[arg(long = "secret-file", value_name = "PATH=SECRET[#KEY]")]
    secret_file: Vec<String>,
    /// Replaces the image's entrypoint and command.
    #[arg(long)]
    start_command: Option<String>,
    /// Run the app under berth's init as PID 1 (signals forwarded, orphans reaped), for apps
    /// that do not handle SIGTERM themselves; `--init false` turns it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    init: Option<bool>,
    /// CPU units: 256, 512, 1024 (one vCPU, default), 2048, 4096.
    #[arg(long)]
    cpu: Option<u32>,
    /// Memory in MB (128–12288; default 2048).
    #[arg(long)]
    memory: Option<u32>,
    /// Health check protocol: tcp (default) or http.
    #[arg(long)]
    health_check: Option<String>,
    /// HTTP health check path (default /).
    #[arg(long)]
    health_path: Option<String>,
    /// Seconds between health checks, 1–20 (default 5).
    #[arg(long)]
    health_interval: Option<u32>,
    /// Seconds to wait for a health check answer, 1–20 (default 2).
    #[arg(long)]
    health_timeout: Option<u32>,
    /// Consecutive passes before an instance gets traffic, 1–20 (default 1).
    #[arg(long)]
    healthy_threshold: Option<u32>,
    /// Consecutive failures before an instance is replaced, 1–20 (default 5).
    #[arg(long)]
    unhealthy_threshold: Option<u32>,
    /// Requests one instance works on at once, 1–1000 (default 100).
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Fewest instances; 0 scales to zero when idle (default 1).
    #[arg(long)]
    min_size: Option<u32>,
    /// Most instances, up to 25 (default 25).
    #[arg(long)]
    max_size: Option<u32>,
    /// Seconds a request may take, 1–3600 (default 120).
    #[arg(long)]
    request_timeout: Option<u32>,
    /// Largest request body in MB (default 64).
    #[arg(long)]
    max_body_mb: Option<u32>,
    /// Speak HTTP/2 without TLS (h2c) to the instances, as gRPC servers need.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    h2c: Option<bool>,
    /// Attach a network (`berth network create`); repeatable, added to the current ones.
    #[arg(long = "network", value_name = "NETWORK")]
    networks: Vec<String>,
    /// Detach a network; repeatable.
    #[arg(long = "no-network", value_name = "NETWORK")]
    no_networks: Vec<String>,
    /// Where instances may connect: public (the internet where the server allows it, and the
    /// attached networks; default), networks (the attached networks only) or none.
    #[arg(long, value_parser = ["public", "networks", "none"])]
    egress: Option<String>,
    /// public (default) or private: served only at http://<name>.internal to --allow-from services.
    #[arg(long, value_parser = ["public", "private"])]
    visibility: Option<String>,
    /// A service whose instances may call this one at http://<name>.internal; repeatable, added
    /// to the current ones. For a public service none listed means every service.
    #[arg(long = "allow-from", value_name = "SERVICE")]
    allow_from: Vec<String>,
    /// Take a service off --allow-from; repeatable.
    #[arg(long = "no-allow-from", value_name = "SERVICE")]
    no_allow_from: Vec<String>,
}

/// `list` (a JSON array of strings) with `add` appended (once each) and `remove` taken out.
fn edit_list(list: &Value, add: &[String], remove: &[String]) -> Value {
    let mut out: Vec<String> = list.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    for a in add {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out.retain(|x| !remove.contains(x));
    out.into()
}

fn set(spec: &mut Value, section: &str, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        if !spec[section].is_object() {
            spec[section] = Value::Object(Map::new());
        }
        spec[section][key] = v;
    }
}

impl SpecArgs {
    /// Applies the flags onto `spec` (a ServiceSpec as JSON).
    fn apply(&self, mut spec: Value) -> anyhow::Result<Value> {
        if let Some(file) = &self.file {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let from_file: Value = serde_json::from_str(&text).with_context(|| format!("{} is not a JSON service spec", file.display()))?;
            if let (Some(base), Some(over)) = (spec.as_object_mut(), from_file.as_object()) {
                for (k, v) in over {
                    if k != "name" {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        set(&mut spec, "source", "image", self.image.clone().map(Value::from));
        set(&mut spec, "source", "auto_deploy", self.auto_deploy.map(Value::from));
        set(&mut spec, "image_config", "port", self.port.map(Value::from));
        for (flag, field, items) in
            [("env", "env", &self.env), ("secret-env", "secret_env", &self.secret_env), ("secret-file", "secret_files", &self.secret_file)]
        {
            if items.is_empty() {
                continue;
            }
            let mut env = Map::new();
            for kv in items {
                let (k, v) = kv.split_once('=').with_context(|| format!("--{flag} {kv}: expected KEY=value"))?;
                env.insert(k.to_owned(), v.into());
            }
            set(&mut spec, "image_config", field, Some(Value::Object(env)));
        }
        set(&mut spec, "image_config", "start_command", self.start_command.clone().map(Value::from));
        set(&mut spec, "image_config", "init", self.init.map(Value::from));
        set(&mut spec, "instance", "cpu", self.cpu.map(Value::from));
        set(&mut spec, "instance", "memory", self.memory.map(Value::from));
        set(&mut spec, "health_check", "protocol", self.health_check.as_ref().map(|p| p.to_ascii_uppercase().into()));
        set(&mut spec, "health_check", "path", self.health_path.clone().map(Value::from));
        set(&mut spec, "health_check", "interval", self.health_interval.map(Value::from));
        set(&mut spec, "health_check", "timeout", self.health_timeout.map(Value::from));
        set(&mut spec, "health_check", "healthy_threshold", self.healthy_threshold.map(Value::from));
        set(&mut spec, "health_check", "unhealthy_threshold", self.unhealthy_threshold.map(Value::from));
        set(&mut spec, "autoscaling", "max_concurrency", self.max_concurrency.map(Value::from));
        set(&mut spec, "autoscaling", "min_size", self.min_size.map(Value::from));
        set(&mut spec, "autoscaling", "max_size", self.max_size.map(Value::from));
        set(&mut spec, "traffic", "request_timeout", self.request_timeout.map(Value::from));
        set(&mut spec, "traffic", "max_body_mb", self.max_body_mb.map(Value::from));
        set(&mut spec, "traffic", "h2c", self.h2c.map(Value::from));
        if !self.networks.is_empty() || !self.no_networks.is_empty() {
            let nets = edit_list(&spec["network"]["networks"], &self.networks, &self.no_networks);
            set(&mut spec, "network", "networks", Some(nets));
        }
        if !self.allow_from.is_empty() || !self.no_allow_from.is_empty() {
            let allowed = edit_list(&spec["network"]["allow_from"], &self.allow_from, &self.no_allow_from);
            set(&mut spec, "network", "allow_from", Some(allowed));
        }
        set(&mut spec, "network", "egress", self.egress.clone().map(Value::from));
        set(&mut spec, "network", "visibility", self.visibility.clone().map(Value::from));
        Ok(spec)
    }
}

const SERVICE_COLUMNS: &[Column<'_>] =
    &[("NAME", "name"), ("STATUS", "status"), ("REVISION", "revision"), ("INSTANCES", "ready"), ("URL", "url")];
const SERVICE_FIELDS: &[Column<'_>] = &[
    ("NAME", "name"),
    ("STATUS", "status"),
    ("URL", "url"),
    ("REVISION", "revision"),
    ("IMAGE", "image"),
    ("TAGS NOW", "tags_now"),
    ("TAGS AT DEPLOY", "tags"),
    ("INSTANCES", "ready"),
    ("NETWORKS", "networks"),
    ("EGRESS", "egress"),
    ("VISIBILITY", "visibility"),
    ("DENIED", "denied"),
    ("SECRET ENV", "secret_env"),
    ("OPERATION", "operation_in_progress"),
];
const REVISION_COLUMNS: &[Column<'_>] = &[
    ("REVISION", "id"),
    ("", "current"),
    ("DIGEST", "digest"),
    ("TAGS AT DEPLOY", "tags"),
    ("TAGS NOW", "tags_now"),
    ("CREATED", "created_at"),
    ("BY", "by"),
];
const OPERATION_COLUMNS: &[Column<'_>] = &[
    ("ID", "id"),
    ("TYPE", "type"),
    ("STATUS", "status"),
    ("REVISION", "target_revision"),
    ("STARTED", "started_at"),
    ("ENDED", "ended_at"),
    ("BY", "by"),
];
const EVENT_COLUMNS: &[Column<'_>] = &[("AT", "at"), ("KIND", "kind"), ("MESSAGE", "message")];
const METRIC_COLUMNS: &[Column<'_>] = &[
    ("AT", "at"),
    ("REQ/S", "rps"),
    ("2XX", "2xx"),
    ("4XX", "4xx"),
    ("5XX", "5xx"),
    ("P50 MS", "p50_ms"),
    ("P95 MS", "p95_ms"),
    ("P99 MS", "p99_ms"),
    ("CONCURRENCY", "concurrency"),
    ("INSTANCES", "instances"),
    ("CPU (m)", "cpu"),
    ("MEMORY MiB", "memory"),
];

/// The metrics slots as table rows.
fn metric_rows(v: &Value) -> Vec<Value> {
    let round = |x: f64, places: i32| {
        let f = 10f64.powi(places);
        (x * f).round() / f
    };
    rows(v, "points")
        .into_iter()
        .map(|p| {
            serde_json::json!({
                "at": p["t"],
                "rps": round(p["requests_per_second"].as_f64().unwrap_or(0.0), 1),
                "2xx": p["requests"]["2xx"],
                "4xx": p["requests"]["4xx"],
                "5xx": p["requests"]["5xx"],
                "p50_ms": p["p50_ms"],
                "p95_ms": p["p95_ms"],
                "p99_ms": p["p99_ms"],
                "concurrency": format!("{:.1} / {}", p["concurrency_avg"].as_f64().unwrap_or(0.0), p["concurrency_max"]),
                "instances": p["instances"],
                "cpu": round(p["cpu_millicores"].as_f64().unwrap_or(0.0), 0),
                "memory": round(p["memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0, 1),
            })
        })
        .collect()
}

/// `90`, `90s`, `30m`, `6h` or `7d` in seconds.
fn span_secs(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let Ok(n) = digits.parse::<u64>() else { bail!("`{text}` is not a span: write e.g. 90s, 30m, 6h or 7d") };
    let per = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("`{text}`: the unit is s, m, h or d"),
    };
    Ok(n.saturating_mul(per))
}

/// Adds the columns tables show: serving revision, image, tags, ready/total instances.
fn flatten_service(mut v: Value) -> Value {
    let rev = v["current_revision"].clone();
    v["revision"] = rev["id"].clone();
    v["image"] = match (rev["repository"].as_str(), rev["digest"].as_str()) {
        (Some(r), Some(d)) => format!("{r}@{d}").into(),
        _ => Value::Null,
    };
    v["tags"] = rev["tags"].clone();
    v["tags_now"] = rev["tags_now"].clone();
    let instances = v["instances"].as_array().cloned().unwrap_or_default();
    let ready = instances.iter().filter(|i| i["state"] == "ready").count();
    v["ready"] = format!("{ready}/{}", instances.len()).into();
    let net = v["spec"]["network"].clone();
    v["networks"] = net["networks"].clone();
    v["egress"] = net["egress"].clone();
    // Each variable with its secret and the version the serving revision pinned.
    let pinned = &rev["secret_versions"];
    v["secret_env"] = v["spec"]["image_config"]["secret_env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(var, reference)| {
                    let reference = reference.as_str().unwrap_or_default();
                    let name = reference.split('#').next().unwrap_or_default();
                    match pinned[name].as_str() {
                        Some(version) => Value::from(format!("{var}={reference}@{version}")),
                        None => Value::from(format!("{var}={reference}")),
                    }
                })
                .collect::<Vec<_>>()
                .into()
        })
        .unwrap_or(Value::Null);
    v["visibility"] = match (net["visibility"].as_str(), net["allow_from"].as_array()) {
        (Some(vis), Some(from)) if !from.is_empty() => format!("{vis}, from {}", output::cell_text(&net["allow_from"])).into(),
        (vis, _) => vis.map(Value::from).unwrap_or(Value::Null),
    };
    v
}

fn rows(v: &Value, key: &str) -> Vec<Value> {
    v.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Prints the operation just started, or follows it with `--wait`.
pub(crate) fn started(c: &Client, fmt: Format, v: &Value, wait: &WaitArg, url: Option<&str>) -> anyhow::Result<()> {
    let op = &v["operation"];
    let id = op["id"].as_str().context("the server answered without an operation")?;
    if !wait.wait {
        match fmt {
            Format::Json => println!("{}", serde_json::to_string_pretty(op).unwrap_or_default()),
            Format::Table => {
                println!("operation {id} ({}) started", op["type"].as_str().unwrap_or("?"));
                eprintln!("follow it with `berth service operations {}` or pass --wait", op["service"].as_str().unwrap_or(""));
            }
        }
        return Ok(());
    }
    let end = follow(c, id, fmt == Format::Table)?;
    let status = end["status"].as_str().unwrap_or("");
    if fmt == Format::Json {
        println!("{}", serde_json::to_string_pretty(&end).unwrap_or_default());
    } else {
        println!("{status}");
        if let (Some(u), "SUCCEEDED") = (url, status) {
            println!("{u}");
        }
    }
    if status != "SUCCEEDED" {
        bail!("operation {id} ended {status}");
    }
    Ok(())
}

/// Polls an operation until it ends, printing each new log line as it appears.
pub(crate) fn follow(c: &Client, id: &str, print: bool) -> anyhow::Result<Value> {
    let mut shown = 0;
    loop {
        let op = c.get(&format!("/api/v1/operations/{}", segment(id)))?;
        let log = rows(&op, "log");
        if print {
            for line in log.iter().skip(shown) {
                eprintln!("  {}", line["message"].as_str().unwrap_or(""));
            }
        }
        shown = log.len();
        let status = op["status"].as_str().unwrap_or("");
        if matches!(status, "SUCCEEDED" | "FAILED" | "ROLLBACK_SUCCEEDED" | "ROLLBACK_FAILED") {
            return Ok(op);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn run(c: &Client, fmt: Format, cmd: ServiceCommand) -> anyhow::Result<()> {
    let path = |name: &str| format!("/api/v1/services/{}", segment(name));
    match cmd {
        ServiceCommand::Create { name, spec, wait } => {
            let body = spec.apply(json!({ "name": name, "source": {} }))?;
            if body["source"]["image"].is_null() {
                bail!("name the image to run: --image repo:tag (or a --file with source.image)");
            }
            let v = c.send("POST", "/api/v1/services", &body)?;
            let url = c.get(&path(&name)).ok().and_then(|s| s["url"].as_str().map(str::to_owned));
            started(c, fmt, &v, &wait, url.as_deref())?;
        }
        ServiceCommand::Update { name, spec, wait } => {
            let current = c.get(&path(&name))?;
            let body = spec.apply(current["spec"].clone())?;
            let v = c.send("PUT", &path(&name), &body)?;
            started(c, fmt, &v, &wait, current["url"].as_str())?;
        }
        ServiceCommand::Deploy { name, image, wait } => {
            let v = c.send("POST", &format!("{}/deployments", path(&name)), &json!({ "image": image }))?;
            started(c, fmt, &v, &wait, None)?;
        }
        ServiceCommand::Rollback { name, revision, wait } => {
            let v = c.send("POST", &format!("{}/rollback", path(&name)), &json!({ "revision": revision }))?;
            started(c, fmt, &v, &wait, None)?;
        }
        ServiceCommand::Pause { name, wait } => {
            started(c, fmt, &c.send("POST", &format!("{}/pause", path(&name)), &json!({}))?, &wait, None)?
        }
        ServiceCommand::Resume { name, wait } => {
            started(c, fmt, &c.send("POST", &format!("{}/resume", path(&name)), &json!({}))?, &wait, None)?
        }
        ServiceCommand::Delete { name, wait } => started(c, fmt, &c.delete(&path(&name))?, &wait, None)?,
        ServiceCommand::List => {
            let v = c.get_all("/api/v1/services", "services")?;
            let rows: Vec<Value> = rows(&v, "services").into_iter().map(flatten_service).collect();
            output::list(fmt, &v, &rows, SERVICE_COLUMNS);
        }
        ServiceCommand::Show { name } => {
            let v = c.get(&path(&name))?;
            match fmt {
                Format::Json => output::object(fmt, &v, SERVICE_FIELDS),
                Format::Table => {
                    let flat = flatten_service(v.clone());
                    output::object(fmt, &flat, SERVICE_FIELDS);
                    let instances = rows(&v, "instances");
                    if !instances.is_empty() {
                        println!();
                        output::list(
                            fmt,
                            &v,
                            &instances,
                            &[("INSTANCE", "id"), ("REVISION", "revision"), ("STATE", "state"), ("ADDRESS", "address")],
                        );
                    }
                }
            }
        }
        ServiceCommand::Revisions { name } => {
            let v = c.get_all(&format!("{}/revisions", path(&name)), "revisions")?;
            let current = v["current"].as_u64();
            let rows: Vec<Value> = rows(&v, "revisions")
                .into_iter()
                .map(|mut r| {
                    r["current"] = if r["number"].as_u64() == current { "serving".into() } else { "".into() };
                    r
                })
                .collect();
            output::list(fmt, &v, &rows, REVISION_COLUMNS);
        }
        ServiceCommand::Operations { name } => {
            let v = c.get(&format!("{}/operations", path(&name)))?;
            output::list(fmt, &v, &rows(&v, "operations"), OPERATION_COLUMNS);
        }
        ServiceCommand::Operation { id } => {
            let op = c.get(&format!("/api/v1/operations/{}", segment(&id)))?;
            match fmt {
                Format::Json => output::object(fmt, &op, OPERATION_COLUMNS),
                Format::Table => {
                    output::object(fmt, &op, OPERATION_COLUMNS);
                    println!();
                    for line in rows(&op, "log") {
                        let at = line["at_ms"].as_i64().filter(|&ms| ms > 0).unwrap_or(line["at"].as_i64().unwrap_or(0) * 1000);
                        println!("{}  {}", output::utc_millis(at), line["message"].as_str().unwrap_or(""));
                    }
                }
            }
        }
        ServiceCommand::Events { name } => {
            let v = c.get(&format!("{}/events", path(&name)))?;
            output::list(fmt, &v, &rows(&v, "events"), EVENT_COLUMNS);
        }
        ServiceCommand::Metrics { name, since, step } => {
            let secs = span_secs(&since)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let mut query = format!("{}/metrics?from={}&to={now}", path(&name), now.saturating_sub(secs));
            if let Some(step) = step {
                query.push_str(&format!("&step={step}"));
            }
            let v = c.get(&query)?;
            output::list(fmt, &v, &metric_rows(&v), METRIC_COLUMNS);
        }
        ServiceCommand::Logs { name, follow, tail } => {
            // The last line printed of each instance: later polls print only what follows it, so
            // the lines before the first --tail are never printed after all.
            let mut printed: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
            let mut tail = tail;
            loop {
                let v = c.get(&format!("{}/logs?tail={tail}", path(&name)))?;
                for l in rows(&v, "lines") {
                    let (instance, index) = (l["instance"].as_str().unwrap_or("").to_owned(), l["index"].as_u64().unwrap_or(0));
                    if printed.get(&instance).is_some_and(|&last| index <= last) {
                        continue;
                    }
                    println!("{instance} {}", l["line"].as_str().unwrap_or(""));
                    printed.insert(instance, index);
                }
                if !follow {
                    break;
                }
                tail = 1000;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}

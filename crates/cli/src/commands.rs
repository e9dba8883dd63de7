//! The commands: `repo`, `registry`, `token`, `image`, `run`, `instance`, `service`, `network`, `ca`,
//! `login`.

use std::io::Read;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{login_file, segment, Client};
use crate::output::{self, Column};
use crate::GlobalArgs;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage image repositories: policies, tags, push events.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// Registry maintenance.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Build images without Docker and push them to berth's registry.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a one-off instance of an image from berth's registry and print its address.
    ///
    /// Example: `berth run hello:latest --port 8080 --env GREETING=hi`
    Run {
        /// repository:tag or repository@sha256:… in berth's registry.
        image: String,
        /// The instance id (default: run-<random>).
        #[arg(long)]
        name: Option<String>,
        /// The port the app listens on; PORT is set to it.
        #[arg(long)]
        port: Option<u16>,
        /// An environment variable, KEY=value; repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// Replaces the image's entrypoint and command: words split on spaces, or a JSON array.
        #[arg(long)]
        command: Option<String>,
        /// CPU limit in thousandths of a vCPU (1000 = one vCPU; services take CPU units, 1024 = one vCPU).
        #[arg(long)]
        cpu_millis: Option<u32>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Run the app under berth's init as PID 1 (signals forwarded, orphans reaped).
        #[arg(long)]
        init: bool,
    },
    /// Inspect and manage instances.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Services: images running as autoscaled HTTPS services, with revisions and rollbacks.
    #[command(subcommand)]
    Service(Box<crate::services::ServiceCommand>),
    /// Private networks: a LAN on this host, machines on it and host services, for services to
    /// reach (`--network` on `service create`/`update`).
    #[command(subcommand)]
    Network(crate::networks::NetworkCommand),
    /// Secrets: values sealed at rest, with versions and staging labels, for services to use.
    #[command(subcommand)]
    Secret(crate::secrets::SecretCommand),
    /// Webhooks: service events (deployments, rollbacks, replaced instances, crash loops…)
    /// posted to your endpoints, signed, retried, logged.
    #[command(subcommand)]
    Webhook(crate::webhooks::WebhookCommand),
    /// Bring a service over from another platform (App Runner).
    #[command(subcommand)]
    Import(crate::apprunner::ImportCommand),
    /// Write a service in another platform's format (App Runner).
    #[command(subcommand)]
    Export(crate::apprunner::ExportCommand),
    /// The local certificate authority behind the router's HTTPS.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Save a server URL and token for later commands.
    Login {
        /// The server's API URL, e.g. https://berth.example.com
        url: String,
        /// Read the token from standard input instead of --token.
        #[arg(long)]
        token_stdin: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// MUTABLE, IMMUTABLE, IMMUTABLE_WITH_EXCLUSION or MUTABLE_WITH_EXCLUSION.
    #[arg(long)]
    mutability: Option<String>,
    /// A tag filter (`*` wildcards) excluded from the mutability rule; repeatable.
    #[arg(long = "exclude")]
    exclusions: Vec<String>,
}

impl PolicyArgs {
    fn json(&self) -> Value {
        json!({ "tag_mutability": self.mutability, "exclusions": self.exclusions })
    }
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository, e.g. `berth repo create web --mutability IMMUTABLE_WITH_EXCLUSION --exclude latest`.
    Create {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// List repositories.
    List,
    /// Show one repository.
    Show { name: String },
    /// Delete a repository with all its tags and manifests.
    Delete {
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Set the tag mutability policy.
    SetPolicy {
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Replace the lifecycle rules (no options: remove them).
    SetLifecycle {
        name: String,
        /// Expire untagged manifests older than this many days.
        #[arg(long)]
        expire_untagged_days: Option<u32>,
        /// Keep only this many of the newest tags matching --pattern.
        #[arg(long, requires = "pattern")]
        keep_newest: Option<u32>,
        /// Tag filter for --keep-newest.
        #[arg(long)]
        pattern: Option<String>,
    },
    /// List tags, newest first.
    Tags { name: String },
    /// Show the push history.
    Events {
        name: String,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        after: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a one-layer OCI image from a directory (or a binary) and push it.
    ///
    /// Example: `berth image build ./site --entrypoint /bin/server --port 8080 -t web:v1`
    Build {
        /// The directory that becomes the image's root filesystem.
        #[arg(required_unless_present = "binary", conflicts_with = "binary")]
        dir: Option<std::path::PathBuf>,
        /// Build from one executable instead, placed at /app/<name>.
        #[arg(long)]
        binary: Option<std::path::PathBuf>,
        /// With --binary: also add the shared libraries and loader it needs (found with ldd).
        #[arg(long, requires = "binary")]
        with_libs: bool,
        /// The entrypoint: words split on spaces, or a JSON array.
        #[arg(long)]
        entrypoint: Option<String>,
        /// The default command (arguments to the entrypoint): words split on spaces, or a JSON array.
        #[arg(long)]
        cmd: Option<String>,
        /// An environment variable, KEY=value; repeatable.
        #[arg(long = "env")]
        env: Vec<String>,
        /// The port the app listens on (recorded as exposed).
        #[arg(long)]
        port: Option<u16>,
        /// The user to run as (name or uid[:gid]).
        #[arg(long)]
        user: Option<String>,
        /// The working directory.
        #[arg(long)]
        workdir: Option<String>,
        /// Where to push: repository:tag; repeatable (e.g. -t web:3f2a9c1 -t web:latest).
        #[arg(short = 't', long = "tag", required = true)]
        tags: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum InstanceCommand {
    /// List instances.
    List,
    /// Show one instance.
    Show { id: String },
    /// Print an instance's log.
    Logs {
        id: String,
        /// Keep printing new lines until interrupted.
        #[arg(short, long)]
        follow: bool,
    },
    /// Stop an instance: SIGTERM, then SIGKILL after the grace period.
    Stop {
        id: String,
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(long, default_value_t = 10)]
        grace: u64,
    },
    /// Stop and delete an instance, freeing everything it held.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM), e.g. `berth ca export > berth-ca.pem; curl --cacert berth-ca.pem …`.
    Export,
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Apply lifecycle rules and delete blobs no manifest references.
    Gc {
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        /// admin, read-only, pull:<repo pattern>, push:<repo pattern>, secrets-read:<secret
        /// pattern> or secrets-write:<secret pattern>; repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Also make an AWS access key for it (same scopes, revoked with it), for AWS clients of
        /// berth's ECR, App Runner and Secrets Manager APIs; its secret is printed once.
        #[arg(long)]
        aws: bool,
    },
    /// List tokens.
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

const REPO_COLUMNS: &[Column<'_>] =
    &[("NAME", "name"), ("MUTABILITY", "tag_mutability"), ("EXCLUSIONS", "exclusions"), ("CREATED", "created_at")];
const TOKEN_COLUMNS: &[Column<'_>] = &[
    ("ID", "id"),
    ("NAME", "name"),
    ("SCOPES", "scopes"),
    ("AWS KEY", "aws_access_key_id"),
    ("CREATED", "created_at"),
    ("LAST USED", "last_used_at"),
    ("REVOKED", "revoked_at"),
];

const INSTANCE_FIELDS: &[Column<'_>] = &[("ID", "id"), ("STATE", "status"), ("ADDRESS", "address"), ("IMAGE", "image")];

/// Adds a one-word `status` ("running", "exited (137)", "OOM-killed") for tables.
fn flatten_state(mut v: Value) -> Value {
    let st = &v["state"];
    let word = match (st["state"].as_str(), st["code"].as_i64(), st["oom_killed"].as_bool()) {
        (Some("exited"), _, Some(true)) => "OOM-killed".to_owned(),
        (Some("exited"), Some(code), _) => format!("exited ({code})"),
        (Some(s), _, _) => s.to_owned(),
        _ => "-".to_owned(),
    };
    v["status"] = word.into();
    v
}

fn repo_path(name: &str) -> String {
    format!("/api/v1/repositories/{}", segment(name))
}

fn rows(v: &Value, key: &str) -> Vec<Value> {
    v.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

pub fn run(g: &GlobalArgs, command: Command) -> anyhow::Result<()> {
    let fmt = g.output;
    match command {
        Command::Login { url, token_stdin } => return login(g, &url, token_stdin),
        Command::Repo(cmd) => {
            let c = Client::from_args(g)?;
            match cmd {
                RepoCommand::Create { name, policy } => {
                    let mut body = policy.json();
                    body["name"] = name.into();
                    let v = c.send("POST", "/api/v1/repositories", &body)?;
                    output::object(fmt, &v, REPO_COLUMNS);
                }
                RepoCommand::List => {
                    let v = c.get_all("/api/v1/repositories", "repositories")?;
                    output::list(fmt, &v, &rows(&v, "repositories"), REPO_COLUMNS);
                }
                RepoCommand::Show { name } => {
                    let v = c.get(&repo_path(&name))?;
                    let mut fields = REPO_COLUMNS.to_vec();
                    fields.extend([("TAGS", "tag_count"), ("LIFECYCLE", "lifecycle")]);
                    output::object(fmt, &v, &fields);
                }
                RepoCommand::Delete { name, yes } => {
                    if !yes {
                        bail!("deleting `{name}` removes all its tags and manifests; run again with --yes to confirm");
                    }
                    c.delete(&repo_path(&name))?;
                    eprintln!("deleted repository `{name}`; run `berth registry gc` to reclaim space");
                }
                RepoCommand::SetPolicy { name, policy } => {
                    let v = c.send("PUT", &format!("{}/policy", repo_path(&name)), &policy.json())?;
                    output::object(fmt, &v, REPO_COLUMNS);
                }
                RepoCommand::SetLifecycle { name, expire_untagged_days, keep_newest, pattern } => {
                    let mut rules = Vec::new();
                    if let Some(days) = expire_untagged_days {
                        rules.push(json!({ "type": "expire_untagged", "days": days }));
                    }
                    if let (Some(count), Some(pattern)) = (keep_newest, pattern) {
                        rules.push(json!({ "type": "keep_newest_tags", "pattern": pattern, "count": count }));
                    }
                    let v = c.send("PUT", &format!("{}/lifecycle", repo_path(&name)), &json!({ "rules": rules }))?;
                    output::object(fmt, &v, &[("NAME", "name"), ("LIFECYCLE", "lifecycle")]);
                }
                RepoCommand::Tags { name } => {
                    let v = c.get_all(&format!("{}/tags", repo_path(&name)), "tags")?;
                    output::list(fmt, &v, &rows(&v, "tags"), &[("TAG", "tag"), ("DIGEST", "digest"), ("UPDATED", "updated_at")]);
                }
                RepoCommand::Events { name, after } => {
                    let mut all = Vec::new();
                    let mut after = after;
                    loop {
                        let v = c.get(&format!("{}/events?after={after}&limit=1000", repo_path(&name)))?;
                        let page = rows(&v, "events");
                        let done = page.len() < 1000;
                        after = page.last().and_then(|e| e.get("id")).and_then(Value::as_i64).unwrap_or(after);
                        all.extend(page);
                        if done {
                            break;
                        }
                    }
                    let cols = [("ID", "id"), ("AT", "at"), ("TAG", "tag"), ("DIGEST", "digest"), ("PREVIOUS", "previous_digest")];
                    output::list(fmt, &json!({ "repository": name, "events": all }), &all, &cols);
                }
            }
        }
        Command::Image(ImageCommand::Build { dir, binary, with_libs, entrypoint, cmd, env, port, user, workdir, tags }) => {
            let settings = berth_image::build::ImageSettings {
                entrypoint: words(entrypoint.as_deref())?,
                cmd: words(cmd.as_deref())?,
                env,
                port,
                user,
                workdir,
            };
            for e in &settings.env {
                if !e.contains('=') {
                    bail!("--env `{e}` needs the form KEY=value");
                }
            }
            let targets = tags.iter().map(|t| parse_target(t)).collect::<anyhow::Result<Vec<_>>>()?;
            let image = match (&dir, &binary) {
                (_, Some(b)) => berth_image::build::build_from_binary(b, with_libs, &settings)?,
                (Some(d), None) => berth_image::build::build_from_dir(d, &settings)?,
                (None, None) => bail!("give a directory or --binary"),
            };
            let c = Client::from_args(g)?;
            push_image(&c, &image, &targets)?;
            if fmt == output::Format::Json {
                println!("{}", json!({ "digest": image.manifest.digest.to_string(), "tags": tags }));
            } else {
                println!("{}", image.manifest.digest);
            }
        }
        Command::Run { image, name, port, env, command, cpu_millis, memory_mb, init } => {
            let mut env_map = serde_json::Map::new();
            for e in &env {
                let (k, v) = e.split_once('=').with_context(|| format!("--env `{e}` needs the form KEY=value"))?;
                env_map.insert(k.to_owned(), v.into());
            }
            let command = words(command.as_deref())?;
            let body = json!({
                "image": image, "name": name, "port": port, "env": env_map,
                "command": if command.is_empty() { Value::Null } else { command.into() },
                "cpu_millis": cpu_millis, "memory_mb": memory_mb, "init": init,
            });
            let c = Client::from_args(g)?;
            eprintln!("starting {image}…");
            let v = c.send("POST", "/api/v1/instances", &body)?;
            output::object(fmt, &flatten_state(v), INSTANCE_FIELDS);
        }
        Command::Instance(cmd) => {
            let c = Client::from_args(g)?;
            let path = |id: &str| format!("/api/v1/instances/{}", segment(id));
            match cmd {
                InstanceCommand::List => {
                    let v = c.get_all("/api/v1/instances", "instances")?;
                    let rows: Vec<Value> = rows(&v, "instances").into_iter().map(flatten_state).collect();
                    output::list(fmt, &v, &rows, INSTANCE_FIELDS);
                }
                InstanceCommand::Show { id } => output::object(fmt, &flatten_state(c.get(&path(&id))?), INSTANCE_FIELDS),
                InstanceCommand::Stop { id, grace } => {
                    let v = c.send("POST", &format!("{}/stop", path(&id)), &json!({ "grace_secs": grace }))?;
                    output::object(fmt, &flatten_state(v), INSTANCE_FIELDS);
                }
                InstanceCommand::Delete { id } => {
                    c.delete(&path(&id))?;
                    eprintln!("deleted instance {id}");
                }
                InstanceCommand::Logs { id, follow } => {
                    let mut since = 0u64;
                    loop {
                        let v = c.get(&format!("{}/logs?since={since}", path(&id)))?;
                        for l in rows(&v, "lines") {
                            println!("{}", l.as_str().unwrap_or_default());
                        }
                        since = v.get("next").and_then(Value::as_u64).unwrap_or(since);
                        if !follow {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                }
            }
        }
        Command::Service(cmd) => crate::services::run(&Client::from_args(g)?, fmt, *cmd)?,
        Command::Network(cmd) => crate::networks::run(&Client::from_args(g)?, fmt, cmd)?,
        Command::Webhook(cmd) => crate::webhooks::run(&Client::from_args(g)?, fmt, cmd)?,
        Command::Secret(cmd) => crate::secrets::run(&Client::from_args(g)?, fmt, cmd)?,
        Command::Import(cmd) => crate::apprunner::import(&Client::from_args(g)?, fmt, cmd)?,
        Command::Export(cmd) => crate::apprunner::export(&Client::from_args(g)?, cmd)?,
        Command::Ca(CaCommand::Export) => {
            let c = Client::from_args(g)?;
            print!("{}", c.get_text("/api/v1/ca")?);
        }
        Command::Registry(RegistryCommand::Gc { dry_run }) => {
            let c = Client::from_args(g)?;
            let v = c.send("POST", "/api/v1/registry/gc", &json!({ "dry_run": dry_run }))?;
            print_gc(fmt, &v);
        }
        Command::Token(cmd) => {
            let c = Client::from_args(g)?;
            match cmd {
                TokenCommand::Create { name, scopes, aws } => {
                    let v = c.send("POST", "/api/v1/tokens", &json!({ "name": name, "scopes": scopes, "aws": aws }))?;
                    let mut fields = vec![("ID", "id"), ("NAME", "name"), ("SCOPES", "scopes"), ("TOKEN", "token")];
                    if aws {
                        fields.extend([("AWS ACCESS KEY ID", "aws_access_key_id"), ("AWS SECRET ACCESS KEY", "aws_secret_access_key")]);
                    }
                    output::object(fmt, &v, &fields);
                    if fmt == output::Format::Table {
                        eprintln!("save the token now: it is not shown again");
                        if aws {
                            eprintln!(
                                "AWS clients: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY to these, AWS_ENDPOINT_URL to this server's API address, and any region"
                            );
                        }
                    }
                }
                TokenCommand::List => {
                    let v = c.get_all("/api/v1/tokens", "tokens")?;
                    output::list(fmt, &v, &rows(&v, "tokens"), TOKEN_COLUMNS);
                }
                TokenCommand::Revoke { id } => {
                    c.delete(&format!("/api/v1/tokens/{}", segment(&id)))?;
                    eprintln!("revoked token {id}");
                }
            }
        }
    }
    Ok(())
}

/// Splits a command given as words or as a JSON array.
fn words(s: Option<&str>) -> anyhow::Result<Vec<String>> {
    match s.map(str::trim) {
        None | Some("") => Ok(Vec::new()),
        Some(j) if j.starts_with('[') => serde_json::from_str(j).with_context(|| format!("`{j}` is not a JSON array of strings")),
        Some(w) => Ok(w.split_whitespace().map(str::to_owned).collect()),
    }
}

/// `repository:tag` (a registry host prefix, if any, is the server's and is dropped).
fn parse_target(t: &str) -> anyhow::Result<(String, String)> {
    let (repo, tag) = t
        .rsplit_once(':')
        .filter(|(r, tag)| !r.is_empty() && !tag.contains('/'))
        .with_context(|| format!("`{t}` needs the form repository:tag"))?;
    Ok((repo.to_owned(), tag.to_owned()))
}

pub(crate) fn push_image(c: &Client, image: &berth_image::build::BuiltImage, targets: &[(String, String)]) -> anyhow::Result<()> {
    for (repo, tag) in targets {
        for blob in std::iter::once(&image.config).chain(&image.layers) {
            let path = format!("/v2/{repo}/blobs/{}", blob.digest);
            if c.exists(&path)? {
                eprintln!("{repo}: {} already there", blob.digest);
                continue;
            }
            eprintln!("{repo}: pushing {} ({} bytes)", blob.digest, blob.data.len());
            c.put_bytes("POST", &format!("/v2/{repo}/blobs/uploads/?digest={}", blob.digest), "application/octet-stream", &blob.data)?;
        }
        c.put_bytes("PUT", &format!("/v2/{repo}/manifests/{tag}"), image.manifest.media_type, &image.manifest.data)
            .with_context(|| format!("pushing {repo}:{tag}"))?;
        eprintln!("{repo}:{tag} -> {}", image.manifest.digest);
    }
    Ok(())
}

fn print_gc(fmt: output::Format, v: &Value) {
    if fmt == output::Format::Json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let dry = v.get("dry_run").and_then(Value::as_bool).unwrap_or(false);
    let verb = if dry { "would delete" } else { "deleted" };
    for l in rows(v, "lifecycle") {
        println!("{verb} {} {} in {}", cellstr(&l, "kind"), cellstr(&l, "target"), cellstr(&l, "repository"));
    }
    for b in rows(v, "blobs") {
        println!("{verb} blob {} ({} bytes)", cellstr(&b, "digest"), b.get("size").and_then(Value::as_u64).unwrap_or(0));
    }
    for u in rows(v, "uploads") {
        println!("{verb} stale upload {}", u.as_str().unwrap_or_default());
    }
    println!(
        "{}: {} blobs, {} bytes, {} lifecycle deletions, {} stale uploads",
        if dry { "dry run" } else { "done" },
        rows(v, "blobs").len(),
        v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
        rows(v, "lifecycle").len(),
        rows(v, "uploads").len()
    );
}

fn cellstr(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned()
}

/// Saves `server` and `token` for later commands (mode 0600); returns the file.
pub fn save_login(server: &str, token: &str) -> anyhow::Result<std::path::PathBuf> {
    let file = login_file().context("cannot tell where to save the login: set HOME or XDG_CONFIG_HOME")?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let content = serde_json::to_vec_pretty(&json!({ "server": server, "token": token }))?;
    write_private(&file, &content)?;
    Ok(file)
}

fn login(g: &GlobalArgs, url: &str, token_stdin: bool) -> anyhow::Result<()> {
    let token = if token_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the token from standard input")?;
        s.trim().to_owned()
    } else {
        g.token.clone().context("pass the token with --token, BERTH_TOKEN or --token-stdin")?
    };
    let c = Client::new(url, Some(token.clone()));
    let who = c.get("/api/v1/whoami").with_context(|| format!("checking the token against {url}"))?;
    let file = save_login(c.base(), &token)?;
    eprintln!(
        "logged in to {} as token `{}`; saved to {}",
        c.base(),
        who.get("name").and_then(Value::as_str).unwrap_or("?"),
        file.display()
    );
    Ok(())
}

fn write_private(path: &std::path::Path, content: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content)?;
    Ok(())
}

//! `berth server`: opens the data directory, wires the store, the registry, the runtime, the
//! service controllers, the router and the API, serves the API listener until SIGTERM or SIGINT,
//! and runs the periodic collector.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_api::{AppState, Authenticator, Metrics};
use berth_controller::{Controller, ControllerSettings, Deps, NetProber};
use berth_core::{Pattern, Scope, TagPolicy};
use berth_image::{ImageSource, SourceRouter};
use berth_registry::{FsBlobStore, Registry, RegistryConfig};
use berth_router::control::{DaemonConfig, Hello, SuppliedCertificate};
use berth_router::listen::Gate;
use berth_router::tls::LocalCa;
use berth_router::{daemon, Launch, RemoteRouter, RouteBook, RouteSpec};
use berth_runtime::embedded::firewall::Proto;
use berth_runtime::embedded::rootfs::{overlay_supported, RootfsKind};
use berth_runtime::embedded::{EmbeddedConfig, EmbeddedRuntime, LogRetention};
use berth_runtime::Runtime;
use berth_store::{SharedStore, SqliteStore};

use crate::config::Config;

/// File names inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// The master key of the secrets, when no other is configured.
pub const MASTER_KEY_FILE: &str = "master.key";
pub const API_ADDRESS_FILE: &str = "api-address";
pub const ROUTER_ADDRESS_FILE: &str = "router-address";
const SIGNING_KEY_FILE: &str = "token-signing-key";
/// The port of the instance gateway where instances call services as `http://<name>.internal`.
const INTERNAL_PORT: u16 = 80;

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file, a pipe or a journal.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Writes `content` to a new file readable only by its owner, atomically.
fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", path.display()))
}

/// The configured master key of the secrets, or berth's own key file.
fn master_key_source(config: &Config) -> berth_secrets::KeySource {
    match (&config.secrets.master_key_command, &config.secrets.master_key_file) {
        (Some(cmd), _) => berth_secrets::KeySource::Command(cmd.clone()),
        (None, Some(path)) => berth_secrets::KeySource::File { path: path.clone(), create: false },
        (None, None) => berth_secrets::KeySource::File { path: config.data_dir.join(MASTER_KEY_FILE), create: true },
    }
}

fn signing_key(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    match fs::read(&path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is corrupt; delete it to make a new one (this signs out registry clients and changes the secret of every AWS access key)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            write_private(&path, &key)?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// On first start, creates the admin token and saves it for the CLI on this host. Returns the
/// token when it was just created, so it can be printed once.
async fn bootstrap_admin_token(store: &SharedStore, data_dir: &Path) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        return Ok(None);
    }
    let issued = berth_api::issue_token(store, "admin", vec![Scope::Admin], false).await.map_err(|e| anyhow::anyhow!("{}", e.message))?;
    write_private(&path, format!("{}\n", issued.secret).as_bytes())?;
    Ok(Some(issued.secret))
}

fn registry_config(config: &Config) -> anyhow::Result<RegistryConfig> {
    let r = &config.registry;
    let mutability = r.default_tag_mutability.parse()?;
    let default_policy = TagPolicy::new(mutability, r.default_exclusions.iter().map(Pattern::new).collect())?;
    Ok(RegistryConfig {
        default_policy,
        gc_grace: Duration::from_secs(r.gc_grace_secs),
        upload_expiry: Duration::from_secs(r.upload_expiry_secs),
        token_realm: r.token_realm.clone(),
        service: "berth".into(),
        max_uploads_per_repository: r.max_uploads_per_repository,
        max_uploads_per_token: r.max_uploads_per_token,
    })
}

/// berth's init, built into this binary (empty when the build could not make it).
const INIT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-init"));

/// Puts berth's init where instances can have it bound in (`<runtime>/berth-init`, 0755),
/// replacing an older one; `None` when this binary carries none.
fn install_init(runtime_dir: &Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    if INIT.is_empty() {
        tracing::warn!("this berth was built without its init: instances cannot run with --init");
        return Ok(None);
    }
    let path = runtime_dir.join("berth-init");
    if fs::read(&path).ok().as_deref() != Some(INIT) {
        fs::create_dir_all(runtime_dir).with_context(|| format!("creating {}", runtime_dir.display()))?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, INIT).with_context(|| format!("writing {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    }
    Ok(Some(path))
}

/// The embedded runtime, when this server can and may run containers.
fn open_runtime(config: &Config, images: Arc<dyn ImageSource>) -> anyhow::Result<Option<Arc<EmbeddedRuntime>>> {
    let r = &config.runtime;
    let root = nix::unistd::geteuid().is_root();
    match (r.enabled.as_str(), root) {
        ("off", _) => {
            tracing::info!("the embedded runtime is off (runtime.enabled = off)");
            return Ok(None);
        }
        ("auto", false) => {
            tracing::warn!("not running as root: the embedded runtime is off; registry and API work, instances cannot run");
            return Ok(None);
        }
        ("on", false) => anyhow::bail!("runtime.enabled = on needs root (namespaces, cgroups, mounts); run as root or set it to auto"),
        _ => {}
    }
    let rootfs = match r.rootfs.as_str() {
        "copy" => RootfsKind::Copy,
        "overlay" => RootfsKind::Overlay,
        _ if overlay_supported() => RootfsKind::Overlay,
        _ => RootfsKind::Copy,
    };
    let embedded = EmbeddedConfig {
        root: config.data_dir.join("runtime"),
        shim: std::env::current_exe().context("finding the berth binary for the shim")?,
        bridge: r.bridge.clone(),
        cidr: r.cidr.parse().map_err(|e| anyhow::anyhow!("runtime.cidr: {e}"))?,
        // Namespace names are host-global: this server's carry its bridge's name.
        netns_prefix: format!("berth-{}-", r.bridge),
        cgroup_parent: r.cgroup_parent.clone(),
        rootfs,
        outbound_nat: r.outbound_nat,
        open_ports: vec![(Proto::Tcp, INTERNAL_PORT), (Proto::Udp, 53), (Proto::Tcp, 53)],
        unpack_limits: config.image.limits(),
        init: install_init(&config.data_dir.join("runtime"))?,
        retention: LogRetention {
            per_instance_bytes: r.gone_logs_per_instance_kib << 10,
            per_group_bytes: r.gone_logs_per_service_mib << 20,
            total_bytes: r.gone_logs_total_mib << 20,
            days: r.gone_logs_days,
        },
    };
    let rt = EmbeddedRuntime::open(embedded, images).map_err(|e| anyhow::anyhow!("starting the embedded runtime: {e}"))?;
    tracing::info!(bridge = %r.bridge, cidr = %r.cidr, ?rootfs, "embedded runtime ready");
    Ok(Some(rt))
}

/// An image source for a runtime that only removes: it never pulls.
struct NoImages;

#[async_trait::async_trait]
impl ImageSource for NoImages {
    async fn manifest(&self, repository: &str, _: &str) -> Result<(String, Vec<u8>), berth_image::PullError> {
        Err(berth_image::PullError::Source(format!("not pulling {repository}: berth is being uninstalled")))
    }
    async fn blob(&self, repository: &str, _: &berth_core::Digest, _: &Path) -> Result<(), berth_image::PullError> {
        Err(berth_image::PullError::Source(format!("not pulling {repository}: berth is being uninstalled")))
    }
}

/// Stops the router process of `data` (named in its pid file, and checked to be one) and waits
/// for it to drain and exit.
fn stop_router_process(data: &Path, bound: Duration) -> anyhow::Result<()> {
    let Some(pid) = fs::read_to_string(data.join(berth_router::control::PID_FILE)).ok().and_then(|p| p.trim().parse::<i32>().ok()) else {
        return Ok(());
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.get(1) != Some(&&b"router"[..]) {
        return Ok(());
    }
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).with_context(|| format!("stopping the router process {pid}"))?;
    let deadline = std::time::Instant::now() + bound;
    // A zombie (exited, not yet reaped) has an empty command line.
    while fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("the router process {pid} did not stop within {} s", bound.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("stopped the router process {pid}");
    Ok(())
}

/// `berth uninstall`: with the server stopped, removes every instance and what the runtime put
/// on the host; with `delete_data`, the data directory as well.
pub fn uninstall(mut config: Config, delete_data: bool) -> anyhow::Result<()> {
    let data = config.data_dir.clone();
    if let Some(addr) = fs::read_to_string(data.join(API_ADDRESS_FILE)).ok().map(|a| a.trim().trim_start_matches("http://").to_owned()) {
        if std::net::TcpStream::connect(&addr).is_ok() {
            anyhow::bail!("a berth server is running on {} (at {addr}); stop it first", data.display());
        }
    }
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("removing instances, network namespaces and cgroups needs root");
    }
    if data.exists() {
        stop_router_process(&data, Duration::from_secs(config.router.drain_timeout_secs + 5))?;
        config.data_dir = fs::canonicalize(&data).with_context(|| format!("resolving {}", data.display()))?;
        config.runtime.enabled = "on".into();
        // Removing turns nothing on: not the host's forwarding.
        config.runtime.outbound_nat = false;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let removed = rt.block_on(async {
            let runtime = open_runtime(&config, Arc::new(NoImages))?.context("the embedded runtime is off")?;
            runtime.remove_all().await.map_err(|e| anyhow::anyhow!("{e}"))
        })?;
        println!(
            "removed {removed} instances, the bridge {} and its route and firewall tables, the cgroup parent {}",
            config.runtime.bridge, config.runtime.cgroup_parent
        );
    }
    if delete_data && data.exists() {
        let looks_like_ours = ["state.db", ADMIN_TOKEN_FILE, "runtime"].iter().any(|f| data.join(f).exists());
        if !looks_like_ours {
            anyhow::bail!("{} does not look like a berth data directory; not deleting it", data.display());
        }
        fs::remove_dir_all(&data).with_context(|| format!("deleting {}", data.display()))?;
        println!("deleted the data directory {}", data.display());
    }
    Ok(())
}

/// The names services are served under: `<name>.localhost`, and `<name>.<base domain>`.
fn suffixes(config: &Config) -> Vec<String> {
    let mut suffixes = vec![".localhost".to_owned()];
    if let Some(d) = &config.router.base_domain {
        suffixes.push(format!(".{}", d.trim_start_matches('.')));
    }
    suffixes
}

/// What the router process runs with, from the server's configuration.
fn daemon_config(config: &Config, internal: Option<SocketAddr>) -> DaemonConfig {
    let r = &config.router;
    DaemonConfig {
        data_dir: config.data_dir.clone(),
        listen_http: r.listen_http,
        listen_https: r.listen_https,
        listen_internal: internal,
        workers: match r.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        },
        pin_workers: r.pin_workers,
        redirect_http_to_https: r.redirect_http_to_https,
        hsts: r.hsts,
        idle_timeout_secs: r.idle_timeout_secs,
        max_connections: r.max_connections,
        tls_handshake_timeout_secs: r.tls_handshake_timeout_secs,
        drain_timeout_secs: r.drain_timeout_secs,
        suffixes: suffixes(config),
        certificates: r
            .certificates
            .iter()
            .map(|c| SuppliedCertificate { domains: c.domains.clone(), cert: c.cert.clone(), key: c.key.clone() })
            .collect(),
        access_log: access_log_path(config),
        log_level: config.log.level.clone(),
        log_json: config.log.format == "json",
        metrics_history: r.metrics_history,
    }
}

/// Attaches to the router process serving this data directory — started now, or one that
/// outlived a previous server (a successor replaces it when it runs another build or
/// configuration). Its configuration is checked here first, so mistakes are reported by the
/// server: a supplied certificate that does not load, a port that is taken.
async fn start_router(config: &Config, internal: Option<SocketAddr>) -> anyhow::Result<RemoteRouter> {
    let data = &config.data_dir;
    let daemon = daemon_config(config, internal);
    for c in &daemon.certificates {
        berth_router::tls::load_certificate(&c.domains, &c.cert, &c.key)
            .map_err(|e| anyhow::anyhow!("loading router.certificates: {e}"))?;
    }
    let config_path = daemon::config_path(data);
    write_private(&config_path, &daemon.to_json()?)?;
    // The binary as it is now: an upgrade may replace the file while the server runs.
    let exe = std::env::current_exe().context("finding the berth binary for the router")?;
    let spawn = move |takeover: bool| -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(&exe);
        // A process group of its own: a terminal's Ctrl-C for the server does not reach it.
        cmd.process_group(0).args(["router", "--config"]).arg(&config_path);
        if takeover {
            cmd.arg("--takeover");
        }
        let mut child =
            cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn()?;
        tracing::info!(pid = child.id(), takeover, "started the router process");
        // Reaped should it end while this server runs.
        std::thread::spawn(move || child.wait());
        Ok(())
    };
    let address_file = data.join(ROUTER_ADDRESS_FILE);
    let on_hello = move |hello: &Hello| {
        tracing::info!(pid = hello.pid, http = %hello.http, https = %hello.https, "router process attached");
        let addresses = format!("http://{}\nhttps://{}\n", hello.http, hello.https);
        if let Err(e) = write_private(&address_file, addresses.as_bytes()) {
            tracing::warn!(error = %e, "writing the router's addresses failed");
        }
    };
    let launch = Launch {
        data_dir: data.clone(),
        config: daemon,
        identity: daemon::identity(),
        spawn: Box::new(spawn),
        on_hello: Box::new(on_hello),
    };
    RemoteRouter::start(launch)
        .await
        .map_err(|e| anyhow::anyhow!("starting the router process: {e} (its log is {})", data.join("logs/router.log").display()))
}

/// Serves every running one-off instance (`berth run`) at `<instance id>.localhost` (and under
/// the base domain); services' instances are routed by their controllers.
fn route_one_off_instances(book: Arc<RouteBook>, rt: Arc<dyn Runtime>, suffixes: Vec<String>) {
    tokio::spawn(async move {
        loop {
            if let Ok(list) = rt.list().await {
                let specs: Vec<RouteSpec> = list
                    .iter()
                    .filter(|i| i.state == berth_runtime::InstanceState::Running && !i.labels.iter().any(|(k, _)| k == "berth.service"))
                    .filter_map(|i| i.address.map(|a| (i, a)))
                    // One-off instances have public egress: berth's DNS resolves any name for them.
                    .flat_map(|(i, a)| {
                        suffixes.iter().map(move |s| RouteSpec {
                            sources: vec![a.ip()],
                            resolve_public: true,
                            ..RouteSpec::new(format!("{}{s}", i.id), i.id.to_string(), vec![a])
                        })
                    })
                    .collect();
                if specs != book.get("instances") {
                    book.set("instances", specs);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// Creates the data directory (mode 0700), or makes an existing one private: it holds the state
/// database, keys, tokens and instances' environments. One owned by another user is refused.
fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    let meta = fs::metadata(dir).with_context(|| format!("inspecting data directory {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        anyhow::bail!(
            "data directory {} belongs to uid {}, not to the user berth runs as (uid {me}); `chown -R {me} {}` or choose another with --data-dir",
            dir.display(),
            meta.uid(),
            dir.display()
        );
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(data_dir = %dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "the data directory was readable by others; making it 0700");
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard one: every connection, upstream and layer
/// being unpacked holds descriptors, and the default soft limit (1024) is soon reached.
pub(crate) fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "raising the open files limit failed");
            }
        }
    }
}

/// Whether the data directory shows that a server ran here before: an admin token, or blobs.
fn used_before(data: &Path) -> bool {
    data.join(ADMIN_TOKEN_FILE).exists() || fs::read_dir(data.join("registry/blobs")).is_ok_and(|mut d| d.next().is_some())
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let stop = shutdown_signal();
    init_logging(&config);
    private_data_dir(&config.data_dir)?;
    // Shims and containers resolve paths from elsewhere: every path berth hands out is absolute.
    config.data_dir = fs::canonicalize(&config.data_dir).with_context(|| format!("resolving {}", config.data_dir.display()))?;
    let config = config;
    let data = &config.data_dir;
    let db = data.join("state.db");
    raise_open_files_limit();
    let store: SharedStore = Arc::new(SqliteStore::open(&db).context("opening the state database")?);
    // A server always has its admin token; an empty database beside one, or beside blobs, means
    // state.db was lost or replaced. Starting over would lock everyone out and orphan the blobs.
    if store.list_tokens().await?.is_empty() && used_before(data) {
        anyhow::bail!(
            "{} holds no tokens, but this data directory was used before (it has an admin token or blobs): the state database \
             was lost or replaced. Restore state.db from a backup; to start afresh instead, move the data directory away",
            db.display()
        );
    }
    let blobs = Arc::new(FsBlobStore::open(&data.join("registry")).context("opening blob storage")?);
    let registry = Arc::new(Registry::new(store.clone(), blobs, registry_config(&config)?));
    let auth = Arc::new(Authenticator::new(signing_key(data)?));
    // Before anything is served: a wrong or missing master key stops the start here.
    let secrets = Arc::new(berth_secrets::Secrets::open(store.clone(), &master_key_source(&config)).await.context("opening the secrets")?);
    if let Some(token) = bootstrap_admin_token(&store, data).await? {
        // Shown once, and only to a person at a terminal: a service manager's log keeps stdout.
        use std::io::IsTerminal;
        let path = data.join(ADMIN_TOKEN_FILE);
        if std::io::stdout().is_terminal() {
            println!("Admin token (saved to {}; shown only now):\n  {token}", path.display());
        } else {
            println!("Admin token created and saved to {} (mode 0600); the CLI on this host uses it", path.display());
        }
    }
    // Images come from berth's registry in-process, or from the registry their name names.
    let images: Arc<dyn ImageSource> = Arc::new(SourceRouter::new(registry.clone(), config.runtime.insecure_registries.clone()));
    let runtime = open_runtime(&config, images.clone())?;
    let runtime_dyn: Option<Arc<dyn Runtime>> = runtime.clone().map(|r| r as Arc<dyn Runtime>);
    let ca_domains: Vec<String> = suffixes(&config).iter().map(|s| s.trim_start_matches('.').to_owned()).collect();
    let ca =
        LocalCa::load_or_create(&data.join("tls"), &ca_domains).map_err(|e| anyhow::anyhow!("the local certificate authority: {e}"))?;
    let ca_pem: Arc<str> = Arc::from(ca.cert_pem());
    // Instances call services at `<name>.internal`: port 80 of their gateway.
    let internal = runtime.as_ref().map(|rt| SocketAddr::from((rt.gateway(), INTERNAL_PORT)));
    let router = start_router(&config, internal).await?;
    let hello = router.hello();
    // Routes the router kept serving while no server ran stay until their owners set them again.
    let book = Arc::new(RouteBook::seeded(Arc::new(router.clone()), hello.owners.clone()));
    let https_addr = hello.https;
    let controller = match &runtime_dyn {
        Some(rt) => {
            let settings = ControllerSettings {
                suffixes: suffixes(&config),
                url_scheme: "https".into(),
                url_port: https_addr.port(),
                gateway: internal.and_then(|a| match a {
                    SocketAddr::V4(v4) => Some(*v4.ip()),
                    SocketAddr::V6(_) => None,
                }),
                ..ControllerSettings::default()
            };
            let deps = Deps {
                store: store.clone(),
                runtime: rt.clone(),
                book: book.clone(),
                prober: Arc::new(NetProber),
                secrets: Some(secrets.clone()),
                pushes: Some(registry.subscribe()),
                settings,
            };
            let controller = Controller::start(deps).await.context("starting the service controllers")?;
            router.set_activator(controller.activator());
            Some(controller)
        }
        None => None,
    };
    if let Some(rt) = &runtime_dyn {
        route_one_off_instances(book.clone(), rt.clone(), suffixes(&config));
    }
    let router_metrics = book.clone();
    let metrics = Metrics::new().with_source(Box::new(move |out| router_metrics.render_metrics(out)));
    let store_for_webhooks = store.clone();
    let state = AppState {
        store,
        registry: registry.clone(),
        auth,
        metrics: Arc::new(metrics),
        runtime: runtime_dyn,
        images,
        ca_pem,
        controller,
        secrets: secrets.clone(),
        access_log: access_log_path(&config),
        webhooks: berth_notify::Webhooks::new(store_for_webhooks, secrets.clone()),
    };
    // Service events go out to the webhooks from here.
    tokio::spawn(state.webhooks.clone().run());
    // Rotations run from here: scheduled ones, asked-for ones, and ones a stop cut short.
    let consumers: Arc<dyn berth_secrets::rotation::Consumers> = match &state.controller {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(berth_secrets::rotation::NoConsumers),
    };
    tokio::spawn(berth_secrets::rotation::run(secrets.clone(), consumers));
    // Deleted secrets whose recovery window has passed are purged.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match secrets.purge_due(berth_api::now()).await {
                Ok(gone) if !gone.is_empty() => tracing::info!(secrets = ?gone, "purged deleted secrets whose recovery window passed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging deleted secrets failed"),
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("binding the API listener to {}", config.api.listen))?;
    let addr = listener.local_addr()?;
    write_private(&data.join(API_ADDRESS_FILE), format!("http://{addr}\n").as_bytes())?;
    tracing::info!(%addr, data_dir = %data.display(), "berth API listening");
    println!("berth is listening on http://{addr}");

    if config.registry.gc_interval_secs > 0 {
        let every = Duration::from_secs(config.registry.gc_interval_secs);
        let registry = registry.clone();
        let runtime = runtime.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                match registry.collect_garbage(false).await {
                    Ok(r) => tracing::info!(
                        blobs = r.blobs.len(),
                        bytes = r.bytes,
                        uploads = r.uploads.len(),
                        lifecycle = r.lifecycle.len(),
                        "garbage collection done"
                    ),
                    Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
                }
                if let Some(rt) = &runtime {
                    if let Err(e) = rt.collect_layers() {
                        tracing::warn!(error = %e, "collecting unused layers failed");
                    }
                }
            }
        });
    }

    let gate = Gate::new("API", config.api.max_connections);
    let app = berth_api::app_with(state, berth_console::routes());
    serve_api(listener, app, gate, Duration::from_secs(config.api.idle_timeout_secs), stop).await;
    // Instances and the router outlive the server; with no instance left, nothing of berth
    // stays on the host.
    let instances = match &runtime {
        Some(rt) => rt.list().await.map(|l| l.len()).unwrap_or(1),
        None => 0,
    };
    if instances == 0 {
        router.stop().await;
    } else {
        tracing::info!(instances, router_pid = router.hello().pid, "instances run on, and the router process keeps serving them");
    }
    if let Some(rt) = &runtime {
        match rt.release_host_if_idle().await {
            Ok(true) => tracing::info!("no instance runs: removed the bridge, its route and firewall tables, and the cgroup parent"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "releasing the host's network and cgroups failed"),
        }
    }
    tracing::info!("berth stopped");
    Ok(())
}

/// Serves the API listener until `signal` (SIGTERM or SIGINT): HTTP/1.1 connections within the
/// listener's connection limit; a connection with no request in progress for `idle` is closed
/// (idle keep-alive connections, and heads sent too slowly, through hyper's header read
/// timeout); accept errors never end it. On the signal, requests in flight get
/// [`SHUTDOWN_GRACE`], then the server stops anyway.
async fn serve_api(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    gate: Arc<Gate>,
    idle: Duration,
    signal: impl std::future::Future<Output = ()>,
) {
    use berth_router::listen::{Activity, BodyLeft, Returning, Tracked};
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::pin!(signal);
    loop {
        let (stream, _peer, admitted) = tokio::select! {
            accepted = berth_router::listen::accept(&listener, &gate) => accepted,
            () = &mut signal => break,
        };
        // Responses are written as head and body separately: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs would hold small responses for tens of milliseconds.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "setting TCP_NODELAY failed");
        }
        let (app, activity, mut stopping) = (app.clone(), Activity::default(), stopping.clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            let (tracker, left) = (activity.clone(), BodyLeft::default());
            let watcher = left.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (app, request, req) = (app.clone(), tracker.begin(), req.map(|body| watcher.watch(body)));
                async move { app.oneshot(req).await.map(|resp| resp.map(|body| Tracked::new(body, request))) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
            let builder = builder.http1_only();
            let (io, returned) = Returning::new(stream);
            let ended = {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                tokio::pin!(conn);
                tokio::select! {
                    ended = conn.as_mut() => ended,
                    () = activity.idle_for(idle) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            };
            // A client still sending a body the answer did not need gets to read the answer.
            if let Some(stream) = returned.await.ok().filter(|_| left.any()) {
                tokio::select! {
                    () = berth_router::listen::linger(stream) => {}
                    () = async { let _ = stopping.wait_for(|s| *s).await; } => {}
                }
            }
            if let Err(e) = ended {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while gate.open() > 0 {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "requests still in flight after the grace period; stopping anyway");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long requests in flight may take to finish once berth is asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM or SIGINT: listened for from the call on (not from the first poll), so a signal that
/// comes once berth has said where it listens, or while it starts, stops it gracefully instead
/// of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::warn!("cannot listen for signals; stop berth with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
}

/// Where the router writes its access log, unless it is off.
fn access_log_path(config: &Config) -> Option<std::path::PathBuf> {
    (config.router.access_log != "off").then(|| config.data_dir.join(&config.router.access_log))
}

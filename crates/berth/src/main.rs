//! The `berth` binary: `berth server` runs the platform; every other subcommand is the CLI,
//! which talks to a server's API.

mod config;
mod router;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "Container images to autoscaled HTTPS services, from one binary")]
struct Cli {
    #[command(flatten)]
    global: berth_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the berth server (API, registry, runtime, router) in the foreground.
    Server(ServerArgs),
    /// Quick start: run the server and leave a demo service running (as root).
    ///
    /// Builds the bundled `hello` app into an image, pushes it to the `hello` repository (tags
    /// immutable except `latest`), creates the `hello` service with an HTTP health check and prints
    /// its URL. Running it again reuses what exists.
    Up(ServerArgs),
    /// Remove what berth put on this host: every instance (stopped and deleted), the bridge with
    /// its route and firewall tables, the cgroup parent; with --delete-data, the data directory
    /// too. Run it with the server stopped, as root.
    Uninstall(UninstallArgs),
    /// The router process the server starts; not for people.
    #[command(hide = true)]
    Router(RouterArgs),
    #[command(flatten)]
    Client(berth_cli::Command),
}

#[derive(clap::Args)]
struct RouterArgs {
    /// The configuration the server wrote.
    #[arg(long)]
    config: PathBuf,
    /// Take the listeners over from the router running on the same data directory.
    #[arg(long)]
    takeover: bool,
}

#[derive(clap::Args)]
struct UninstallArgs {
    /// A TOML config file (default: <data dir>/config.toml when it exists). Env BERTH_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Also delete the data directory: images, state, keys, tokens, logs.
    #[arg(long)]
    delete_data: bool,
    /// Do it without asking (required: this removes running instances).
    #[arg(long)]
    yes: bool,
}

#[derive(clap::Args)]
struct ServerArgs {
    /// A TOML config file (default: <data dir>/config.toml when it exists). Env BERTH_CONFIG.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address of the API listener; port 0 picks a free one. Env BERTH_API_LISTEN.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    // The shim must run before any async runtime or thread exists: libcontainer clones it.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("shim") {
        return berth_runtime::embedded::shim::main(&args[2..]);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => serve(&cli.global, args, false),
        Command::Up(args) => serve(&cli.global, args, true),
        Command::Uninstall(args) => uninstall(&cli.global, args),
        Command::Router(args) => router::main(&args.config, args.takeover),
        Command::Client(cmd) => {
            exit_quietly_on_closed_pipe();
            berth_cli::run(&cli.global, cmd)
        }
    }
}

/// A CLI command whose output goes to a pipe closed early (`berth … | head`) ends quietly, as
/// other command-line tools do, instead of panicking on the failed write. The server keeps
/// Rust's default (SIGPIPE ignored), which its sockets need.
#[allow(unsafe_code)]
fn exit_quietly_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restores the default disposition before any thread exists; no handler is installed.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// The demo app `berth up` deploys, built from `examples/hello` by the build script.
const HELLO: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hello"));

fn serve(global: &berth_cli::GlobalArgs, args: ServerArgs, demo: bool) -> ExitCode {
    let loaded = config::Config::load(args.config.as_deref(), global.data_dir.as_deref(), |k| std::env::var(k).ok());
    let mut config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Some(l) = args.listen {
        config.api.listen = l;
    }
    if demo {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("error: `berth up` runs containers, which needs root: `sudo -E cargo run --release -- up` (or run `berth server` without containers)");
            return ExitCode::from(2);
        }
        if let Err(e) = ensure_host_packages().and_then(|()| start_demo(global, &config)) {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data_dir = config.data_dir.clone();
    let result = rt.block_on(server::run(config));
    // Work still running on blocking threads (an image being unpacked) must not hold up the exit:
    // it is bounded by its own limits, and what it leaves half done is cleared at the next start.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if disk_full(&e, &data_dir) {
                eprintln!("the disk holding the data directory is full: free space on it, then start berth again");
            }
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes of a full disk or an exhausted quota, or happened with the data directory's
/// disk (nearly) full — SQLite, for one, may call that a disk I/O error.
fn disk_full(e: &anyhow::Error, data_dir: &std::path::Path) -> bool {
    let said = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
            || matches!(c.downcast_ref::<berth_store::StoreError>(), Some(berth_store::StoreError::StorageFull))
    });
    let free = nix::sys::statvfs::statvfs(data_dir).map(|s| s.blocks_available().saturating_mul(s.fragment_size()));
    said || free.is_ok_and(|f| f < 1 << 20)
}

fn uninstall(global: &berth_cli::GlobalArgs, args: UninstallArgs) -> ExitCode {
    if !args.yes {
        eprintln!("error: this stops and deletes every instance of this berth and removes its network from the host; run again with --yes");
        return ExitCode::from(2);
    }
    let config = match config::Config::load(args.config.as_deref(), global.data_dir.as_deref(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match server::uninstall(config, args.delete_data) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Commands the embedded runtime runs, and the Debian packages that have them (links and
/// namespaces need none: they are made over netlink).
const HOST_COMMANDS: &[(&str, &str)] = &[("nft", "nftables")];

/// `berth up` sets a fresh host up: it installs the packages behind missing runtime commands
/// with apt-get (saying so), where apt-get exists. `berth server` only says what is missing.
fn ensure_host_packages() -> anyhow::Result<()> {
    let on_path = |cmd: &str| std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).any(|d| d.join(cmd).is_file());
    let missing: Vec<&str> = HOST_COMMANDS.iter().filter(|(cmd, _)| !on_path(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("apt-get") {
        anyhow::bail!("the container runtime needs {}; install them and run `berth up` again", missing.join(" and "));
    }
    eprintln!("berth up: installing {} (the container runtime needs them)", missing.join(" "));
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success())
    };
    if !(apt(&["update", "-qq"]) && apt(&[&["install", "-y", "-qq", "--no-install-recommends"][..], &missing].concat())) {
        anyhow::bail!("installing {} with apt-get failed; install them and run `berth up` again", missing.join(" "));
    }
    Ok(())
}

/// Writes the demo app into the data directory and, on a thread of its own, sets the demo
/// service up through the API once the server answers.
fn start_demo(global: &berth_cli::GlobalArgs, config: &config::Config) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if HELLO.is_empty() {
        anyhow::bail!("this berth was built without the demo app (building examples/hello failed); use `berth server`");
    }
    let dir = config.data_dir.join("demo");
    std::fs::create_dir_all(&dir)?;
    let hello = dir.join("hello");
    std::fs::write(&hello, HELLO)?;
    std::fs::set_permissions(&hello, std::fs::Permissions::from_mode(0o755))?;
    let mut g = global.clone();
    g.data_dir = Some(config.data_dir.clone());
    // With a fixed port the client need not wait for `api-address` to be rewritten.
    if config.api.listen.port() != 0 {
        g.server = Some(format!("http://{}", config.api.listen));
    }
    std::thread::spawn(move || {
        if let Err(e) = berth_cli::quick_start(&g, &hello) {
            eprintln!("error: setting up the demo service: {e:#}");
        }
    });
    Ok(())
}

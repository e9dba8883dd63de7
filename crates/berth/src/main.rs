//! The `berth` binary: `berth server` runs the platform; every other subcommand is the CLI,
//! which talks to a server's API.

mod config;
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

#[derive(Subcommand)]
enum Command {
    /// Run the berth server (API, registry) in the foreground.
    Server(ServerArgs),
    #[command(flatten)]
    Client(berth_cli::Command),
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
        Command::Server(args) => {
            let loaded = config::Config::load(args.config.as_deref(), cli.global.data_dir.as_deref(), |k| std::env::var(k).ok());
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
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(server::run(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Client(cmd) => berth_cli::run(&cli.global, cmd),
    }
}

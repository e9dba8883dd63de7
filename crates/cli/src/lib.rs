//! The berth command line. Every command is a call to a berth server's HTTP API; this crate
//! links no server internals. Output is a human table by default and JSON with `-o json`.
//!
//! Credentials are found, in order: `--server`/`--token` (or `BERTH_SERVER`/`BERTH_TOKEN`), the
//! file `berth login` writes, then the data directory of a server on this host (its
//! `admin-token` and `api-address` files).

mod apprunner;
mod client;
mod commands;
mod networks;
mod output;
mod quickstart;
mod secrets;
mod services;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

pub use commands::Command;
pub use quickstart::quick_start;

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The data directory of a berth server on this host (default `./.berth`). Env BERTH_DATA.
    #[arg(long, global = true, env = "BERTH_DATA")]
    pub data_dir: Option<PathBuf>,
    /// URL of the berth server's API, e.g. http://127.0.0.1:7070. Env BERTH_SERVER.
    #[arg(long, global = true, env = "BERTH_SERVER")]
    pub server: Option<String>,
    /// A berth API token. Env BERTH_TOKEN.
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: output::Format,
}

/// Runs one CLI command, printing errors in a form a user can act on.
pub fn run(global: &GlobalArgs, command: Command) -> ExitCode {
    match commands::run(global, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

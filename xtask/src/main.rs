//! Developer tasks for berth, run as `cargo xtask <task>`:
//!
//! - `test`: installs the test tools the suite drives (skopeo, docker-registry, curl) when they
//!   are missing, then runs the whole test suite.
//! - `bench <name>`: runs a benchmark of berth against its anchor, side by side, and prints a
//!   table of ratios ending with one JSON line. Names: `registry`, `runtime`, `router`, `deploy`,
//!   `network`, `secrets`, `console`.
//! - `chaos`: injects faults into a running berth under load (as root) and reports, per fault,
//!   the requests that failed, whether and how fast berth recovered by itself, and whether the
//!   host changed; one JSON line at the end.

mod bench;
mod chaos;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask test [-- <nextest args>]\n       cargo xtask bench registry|runtime|router|deploy|network|console [--rounds N]\n       cargo xtask bench secrets [--db postgresql] [--rotations N] [--every S]\n       cargo xtask chaos"
    );
    ExitCode::from(2)
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    // `cargo run` sets the variable for the run: that is the checkout being worked on, even when a
    // target directory shared between checkouts holds a binary built from another one.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => chaos::run(),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `cargo xtask bench <name>`: berth against its anchor on this machine, alternating rounds,
//! printing medians, ratios (median of per-round ratios) and peak RSS, then one JSON line.

#[cfg(feature = "aws-bench")]
mod aws;
#[cfg(feature = "console-bench")]
mod console;
mod deploy;
pub mod http;
#[cfg(feature = "runtime-bench")]
mod network;
#[cfg(any(feature = "router-bench", feature = "runtime-bench"))]
mod nginx;
mod registry;
#[cfg(feature = "router-bench")]
mod router;
#[cfg(feature = "runtime-bench")]
mod runtime;
mod secrets;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let rounds = args
        .windows(2)
        .find(|w| w[0] == "--rounds")
        .map(|w| w[1].parse::<usize>().context("--rounds takes a number"))
        .transpose()?
        .unwrap_or(3);
    match args.first().map(String::as_str) {
        Some("registry") => registry::run(rounds),
        Some("deploy") => deploy::run(rounds),
        Some("secrets") => secrets::run(&args[1..]),
        #[cfg(feature = "aws-bench")]
        Some("aws") => aws::run(rounds),
        #[cfg(not(feature = "aws-bench"))]
        Some("aws") => with_feature("aws-bench", args),
        #[cfg(feature = "console-bench")]
        Some("console") => console::run(&args[1..]),
        #[cfg(not(feature = "console-bench"))]
        Some("console") => with_feature("console-bench", args),
        #[cfg(feature = "runtime-bench")]
        Some("runtime") => runtime::run(rounds),
        #[cfg(not(feature = "runtime-bench"))]
        Some("runtime") => with_feature("runtime-bench", args),
        #[cfg(feature = "runtime-bench")]
        Some("network") => network::run(rounds),
        #[cfg(not(feature = "runtime-bench"))]
        Some("network") => with_feature("runtime-bench", args),
        #[cfg(feature = "router-bench")]
        Some("router") => router::run(rounds),
        #[cfg(not(feature = "router-bench"))]
        Some("router") => with_feature("router-bench", args),
        Some(other) => bail!("unknown benchmark `{other}`; available: registry, runtime, router, deploy, network, secrets, console, aws"),
        None => bail!("name a benchmark: registry, runtime, router, deploy, network, secrets, console, aws"),
    }
}

/// Runs this benchmark again from an xtask built with what it measures linked in.
#[cfg(not(all(feature = "runtime-bench", feature = "router-bench", feature = "console-bench", feature = "aws-bench")))]
fn with_feature(feature: &str, args: &[String]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(&cargo)
        .args(["run", "--release", "--quiet", "-p", "xtask", "--features", feature, "--", "bench"])
        .args(args)
        .current_dir(crate::workspace_root())
        .status()?
        .success();
    if !ok {
        bail!("the {feature} benchmark failed");
    }
    Ok(())
}

/// Compiles `examples/hello` (one std-only file) to `dest`; `static_libc` links it statically,
/// as an image of just the binary needs.
pub fn compile_hello(dest: &std::path::Path, static_libc: bool) -> anyhow::Result<()> {
    let src = crate::workspace_root().join("examples/hello/src/main.rs");
    let mut rustc = Command::new("rustc");
    rustc.args(["--edition", "2021", "-O"]);
    if static_libc {
        rustc.args(["-C", "target-feature=+crt-static"]);
    }
    if !rustc.arg("-o").arg(dest).arg(&src).status()?.success() {
        bail!("compiling examples/hello failed");
    }
    Ok(())
}

/// Builds the release `berth` binary and returns its path.
pub fn build_berth() -> anyhow::Result<PathBuf> {
    build_release("berth")
}

/// Builds the release binary of the workspace's package `package` (named as it) and returns its
/// path.
pub fn build_release(package: &str) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = crate::workspace_root();
    let ok = Command::new(&cargo).args(["build", "--release", "--quiet", "-p", package]).current_dir(&root).status()?.success();
    if !ok {
        bail!("building {package} failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    Ok(target.join("release").join(package))
}

/// A release `berth server` on `data` with the embedded runtime on its own bridge, CIDR and
/// cgroup parent (outbound NAT off: a benchmark's instances reach nothing outside).
pub fn server_with_runtime(
    bin: &std::path::Path,
    data: &std::path::Path,
    bridge: &str,
    cidr: &str,
    cgroup_parent: &str,
) -> anyhow::Result<berth_testkit::BerthProcess> {
    let env = [
        ("BERTH_RUNTIME", "on"),
        ("BERTH_RUNTIME_OUTBOUND_NAT", "false"),
        ("BERTH_RUNTIME_BRIDGE", bridge),
        ("BERTH_RUNTIME_CIDR", cidr),
        ("BERTH_RUNTIME_CGROUP_PARENT", cgroup_parent),
    ];
    berth_testkit::BerthProcess::start(bin, data, &env).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Deletes `services` and waits (a minute at most) until they are gone: instances outlive the
/// server, so a benchmark removes them before it stops the server, whatever happened.
pub fn delete_services(api: &http::Api, services: &[&str]) {
    for s in services {
        let _ = api.call("DELETE", &format!("/api/v1/services/{s}"), &serde_json::Value::Null);
    }
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < end && services.iter().any(|s| api.get(&format!("/api/v1/services/{s}")).is_ok()) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Peak resident memory of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One row of a results table: a figure measured per round for berth and the anchor.
pub struct Figure {
    pub name: &'static str,
    pub unit: &'static str,
    pub berth: Vec<f64>,
    pub anchor: Vec<f64>,
}

impl Figure {
    pub fn new(name: &'static str, unit: &'static str) -> Figure {
        Figure { name, unit, berth: Vec::new(), anchor: Vec::new() }
    }

    /// Median over rounds of berth / anchor.
    pub fn ratio(&self) -> f64 {
        median(self.berth.iter().zip(&self.anchor).map(|(b, a)| b / a).collect())
    }
}

pub fn print_table(anchor_name: &str, figures: &[Figure]) {
    println!("{:<28} {:>14} {:>14} {:>8}", "figure", "berth", anchor_name, "ratio");
    for f in figures {
        println!(
            "{:<28} {:>14} {:>14} {:>8.2}",
            format!("{} ({})", f.name, f.unit),
            format!("{:.1}", median(f.berth.clone())),
            format!("{:.1}", median(f.anchor.clone())),
            f.ratio()
        );
    }
}

//! `cargo xtask test`: make sure the real peers the tests drive are installed, check formatting
//! and lints, then run the suite with cargo-nextest (or `cargo test` where nextest is missing).

use std::process::Command;

use anyhow::{bail, Context};

/// Commands the tests run, and the Debian packages that provide them.
pub const TOOLS: &[(&str, &str)] = &[
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("docker-registry", "docker-registry"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    // The private database of the networks tests, started by the tests themselves.
    ("mariadbd", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    // The rotation tests' PostgreSQL (its server binaries are not on PATH; this script is).
    ("pg_ctlcluster", "postgresql"),
    ("setpriv", "util-linux"),
    ("python3", "python3"),
    // The console's browser tests: headless Chromium driven over WebDriver, and npm to fetch
    // axe-core, the accessibility checker they run in it.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    ("npm", "npm"),
    // The AWS-compatible APIs' tests: aws CLI v2 (Debian's, at its own path: another `aws` on
    // PATH may be version 1) and podman logging in with ECR's password.
    ("/usr/bin/aws", "awscli"),
    ("podman", "podman"),
];

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd} >/dev/null 2>&1")).status().is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Installs the Debian packages behind any missing `tools`.
pub fn ensure_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools.iter().filter(|(cmd, _)| !have(cmd)).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing test tools; install them with: sudo apt-get install -y {}", missing.join(" "));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let ok = Command::new("apt-get").args(["update", "-qq"]).status().context("running apt-get update")?.success();
    if !ok {
        bail!("apt-get update failed");
    }
    // Packages with a service (mariadb-server) must not start it: the tests start their own.
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(policy, "#!/bin/sh\n# No service starts while berth's test tools install.\nexit 101\n")?;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install");
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    if !installed?.success() {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    ensure_tools(TOOLS)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = crate::workspace_root();
    // Formatting and lints first: they fail fast and say exactly what to change.
    let fmt = Command::new(&cargo).args(["fmt", "--all", "--", "--check"]).current_dir(&root).status().context("running cargo fmt")?;
    if !fmt.success() {
        bail!("code is not formatted; run `cargo fmt --all`");
    }
    let clippy = Command::new(&cargo)
        .args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"])
        .current_dir(&root)
        .status()
        .context("running cargo clippy")?;
    if !clippy.success() {
        bail!("clippy found problems");
    }
    let clippy_bench = Command::new(&cargo)
        .args([
            "clippy",
            "-p",
            "xtask",
            "--features",
            "runtime-bench,router-bench,console-bench,aws-bench",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&root)
        .status()
        .context("running cargo clippy on the benchmarks")?;
    if !clippy_bench.success() {
        bail!("clippy found problems in the benchmarks");
    }
    let nextest = Command::new(&cargo).args(["nextest", "--version"]).output().is_ok_and(|o| o.status.success());
    let extra = args.iter().skip_while(|a| *a == "--");
    let mut cmd = Command::new(&cargo);
    if nextest {
        cmd.args(["nextest", "run", "--workspace", "--no-fail-fast"]).args(extra);
    } else {
        cmd.args(["test", "--workspace", "--no-fail-fast"]).args(extra);
    }
    let status = cmd.current_dir(&root).status().context("running the test suite")?;
    if !status.success() {
        bail!("tests failed");
    }
    Ok(())
}

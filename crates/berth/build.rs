//! Builds what the berth binary carries inside it, each a static, std-only program of one file:
//! `examples/hello`, for `berth up` to deploy (the quick start then needs nothing but the berth
//! binary), and berth's init (`crates/runtime/init`), which instances started with `--init` run
//! as their PID 1.

use std::path::{Path, PathBuf};
use std::process::Command;

fn build(src: &Path, out: &Path, what: &str, without: &str) {
    println!("cargo:rerun-if-changed={}", src.display());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=s", "-C", "strip=symbols", "-C", "panic=abort", "-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(out)
        .arg(src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("cargo:warning=building {what} failed ({other:?}); {without}");
            let _ = std::fs::write(out, b"");
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    build(&root.join("examples/hello/src/main.rs"), &out.join("hello"), "examples/hello", "`berth up` will say so");
    build(&root.join("crates/runtime/init/main.rs"), &out.join("berth-init"), "berth's init", "`--init` will be refused");
}

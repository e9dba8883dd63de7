//! Builds `examples/hello` — a static, std-only HTTP app of one file — for `berth up` to
//! embed: the quick start then needs nothing but the berth binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("../../examples/hello/src/main.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("hello");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .args(["--edition", "2021", "-C", "opt-level=s", "-C", "strip=symbols", "-C", "panic=abort", "-C", "target-feature=+crt-static"])
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => {
            println!("cargo:warning=building examples/hello for `berth up` failed ({other:?}); `berth up` will say so");
            let _ = std::fs::write(&out, b"");
        }
    }
}

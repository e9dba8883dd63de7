//! Secrets through a real server and the CLI: values in from a file or standard input and out
//! only through `secret get`, versions and labels, deletion and restore, nothing in the clear on
//! disk, and a server that refuses to start with another master key.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// `berth server` on `dir` with `env`, expected to exit: its exit status and standard error.
fn failed_start(dir: &std::path::Path, env: &[(&str, &str)]) -> Result<(std::process::ExitStatus, String)> {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("BERTH_RUNTIME", "off")
        .env("BERTH_ROUTER_HTTP", "127.0.0.1:0")
        .env("BERTH_ROUTER_HTTPS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server started with a master key that does not match".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    Ok((out.status, String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn secrets_round_trip_sealed_and_keyed() -> Result {
    let mut s = Server::start()?;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.dir.join("master.key"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "master.key is made private at the first start");
    }

    // In from a file, and from standard input; out only through `get`.
    let file = s.dir.join("creds.json");
    std::fs::write(&file, r#"{"user":"gb","password":"tr0ub4dor-one"}"#)?;
    s.cli_ok(&["secret", "create", "db-creds", "--description", "guestbook's database", "--from-file", &file.display().to_string()])?;
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.dir)
        .args(["secret", "create", "api-key"])
        .env("HOME", &s.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(b"key-from-stdin\n")?;
    let out = child.wait_with_output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.cli_ok(&["secret", "get", "api-key"])?, "key-from-stdin\n");
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password"])?, "tr0ub4dor-one\n");
    let described = s.cli_ok(&["-o", "json", "secret", "describe", "db-creds"])?;
    let listed = s.cli_ok(&["secret", "list"])?;
    for text in [&described, &listed] {
        assert!(!text.contains("tr0ub4dor"), "a value in a listing: {text}");
    }

    // A pending version, then CURRENT moved to it.
    std::fs::write(&file, r#"{"user":"gb","password":"tr0ub4dor-two"}"#)?;
    s.cli_ok(&["secret", "put", "db-creds", "--from-file", &file.display().to_string(), "--label", "PENDING"])?;
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password"])?, "tr0ub4dor-one\n");
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password", "--label", "PENDING"])?, "tr0ub4dor-two\n");
    let versions: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "secret", "describe", "db-creds"])?)?;
    let pending = versions["versions"][0]["id"].as_str().ok_or("no version")?.to_owned();
    s.cli_ok(&["secret", "label", "db-creds", "CURRENT", &pending])?;
    s.cli_ok(&["secret", "unlabel", "db-creds", "PENDING"])?;
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password"])?, "tr0ub4dor-two\n");
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password", "--label", "PREVIOUS"])?, "tr0ub4dor-one\n");
    let table = s.cli_ok(&["secret", "versions", "db-creds"])?;
    assert!(table.contains("CURRENT") && table.contains("PREVIOUS") && !table.contains("PENDING"), "{table}");

    // Bad input says what is wrong, naming no value.
    let not_json = s.cli(&["secret", "get", "api-key#password"])?;
    let said = String::from_utf8_lossy(&not_json.stderr);
    assert!(!not_json.status.success() && said.contains("not a JSON object") && !said.contains("key-from-stdin"), "{said}");

    // Deleted: unreadable, restorable.
    s.cli_ok(&["secret", "delete", "api-key", "--recovery-days", "7"])?;
    let gone = s.cli(&["secret", "get", "api-key"])?;
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("berth secret restore api-key"));
    s.cli_ok(&["secret", "restore", "api-key"])?;
    assert_eq!(s.cli_ok(&["secret", "get", "api-key"])?, "key-from-stdin\n");
    let audit = s.cli_ok(&["secret", "audit", "db-creds"])?;
    assert!(audit.contains("label CURRENT") && audit.contains("read"), "{audit}");

    // Nothing on disk in the clear; another master key does not open them and is refused at start.
    s.kill9()?;
    for name in ["state.db", "state.db-wal"] {
        let bytes = std::fs::read(s.dir.join(name)).unwrap_or_default();
        assert!(!bytes.windows(9).any(|w| w == b"tr0ub4dor"), "a value in {name}");
    }
    let other = s.dir.join("other.key");
    std::fs::write(&other, format!("{}\n", "42".repeat(32)))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600))?;
    }
    let other = other.display().to_string();
    let (status, stderr) = failed_start(&s.dir, &[("BERTH_SECRETS_MASTER_KEY_FILE", &other)])?;
    assert!(!status.success() && stderr.contains("does not match"), "{status}: {stderr}");
    std::fs::rename(s.dir.join("master.key"), s.dir.join("kept.key"))?;
    let (status, stderr) = failed_start(&s.dir, &[])?;
    assert!(!status.success() && stderr.contains("is missing"), "{status}: {stderr}");
    assert!(!s.dir.join("master.key").exists(), "a new master key was made over existing secrets");
    std::fs::rename(s.dir.join("kept.key"), s.dir.join("master.key"))?;
    s.restart()?;
    assert_eq!(s.cli_ok(&["secret", "get", "db-creds#password"])?, "tr0ub4dor-two\n");
    Ok(())
}

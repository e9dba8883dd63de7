//! The `berth` CLI against a real server: tables and JSON, repository and token commands,
//! `berth login` for a remote server, and clear errors.

mod support;

use support::*;

#[test]
fn repository_commands() -> Result {
    let s = Server::start()?;
    let out =
        s.cli_ok(&["repo", "create", "team/web", "--mutability", "IMMUTABLE_WITH_EXCLUSION", "--exclude", "latest", "--exclude", "dev-*"])?;
    assert!(out.contains("IMMUTABLE_WITH_EXCLUSION") && out.contains("latest,dev-*"), "{out}");
    s.cli_ok(&["repo", "create", "api"])?;
    let list = s.cli_ok(&["repo", "list"])?;
    let names: Vec<&str> = list.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["api", "team/web"]);
    let json: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "repo", "show", "team/web"])?)?;
    assert_eq!(json["exclusions"], serde_json::json!(["latest", "dev-*"]));
    assert_eq!(json["tag_count"], 0);

    s.cli_ok(&["repo", "set-policy", "team/web", "--mutability", "MUTABLE"])?;
    let json: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "repo", "show", "team/web"])?)?;
    assert_eq!(json["tag_mutability"], "MUTABLE");
    s.cli_ok(&["repo", "set-lifecycle", "team/web", "--expire-untagged-days", "14", "--keep-newest", "10", "--pattern", "v*"])?;
    let json: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "repo", "show", "team/web"])?)?;
    assert_eq!(json["lifecycle"].as_array().map(Vec::len), Some(2));

    // Clear errors, non-zero exits.
    let bad = s.cli(&["repo", "set-policy", "api", "--mutability", "SOMETIMES"])?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tag mutability `SOMETIMES` is unknown"));
    let missing = s.cli(&["repo", "show", "nope"])?;
    assert!(String::from_utf8_lossy(&missing.stderr).contains("repository `nope` does not exist"));
    let unconfirmed = s.cli(&["repo", "delete", "api"])?;
    assert!(!unconfirmed.status.success() && String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    s.cli_ok(&["repo", "delete", "api", "--yes"])?;
    assert!(!s.cli_ok(&["repo", "list"])?.contains("api"));
    Ok(())
}

#[test]
fn tokens_and_login() -> Result {
    let s = Server::start()?;
    let created: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "token", "create", "ci", "--scope", "push:web"])?)?;
    let secret = created["token"].as_str().ok_or("no token")?.to_owned();
    let id = created["id"].as_str().ok_or("no id")?.to_owned();
    let list = s.cli_ok(&["token", "list"])?;
    assert!(list.contains("admin") && list.contains("ci") && list.contains("push:web"), "{list}");
    assert!(!list.contains(&secret));

    // `berth login` from "another machine": no data directory, a fresh HOME.
    let home = tempfile::tempdir()?;
    let empty = tempfile::tempdir()?;
    let cli = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("BERTH_TOKEN")
            .env_remove("BERTH_SERVER")
            .env_remove("BERTH_DATA")
            .current_dir(empty.path())
            .output()
    };
    let out = cli(&["login", &s.url(""), "--token", &secret])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let saved = home.path().join(".config/berth/login.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&saved)?.permissions().mode() & 0o777, 0o600);
    // The saved token is used: it may read its repository, not manage tokens.
    let denied = cli(&["token", "list"])?;
    assert!(String::from_utf8_lossy(&denied.stderr).contains("not allowed"), "{}", String::from_utf8_lossy(&denied.stderr));
    let out = cli(&["repo", "create", "web"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A wrong token is refused at login.
    let bad = cli(&["login", &s.url(""), "--token", "berth_000000000000_00"])?;
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invalid, expired or revoked"));

    s.cli_ok(&["token", "revoke", &id])?;
    let revoked = cli(&["repo", "list"])?;
    assert!(!revoked.status.success());
    let again = s.cli(&["token", "revoke", &id])?;
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));
    Ok(())
}

#[test]
fn unreachable_server_is_explained() -> Result {
    let empty = tempfile::tempdir()?;
    let out = std::process::Command::new(BIN)
        .args(["--server", "http://127.0.0.1:9", "--token", "x", "repo", "list"])
        .env("HOME", empty.path())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the berth server at http://127.0.0.1:9") && err.contains("is `berth server` running?"), "{err}");
    Ok(())
}

#[test]
fn skopeo_login_uses_the_token_flow() -> Result {
    let s = Server::start()?;
    let auth = tempfile::tempdir()?;
    let authfile = auth.path().join("auth.json");
    let authfile = authfile.display().to_string();
    let out = skopeo(&["login", "--tls-verify=false", "--authfile", &authfile, "-u", "ci", "-p", &s.token, &s.addr])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = skopeo(&["login", "--tls-verify=false", "--authfile", &authfile, "-u", "ci", "-p", "berth_000000000000_00", &s.addr])?;
    assert!(!out.status.success());
    Ok(())
}

/// Output cut short by the reader (`berth … | head`) ends the command quietly, not in a panic.
#[test]
fn a_closed_pipe_is_not_a_panic() -> Result {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let s = Server::start()?;
    // Enough repositories that the listing is far larger than a pipe's buffer.
    for i in 0..700 {
        let r = http(
            "POST",
            &s.url("/api/v1/repositories"),
            Some(&s.creds()),
            &[("Content-Type", "application/json")],
            format!("{{\"name\":\"r{i:04}\"}}").as_bytes(),
        )?;
        assert_eq!(r.status, 201);
    }
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(&s.dir)
        .args(["-o", "json", "repo", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("HOME", &s.dir)
        .spawn()?;
    // Take one byte and close the pipe.
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut one = [0u8; 1];
    out.read_exact(&mut one)?;
    drop(out);
    let mut err = String::new();
    child.stderr.take().ok_or("no stderr")?.read_to_string(&mut err)?;
    child.wait()?;
    assert!(!err.contains("panicked"), "{err}");
    Ok(())
}

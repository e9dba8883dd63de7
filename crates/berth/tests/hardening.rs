//! The server protects its own state: a data directory readable by others is made private, a
//! lost or damaged state database is refused rather than silently replaced, the admin token is
//! not written to a log (nor colour codes to a log that is not a terminal), and the registry
//! bounds upload sessions and never echoes a Host header into its challenges.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

/// Runs `berth server` on `dir` until it exits or prints its listening line; returns its output.
fn start_once(dir: &Path) -> Result<(bool, String)> {
    let _ = std::fs::remove_file(dir.join("api-address"));
    let mut child = Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("BERTH_RUNTIME", "off")
        .env("BERTH_ROUTER_HTTP", "127.0.0.1:0")
        .env("BERTH_ROUTER_HTTPS", "127.0.0.1:0")
        .env("BERTH_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if child.try_wait()?.is_some() || dir.join("api-address").exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let started = child.try_wait()?.is_none();
    let _ = child.kill();
    let out = child.wait_with_output()?;
    Ok((started, format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))))
}

#[test]
fn the_data_directory_is_private_and_its_state_never_silently_replaced() -> Result {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("data");
    std::fs::create_dir(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let (started, out) = start_once(&dir)?;
    assert!(started, "{out}");
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    // Not a terminal: the token is saved, not printed.
    let token = std::fs::read_to_string(dir.join("admin-token"))?;
    assert!(!out.contains(token.trim()), "the admin token went to the output: {out}");
    assert!(out.contains("saved to"), "{out}");
    // Logs that go to a pipe or a file carry no terminal colour codes.
    assert!(out.contains(" INFO "), "no log line: {out}");
    assert!(!out.contains('\x1b'), "colour codes in a piped log: {out:?}");

    // state.db lost: refused, with what to do, and nothing changed.
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let (started, out) = start_once(&dir)?;
    assert!(!started, "a server started over with an empty database");
    assert!(out.contains("holds no tokens, but this data directory was used before") && out.contains("Restore state.db"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("admin-token"))?, token);

    // state.db damaged: refused.
    std::fs::write(dir.join("state.db"), vec![7u8; 16384])?;
    let (started, out) = start_once(&dir)?;
    assert!(!started);
    assert!(out.contains("the state database is damaged"), "{out}");
    Ok(())
}

#[test]
fn registry_challenges_and_upload_sessions_are_bounded() -> Result {
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("config.toml"), "[registry]\nmax_uploads_per_token = 3\nmax_uploads_per_repository = 5\n")?;
    let p = BerthProcess::start(Path::new(BIN), tmp.path(), &[])?;
    let url = |path: &str| format!("http://{}{path}", p.addr);

    // A Host header is never echoed into the challenge's quoted realm.
    let r = http("GET", &url("/v2/"), None, &[("Host", "evil\",scope=\"repository:x:push")], b"")?;
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(challenge.starts_with("Bearer realm=\"http://localhost/token\""), "{challenge}");

    let creds = format!("ci:{}", p.token);
    let start = |repo: &str| http("POST", &url(&format!("/v2/{repo}/blobs/uploads/")), Some(&creds), &[], b"");
    let mut locations = Vec::new();
    for _ in 0..3 {
        let r = start("web")?;
        assert_eq!(r.status, 202);
        locations.push(r.header("location").unwrap_or_default().to_owned());
    }
    let r = start("web")?;
    assert_eq!((r.status, r.json()["errors"][0]["code"].as_str()), (429, Some("TOOMANYREQUESTS")));
    assert!(r.json()["errors"][0]["message"].as_str().unwrap_or("").contains("token `admin` has 3 uploads in progress"));
    // Cancelling one frees a place.
    assert_eq!(http("DELETE", &url(&locations[0]), Some(&creds), &[], b"")?.status, 204);
    assert_eq!(start("api")?.status, 202);
    Ok(())
}

/// A request that never completes (its body never arrives) does not keep SIGTERM from stopping
/// the server: in-flight requests get a grace period, not forever.
#[test]
fn a_stuck_request_does_not_block_shutdown() -> Result {
    use std::io::Write;
    let mut s = Server::start()?;
    let mut conn = std::net::TcpStream::connect(&s.addr)?;
    write!(
        conn,
        "POST /api/v1/repositories HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        s.addr, s.token
    )?;
    conn.flush()?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(s.terminate().map(|st| st.code()).map_err(|e| e.to_string()));
    });
    let status = rx.recv_timeout(std::time::Duration::from_secs(60)).map_err(|_| "the server did not stop within a minute of SIGTERM")?;
    waiter.join().map_err(|_| "waiter panicked")?;
    assert_eq!(status?, Some(0));
    drop(conn);
    Ok(())
}

/// The API listener closes connections that send no request head in time (slow or idle ones)
/// and keeps no more than its limit open: a flood of idle connections does not lock others out.
#[test]
fn idle_and_excess_api_connections_are_closed() -> Result {
    use std::io::Read;
    let tmp = tempfile::tempdir()?;
    std::fs::write(tmp.path().join("config.toml"), "[api]\nmax_connections = 4\nidle_timeout_secs = 1\n")?;
    let p = BerthProcess::start(Path::new(BIN), tmp.path(), &[])?;
    let mut idle: Vec<std::net::TcpStream> = (0..4).map(|_| std::net::TcpStream::connect(&p.addr)).collect::<std::io::Result<_>>()?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Beyond the limit: closed at once.
    let mut extra = std::net::TcpStream::connect(&p.addr)?;
    extra.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
    assert_eq!(extra.read(&mut [0u8; 16])?, 0, "a connection beyond the limit was kept");
    // Idle ones: closed within the idle timeout, and the API answers again.
    for c in &mut idle {
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let read = c.read(&mut [0u8; 16]);
        assert!(
            matches!(&read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection was kept: {read:?}"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(http("GET", &format!("http://{}/healthz", p.addr), None, &[], b"")?.status, 200);
    Ok(())
}

/// Nothing of berth stays on the host when nothing runs: a clean stop with no instance removes
/// the bridge, its route and firewall tables and the cgroup parent; `berth uninstall` stops and
/// removes the instances a server left running, the same host state, and the data directory.
#[test]
fn a_clean_stop_and_uninstall_leave_nothing_on_the_host() -> Result {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data)?;
    let (env, sandbox) = runtime_sandbox("x", 244, "x", &data)?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bridge_exists =
        || Command::new("ip").args(["link", "show", "dev", &sandbox.bridge]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let table_exists = || {
        Command::new("nft")
            .args(["list", "table", "inet", &format!("berth_{}", sandbox.bridge)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };

    // cgroup v2 has one hierarchy; v1 one per controller, of which `pids` is always used.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroup = Path::new(if v2 { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/pids" }).join(&sandbox.cgroup_parent);

    let mut p = BerthProcess::start(Path::new(BIN), &data, &env)?;
    assert!(bridge_exists() && table_exists());
    Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status()?;
    p.child.wait()?;
    assert!(!bridge_exists() && !table_exists(), "a clean stop with no instance left the bridge or its firewall");
    assert!(!cgroup.exists(), "a clean stop with no instance left the cgroup parent");

    // A server killed while an instance runs: the instance keeps running; uninstall removes it.
    let p = BerthProcess::start(Path::new(BIN), &data, &env)?;
    let bin = berth_testkit::hello_binary(tmp.path())?;
    let cli =
        |args: &[&str]| Command::new(BIN).arg("--data-dir").arg(&data).args(args).env("HOME", &data).envs(env.iter().copied()).output();
    ok(&cli(&["image", "build", "--binary", &bin.display().to_string(), "--port", "8080", "-t", "hello:v1"])?)?;
    ok(&cli(&["run", "hello:v1", "--name", "x1"])?)?;
    let pid: i32 = std::fs::read_to_string(data.join("runtime/instances/x1/container.pid"))?.trim().parse()?;
    assert!(cgroup.is_dir());
    drop(p);
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(), "the instance died with the server");
    let out = cli(&["uninstall"])?;
    assert!(!out.status.success(), "uninstall ran without --yes");
    let out = cli(&["uninstall", "--yes", "--delete-data"])?;
    ok(&out)?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 1 instances"), "{out:?}");
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(), "the instance still runs");
    assert!(!bridge_exists() && !table_exists() && !cgroup.exists() && !data.exists());
    let netns = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout).into_owned();
    assert!(!netns.contains(&sandbox.netns_prefix), "{netns}");
    Ok(())
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Result<SmallDisk> {
        if !nix::unistd::geteuid().is_root() {
            return Err("mounting a small disk needs root: this test runs as root (CI does)".into());
        }
        std::fs::create_dir_all(at)?;
        let name = format!("berth-test-full-{}", std::process::id());
        ok(&Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), &name]).arg(at).output()?)?;
        Ok(SmallDisk(at.to_owned()))
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> Result<std::path::PathBuf> {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).and_then(|()| f.sync_data()).is_ok() {}
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk is named as such — to registry clients (507 with the registry's error body), to
/// API clients (507 `storage_full`), to the CLI in the middle of an upload (the server's message,
/// not a broken pipe) and at start — and costs nothing: the partial upload is gone, and once space
/// is freed everything works on.
#[test]
fn a_full_disk_is_named_to_every_client_and_loses_nothing() -> Result {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    let disk = SmallDisk::mount(&data, "16m")?;
    let mut p = BerthProcess::start(Path::new(BIN), &data, &[])?;
    let cli = |args: &[&str]| {
        Command::new(BIN).arg("--data-dir").arg(&data).args(args).env("HOME", tmp.path()).env_remove("BERTH_SERVER").output()
    };
    let big = tmp.path().join("big");
    std::fs::write(&big, noise(7, 96 << 20))?;
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o755))?;

    // An upload larger than the disk: the CLI prints the server's reason.
    let out = cli(&["image", "build", "--binary", &big.display().to_string(), "-t", "big:v1"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("the disk holding berth's data is full") && !err.contains("Broken pipe"), "{err}");
    // A registry client gets 507 and the registry's error body.
    let blob = noise(8, 96 << 20);
    let creds = format!("ci:{}", p.token);
    let url = format!("http://{}/v2/raw/blobs/uploads/?digest={}", p.addr, sha256(&blob));
    let r = http("POST", &url, Some(&creds), &[("Content-Type", "application/octet-stream")], &blob)?;
    assert_eq!((r.status, r.code().as_str()), (507, "UNKNOWN"), "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(std::fs::read_dir(data.join("registry/uploads"))?.count(), 0, "a partial upload was kept");

    // The state database on a full disk: 507 storage_full from the API, the message in the CLI.
    let filler = disk.fill()?;
    let body = br#"{"name":"full-disk"}"#;
    let r = http(
        "POST",
        &format!("http://{}/api/v1/repositories", p.addr),
        None,
        &[("Authorization", &format!("Bearer {}", p.token)), ("Content-Type", "application/json")],
        body,
    )?;
    assert_eq!((r.status, r.json()["error"]["code"].as_str()), (507, Some("storage_full")), "{}", String::from_utf8_lossy(&r.body));
    let out = cli(&["repo", "create", "full-disk"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("is full; free space on it"), "{out:?}");

    // Space freed: everything works, nothing was lost.
    std::fs::remove_file(&filler)?;
    ok(&cli(&["repo", "create", "full-disk"])?)?;
    let small = tmp.path().join("small");
    std::fs::write(&small, noise(9, 1 << 20))?;
    std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o755))?;
    ok(&cli(&["image", "build", "--binary", &small.display().to_string(), "-t", "small:v1"])?)?;
    assert!(String::from_utf8_lossy(&cli(&["repo", "list"])?.stdout).contains("full-disk"));

    // A start on a full disk says what is full.
    Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status()?;
    p.child.wait()?;
    let filler = disk.fill()?;
    let (started, out) = start_once(&data)?;
    assert!(!started && out.contains("the disk holding the data directory is full"), "{out}");
    std::fs::remove_file(&filler)?;
    let (started, out) = start_once(&data)?;
    assert!(started, "{out}");
    Ok(())
}

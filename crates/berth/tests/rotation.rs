//! Database credentials rotated under load (as root): guestbook — one service with its
//! credentials in env vars, one with them in a file — on a private LAN with a real database,
//! requests flowing through the router the whole time, each opening a new database connection.
//! Rotations with alternating users, by hand and with the server killed (-9) in every step,
//! must cost no request and leave no failed login on the database.

mod support;

use std::time::{Duration, Instant};

use support::*;

use berth_testkit::Database as Db;

/// A custom rotator doing what the built-in one does for alternating users, through the
/// database's own client, that waits at the step named in `<dir>/block` until `<dir>/release`
/// exists, and logs each step it starts to `<dir>/steps`.
fn blocking_rotator(dir: &std::path::Path, db: &Db, host: &str) -> Result<std::path::PathBuf> {
    let (set, test) = match db {
        Db::Maria(m) => (
            format!(
                "run(['mariadb', '--socket={}', '-uroot', '-e', f\"CREATE USER IF NOT EXISTS '{{u}}'@'%' IDENTIFIED BY '{{pw}}'; ALTER USER '{{u}}'@'%' IDENTIFIED BY '{{pw}}'; GRANT ALL ON guestbook.* TO '{{u}}'@'%';\"])",
                m.socket.display()
            ),
            format!("run(['mariadb', '-h', '{host}', '-u', u, '-e', 'SELECT 1'], {{'MYSQL_PWD': pw}})"),
        ),
        Db::Postgres(p) => (
            format!(
                "run(['psql', '-X', '-h', '{}', '-p', '5432', '-U', 'postgres', '-d', 'postgres', '-c', f\"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{{u}}') THEN CREATE ROLE \\\"{{u}}\\\" LOGIN IN ROLE gb; END IF; END$$; ALTER ROLE \\\"{{u}}\\\" PASSWORD '{{pw}}'\"])",
                p.dir.path().display()
            ),
            format!("run(['psql', '-X', '-h', '{host}', '-U', u, '-d', 'guestbook', '-c', 'SELECT 1'], {{'PGPASSWORD': pw}})"),
        ),
    };
    let d = dir.display();
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, secrets, subprocess, sys, time
step = sys.argv[1]
doc = json.load(sys.stdin)
open('{d}/steps', 'a').write(step + ' start\n')
if os.path.exists('{d}/block') and open('{d}/block').read() == step:
    while not os.path.exists('{d}/release'):
        time.sleep(0.02)
def run(cmd, env={{}}):
    subprocess.run(cmd, check=True, env={{'PATH': os.environ['PATH'], **env}}, stdout=subprocess.DEVNULL)
cur = json.loads(doc['current'])
if step == 'create_secret':
    new = dict(cur)
    u = cur['username']
    new['username'] = u[:-6] if u.endswith('_clone') else u + '_clone'
    new['password'] = secrets.token_hex(16)
    print(json.dumps(new))
elif step in ('set_secret', 'test_secret'):
    p = json.loads(doc['pending'])
    u, pw = p['username'], p['password']
    if step == 'set_secret':
        {set}
    else:
        {test}
"#,
    );
    let path = dir.join("rotator");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    Ok(path)
}

fn rotation(s: &Server, name: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "secret", "describe", name])?)?;
    Ok(v["rotation"].clone())
}

fn rotations(s: &Server) -> Result<u64> {
    Ok(rotation(s, "db-creds")?["status"]["rotations"].as_u64().unwrap_or(0))
}

fn story(db: Db, s: &mut Server, lan_host: &str, bridge: &str, cidr: &str) -> Result {
    let bin = berth_testkit::guestbook_binary()?;
    s.cli_ok(&["image", "build", "--binary", &bin.display().to_string(), "--with-libs", "--port", "8080", "-t", "guestbook:v1"])?;
    s.cli_ok(&["network", "create", "db", "--cidr", cidr, "--attach-bridge", bridge, "--host", &format!("server={lan_host}")])?;
    let put = |name: &str, value: serde_json::Value| -> Result {
        let f = s.dir.join("value.json");
        std::fs::write(&f, value.to_string())?;
        s.cli_ok(&["secret", "create", name, "--from-file", &f.display().to_string()])?;
        std::fs::remove_file(&f)?;
        Ok(())
    };
    put("db-admin", serde_json::json!({"username": "admin", "password": "admin-pw"}))?;
    put(
        "db-creds",
        serde_json::json!({"username": "gb", "password": "s3cret-pw", "host": "server.db.internal", "port": db.port(), "dbname": "guestbook"}),
    )?;
    let kind = db.guestbook_kind();
    let common = [
        "--image",
        "guestbook:v1",
        "--network",
        "db",
        "--egress",
        "networks",
        "--memory",
        "128",
        "--health-check",
        "http",
        "--health-path",
        "/healthz",
        "--min-size",
        "2",
        "--env",
        "DB_HOST=server.db.internal",
        "--env",
    ];
    let kind_env = format!("DB_KIND={kind}");
    let env = ["--secret-env", "DB_USER=db-creds#username", "--secret-env", "DB_PASSWORD=db-creds#password", "--wait"];
    s.cli_ok(&[&["service", "create", "gb-env"][..], &common, &[&kind_env], &env].concat())?;
    let file = ["--secret-file", "/run/secrets/db.json=db-creds", "--env", "DB_CREDENTIALS_FILE=/run/secrets/db.json", "--wait"];
    s.cli_ok(&[&["service", "create", "gb-file"][..], &common, &[&kind_env], &file].concat())?;

    let began = Instant::now();
    let mark = |what: &str| eprintln!("+{:.1}s {what}", began.elapsed().as_secs_f64());
    let router = s.router_http()?;
    let loads = [Load::start(&router, "gb-env.localhost"), Load::start(&router, "gb-file.localhost")];
    for l in &loads {
        l.wait_for(20)?;
    }
    let denied_before = db.failed_logins()?;

    // Built-in rotator, alternating users: by hand, twice.
    let admin = ["--admin-secret", "db-admin", "--strategy", "alternating-users", "--wait"];
    let rotated = s.cli(&[&["secret", "rotate", "db-creds", "--rotator", db.rotator()][..], &admin].concat())?;
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let said = String::from_utf8_lossy(&rotated.stderr).into_owned();
    assert!(said.contains("await_consumers") && said.contains("rotated: version"), "{said}");
    let user = |s: &Server| -> Result<String> {
        let v: serde_json::Value = serde_json::from_str(&s.cli_ok(&["secret", "get", "db-creds"])?)?;
        Ok(v["username"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(user(s)?, "gb_clone");
    s.cli_ok(&["secret", "rotate", "db-creds", "--wait"])?;
    assert_eq!(user(s)?, "gb");
    for l in &loads {
        l.wait_for(20)?;
    }

    // The server killed (-9) while the rotation waits for its consumers; the restarted one finishes it.
    let done = rotations(s)?;
    s.cli_ok(&["secret", "rotate", "db-creds"])?;
    wait_until("the rotation to wait for its consumers", Duration::from_secs(60), || {
        Ok(rotation(s, "db-creds")?["status"]["step"] == "await_consumers")
    })?;
    mark("killing the server while the rotation waits for its consumers");
    s.kill9()?;
    std::thread::sleep(Duration::from_millis(500));
    s.restart()?;
    mark("restarted");
    wait_until("the rotation cut short to finish", Duration::from_secs(120), || Ok(rotations(s)? > done))?;

    // A custom rotator that waits at a chosen step: the server killed (-9) in each.
    let rotator = blocking_rotator(&s.dir, &db, lan_host)?;
    let rotator = rotator.display().to_string();
    s.cli_ok(&["secret", "rotate", "db-creds", "--rotator", "command", "--command", &rotator, "--no-rotate-now"])?;
    for step in ["create_secret", "set_secret", "test_secret", "finish_secret"] {
        let _ = std::fs::remove_file(s.dir.join("release"));
        std::fs::write(s.dir.join("block"), step)?;
        let done = rotations(s)?;
        let started = std::fs::read_to_string(s.dir.join("steps")).unwrap_or_default().matches(&format!("{step} start")).count();
        s.cli_ok(&["secret", "rotate", "db-creds"])?;
        wait_until(step, Duration::from_secs(60), || {
            Ok(std::fs::read_to_string(s.dir.join("steps")).unwrap_or_default().matches(&format!("{step} start")).count() > started)
        })?;
        mark(&format!("killing the server in {step}"));
        s.kill9()?;
        std::fs::write(s.dir.join("release"), "")?;
        s.restart()?;
        mark("restarted");
        wait_until(&format!("the rotation cut short in {step} to finish"), Duration::from_secs(120), || Ok(rotations(s)? > done))?;
        eprintln!("killed in {step}: finished after the restart, CURRENT user {}", user(s)?);
    }
    for l in &loads {
        l.wait_for(20)?;
    }

    let denied = db.failed_logins()? - denied_before;
    let mut failed_total = 0;
    for (l, name) in loads.into_iter().zip(["gb-env", "gb-file"]) {
        let (ok, failed) = l.finish();
        eprintln!("{name}: {} requests, {} failed", ok.len() + failed.len(), failed.len());
        if !failed.is_empty() {
            // What berth's rules refused the service, to tell a refusal of the host's from the database's.
            let described: serde_json::Value = serde_json::from_str(&s.cli_ok(&["-o", "json", "service", "show", name])?)?;
            panic!(
                "{name}: {} of {} failed: {:?}; connections berth refused it: {}",
                failed.len(),
                ok.len() + failed.len(),
                &failed[..failed.len().min(5)],
                described["denied"]
            );
        }
        failed_total += failed.len();
    }
    eprintln!("{} rotations, {failed_total} failed requests, {denied} failed logins", rotations(s)?);
    assert_eq!(denied, 0, "the database refused logins during the rotations");
    Ok(())
}

/// The story on `kind` (`mariadb`, `postgresql`): a server named `name` with its instances in
/// `10.<octet>.<n>.0/24`, the database on a LAN `10.<octet>.250.0/24`.
fn story_on(kind: &str, name: &str, octet: u8) -> Result {
    let mut s = Server::start_with_runtime(name, octet, "")?;
    let bridge = format!("b{name}{}", std::process::id() % 200);
    let (lan, host) = (format!("10.{octet}.250.0/24"), format!("10.{octet}.250.10"));
    let mut lans = Lans::default();
    lans.add(&bridge, &bridge, &[&format!("10.{octet}.250.1/24")], &[], &[&format!("{host}/24")], None)?;
    // On PostgreSQL guestbook makes its table as gb at start; the clone role inherits gb's rights on it.
    let db = Db::start(kind, Some(&bridge), &host, "s3cret-pw", "admin-pw")?;
    let started = Instant::now();
    story(db, &mut s, &host, &bridge, &lan)?;
    eprintln!("the story took {:?}", started.elapsed());
    Ok(())
}

#[test]
fn mariadb_credentials_rotate_under_load_with_no_failed_request() -> Result {
    story_on("mariadb", "rm", 242)
}

#[test]
fn postgresql_credentials_rotate_under_load_with_no_failed_request() -> Result {
    story_on("postgresql", "rp", 246)
}

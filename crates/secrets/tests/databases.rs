//! The database rotators against real servers (Debian's mariadb-server and postgresql, started
//! here on loopback): both strategies, the clone made with the base user's grants, and bad input
//! said clearly with CURRENT left as it was. As root.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_secrets::rotation::{self, Consumers, RotationConfig, RotatorKind, Strategy};
use berth_secrets::{KeySource, Reference, Secrets, Selector};
use berth_store::{SqliteStore, Store};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// No services: nothing to wait for; `db.lan.internal` is loopback.
struct Nobody;

#[async_trait::async_trait]
impl Consumers for Nobody {
    async fn lagging(&self, _secret: &str, _version: &str) -> Vec<String> {
        Vec::new()
    }

    async fn resolve(&self, host: &str) -> Option<IpAddr> {
        (host == "db.lan.internal").then(|| IpAddr::from([127, 0, 0, 1]))
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

struct Fixture {
    _dir: tempfile::TempDir,
    secrets: Arc<Secrets>,
    runner: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
        let source = KeySource::File { path: dir.path().join("master.key"), create: true };
        let secrets = Arc::new(Secrets::open(store, &source).await?);
        let runner = tokio::spawn(rotation::run(secrets.clone(), Arc::new(Nobody)));
        Ok(Fixture { _dir: dir, secrets, runner })
    }

    async fn value(&self, name: &str) -> Result<serde_json::Value> {
        let r: Reference = name.parse()?;
        let (v, _) = self.secrets.read(&r, &Selector::default(), "test", now()).await?;
        Ok(serde_json::from_str(v.expose())?)
    }

    /// Rotates `name` now and waits until that rotation is done (Ok) or has failed (its reason).
    async fn rotate(&self, name: &str, config: Option<RotationConfig>) -> Result<std::result::Result<(), String>> {
        let before = self.secrets.rotate(name, config, true, "test", now()).await?.status.rotations;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.secrets.describe(name).await?.rotation.map(|r| r.status).unwrap_or_default();
            if st.rotations > before {
                return Ok(Ok(()));
            }
            if let Some(e) = st.last_error {
                return Ok(Err(e));
            }
            if Instant::now() > deadline {
                return Err(format!("rotation of {name} did not end: {st:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.runner.abort();
    }
}

fn config(kind: RotatorKind, strategy: Strategy, admin: Option<&str>) -> RotationConfig {
    RotationConfig { rotator: kind, command: None, strategy, admin_secret: admin.map(str::to_owned), schedule: None }
}

/// Whether a user can log in over TCP and read the guestbook database's table.
trait Logins {
    fn logs_in(&self, user: &str, password: &str) -> bool;
}

impl Logins for berth_testkit::MariaDb {
    fn logs_in(&self, user: &str, password: &str) -> bool {
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        std::process::Command::new("mariadb")
            .args(["--no-defaults", "-h", "127.0.0.1", "-P", port, "-u", user, "-N", "-B", "guestbook", "-e", "SELECT COUNT(*) FROM notes"])
            .env("MYSQL_PWD", password)
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Logins for berth_testkit::Postgres {
    fn logs_in(&self, user: &str, password: &str) -> bool {
        let port = self.addr.rsplit(':').next().unwrap_or_default();
        std::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", port, "-U", user, "-d", "guestbook", "-c", "SELECT COUNT(*) FROM notes"])
            .env("PGPASSWORD", password)
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

fn text(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// Alternating users: each rotation changes the user CURRENT does not name, so the credential
/// consumers hold keeps working until the next one; the clone can do what the base user can.
async fn alternating(db: &dyn Logins, kind: RotatorKind, port: u16, admin: &str) -> Result {
    let f = Fixture::new().await?;
    let s = &f.secrets;
    s.create("db-admin", "", admin, "test", now()).await?;
    let first =
        serde_json::json!({"host": "db.lan.internal", "port": port, "username": "gb", "password": "password", "dbname": "guestbook"});
    s.create("db", "", &first.to_string(), "test", now()).await?;
    f.rotate("db", Some(config(kind, Strategy::AlternatingUsers, Some("db-admin")))).await??;
    let mut previous = first;
    for round in 0..3 {
        let current = f.value("db").await?;
        let (user, pw) = (text(&current, "username"), text(&current, "password"));
        assert_eq!(user, if round % 2 == 0 { "gb_clone" } else { "gb" }, "round {round}");
        assert!(db.logs_in(&user, &pw), "round {round}: CURRENT logs in and reads the base user's table");
        assert!(db.logs_in(&text(&previous, "username"), &text(&previous, "password")), "round {round}: PREVIOUS still works");
        previous = current;
        if round < 2 {
            f.rotate("db", None).await??;
        }
    }
    Ok(())
}

/// One user (whose password is `password`): its password changes, and the old one stops
/// working.
async fn single(db: &dyn Logins, kind: RotatorKind, port: u16, admin: Option<&str>) -> Result {
    let f = Fixture::new().await?;
    let s = &f.secrets;
    if let Some(a) = admin {
        s.create("db-admin", "", a, "test", now()).await?;
    }
    let start = "password";
    assert!(db.logs_in("gb", start));
    let first = serde_json::json!({"host": "127.0.0.1", "port": port, "username": "gb", "password": start, "dbname": "guestbook"});
    s.create("db", "", &first.to_string(), "test", now()).await?;
    f.rotate("db", Some(config(kind, Strategy::SingleUser, admin.map(|_| "db-admin")))).await??;
    let v = f.value("db").await?;
    assert_eq!(text(&v, "username"), "gb");
    assert!(db.logs_in("gb", &text(&v, "password")));
    assert!(!db.logs_in("gb", start), "the old password is gone");
    Ok(())
}

/// Bad input: each failure names what is wrong and leaves CURRENT as it was.
async fn bad_input(kind: RotatorKind, port: u16, admin: &str) -> Result {
    let f = Fixture::new().await?;
    let s = &f.secrets;
    let db = serde_json::json!({"host": "127.0.0.1", "port": port, "username": "gb", "password": "password"}).to_string();
    let cases: [(&str, &str, String, &str); 4] = [
        ("wrong-admin", r#"{"username":"admin","password":"not-the-password"}"#, db.clone(), "connecting as the admin secret's user"),
        ("unreachable", admin, db.replace(&port.to_string(), "1"), "127.0.0.1:1"),
        ("not-json", admin, "just a password".into(), "is not a JSON object"),
        ("no-network", admin, db.replace("127.0.0.1", "db.nowhere.internal"), "not a host of any berth network"),
    ];
    for (name, admin_value, value, says) in cases {
        s.create(&format!("{name}-admin"), "", admin_value, "test", now()).await?;
        let made = s.create(name, "", &value, "test", now()).await?;
        let failed = f.rotate(name, Some(config(kind, Strategy::AlternatingUsers, Some(&format!("{name}-admin"))))).await?;
        let why = failed.err().unwrap_or_default();
        assert!(why.contains(says), "{name}: {why}");
        assert!(!why.contains("not-the-password") && !why.contains("admin-pw"), "no value in the reason: {why}");
        let info = s.describe(name).await?;
        let current = info.versions.iter().find(|v| v.labels.iter().any(|l| l == "CURRENT")).map(|v| v.id.clone());
        assert_eq!(current, Some(made.id), "{name}: CURRENT stays");
        s.cancel_rotation(name, "test", now()).await?;
    }
    // A deleted admin secret.
    s.create("gone-admin", "", admin, "test", now()).await?;
    s.create("gone", "", &db, "test", now()).await?;
    s.delete("gone-admin", 7, "test", now()).await?;
    let why = f.rotate("gone", Some(config(kind, Strategy::AlternatingUsers, Some("gone-admin")))).await?.err().unwrap_or_default();
    assert!(why.contains("the admin secret: secret `gone-admin` is deleted"), "{why}");
    Ok(())
}

#[tokio::test]
async fn mariadb_users_are_rotated() -> Result {
    let port = free_port()?;
    let db = berth_testkit::MariaDb::start(None, "127.0.0.1", port, "password")?;
    db.sql("CREATE TABLE guestbook.notes (id INT PRIMARY KEY); CREATE USER 'admin'@'%' IDENTIFIED BY 'admin-pw'; GRANT ALL ON *.* TO 'admin'@'%' WITH GRANT OPTION;")?;
    let admin = r#"{"username":"admin","password":"admin-pw"}"#;
    bad_input(RotatorKind::Mysql, port, admin).await?;
    alternating(&db, RotatorKind::Mysql, port, admin).await?;
    let grants = db.sql("SHOW GRANTS FOR 'gb_clone'@'%'")?;
    assert!(grants.contains("ON `guestbook`.* TO `gb_clone`@`%`"), "{grants}");
    // Alternating rounds changed gb's password too: give it back for the single-user cases.
    db.sql("ALTER USER 'gb'@'%' IDENTIFIED BY 'password'")?;
    single(&db, RotatorKind::Mysql, port, Some(admin)).await?;
    db.sql("ALTER USER 'gb'@'%' IDENTIFIED BY 'password'")?;
    single(&db, RotatorKind::Mysql, port, None).await
}

#[tokio::test]
async fn postgresql_roles_are_rotated() -> Result {
    let port = free_port()?;
    let db = berth_testkit::Postgres::start(None, "127.0.0.1", port, "password")?;
    db.sql("CREATE USER admin SUPERUSER PASSWORD 'admin-pw'")?;
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "gb",
            "-d",
            "guestbook",
            "-c",
            "CREATE TABLE notes (id INT PRIMARY KEY)",
        ])
        .env("PGPASSWORD", "password")
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = r#"{"username":"admin","password":"admin-pw"}"#;
    bad_input(RotatorKind::Postgresql, port, admin).await?;
    alternating(&db, RotatorKind::Postgresql, port, admin).await?;
    let member = db.sql("SELECT pg_has_role('gb_clone', 'gb', 'USAGE')")?;
    assert_eq!(member.trim(), "t", "the clone has the base role's privileges");
    db.sql("ALTER ROLE gb PASSWORD 'password'")?;
    single(&db, RotatorKind::Postgresql, port, Some(admin)).await?;
    db.sql("ALTER ROLE gb PASSWORD 'password'")?;
    single(&db, RotatorKind::Postgresql, port, None).await
}

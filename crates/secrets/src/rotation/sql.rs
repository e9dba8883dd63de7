//! The database rotators: MySQL/MariaDB users and PostgreSQL roles. A secret they rotate is a
//! JSON object as Secrets Manager's database secrets are: `username`, `password`, and where the
//! database is — `host` (a `<host>.<network>.internal` name berth resolves), `port` and `dbname`.
//! An admin secret has the same shape; its `host`/`port`, when given, are where the admin
//! connects.
//!
//! Every step may run twice (after a crash) and change nothing more: as the admin, `set_secret`
//! creates a user only if it is missing and sets a password the user may already have; as the
//! user itself, it finds PENDING already working when CURRENT no longer does. No step tries a
//! login that should fail, so a rotation's normal course leaves no failed login on the database.

use std::time::Duration;

use serde_json::{Map, Value};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Executor, Row};

use super::{Consumers, RotatorKind, StepInput, Strategy};
use crate::model::Plain;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CLONE_SUFFIX: &str = "_clone";
const PASSWORD_LEN: usize = 32;

/// A database user and where it connects.
struct Creds {
    username: String,
    password: String,
    at: Endpoint,
}

#[derive(Clone)]
struct Endpoint {
    host: Option<String>,
    port: Option<u16>,
    dbname: Option<String>,
}

fn object(what: &str, value: &Plain) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(value.expose()) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(format!("{what} is not a JSON object with `username` and `password` (like {{\"username\":\"app\",\"password\":\"…\",\"host\":\"db.lan.internal\",\"port\":3306}})")),
    }
}

fn creds(what: &str, value: &Plain) -> Result<Creds, String> {
    let m = object(what, value)?;
    let text = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let username = text("username").ok_or_else(|| format!("{what} has no `username`"))?;
    let password = text("password").ok_or_else(|| format!("{what} has no `password`"))?;
    let port = match m.get("port") {
        None => None,
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    if m.contains_key("port") && port.is_none() {
        return Err(format!("{what} has a `port` that is not a port number"));
    }
    check_user(what, &username)?;
    check_password(what, &password)?;
    Ok(Creds { username, password, at: Endpoint { host: text("host"), port, dbname: text("dbname").or_else(|| text("database")) } })
}

fn check_user(what: &str, user: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&user.len()) && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.$".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: the username must be 1–63 letters, digits and `_-.$`"))
    }
}

fn check_password(what: &str, password: &str) -> Result<(), String> {
    if password.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\') && !password.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: the password has a quote, a backslash or a character outside printable ASCII; rotators make passwords of letters and digits"))
    }
}

/// `create_secret`: CURRENT with a new password — and, with alternating users, the other user.
pub(super) fn create(strategy: Strategy, input: &StepInput) -> Result<String, String> {
    let current = creds("the secret's CURRENT value", &input.current)?;
    let mut doc = object("the secret's CURRENT value", &input.current)?;
    if strategy == Strategy::AlternatingUsers {
        let other = match current.username.strip_suffix(CLONE_SUFFIX) {
            Some(base) => base.to_owned(),
            None => format!("{}{CLONE_SUFFIX}", current.username),
        };
        check_user("the clone user", &other)?;
        doc.insert("username".into(), Value::String(other));
    }
    doc.insert("password".into(), Value::String(super::random_password(PASSWORD_LEN).map_err(|e| e.to_string())?));
    Ok(Value::Object(doc).to_string())
}

fn pending(input: &StepInput) -> Result<Creds, String> {
    let p = input.pending.as_ref().ok_or("no PENDING value")?;
    creds("the PENDING value", p)
}

/// `set_secret`: the database user of PENDING gets its password (and, with alternating users, is
/// made as a clone of the other when it does not exist yet).
pub(super) async fn set(kind: RotatorKind, input: &StepInput, consumers: &dyn Consumers) -> Result<(), String> {
    let target = pending(input)?;
    let current = creds("the secret's CURRENT value", &input.current)?;
    let redact = target.password.clone();
    let Some(admin) = &input.admin else {
        if target.username != current.username {
            return Err("the PENDING value names another user than CURRENT: that takes alternating users and an admin secret".into());
        }
        // As the user itself: with CURRENT, or — when a crash came after the change — PENDING
        // already works and there is nothing left to do. CURRENT is tried first so that a
        // rotation's normal course makes no failed login on the database.
        let mut db = match Db::connect(kind, &current, &current.at, consumers).await {
            Ok(db) => db,
            Err(_) if Db::connect(kind, &target, &target.at, consumers).await.is_ok() => return Ok(()),
            Err(e) => return Err(format!("connecting with CURRENT: {e}")),
        };
        let sql = match kind {
            RotatorKind::Postgresql => format!("ALTER ROLE CURRENT_USER WITH PASSWORD '{}'", target.password),
            // MariaDB lets a user without the CREATE USER privilege change its own password
            // with SET PASSWORD only; MySQL 8 with ALTER USER only.
            _ if db.texts_raw("SELECT VERSION()").await?.iter().any(|v| v.contains("MariaDB")) => {
                format!("SET PASSWORD = PASSWORD('{}')", target.password)
            }
            _ => format!("ALTER USER CURRENT_USER() IDENTIFIED BY '{}'", target.password),
        };
        return db.exec(&sql, &redact).await;
    };
    // As the admin: every statement below may run again after a crash and change nothing more.
    let admin = creds("the admin secret", admin)?;
    let at = Endpoint {
        host: admin.at.host.clone().or(current.at.host.clone()),
        port: admin.at.port.or(current.at.port),
        dbname: admin.at.dbname.clone(),
    };
    let mut db = Db::connect(kind, &admin, &at, consumers).await.map_err(|e| format!("connecting as the admin secret's user: {e}"))?;
    let make_clone =
        input.strategy == Strategy::AlternatingUsers && target.username != current.username && target.username.ends_with(CLONE_SUFFIX);
    match kind {
        RotatorKind::Postgresql => {
            let exists = !db.texts("SELECT rolname::text FROM pg_roles WHERE rolname = $1", &target.username).await?.is_empty();
            let sql = if exists {
                format!("ALTER ROLE \"{}\" WITH LOGIN PASSWORD '{}'", target.username, target.password)
            } else if make_clone {
                // Members inherit the base role's privileges, the ones granted later too.
                format!("CREATE ROLE \"{}\" WITH LOGIN PASSWORD '{}' IN ROLE \"{}\"", target.username, target.password, current.username)
            } else {
                return Err(format!("role `{}` does not exist", target.username));
            };
            db.exec(&sql, &redact).await
        }
        _ => {
            let hosts = db.texts("SELECT Host FROM mysql.user WHERE User = ?", &target.username).await?;
            if hosts.is_empty() && !make_clone {
                return Err(format!("user `{}` does not exist", target.username));
            }
            let hosts =
                if hosts.is_empty() { db.texts("SELECT Host FROM mysql.user WHERE User = ?", &current.username).await? } else { hosts };
            if hosts.is_empty() {
                return Err(format!("user `{}` does not exist, so its clone cannot be made", current.username));
            }
            for host in &hosts {
                if host.contains(['\'', '\\']) {
                    return Err(format!("user `{}` has a host with a quote: {host}", target.username));
                }
                let (user, pw) = (&target.username, &target.password);
                db.exec(&format!("CREATE USER IF NOT EXISTS '{user}'@'{host}' IDENTIFIED BY '{pw}'"), &redact).await?;
                db.exec(&format!("ALTER USER '{user}'@'{host}' IDENTIFIED BY '{pw}'"), &redact).await?;
                if make_clone {
                    // The clone gets the base user's grants, again at each rotation: grants
                    // added to the base user since are carried over.
                    let grants = db.texts_raw(&format!("SHOW GRANTS FOR '{}'@'{host}'", current.username)).await?;
                    for grant in grants {
                        if let Some(sql) = cloned_grant(&grant, &current.username, user, host) {
                            db.exec(&sql, &redact).await?;
                        }
                    }
                }
            }
            Ok(())
        }
    }
}

/// A `SHOW GRANTS` line of `base@host` as a grant to `clone@host`, without the password hash
/// MariaDB prints on the USAGE line.
fn cloned_grant(grant: &str, base: &str, clone: &str, host: &str) -> Option<String> {
    if !grant.starts_with("GRANT ") {
        return None;
    }
    let mut out = grant.to_owned();
    for (q, r) in [('`', '`'), ('\'', '\'')] {
        out = out.replace(&format!(" TO {q}{base}{r}@{q}{host}{r}"), &format!(" TO `{clone}`@`{host}`"));
    }
    if !out.contains(&format!(" TO `{clone}`@`{host}`")) {
        return None;
    }
    const HASH: &str = " IDENTIFIED BY PASSWORD '";
    if let Some(at) = out.find(HASH) {
        let rest = &out[at + HASH.len()..];
        let end = rest.find('\'').map_or(out.len(), |e| at + HASH.len() + e + 1);
        out.replace_range(at..end, "");
    }
    Some(out)
}

/// `test_secret`: a connection with the PENDING credentials, and a query.
pub(super) async fn test(kind: RotatorKind, input: &StepInput, consumers: &dyn Consumers) -> Result<(), String> {
    let target = pending(input)?;
    let mut db = Db::connect(kind, &target, &target.at, consumers).await.map_err(|e| format!("connecting with PENDING: {e}"))?;
    db.texts_raw("SELECT 1").await.map(drop)
}

enum Db {
    My(MySqlConnection),
    Pg(PgConnection),
}

impl Db {
    /// Connects as `user` to where `at` says.
    async fn connect(kind: RotatorKind, user: &Creds, at: &Endpoint, consumers: &dyn Consumers) -> Result<Db, String> {
        let name = at.host.clone().ok_or("the secret has no `host`")?;
        let host = match consumers.resolve(&name).await {
            Some(ip) => ip.to_string(),
            None if name.ends_with(".internal") => return Err(format!("`{name}` is not a host of any berth network")),
            None => name.clone(),
        };
        let connecting = async {
            match kind {
                RotatorKind::Postgresql => {
                    let o = PgConnectOptions::new()
                        .host(&host)
                        .port(at.port.unwrap_or(5432))
                        .username(&user.username)
                        .password(&user.password)
                        .database(at.dbname.as_deref().unwrap_or("postgres"));
                    PgConnection::connect_with(&o).await.map(Db::Pg)
                }
                _ => {
                    let mut o = MySqlConnectOptions::new()
                        .host(&host)
                        .port(at.port.unwrap_or(3306))
                        .username(&user.username)
                        .password(&user.password);
                    if let Some(db) = &at.dbname {
                        o = o.database(db);
                    }
                    MySqlConnection::connect_with(&o).await.map(Db::My)
                }
            }
        };
        let port = at.port.unwrap_or(if kind == RotatorKind::Postgresql { 5432 } else { 3306 });
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(e)) => Err(format!("{name}:{port} as `{}`: {}", user.username, redacted(&e.to_string(), &user.password))),
            Err(_) => Err(format!("{name}:{port} did not answer within {} s", CONNECT_TIMEOUT.as_secs())),
        }
    }

    async fn exec(&mut self, sql: &str, secret: &str) -> Result<(), String> {
        let done = match self {
            Db::My(c) => (&mut *c).execute(sqlx::raw_sql(sql)).await.map(drop),
            Db::Pg(c) => (&mut *c).execute(sqlx::raw_sql(sql)).await.map(drop),
        };
        done.map_err(|e| redacted(&e.to_string(), secret))
    }

    /// The first column of each row of `sql` with one text parameter.
    async fn texts(&mut self, sql: &str, param: &str) -> Result<Vec<String>, String> {
        let rows = match self {
            Db::My(c) => (&mut *c).fetch_all(sqlx::query(sql).bind(param)).await.map(|r| r.iter().map(my_text).collect()),
            Db::Pg(c) => (&mut *c)
                .fetch_all(sqlx::query(sql).bind(param))
                .await
                .map(|r| r.iter().map(|r| r.try_get::<String, _>(0).unwrap_or_default()).collect()),
        };
        rows.map_err(|e| e.to_string())
    }

    async fn texts_raw(&mut self, sql: &str) -> Result<Vec<String>, String> {
        let rows = match self {
            Db::My(c) => (&mut *c).fetch_all(sqlx::raw_sql(sql)).await.map(|r| r.iter().map(my_text).collect()),
            Db::Pg(c) => (&mut *c).fetch_all(sqlx::raw_sql(sql)).await.map(|r| {
                r.iter()
                    .map(|r| r.try_get::<i32, _>(0).map(|n| n.to_string()).or_else(|_| r.try_get::<String, _>(0)).unwrap_or_default())
                    .collect()
            }),
        };
        rows.map_err(|e| e.to_string())
    }
}

/// A MySQL text column, which MariaDB may send as binary.
fn my_text(row: &sqlx::mysql::MySqlRow) -> String {
    row.try_get::<String, _>(0)
        .or_else(|_| row.try_get::<Vec<u8>, _>(0).map(|b| String::from_utf8_lossy(&b).into_owned()))
        .or_else(|_| row.try_get::<i64, _>(0).map(|n| n.to_string()))
        .unwrap_or_default()
}

fn redacted(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_are_carried_over_to_the_clone_without_the_hash() {
        let g = "GRANT USAGE ON *.* TO `gb`@`%` IDENTIFIED BY PASSWORD '*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19'";
        assert_eq!(cloned_grant(g, "gb", "gb_clone", "%").as_deref(), Some("GRANT USAGE ON *.* TO `gb_clone`@`%`"));
        let g = "GRANT ALL PRIVILEGES ON `guestbook`.* TO `gb`@`%` WITH GRANT OPTION";
        assert_eq!(
            cloned_grant(g, "gb", "gb_clone", "%").as_deref(),
            Some("GRANT ALL PRIVILEGES ON `guestbook`.* TO `gb_clone`@`%` WITH GRANT OPTION")
        );
        let g = "GRANT SELECT ON `db`.* TO 'gb'@'10.0.0.%' IDENTIFIED BY PASSWORD '*AB' WITH GRANT OPTION";
        assert_eq!(
            cloned_grant(g, "gb", "gb_clone", "10.0.0.%").as_deref(),
            Some("GRANT SELECT ON `db`.* TO `gb_clone`@`10.0.0.%` WITH GRANT OPTION")
        );
        assert_eq!(cloned_grant("GRANT SELECT ON *.* TO `other`@`%`", "gb", "gb_clone", "%"), None);
    }

    fn input(current: &str) -> StepInput {
        StepInput {
            secret: "db".into(),
            version: String::new(),
            strategy: Strategy::AlternatingUsers,
            current: Plain(current.into()),
            pending: None,
            admin: None,
        }
    }

    #[test]
    fn alternating_users_take_turns_and_keep_the_rest_of_the_value() -> Result<(), Box<dyn std::error::Error>> {
        let first = create(Strategy::AlternatingUsers, &input(r#"{"username":"gb","password":"x","host":"db.lan.internal","port":3306}"#))?;
        let v: Value = serde_json::from_str(&first)?;
        assert_eq!(v["username"], "gb_clone");
        assert_eq!(v["host"], "db.lan.internal");
        assert_eq!(v["port"], 3306);
        let pw = v["password"].as_str().unwrap_or_default();
        assert!(pw.len() == 32 && pw.bytes().all(|b| b.is_ascii_alphanumeric()), "{pw}");
        let second = create(Strategy::AlternatingUsers, &input(&first))?;
        assert_eq!(serde_json::from_str::<Value>(&second)?["username"], "gb");
        let single = create(Strategy::SingleUser, &input(&first))?;
        assert_eq!(serde_json::from_str::<Value>(&single)?["username"], "gb_clone");
        Ok(())
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (value, says) in [
            ("not json", "is not a JSON object"),
            (r#"{"password":"x"}"#, "has no `username`"),
            (r#"{"username":"gb"}"#, "has no `password`"),
            (r#"{"username":"g'b","password":"x"}"#, "the username must be"),
            (r#"{"username":"gb","password":"it's"}"#, "has a quote"),
            (r#"{"username":"gb","password":"x","port":"http"}"#, "not a port number"),
        ] {
            let e = create(Strategy::SingleUser, &input(value)).err().unwrap_or_default();
            assert!(e.contains(says), "{value}: {e}");
            assert!(!e.contains("it's"), "{e}");
        }
    }
}

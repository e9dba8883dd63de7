//! `guestbook`: the app of berth's story — a small web app whose entries live in MySQL/MariaDB
//! or PostgreSQL, reached over a private network. It connects to its database at start and exits
//! non-zero when it cannot, so a deployment without its database never becomes ready.
//!
//! - `GET /` lists the newest entries as text; `GET /entries` as JSON.
//! - `POST /entries` with `{"name": …, "message": …}` adds one.
//! - `GET /healthz` answers `ok` when the database answers `SELECT 1`.
//!
//! `guestbook ping [COUNT]` checks the database as configured instead of serving: it connects
//! COUNT times (1 by default), each time asking `SELECT 1` on a new connection, prints one JSON
//! line with the microseconds each took (`{"connects":…,"failed":…,"us":[…],"error":…}`) and
//! exits non-zero if any failed — in an instance, it shows whether its network reaches the
//! database, and how fast.
//!
//! Configuration (environment): `PORT` (8080), `DB_KIND` (`mysql`, the default, or `postgres`),
//! `DB_HOST`, `DB_PORT` (3306 or 5432), `DB_NAME` (`guestbook`), `DB_USER`, and `DB_PASSWORD`
//! or `DB_PASSWORD_FILE` — or `DB_CREDENTIALS_FILE`, a JSON object with `username` and
//! `password` (a database secret as a file, whose user changes with alternating-users
//! rotation). Credentials are read again for every new connection (one per request), so a
//! rotated file is followed without a restart.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Row};

/// Where the database is and who the app is there.
struct Config {
    postgres: bool,
    host: String,
    port: u16,
    name: String,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    credentials_file: Option<String>,
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let postgres = match var("DB_KIND").as_deref() {
            None | Some("mysql") | Some("mariadb") => false,
            Some("postgres") | Some("postgresql") => true,
            Some(other) => return Err(format!("DB_KIND `{other}`: use mysql or postgres")),
        };
        let port = match var("DB_PORT") {
            Some(p) => p.parse().map_err(|_| format!("DB_PORT `{p}` is not a port"))?,
            None if postgres => 5432,
            None => 3306,
        };
        Ok(Config {
            postgres,
            host: var("DB_HOST").ok_or("DB_HOST is not set: name the database server")?,
            port,
            name: var("DB_NAME").unwrap_or_else(|| "guestbook".into()),
            user: var("DB_USER"),
            password: var("DB_PASSWORD"),
            password_file: var("DB_PASSWORD_FILE"),
            credentials_file: var("DB_CREDENTIALS_FILE"),
        })
    }

    /// The user and password as they are now: from the credentials file, or `DB_USER` with
    /// the password file's first line or `DB_PASSWORD`.
    fn credentials(&self) -> Result<(String, String), String> {
        if let Some(f) = &self.credentials_file {
            let text = std::fs::read_to_string(f).map_err(|e| format!("reading DB_CREDENTIALS_FILE {f}: {e}"))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| format!("DB_CREDENTIALS_FILE {f} is not a JSON object"))?;
            let field = |k: &str| v[k].as_str().map(str::to_owned).ok_or(format!("DB_CREDENTIALS_FILE {f} has no `{k}`"));
            return Ok((field("username")?, field("password")?));
        }
        let user = self.user.clone().ok_or("DB_USER is not set")?;
        let password = match (&self.password_file, &self.password) {
            (Some(f), _) => std::fs::read_to_string(f)
                .map(|p| p.lines().next().unwrap_or("").to_owned())
                .map_err(|e| format!("reading DB_PASSWORD_FILE {f}: {e}"))?,
            (None, Some(p)) => p.clone(),
            (None, None) => return Err("neither DB_PASSWORD nor DB_PASSWORD_FILE is set".into()),
        };
        Ok((user, password))
    }
}

/// One connection, of either kind.
enum Db {
    My(MySqlConnection),
    Pg(PgConnection),
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    message: String,
}

impl Db {
    async fn connect(c: &Config) -> Result<Db, String> {
        let (user, password) = c.credentials()?;
        let failed = |e: sqlx::Error| format!("connecting to the database at {}:{} as {user}: {e}", c.host, c.port);
        if c.postgres {
            let o = PgConnectOptions::new().host(&c.host).port(c.port).username(&user).password(&password).database(&c.name);
            PgConnection::connect_with(&o).await.map(Db::Pg).map_err(failed)
        } else {
            let o = MySqlConnectOptions::new().host(&c.host).port(c.port).username(&user).password(&password).database(&c.name);
            MySqlConnection::connect_with(&o).await.map(Db::My).map_err(failed)
        }
    }

    async fn execute(&mut self, mysql: &str, postgres: &str, binds: &[&str]) -> Result<(), sqlx::Error> {
        match self {
            Db::My(c) => binds.iter().fold(sqlx::query(mysql), |q, b| q.bind(*b)).execute(c).await.map(drop),
            Db::Pg(c) => binds.iter().fold(sqlx::query(postgres), |q, b| q.bind(*b)).execute(c).await.map(drop),
        }
    }

    async fn entries(&mut self) -> Result<Vec<Entry>, sqlx::Error> {
        let sql = "SELECT name, message FROM entries ORDER BY id DESC LIMIT 100";
        let entry = |name: String, message: String| Entry { name, message };
        match self {
            Db::My(c) => sqlx::query(sql).fetch_all(c).await?.iter().map(|r| Ok(entry(r.try_get(0)?, r.try_get(1)?))).collect(),
            Db::Pg(c) => sqlx::query(sql).fetch_all(c).await?.iter().map(|r| Ok(entry(r.try_get(0)?, r.try_get(1)?))).collect(),
        }
    }

    async fn close(self) {
        let _ = match self {
            Db::My(c) => c.close().await,
            Db::Pg(c) => c.close().await,
        };
    }
}

type Failure = (StatusCode, String);

fn unavailable(e: impl std::fmt::Display) -> Failure {
    eprintln!("guestbook: {e}");
    (StatusCode::SERVICE_UNAVAILABLE, format!("the database failed: {e}\n"))
}

async fn list(config: &Config) -> Result<Vec<Entry>, Failure> {
    let mut db = Db::connect(config).await.map_err(unavailable)?;
    let entries = db.entries().await.map_err(unavailable);
    db.close().await;
    entries
}

async fn index(State(config): State<Arc<Config>>) -> Result<String, Failure> {
    let entries = list(&config).await?;
    let mut page = format!("guestbook: {} entries\n", entries.len());
    for e in entries {
        page.push_str(&format!("{}: {}\n", e.name, e.message));
    }
    Ok(page)
}

async fn entries(State(config): State<Arc<Config>>) -> Result<Json<Vec<Entry>>, Failure> {
    list(&config).await.map(Json)
}

async fn add(State(config): State<Arc<Config>>, Json(entry): Json<Entry>) -> Result<StatusCode, Failure> {
    if entry.name.is_empty() || entry.name.len() > 100 || entry.message.len() > 1000 {
        return Err((StatusCode::BAD_REQUEST, "name must be 1–100 characters, message at most 1000\n".into()));
    }
    let mut db = Db::connect(&config).await.map_err(unavailable)?;
    let added = db
        .execute(
            "INSERT INTO entries (name, message) VALUES (?, ?)",
            "INSERT INTO entries (name, message) VALUES ($1, $2)",
            &[&entry.name, &entry.message],
        )
        .await;
    db.close().await;
    added.map(|()| StatusCode::CREATED).map_err(unavailable)
}

async fn healthz(State(config): State<Arc<Config>>) -> Result<&'static str, Failure> {
    let mut db = Db::connect(&config).await.map_err(unavailable)?;
    let answered = db.execute("SELECT 1", "SELECT 1", &[]).await;
    db.close().await;
    answered.map(|()| "ok\n").map_err(unavailable)
}

/// `guestbook ping [COUNT]`: COUNT connections, each with a `SELECT 1`, timed.
async fn ping(config: &Config, count: &str) -> ! {
    let Ok(count) = count.parse::<u32>() else {
        eprintln!("guestbook: ping takes a number of connections, not `{count}`");
        std::process::exit(2);
    };
    let (mut us, mut failed, mut error) = (Vec::new(), 0u32, None);
    for _ in 0..count {
        let t0 = std::time::Instant::now();
        let answered = match Db::connect(config).await {
            Ok(mut db) => {
                let r = db.execute("SELECT 1", "SELECT 1", &[]).await.map_err(|e| e.to_string());
                let took = t0.elapsed();
                db.close().await;
                r.map(|()| took)
            }
            Err(e) => Err(e),
        };
        match answered {
            Ok(took) => us.push(took.as_micros() as u64),
            Err(e) => {
                failed += 1;
                error.get_or_insert(e);
            }
        }
    }
    let report = serde_json::json!({"connects": count, "failed": failed, "us": us, "error": error});
    println!("{report}");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = match Config::from_env() {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("guestbook: {e}");
            std::process::exit(2);
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => {}
        Some("ping") => ping(&config, args.get(1).map_or("1", String::as_str)).await,
        Some(other) => {
            eprintln!("guestbook: unknown command `{other}`: run it without arguments to serve, or `guestbook ping [COUNT]`");
            std::process::exit(2);
        }
    }
    // The database first: without it the app is of no use, and says so by exiting.
    let mut db = match Db::connect(&config).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("guestbook: {e}");
            std::process::exit(1);
        }
    };
    // PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against itself: two instances starting
    // at once may both try to make the table, and one fails on a unique index of the catalog.
    // That one tries again (and then finds the table).
    let mut made = Ok(());
    for attempt in 0..3 {
        made = db
            .execute(
                "CREATE TABLE IF NOT EXISTS entries (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(100) NOT NULL, message VARCHAR(1000) NOT NULL)",
                "CREATE TABLE IF NOT EXISTS entries (id BIGSERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL, message VARCHAR(1000) NOT NULL)",
                &[],
            )
            .await;
        if made.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
    }
    db.close().await;
    if let Err(e) = made {
        eprintln!("guestbook: creating the entries table: {e}");
        std::process::exit(1);
    }
    let port = std::env::var("PORT").ok().and_then(|p| p.parse::<u16>().ok()).unwrap_or(8080);
    let app = Router::new()
        .route("/", get(index))
        .route("/entries", get(entries).post(add))
        .route("/healthz", get(healthz))
        .with_state(config.clone());
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("guestbook: listening on port {port}: {e}");
            std::process::exit(1);
        }
    };
    println!("guestbook listening on port {port}, database {}:{}", config.host, config.port);
    let stop = async {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            term.recv().await;
        }
    };
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
        eprintln!("guestbook: {e}");
        std::process::exit(1);
    }
}

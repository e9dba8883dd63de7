//! The SQLite backend of [`Store`]: one connection in WAL mode, used from blocking threads so
//! async callers never stall the runtime. Schema changes are numbered migrations applied at open,
//! tracked in `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_core::metrics::Point;
use berth_core::{Digest, LifecycleRule, Scope, TagPolicy};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::history;
use crate::{
    DeliveryRecord, DocRecord, ManifestRecord, PushEvent, RepositoryRecord, Result, SecretAudit, ServiceEvent, SessionRecord, Store,
    StoreError, TagRecord, TagWrite, TokenRecord,
};

/// Migrations in order; the schema version is the number applied.
/// Events kept per service, newest first.
pub const EVENTS_KEPT: usize = 10_000;

const MIGRATIONS: &[&str] = &[
    include_str!("sqlite/001_initial.sql"),
    include_str!("sqlite/002_services.sql"),
    include_str!("sqlite/003_networks.sql"),
    include_str!("sqlite/004_secrets.sql"),
    include_str!("sqlite/005_metrics.sql"),
    include_str!("sqlite/006_console.sql"),
    include_str!("sqlite/007_webhooks.sql"),
    include_str!("sqlite/008_aws.sql"),
];

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    /// Opens (or creates) the database at `path`, checks its integrity and applies migrations.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let mut conn = Connection::open(path).map_err(damaged)?;
        // Not a database at all, or pages that do not hold together: refuse, never start over.
        let check: Vec<String> =
            conn.prepare("PRAGMA quick_check(10)").and_then(|mut s| s.query_map([], |r| r.get(0))?.collect()).map_err(damaged)?;
        if check != ["ok"] {
            return Err(StoreError::Damaged(check.join("; ")));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL + NORMAL survives a crash of the process; blobs themselves are fsynced.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrate(&mut conn)?;
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)) })
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        let conn = self.conn.lock().map_err(|_| StoreError::Task("connection lock poisoned".into()))?;
        Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Inserts document `name` into `table` (a table of JSON documents keyed by name); `exists`
    /// names the error when the name is taken.
    async fn insert_doc(
        &self,
        table: &'static str,
        name: &str,
        doc: &serde_json::Value,
        now: i64,
        exists: fn(String) -> StoreError,
    ) -> Result<()> {
        let (name, doc) = (name.to_owned(), to_json(doc)?);
        self.call(move |c| {
            let sql = format!("INSERT INTO {table} (name, doc, created_at, updated_at) VALUES (?1, ?2, ?3, ?3) ON CONFLICT DO NOTHING");
            if c.execute(&sql, params![name, doc, now])? == 0 {
                return Err(exists(name));
            }
            Ok(())
        })
        .await
    }

    /// Replaces document `name` of `table`; `missing` names the error when there is none.
    async fn update_doc(
        &self,
        table: &'static str,
        name: &str,
        doc: &serde_json::Value,
        now: i64,
        missing: fn(String) -> StoreError,
    ) -> Result<()> {
        let (name, doc) = (name.to_owned(), to_json(doc)?);
        self.call(move |c| {
            if c.execute(&format!("UPDATE {table} SET doc = ?2, updated_at = ?3 WHERE name = ?1"), params![name, doc, now])? == 0 {
                return Err(missing(name));
            }
            Ok(())
        })
        .await
    }

    async fn get_doc(&self, table: &'static str, name: &str) -> Result<Option<DocRecord>> {
        let name = name.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT name, doc, created_at FROM {table} WHERE name = ?1"))?;
            Ok(stmt.query_row([&name], doc_row).optional()?)
        })
        .await
    }

    async fn list_docs(&self, table: &'static str) -> Result<Vec<DocRecord>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT name, doc, created_at FROM {table} ORDER BY name"))?;
            let rows = stmt.query_map([], doc_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Task("connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }
}

/// A database error met while opening: a file that is not a database is damaged state, not a
/// reason to start afresh.
fn damaged(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => StoreError::Damaged(e.to_string()),
        _ => e.into(),
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::Migration(format!(
            "database schema version {current} is newer than this berth knows ({known}); upgrade berth"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql).map_err(|e| StoreError::Migration(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied state migration");
    }
    Ok(())
}

fn digest(s: String) -> rusqlite::Result<Digest> {
    s.parse().map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn json<T: serde::de::DeserializeOwned>(s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn repository_row(r: &Row<'_>) -> rusqlite::Result<RepositoryRecord> {
    Ok(RepositoryRecord { name: r.get(0)?, created_at: r.get(1)?, tag_policy: json(r.get(2)?)?, lifecycle: json(r.get(3)?)? })
}

const MANIFEST_COLUMNS: &str = "repository, digest, media_type, size, artifact_type, subject, annotations, created_at";

fn manifest_row(r: &Row<'_>) -> rusqlite::Result<ManifestRecord> {
    Ok(ManifestRecord {
        repository: r.get(0)?,
        digest: digest(r.get(1)?)?,
        media_type: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        artifact_type: r.get(4)?,
        subject: r.get::<_, Option<String>>(5)?.map(digest).transpose()?,
        annotations: r.get::<_, Option<String>>(6)?.map(json).transpose()?,
        references: Vec::new(),
        created_at: r.get(7)?,
    })
}

fn load_references(conn: &Connection, m: &mut ManifestRecord) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("SELECT digest FROM manifest_references WHERE repository = ?1 AND manifest = ?2")?;
    let refs = stmt.query_map(params![m.repository, m.digest.to_string()], |r| digest(r.get(0)?))?;
    m.references = refs.collect::<rusqlite::Result<_>>()?;
    Ok(())
}

fn event_row(r: &Row<'_>) -> rusqlite::Result<PushEvent> {
    Ok(PushEvent {
        id: r.get(0)?,
        repository: r.get(1)?,
        tag: r.get(2)?,
        digest: digest(r.get(3)?)?,
        previous_digest: r.get::<_, Option<String>>(4)?.map(digest).transpose()?,
        at: r.get(5)?,
    })
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let scopes: Vec<Scope> = json(r.get(3)?)?;
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        secret_sha256: r.get(2)?,
        scopes,
        created_at: r.get(4)?,
        last_used_at: r.get(5)?,
        revoked_at: r.get(6)?,
        aws: r.get(7)?,
    })
}

fn insert_event(tx: &Connection, repo: &str, tag: Option<&str>, digest: &Digest, previous: Option<&Digest>, now: i64) -> Result<PushEvent> {
    tx.execute(
        "INSERT INTO push_events (repository, tag, digest, previous_digest, at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![repo, tag, digest.to_string(), previous.map(|d| d.to_string()), now],
    )?;
    Ok(PushEvent {
        id: tx.last_insert_rowid(),
        repository: repo.to_owned(),
        tag: tag.map(str::to_owned),
        digest: digest.clone(),
        previous_digest: previous.cloned(),
        at: now,
    })
}

fn doc_row(r: &Row<'_>) -> rusqlite::Result<DocRecord> {
    Ok(DocRecord { key: r.get(0)?, doc: json(r.get(1)?)?, at: r.get(2)? })
}

/// The points of a stored chunk; none when there is none. A damaged chunk is started afresh.
fn read_chunk(c: &Connection, service: &str, resolution: u64, start: u64) -> Result<Vec<Point>> {
    let bytes: Option<Vec<u8>> = c
        .query_row(
            "SELECT points FROM metric_chunks WHERE service = ?1 AND resolution = ?2 AND start = ?3",
            params![service, resolution as i64, start as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(match bytes {
        None => Vec::new(),
        Some(b) => history::decode(&b).unwrap_or_else(|| {
            tracing::warn!(%service, resolution, start, "a damaged chunk of metrics history is started afresh");
            Vec::new()
        }),
    })
}

/// Deliveries kept in the log (pending ones are never dropped).
pub const DELIVERIES_KEPT: usize = 10_000;

const DELIVERY_COLUMNS: &str =
    "id, webhook, event_id, kind, service, body, status, attempts, next_at, last_code, last_error, created_at, done_at";

fn delivery_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0)?,
        webhook: r.get(1)?,
        event_id: r.get(2)?,
        kind: r.get(3)?,
        service: r.get(4)?,
        body: r.get(5)?,
        status: r.get(6)?,
        attempts: r.get(7)?,
        next_at: r.get(8)?,
        last_code: r.get(9)?,
        last_error: r.get(10)?,
        created_at: r.get(11)?,
        done_at: r.get(12)?,
    })
}

fn service_event_row(r: &Row<'_>) -> rusqlite::Result<ServiceEvent> {
    Ok(ServiceEvent { id: r.get(0)?, service: r.get(1)?, at: r.get(2)?, kind: r.get(3)?, message: r.get(4)? })
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_service(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        self.insert_doc("services", name, doc, now, StoreError::ServiceExists).await
    }

    async fn put_service(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        self.update_doc("services", name, doc, now, StoreError::ServiceNotFound).await
    }

    async fn get_service(&self, name: &str) -> Result<Option<DocRecord>> {
        self.get_doc("services", name).await
    }

    async fn list_services(&self) -> Result<Vec<DocRecord>> {
        self.list_docs("services").await
    }

    async fn delete_service(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM revisions WHERE service = ?1", [&name])?;
            let n = tx.execute("DELETE FROM services WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn create_network(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        self.insert_doc("networks", name, doc, now, StoreError::NetworkExists).await
    }

    async fn get_network(&self, name: &str) -> Result<Option<DocRecord>> {
        self.get_doc("networks", name).await
    }

    async fn list_networks(&self) -> Result<Vec<DocRecord>> {
        self.list_docs("networks").await
    }

    async fn create_secret(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        self.insert_doc("secrets", name, doc, now, StoreError::SecretExists).await
    }

    async fn put_secret(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        self.update_doc("secrets", name, doc, now, StoreError::SecretNotFound).await
    }

    async fn get_secret(&self, name: &str) -> Result<Option<DocRecord>> {
        self.get_doc("secrets", name).await
    }

    async fn list_secrets(&self) -> Result<Vec<DocRecord>> {
        self.list_docs("secrets").await
    }

    async fn purge_secret(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM secrets WHERE name = ?1", [&name])? > 0)).await
    }

    async fn secret_meta(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.call(move |c| Ok(c.query_row("SELECT value FROM secret_meta WHERE key = ?1", [&key], |r| r.get(0)).optional()?)).await
    }

    async fn set_secret_meta(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO secret_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
                params![key, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn add_secret_audit(&self, entry: &SecretAudit, keep: usize) -> Result<()> {
        let e = entry.clone();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO secret_audit (at, secret, actor, action, version) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.at, e.secret, e.actor, e.action, e.version],
            )?;
            tx.execute(
                "DELETE FROM secret_audit WHERE secret = ?1 AND id <= \
                 (SELECT id FROM secret_audit WHERE secret = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![e.secret, keep as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn secret_audit(&self, secret: &str, limit: usize) -> Result<Vec<SecretAudit>> {
        let secret = secret.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT at, secret, actor, action, version FROM secret_audit WHERE secret = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![secret, limit as i64], |r| {
                Ok(SecretAudit { at: r.get(0)?, secret: r.get(1)?, actor: r.get(2)?, action: r.get(3)?, version: r.get(4)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_network(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM networks WHERE name = ?1", [&name])? > 0)).await
    }

    async fn create_revision(&self, service: &str, doc: &serde_json::Value, now: i64) -> Result<u32> {
        let (service, doc) = (service.to_owned(), to_json(doc)?);
        self.call(move |c| {
            let tx = c.transaction()?;
            let next: i64 =
                tx.query_row("SELECT COALESCE(MAX(number), 0) + 1 FROM revisions WHERE service = ?1", [&service], |r| r.get(0))?;
            tx.execute(
                "INSERT INTO revisions (service, number, doc, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![service, next, doc, now],
            )?;
            tx.commit()?;
            Ok(next as u32)
        })
        .await
    }

    async fn get_revision(&self, service: &str, number: u32) -> Result<Option<DocRecord>> {
        let service = service.to_owned();
        self.call(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT CAST(number AS TEXT), doc, created_at FROM revisions WHERE service = ?1 AND number = ?2")?;
            Ok(stmt.query_row(params![service, number], doc_row).optional()?)
        })
        .await
    }

    async fn list_revisions(&self, service: &str) -> Result<Vec<DocRecord>> {
        let service = service.to_owned();
        self.call(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT CAST(number AS TEXT), doc, created_at FROM revisions WHERE service = ?1 ORDER BY number")?;
            let rows = stmt.query_map([&service], doc_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn put_operation(&self, id: &str, service: &str, open: bool, doc: &serde_json::Value, started_at: i64) -> Result<()> {
        let (id, service, doc) = (id.to_owned(), service.to_owned(), to_json(doc)?);
        self.call(move |c| {
            c.execute(
                "INSERT INTO operations (id, service, open, doc, started_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET open = excluded.open, doc = excluded.doc",
                params![id, service, open, doc, started_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_operation(&self, id: &str) -> Result<Option<DocRecord>> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT id, doc, started_at FROM operations WHERE id = ?1")?;
            Ok(stmt.query_row([&id], doc_row).optional()?)
        })
        .await
    }

    async fn list_operations(&self, service: Option<&str>, open_only: bool, after: Option<&str>, limit: usize) -> Result<Vec<DocRecord>> {
        let (service, after) = (service.map(str::to_owned), after.map(str::to_owned));
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, doc, started_at FROM operations WHERE (?1 IS NULL OR service = ?1) AND (?2 = 0 OR open = 1)
                 AND (?3 IS NULL OR (started_at, rowid) < (SELECT started_at, rowid FROM operations WHERE id = ?3))
                 ORDER BY started_at DESC, rowid DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![service, open_only, after, limit as i64], doc_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn add_service_event(&self, service: &str, at: i64, kind: &str, message: &str) -> Result<()> {
        let (service, kind, message) = (service.to_owned(), kind.to_owned(), message.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO service_events (service, at, kind, message) VALUES (?1, ?2, ?3, ?4)",
                params![service, at, kind, message],
            )?;
            // A service keeps its newest events (scaling decisions alone can be many).
            c.execute(
                "DELETE FROM service_events WHERE service = ?1
                 AND id <= (SELECT id FROM service_events WHERE service = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![service, EVENTS_KEPT as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn service_events(&self, service: &str, before: Option<i64>, limit: usize) -> Result<Vec<ServiceEvent>> {
        let service = service.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, service, at, kind, message FROM service_events WHERE service = ?1 AND (?2 IS NULL OR id < ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![service, before, limit as i64], service_event_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn service_events_between(&self, service: &str, from: i64, to: i64, limit: usize) -> Result<Vec<ServiceEvent>> {
        let service = service.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, service, at, kind, message FROM service_events WHERE service = ?1 AND at BETWEEN ?2 AND ?3
                 ORDER BY at, id LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![service, from, to, limit as i64], service_event_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn merge_metrics(&self, points: Vec<(String, Point)>, runs: Vec<(String, u64)>) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            // Each chunk touched is read and written once, whatever number of points it takes.
            let mut chunks: std::collections::BTreeMap<(String, u64, u64), Vec<Point>> = std::collections::BTreeMap::new();
            for (service, p) in &points {
                for resolution in [history::FINE, history::COARSE] {
                    let key = (service.clone(), resolution, history::chunk_start(resolution, p.ts));
                    let chunk = match chunks.entry(key) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            let (service, resolution, start) = e.key();
                            let stored = read_chunk(&tx, service, *resolution, *start)?;
                            e.insert(stored)
                        }
                    };
                    history::merge_into(chunk, resolution, p);
                }
            }
            for ((service, resolution, start), chunk) in &chunks {
                tx.execute(
                    "INSERT INTO metric_chunks (service, resolution, start, points) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (service, resolution, start) DO UPDATE SET points = excluded.points",
                    params![service, *resolution as i64, *start as i64, history::encode(chunk)],
                )?;
            }
            for (run, upto) in &runs {
                tx.execute(
                    "INSERT INTO metric_runs (run, upto) VALUES (?1, ?2) ON CONFLICT (run) DO UPDATE SET upto = MAX(upto, excluded.upto)",
                    params![run, *upto as i64],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn metric_runs(&self) -> Result<Vec<(String, u64)>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT run, upto FROM metric_runs")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn metrics(&self, service: &str, resolution: u64, from: u64, to: u64) -> Result<Vec<Point>> {
        let service = service.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT start, points FROM metric_chunks WHERE service = ?1 AND resolution = ?2 AND start BETWEEN ?3 AND ?4 ORDER BY start",
            )?;
            let first = history::chunk_start(resolution, from);
            let rows = stmt.query_map(params![service, resolution as i64, first as i64, to as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut points = Vec::new();
            for row in rows {
                let (start, bytes) = row?;
                match history::decode(&bytes) {
                    Some(chunk) => points.extend(chunk.into_iter().filter(|p| p.ts >= from && p.ts <= to)),
                    // A damaged chunk costs its own stretch of the chart, not the whole answer.
                    None => tracing::warn!(%service, resolution, start, "a damaged chunk of metrics history was skipped"),
                }
            }
            Ok(points)
        })
        .await
    }

    async fn prune_metrics(&self, now: u64) -> Result<()> {
        self.call(move |c| {
            for (resolution, kept) in [(history::FINE, history::FINE_KEPT_SECS), (history::COARSE, history::COARSE_KEPT_SECS)] {
                // A chunk goes once its last point is older than kept.
                let before = now.saturating_sub(kept + resolution * history::CHUNK_POINTS);
                c.execute("DELETE FROM metric_chunks WHERE resolution = ?1 AND start < ?2", params![resolution as i64, before as i64])?;
            }
            let stale = now.saturating_sub(history::FINE_KEPT_SECS);
            c.execute("DELETE FROM metric_runs WHERE upto < ?1", params![stale as i64])?;
            Ok(())
        })
        .await
    }

    async fn metrics_size(&self, service: Option<&str>) -> Result<u64> {
        let service = service.map(str::to_owned);
        self.call(move |c| {
            let n: i64 = c.query_row(
                "SELECT COALESCE(SUM(LENGTH(points) + LENGTH(service) + 16), 0) FROM metric_chunks WHERE ?1 IS NULL OR service = ?1",
                params![service],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn create_session(&self, session: &SessionRecord) -> Result<()> {
        let s = session.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO console_sessions (id_sha256, token_id, csrf, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id_sha256, s.token_id, s.csrf, s.created_at, s.expires_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id_sha256: &str) -> Result<Option<SessionRecord>> {
        let id = id_sha256.to_owned();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id_sha256, token_id, csrf, created_at, expires_at FROM console_sessions WHERE id_sha256 = ?1",
                [id],
                |r| {
                    Ok(SessionRecord {
                        id_sha256: r.get(0)?,
                        token_id: r.get(1)?,
                        csrf: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    async fn delete_session(&self, id_sha256: &str) -> Result<bool> {
        let id = id_sha256.to_owned();
        self.call(move |c| Ok(c.execute("DELETE FROM console_sessions WHERE id_sha256 = ?1", [id])? > 0)).await
    }

    async fn prune_sessions(&self, now: i64) -> Result<()> {
        self.call(move |c| {
            c.execute("DELETE FROM console_sessions WHERE expires_at <= ?1", [now])?;
            Ok(())
        })
        .await
    }

    async fn newest_event_id(&self) -> Result<Option<i64>> {
        self.call(move |c| Ok(c.query_row("SELECT MAX(id) FROM service_events", [], |r| r.get(0))?)).await
    }

    async fn service_events_after(&self, after: i64, limit: usize) -> Result<Vec<ServiceEvent>> {
        self.call(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT id, service, at, kind, message FROM service_events WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            let rows = stmt.query_map(params![after, limit as i64], service_event_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn put_webhook(&self, name: &str, doc: &serde_json::Value, now: i64) -> Result<bool> {
        let (name, doc) = (name.to_owned(), doc.to_string());
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO webhooks (name, doc, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![name, doc, now],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_webhooks(&self) -> Result<Vec<DocRecord>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT name, doc, created_at FROM webhooks ORDER BY name")?;
            let rows = stmt.query_map([], doc_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_webhook(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM webhooks WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM webhook_deliveries WHERE webhook = ?1", [&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_aws_resource(&self, kind: &str, name: &str, doc: &serde_json::Value, now: i64) -> Result<()> {
        let (kind, name, doc) = (kind.to_owned(), name.to_owned(), doc.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO aws_resources (kind, name, doc, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (kind, name) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at",
            )?
            .execute(params![kind, name, doc, now])?;
            Ok(())
        })
        .await
    }

    async fn get_aws_resource(&self, kind: &str, name: &str) -> Result<Option<DocRecord>> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT name, doc, updated_at FROM aws_resources WHERE kind = ?1 AND name = ?2")?;
            Ok(stmt.query_row(params![kind, name], doc_row).optional()?)
        })
        .await
    }

    async fn list_aws_resources(&self, kind: &str) -> Result<Vec<DocRecord>> {
        let kind = kind.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT name, doc, updated_at FROM aws_resources WHERE kind = ?1 ORDER BY name")?;
            let rows = stmt.query_map([kind], doc_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn delete_aws_resource(&self, kind: &str, name: &str) -> Result<bool> {
        let (kind, name) = (kind.to_owned(), name.to_owned());
        self.call(move |c| Ok(c.execute("DELETE FROM aws_resources WHERE kind = ?1 AND name = ?2", params![kind, name])? > 0)).await
    }

    async fn webhook_cursor(&self) -> Result<Option<i64>> {
        self.call(move |c| Ok(c.query_row("SELECT event_id FROM webhook_cursor WHERE one = 1", [], |r| r.get(0)).optional()?)).await
    }

    async fn enqueue_deliveries(&self, deliveries: Vec<DeliveryRecord>, cursor: i64) -> Result<()> {
        self.call(move |c| {
            let tx = c.transaction()?;
            for d in &deliveries {
                tx.execute(
                    "INSERT INTO webhook_deliveries (webhook, event_id, kind, service, body, status, attempts, next_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?6)",
                    params![d.webhook, d.event_id, d.kind, d.service, d.body, d.created_at],
                )?;
            }
            tx.execute(
                "INSERT INTO webhook_cursor (one, event_id) VALUES (1, ?1) ON CONFLICT (one) DO UPDATE SET event_id = excluded.event_id",
                [cursor],
            )?;
            // The log keeps the newest deliveries.
            tx.execute(
                "DELETE FROM webhook_deliveries WHERE status != 'pending' AND id <= (SELECT id FROM webhook_deliveries ORDER BY id DESC LIMIT 1 OFFSET ?1)",
                [DELIVERIES_KEPT as i64],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn due_deliveries(&self, now: i64, limit: usize) -> Result<Vec<DeliveryRecord>> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE status = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![now, limit as i64], delivery_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn update_delivery(&self, d: &DeliveryRecord) -> Result<()> {
        let d = d.clone();
        self.call(move |c| {
            c.execute(
                "UPDATE webhook_deliveries SET status = ?2, attempts = ?3, next_at = ?4, last_code = ?5, last_error = ?6, done_at = ?7 WHERE id = ?1",
                params![d.id, d.status, d.attempts, d.next_at, d.last_code, d.last_error, d.done_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn deliveries(&self, webhook: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let webhook = webhook.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook = ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![webhook, limit as i64], delivery_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn create_repository(&self, repo: RepositoryRecord) -> Result<()> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO repositories (name, created_at, tag_policy, lifecycle) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                params![repo.name, repo.created_at, to_json(&repo.tag_policy)?, to_json(&repo.lifecycle)?],
            )?;
            if n == 0 {
                return Err(StoreError::RepositoryExists(repo.name));
            }
            Ok(())
        })
        .await
    }

    async fn ensure_repository(&self, name: &str, default_policy: &TagPolicy, now: i64) -> Result<RepositoryRecord> {
        let (name, policy) = (name.to_owned(), to_json(default_policy)?);
        self.call(move |c| {
            c.execute(
                "INSERT INTO repositories (name, created_at, tag_policy) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![name, now, policy],
            )?;
            Ok(c.query_row("SELECT name, created_at, tag_policy, lifecycle FROM repositories WHERE name = ?1", [&name], repository_row)?)
        })
        .await
    }

    async fn get_repository(&self, name: &str) -> Result<Option<RepositoryRecord>> {
        let name = name.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT name, created_at, tag_policy, lifecycle FROM repositories WHERE name = ?1")?;
            Ok(stmt.query_row([&name], repository_row).optional()?)
        })
        .await
    }

    async fn list_repositories(&self, after: Option<&str>, limit: usize) -> Result<Vec<RepositoryRecord>> {
        let after = after.unwrap_or("").to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT name, created_at, tag_policy, lifecycle FROM repositories WHERE name > ?1 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after, limit as i64], repository_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn set_tag_policy(&self, name: &str, policy: &TagPolicy) -> Result<()> {
        let (name, policy) = (name.to_owned(), to_json(policy)?);
        self.call(move |c| {
            if c.execute("UPDATE repositories SET tag_policy = ?2 WHERE name = ?1", params![name, policy])? == 0 {
                return Err(StoreError::RepositoryNotFound(name));
            }
            Ok(())
        })
        .await
    }

    async fn set_lifecycle(&self, name: &str, rules: &[LifecycleRule]) -> Result<()> {
        let (name, rules) = (name.to_owned(), to_json(&rules)?);
        self.call(move |c| {
            if c.execute("UPDATE repositories SET lifecycle = ?2 WHERE name = ?1", params![name, rules])? == 0 {
                return Err(StoreError::RepositoryNotFound(name));
            }
            Ok(())
        })
        .await
    }

    async fn delete_repository(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM tags WHERE repository = ?1", [&name])?;
            tx.execute("DELETE FROM manifest_references WHERE repository = ?1", [&name])?;
            tx.execute("DELETE FROM manifests WHERE repository = ?1", [&name])?;
            tx.execute("DELETE FROM blob_links WHERE repository = ?1", [&name])?;
            tx.execute("DELETE FROM push_events WHERE repository = ?1", [&name])?;
            let n = tx.execute("DELETE FROM repositories WHERE name = ?1", [&name])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn link_blob(&self, repository: &str, digest: &Digest, size: u64, now: i64) -> Result<()> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO blob_links (repository, digest, size, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )?
            .execute(params![repo, digest, size as i64, now])?;
            Ok(())
        })
        .await
    }

    async fn linked_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT size FROM blob_links WHERE repository = ?1 AND digest = ?2")?;
            Ok(stmt.query_row(params![repo, digest], |r| r.get::<_, i64>(0)).optional()?.map(|s| s as u64))
        })
        .await
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| Ok(c.execute("DELETE FROM blob_links WHERE repository = ?1 AND digest = ?2", params![repo, digest])? > 0)).await
    }

    async fn forget_blob(&self, digest: &Digest) -> Result<()> {
        let digest = digest.to_string();
        self.call(move |c| {
            c.execute("DELETE FROM blob_links WHERE digest = ?1", [digest])?;
            Ok(())
        })
        .await
    }

    async fn put_manifest(&self, manifest: &ManifestRecord, tag: Option<TagWrite<'_>>, now: i64) -> Result<Option<PushEvent>> {
        let m = manifest.clone();
        let tag = tag.map(|t| (t.tag.to_owned(), t.immutable));
        let annotations = m.annotations.as_ref().map(to_json).transpose()?;
        self.call(move |c| {
            let tx = c.transaction()?;
            let d = m.digest.to_string();
            let inserted = tx.execute(
                "INSERT INTO manifests (repository, digest, media_type, size, artifact_type, subject, annotations, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                params![
                    m.repository,
                    d,
                    m.media_type,
                    m.size as i64,
                    m.artifact_type,
                    m.subject.as_ref().map(|s| s.to_string()),
                    annotations,
                    now
                ],
            )? > 0;
            if inserted {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO manifest_references (repository, manifest, digest) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for r in &m.references {
                    stmt.execute(params![m.repository, d, r.to_string()])?;
                }
            }
            let mut event = None;
            match tag {
                Some((tag, immutable)) => {
                    let current: Option<String> = tx
                        .query_row("SELECT digest FROM tags WHERE repository = ?1 AND tag = ?2", params![m.repository, tag], |r| r.get(0))
                        .optional()?;
                    let current = current.map(digest).transpose()?;
                    if current.as_ref() != Some(&m.digest) {
                        if let (Some(cur), true) = (&current, immutable) {
                            return Err(StoreError::TagImmutable { tag, current: cur.clone() });
                        }
                        tx.execute(
                            "INSERT INTO tags (repository, tag, digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at",
                            params![m.repository, tag, d, now],
                        )?;
                        event = Some(insert_event(&tx, &m.repository, Some(&tag), &m.digest, current.as_ref(), now)?);
                    }
                }
                None if inserted => event = Some(insert_event(&tx, &m.repository, None, &m.digest, None, now)?),
                None => {}
            }
            tx.commit()?;
            Ok(event)
        })
        .await
    }

    async fn get_manifest(&self, repository: &str, digest: &Digest) -> Result<Option<ManifestRecord>> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| {
            let sql = format!("SELECT {MANIFEST_COLUMNS} FROM manifests WHERE repository = ?1 AND digest = ?2");
            let mut m = match c.prepare_cached(&sql)?.query_row(params![repo, digest], manifest_row).optional()? {
                Some(m) => m,
                None => return Ok(None),
            };
            load_references(c, &mut m)?;
            Ok(Some(m))
        })
        .await
    }

    async fn resolve_tag(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        let (repo, tag) = (repository.to_owned(), tag.to_owned());
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT digest FROM tags WHERE repository = ?1 AND tag = ?2")?;
            Ok(stmt.query_row(params![repo, tag], |r| r.get::<_, String>(0)).optional()?.map(digest).transpose()?)
        })
        .await
    }

    async fn list_tag_names(&self, repository: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let (repo, after) = (repository.to_owned(), after.unwrap_or("").to_owned());
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT tag FROM tags WHERE repository = ?1 AND tag > ?2 ORDER BY tag LIMIT ?3")?;
            let rows = stmt.query_map(params![repo, after, limit as i64], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_tags(&self, repository: &str) -> Result<Vec<TagRecord>> {
        let repo = repository.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT repository, tag, digest, updated_at FROM tags WHERE repository = ?1 ORDER BY updated_at DESC, tag",
            )?;
            let rows = stmt.query_map([repo], |r| {
                Ok(TagRecord { repository: r.get(0)?, tag: r.get(1)?, digest: digest(r.get(2)?)?, updated_at: r.get(3)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_tags_page(&self, repository: &str, after: Option<&str>, limit: usize) -> Result<Vec<TagRecord>> {
        let (repo, after) = (repository.to_owned(), after.map(str::to_owned));
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT repository, tag, digest, updated_at FROM tags WHERE repository = ?1 AND (?2 IS NULL OR tag > ?2)
                 ORDER BY tag LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![repo, after, limit as i64], |r| {
                Ok(TagRecord { repository: r.get(0)?, tag: r.get(1)?, digest: digest(r.get(2)?)?, updated_at: r.get(3)? })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn count_tags(&self, repository: &str) -> Result<u64> {
        let repo = repository.to_owned();
        self.call(move |c| Ok(c.query_row("SELECT COUNT(*) FROM tags WHERE repository = ?1", [repo], |r| r.get::<_, i64>(0))? as u64)).await
    }

    async fn tags_at(&self, repository: &str, digest: &Digest) -> Result<Vec<String>> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| {
            let mut stmt = c.prepare_cached("SELECT tag FROM tags WHERE repository = ?1 AND digest = ?2 ORDER BY tag")?;
            let rows = stmt.query_map(params![repo, digest], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn list_manifests(&self, repository: &str) -> Result<Vec<ManifestRecord>> {
        let repo = repository.to_owned();
        self.call(move |c| {
            let sql = format!("SELECT {MANIFEST_COLUMNS} FROM manifests WHERE repository = ?1 ORDER BY created_at, digest");
            let mut list: Vec<ManifestRecord> =
                c.prepare_cached(&sql)?.query_map([repo], manifest_row)?.collect::<rusqlite::Result<_>>()?;
            for m in &mut list {
                load_references(c, m)?;
            }
            Ok(list)
        })
        .await
    }

    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<ManifestRecord>> {
        let (repo, subject) = (repository.to_owned(), subject.to_string());
        self.call(move |c| {
            let sql = format!("SELECT {MANIFEST_COLUMNS} FROM manifests WHERE repository = ?1 AND subject = ?2 ORDER BY digest");
            let rows = c.prepare_cached(&sql)?.query_map(params![repo, subject], manifest_row)?.collect::<rusqlite::Result<_>>()?;
            Ok(rows)
        })
        .await
    }

    async fn delete_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let (repo, digest) = (repository.to_owned(), digest.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM tags WHERE repository = ?1 AND digest = ?2", params![repo, digest])?;
            tx.execute("DELETE FROM manifest_references WHERE repository = ?1 AND manifest = ?2", params![repo, digest])?;
            let n = tx.execute("DELETE FROM manifests WHERE repository = ?1 AND digest = ?2", params![repo, digest])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool> {
        let (repo, tag) = (repository.to_owned(), tag.to_owned());
        self.call(move |c| Ok(c.execute("DELETE FROM tags WHERE repository = ?1 AND tag = ?2", params![repo, tag])? > 0)).await
    }

    async fn push_events(&self, repository: Option<&str>, after: i64, limit: usize) -> Result<Vec<PushEvent>> {
        let repo = repository.map(str::to_owned);
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, repository, tag, digest, previous_digest, at FROM push_events
                 WHERE id > ?1 AND (?2 IS NULL OR repository = ?2) ORDER BY id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after, repo, limit as i64], event_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        let t = token.clone();
        let scopes = to_json(&t.scopes)?;
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO tokens (id, name, secret_sha256, scopes, created_at, aws) VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
                params![t.id, t.name, t.secret_sha256, scopes, t.created_at, t.aws],
            )?;
            if n == 0 {
                return Err(StoreError::TokenExists(t.id));
            }
            Ok(())
        })
        .await
    }

    async fn get_token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let id = id.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, name, secret_sha256, scopes, created_at, last_used_at, revoked_at, aws FROM tokens WHERE id = ?1",
            )?;
            Ok(stmt.query_row([id], token_row).optional()?)
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.call(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, name, secret_sha256, scopes, created_at, last_used_at, revoked_at, aws FROM tokens ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], token_row)?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, now: i64) -> Result<bool> {
        let id = id.to_owned();
        self.call(move |c| Ok(c.execute("UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now])? > 0))
            .await
    }

    async fn touch_token(&self, id: &str, now: i64) -> Result<()> {
        let id = id.to_owned();
        self.call(move |c| {
            // At most one write a minute per token: this runs on every authenticated request.
            c.prepare_cached("UPDATE tokens SET last_used_at = ?2 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60)")?
                .execute(params![id, now])?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;

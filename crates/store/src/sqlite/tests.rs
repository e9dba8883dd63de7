use super::*;
use berth_core::{Pattern, TagMutability};

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = SqliteStore::open(&dir.path().join("state.db")).unwrap_or_else(|e| panic!("open: {e}"));
    (dir, store)
}

fn manifest(repo: &str, n: u8, refs: &[Digest]) -> ManifestRecord {
    ManifestRecord {
        repository: repo.into(),
        digest: Digest::sha256_of(&[n]),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 100,
        artifact_type: None,
        subject: None,
        annotations: None,
        references: refs.to_vec(),
        created_at: 0,
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_versioned() -> Result<()> {
    let (dir, store) = open();
    assert_eq!(store.schema_version()?, MIGRATIONS.len() as i64);
    drop(store);
    let again = SqliteStore::open(&dir.path().join("state.db"))?;
    assert_eq!(again.schema_version()?, MIGRATIONS.len() as i64);
    Ok(())
}

#[tokio::test]
async fn refuses_a_newer_schema() -> Result<()> {
    let (dir, store) = open();
    drop(store);
    let conn = Connection::open(dir.path().join("state.db"))?;
    conn.pragma_update(None, "user_version", 99)?;
    drop(conn);
    let err = SqliteStore::open(&dir.path().join("state.db")).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("newer than this berth knows"), "{err}");
    Ok(())
}

#[tokio::test]
async fn tag_moves_record_events_and_respect_immutability() -> Result<()> {
    let (_dir, store) = open();
    let policy = TagPolicy::new(TagMutability::ImmutableWithExclusion, vec![Pattern::new("latest")])
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store.ensure_repository("web", &policy, 1).await?;
    let (m1, m2) = (manifest("web", 1, &[]), manifest("web", 2, &[]));

    let e1 = store.put_manifest(&m1, Some(TagWrite { tag: "latest", immutable: false }), 10).await?;
    assert_eq!(e1.as_ref().map(|e| e.previous_digest.clone()), Some(None));
    // Re-pushing the same manifest under the same tag is a no-op without an event.
    assert_eq!(store.put_manifest(&m1, Some(TagWrite { tag: "latest", immutable: false }), 11).await?, None);
    let e2 = store.put_manifest(&m2, Some(TagWrite { tag: "latest", immutable: false }), 12).await?;
    assert_eq!(e2.and_then(|e| e.previous_digest), Some(m1.digest.clone()));

    store.put_manifest(&m1, Some(TagWrite { tag: "abc", immutable: true }), 13).await?;
    store.put_manifest(&m1, Some(TagWrite { tag: "abc", immutable: true }), 14).await?;
    let err = store.put_manifest(&m2, Some(TagWrite { tag: "abc", immutable: true }), 15).await;
    assert!(matches!(err, Err(StoreError::TagImmutable { ref tag, .. }) if tag == "abc"));
    assert_eq!(store.resolve_tag("web", "abc").await?, Some(m1.digest.clone()));

    let events = store.push_events(Some("web"), 0, 100).await?;
    let tags: Vec<_> = events.iter().map(|e| e.tag.clone().unwrap_or_default()).collect();
    assert_eq!(tags, ["latest", "latest", "abc"]);
    assert_eq!(store.push_events(None, events[1].id, 100).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn delete_manifest_removes_its_tags_and_references() -> Result<()> {
    let (_dir, store) = open();
    store.ensure_repository("a", &TagPolicy::default(), 1).await?;
    store.ensure_repository("b", &TagPolicy::default(), 1).await?;
    let layer = Digest::sha256_of(b"layer");
    let ma = manifest("a", 1, std::slice::from_ref(&layer));
    let mb = manifest("b", 1, std::slice::from_ref(&layer));
    store.put_manifest(&ma, Some(TagWrite { tag: "v1", immutable: false }), 1).await?;
    store.put_manifest(&mb, None, 1).await?;
    assert_eq!(store.get_manifest("a", &ma.digest).await?.map(|m| m.references), Some(vec![layer.clone()]));

    assert!(store.delete_manifest("a", &ma.digest).await?);
    assert_eq!(store.resolve_tag("a", "v1").await?, None);
    assert_eq!(store.list_manifests("a").await?.len(), 0);
    assert!(store.delete_repository("b").await?);
    assert!(store.get_repository("b").await?.is_none());
    assert_eq!(store.list_manifests("b").await?.len(), 0);
    Ok(())
}

#[tokio::test]
async fn pages_tags_and_repositories() -> Result<()> {
    let (_dir, store) = open();
    for r in ["c", "a", "b"] {
        store.ensure_repository(r, &TagPolicy::default(), 1).await?;
    }
    let names: Vec<_> = store.list_repositories(Some("a"), 1).await?.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["b"]);
    let m = manifest("a", 1, &[]);
    for t in ["z", "x", "y"] {
        store.put_manifest(&m, Some(TagWrite { tag: t, immutable: false }), 1).await?;
    }
    assert_eq!(store.list_tag_names("a", None, 2).await?, ["x", "y"]);
    assert_eq!(store.list_tag_names("a", Some("y"), 2).await?, ["z"]);
    let page: Vec<_> = store.list_tags_page("a", Some("x"), 1).await?.into_iter().map(|t| t.tag).collect();
    assert_eq!(page, ["y"]);
    assert_eq!(store.count_tags("a").await?, 3);
    let other = manifest("a", 2, &[]);
    store.put_manifest(&other, Some(TagWrite { tag: "w", immutable: false }), 2).await?;
    assert_eq!(store.tags_at("a", &m.digest).await?, ["x", "y", "z"]);
    assert_eq!(store.tags_at("a", &other.digest).await?, ["w"]);
    Ok(())
}

#[tokio::test]
async fn tokens() -> Result<()> {
    let (_dir, store) = open();
    let t = TokenRecord {
        id: "abc".into(),
        name: "ci".into(),
        secret_sha256: "00".into(),
        scopes: vec!["push:web".parse().map_err(|e: berth_core::ScopeError| StoreError::Corrupt(e.to_string()))?],
        created_at: 5,
        last_used_at: None,
        revoked_at: None,
        aws: true,
    };
    store.create_token(&t).await?;
    assert!(matches!(store.create_token(&t).await, Err(StoreError::TokenExists(_))));
    assert_eq!(store.get_token("abc").await?.as_ref(), Some(&t));
    assert!(store.revoke_token("abc", 9).await?);
    assert!(!store.revoke_token("abc", 10).await?);
    assert_eq!(store.get_token("abc").await?.and_then(|t| t.revoked_at), Some(9));
    Ok(())
}

#[tokio::test]
async fn aws_resources_are_kept_by_kind_and_name() -> Result<()> {
    let (_dir, store) = open();
    store.put_aws_resource("tags", "web", &serde_json::json!({"a": "1"}), 5).await?;
    store.put_aws_resource("tags", "api", &serde_json::json!({}), 6).await?;
    store.put_aws_resource("asc", "web", &serde_json::json!({"max": 3}), 7).await?;
    store.put_aws_resource("tags", "web", &serde_json::json!({"a": "2"}), 8).await?;
    let names: Vec<String> = store.list_aws_resources("tags").await?.into_iter().map(|r| r.key).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(store.get_aws_resource("tags", "web").await?.map(|r| (r.doc, r.at)), Some((serde_json::json!({"a": "2"}), 8)));
    assert!(store.delete_aws_resource("tags", "web").await?);
    assert!(!store.delete_aws_resource("tags", "web").await?);
    assert!(store.get_aws_resource("tags", "web").await?.is_none());
    assert!(store.get_aws_resource("asc", "web").await?.is_some());
    Ok(())
}

#[tokio::test]
async fn networks() -> Result<()> {
    let (_dir, store) = open();
    let doc = serde_json::json!({"name": "db", "cidr": "10.90.0.0/24"});
    store.create_network("db", &doc, 10).await?;
    assert!(matches!(store.create_network("db", &doc, 11).await, Err(StoreError::NetworkExists(_))));
    store.create_network("cache", &serde_json::json!({"name": "cache"}), 12).await?;
    let names: Vec<String> = store.list_networks().await?.into_iter().map(|r| r.key).collect();
    assert_eq!(names, ["cache", "db"]);
    assert_eq!(store.get_network("db").await?.map(|r| (r.doc, r.at)), Some((doc, 10)));
    assert!(store.delete_network("db").await?);
    assert!(!store.delete_network("db").await?);
    assert!(store.get_network("db").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn secrets_meta_and_audit() -> Result<()> {
    let (_dir, store) = open();
    let doc = serde_json::json!({"name": "db-creds", "versions": []});
    store.create_secret("db-creds", &doc, 10).await?;
    assert!(matches!(store.create_secret("db-creds", &doc, 11).await, Err(StoreError::SecretExists(_))));
    store.put_secret("db-creds", &serde_json::json!({"name": "db-creds", "versions": [1]}), 12).await?;
    assert!(matches!(store.put_secret("nope", &doc, 12).await, Err(StoreError::SecretNotFound(_))));
    let got = store.get_secret("db-creds").await?.map(|r| (r.doc["versions"].clone(), r.at));
    assert_eq!(got, Some((serde_json::json!([1]), 10)));
    store.create_secret("api-key", &doc, 13).await?;
    let names: Vec<String> = store.list_secrets().await?.into_iter().map(|r| r.key).collect();
    assert_eq!(names, ["api-key", "db-creds"]);
    assert!(store.purge_secret("api-key").await?);
    assert!(!store.purge_secret("api-key").await?);

    assert_eq!(store.secret_meta("fingerprint").await?, None);
    store.set_secret_meta("fingerprint", "a").await?;
    store.set_secret_meta("fingerprint", "b").await?;
    assert_eq!(store.secret_meta("fingerprint").await?.as_deref(), Some("b"));

    for (at, action) in [(20, "create"), (21, "read")] {
        let entry = SecretAudit { at, secret: "db-creds".into(), actor: "ci".into(), action: action.into(), version: Some("v1".into()) };
        store.add_secret_audit(&entry, 3).await?;
    }
    let trail = store.secret_audit("db-creds", 10).await?;
    assert_eq!(trail.iter().map(|e| (e.at, e.action.as_str())).collect::<Vec<_>>(), [(21, "read"), (20, "create")]);
    // Bounded per secret: the newest `keep` stay, other secrets' untouched.
    let other = SecretAudit { at: 1, secret: "api-key".into(), actor: "ci".into(), action: "create".into(), version: None };
    store.add_secret_audit(&other, 3).await?;
    for at in 22..26 {
        let entry = SecretAudit { at, secret: "db-creds".into(), actor: "svc".into(), action: "read".into(), version: None };
        store.add_secret_audit(&entry, 3).await?;
    }
    let trail = store.secret_audit("db-creds", 10).await?;
    assert_eq!(trail.iter().map(|e| e.at).collect::<Vec<_>>(), [25, 24, 23]);
    assert_eq!(store.secret_audit("api-key", 10).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn services_revisions_operations_and_events() -> Result<()> {
    let (_dir, store) = open();
    let doc = serde_json::json!({"spec": {"port": 8080}});
    store.create_service("web", &doc, 10).await?;
    assert!(matches!(store.create_service("web", &doc, 11).await, Err(StoreError::ServiceExists(_))));
    store.put_service("web", &serde_json::json!({"spec": {"port": 9090}}), 12).await?;
    assert!(matches!(store.put_service("nope", &doc, 12).await, Err(StoreError::ServiceNotFound(_))));
    let got = store.get_service("web").await?.ok_or(StoreError::ServiceNotFound("web".into()))?;
    assert_eq!((got.key.as_str(), got.doc["spec"]["port"].as_u64(), got.at), ("web", Some(9090), 10));

    assert_eq!(store.create_revision("web", &serde_json::json!({"digest": "a"}), 20).await?, 1);
    assert_eq!(store.create_revision("web", &serde_json::json!({"digest": "b"}), 21).await?, 2);
    assert_eq!(store.create_revision("other", &serde_json::json!({}), 21).await?, 1);
    let revs = store.list_revisions("web").await?;
    assert_eq!(revs.iter().map(|r| (r.key.as_str(), r.doc["digest"].as_str())).collect::<Vec<_>>(), [("1", Some("a")), ("2", Some("b"))]);
    assert_eq!(store.get_revision("web", 2).await?.map(|r| r.doc["digest"].clone()), Some(serde_json::json!("b")));

    store.put_operation("op1", "web", true, &serde_json::json!({"status": "IN_PROGRESS"}), 30).await?;
    store.put_operation("op2", "web", true, &serde_json::json!({"status": "PENDING"}), 31).await?;
    store.put_operation("op1", "web", false, &serde_json::json!({"status": "SUCCEEDED"}), 30).await?;
    let open_ops = store.list_operations(None, true, None, 10).await?;
    assert_eq!(open_ops.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["op2"]);
    let all = store.list_operations(Some("web"), false, None, 10).await?;
    assert_eq!(all.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["op2", "op1"]);
    let older = store.list_operations(Some("web"), false, Some("op2"), 10).await?;
    assert_eq!(older.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(), ["op1"]);
    // Started in the same second: the one created later is newer, and pages keep that order.
    store.put_operation("a-op", "other", false, &serde_json::json!({}), 50).await?;
    store.put_operation("0-op", "other", false, &serde_json::json!({}), 50).await?;
    let same: Vec<_> = store.list_operations(Some("other"), false, None, 10).await?.into_iter().map(|o| o.key).collect();
    assert_eq!(same, ["0-op", "a-op"]);
    let rest: Vec<_> = store.list_operations(Some("other"), false, Some("0-op"), 10).await?.into_iter().map(|o| o.key).collect();
    assert_eq!(rest, ["a-op"]);
    assert_eq!(store.get_operation("op1").await?.map(|o| o.doc["status"].clone()), Some(serde_json::json!("SUCCEEDED")));

    store.add_service_event("web", 40, "status", "RUNNING").await?;
    store.add_service_event("web", 41, "instance_replaced", "web-1-abc failed its health check").await?;
    let events = store.service_events("web", None, 10).await?;
    assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["instance_replaced", "status"]);
    let older = store.service_events("web", Some(events[0].id), 10).await?;
    assert_eq!(older.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["status"]);

    assert!(store.delete_service("web").await?);
    assert!(store.get_service("web").await?.is_none() && store.list_revisions("web").await?.is_empty());
    assert_eq!(store.list_operations(Some("web"), false, None, 10).await?.len(), 2, "operations stay readable");
    assert_eq!(store.list_services().await?.len(), 0);
    Ok(())
}

#[test]
fn a_damaged_database_is_refused_not_replaced() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![0x42u8; 8192])?;
    let err = SqliteStore::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.starts_with("the state database is damaged"), "{err}");
    assert_eq!(std::fs::read(&path)?, vec![0x42u8; 8192], "the file was changed");
    Ok(())
}

#[tokio::test]
async fn metrics_merge_into_both_resolutions_and_are_pruned() -> Result<()> {
    use berth_core::metrics::{Point, Traffic};
    use berth_core::sketch::Sketch;
    let (dir, store) = open();
    let point = |ts: u64, revision: u32, ok: u64| {
        let mut p = Point::new(ts, 10);
        let mut latency = Sketch::default();
        (0..ok).for_each(|i| latency.record(1000 + i));
        p.add_traffic(&Traffic { revision, classes: [0, ok, 0, 0, 0], latency });
        p.samples = 10;
        p.concurrency_sum = 10 * ok;
        p.concurrency_max = ok as u32;
        p
    };
    let day = 86_400 * 20_000;
    store.merge_metrics(vec![("web".into(), point(day, 1, 2)), ("web".into(), point(day + 10, 1, 3))], vec![("r1".into(), day)]).await?;
    // The same slot again (another router run's share of it), a new revision, another service.
    store
        .merge_metrics(
            vec![("web".into(), point(day + 10, 2, 4)), ("api".into(), point(day + 10, 1, 1))],
            vec![("r1".into(), day + 10), ("r2".into(), day + 10)],
        )
        .await?;
    let fine = store.metrics("web", history::FINE, day, day + 3600).await?;
    assert_eq!(fine.iter().map(|p| (p.ts, p.total().requests())).collect::<Vec<_>>(), [(day, 2), (day + 10, 7)]);
    assert_eq!(fine[1].traffic.iter().map(|t| t.revision).collect::<Vec<_>>(), [1, 2]);
    let coarse = store.metrics("web", history::COARSE, day, day + 3600).await?;
    assert_eq!(coarse.len(), 1);
    assert_eq!((coarse[0].ts, coarse[0].secs, coarse[0].total().requests(), coarse[0].concurrency_max), (day, 60, 9, 4));
    assert_eq!(coarse[0].total().latency.count(), 9);
    let mut runs = store.metric_runs().await?;
    runs.sort();
    assert_eq!(runs, [("r1".to_owned(), day + 10), ("r2".to_owned(), day + 10)]);
    assert!(store.metrics_size(Some("web")).await? > 0);
    // Persisted: a new store on the file reads the same.
    drop(store);
    let store = SqliteStore::open(&dir.path().join("state.db"))?;
    assert_eq!(store.metrics("web", history::FINE, day, day + 3600).await?, fine);
    // A day later the ten-second points are gone and the minutes stay; a week later, all.
    store.prune_metrics(day + history::FINE_KEPT_SECS + 2 * 600).await?;
    assert!(store.metrics("web", history::FINE, day, day + 3600).await?.is_empty());
    assert_eq!(store.metrics("web", history::COARSE, day, day + 3600).await?.len(), 1);
    assert!(store.metric_runs().await?.is_empty(), "runs not heard of for a day are forgotten");
    store.prune_metrics(day + history::COARSE_KEPT_SECS + 2 * 3600).await?;
    assert!(store.metrics("web", history::COARSE, day, day + 3600).await?.is_empty());
    assert_eq!(store.metrics_size(None).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_service_keeps_its_newest_events_and_finds_them_by_time() -> Result<()> {
    let (_dir, store) = open();
    for i in 0..EVENTS_KEPT + 3 {
        store.add_service_event("web", i as i64, "scaled", &format!("event {i}")).await?;
    }
    store.add_service_event("api", 5, "deployed", "revision 1 serves").await?;
    let newest = store.service_events("web", None, 1).await?;
    assert_eq!(newest[0].message, format!("event {}", EVENTS_KEPT + 2));
    let oldest = store.service_events_between("web", 0, 10, 100).await?;
    assert_eq!(oldest.iter().map(|e| e.at).collect::<Vec<_>>(), [3, 4, 5, 6, 7, 8, 9, 10], "the three oldest are gone");
    assert_eq!(store.service_events_between("api", 0, 10, 100).await?.len(), 1, "another service's events stay");
    Ok(())
}

/// A week of a busy service's history (two instances, ~50 requests/s with a spread of
/// latencies, a deployment a day) stays bounded: 1.15 MB measured. (The console's benchmark aims
/// at 500 KB a service; the latency buckets take most of it.)
#[tokio::test]
async fn a_week_of_history_stays_small() -> Result<()> {
    use berth_core::metrics::{Point, Traffic, Usage};
    use berth_core::sketch::Sketch;
    let (_dir, store) = open();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let start = 86_400 * 20_000;
    let week = history::COARSE_KEPT_SECS;
    for hour in 0..week / 3600 {
        let mut batch = Vec::new();
        for i in 0..360 {
            let ts = start + hour * 3600 + i * 10;
            let revision = 1 + (ts - start) / 86_400;
            let mut p = Point::new(ts, 10);
            let mut latency = Sketch::default();
            let n = 400 + next() % 200;
            for _ in 0..n {
                // Mostly 2–20 ms, a tail to 500 ms.
                let tail = if next() % 100 == 0 { 25 } else { 1 };
                latency.record((2_000 + next() % 18_000) * tail);
            }
            p.add_traffic(&Traffic { revision: revision as u32, classes: [0, n - 2, 0, 1, 1], latency });
            for k in 0..2 {
                let instance = format!("web-{revision:04}-{k}a9f3c");
                p.add_usage(&Usage {
                    instance,
                    revision: revision as u32,
                    cpu_micros: 900_000 + next() % 200_000,
                    memory_bytes: (40 << 20) + next() % (4 << 20),
                });
            }
            p.samples = 10;
            p.concurrency_sum = 40 + next() % 20;
            p.concurrency_max = 9;
            p.instances_max = 2;
            batch.push(("web".to_owned(), p));
        }
        store.merge_metrics(batch, Vec::new()).await?;
    }
    store.prune_metrics(start + week).await?;
    let size = store.metrics_size(Some("web")).await?;
    eprintln!("a week of history: {} KB", size / 1000);
    assert!(size <= 1_250_000, "a week of history takes {size} bytes");
    Ok(())
}

#[tokio::test]
async fn console_sessions_are_kept_until_deleted_or_expired() -> Result<()> {
    let (_dir, store) = open();
    let s = SessionRecord { id_sha256: "a".repeat(64), token_id: "t1".into(), csrf: "c".into(), created_at: 10, expires_at: 100 };
    store.create_session(&s).await?;
    assert_eq!(store.get_session(&s.id_sha256).await?, Some(s.clone()));
    store.prune_sessions(99).await?;
    assert!(store.get_session(&s.id_sha256).await?.is_some());
    store.prune_sessions(100).await?;
    assert!(store.get_session(&s.id_sha256).await?.is_none(), "expired sessions are pruned");
    store.create_session(&s).await?;
    assert!(store.delete_session(&s.id_sha256).await?);
    assert!(!store.delete_session(&s.id_sha256).await?);
    Ok(())
}

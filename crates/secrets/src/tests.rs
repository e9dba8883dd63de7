use std::sync::Arc;

use berth_store::SqliteStore;

use super::*;

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
}

impl Fixture {
    fn new() -> std::result::Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
        Ok(Fixture { dir, store })
    }

    fn source(&self) -> KeySource {
        KeySource::File { path: self.dir.path().join("master.key"), create: true }
    }

    async fn open(&self) -> Result<Secrets> {
        Secrets::open(self.store.clone(), &self.source()).await
    }
}

fn reference(s: &str) -> Result<Reference> {
    s.parse()
}

fn labels_of(info: &SecretInfo) -> Vec<(String, Vec<String>)> {
    info.versions.iter().map(|v| (v.id.clone(), v.labels.clone())).collect()
}

#[tokio::test]
async fn versions_and_staging_labels_move_as_in_secrets_manager() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    let v1 = s.create("db-creds", "guestbook's database", r#"{"user":"gb","password":"one"}"#, "admin", 10).await?;
    assert_eq!(v1.labels, [CURRENT]);
    let (got, id) = s.read(&reference("db-creds#password")?, &Selector::default(), "ci", 11).await?;
    assert_eq!((got.expose(), id.as_str()), ("one", v1.id.as_str()));
    assert!(matches!(s.create("db-creds", "", "x", "admin", 12).await, Err(SecretError::Exists(_))));

    // A pending version leaves CURRENT where it is; moving CURRENT to it makes the old one PREVIOUS.
    let v2 = s.put("db-creds", r#"{"user":"gb","password":"two"}"#, &[PENDING.to_owned()], "rotator", 20).await?;
    let (got, _) = s.read(&reference("db-creds#password")?, &Selector::default(), "ci", 21).await?;
    assert_eq!(got.expose(), "one");
    let (got, _) = s.read(&reference("db-creds#password")?, &Selector::Label(PENDING.into()), "ci", 21).await?;
    assert_eq!(got.expose(), "two");
    s.label("db-creds", CURRENT, &v2.id, "rotator", 22).await?;
    s.unlabel("db-creds", PENDING, "rotator", 22).await?;
    let info = s.describe("db-creds").await?;
    assert_eq!(labels_of(&info), [(v2.id.clone(), vec![CURRENT.to_owned()]), (v1.id.clone(), vec![PREVIOUS.to_owned()])]);
    assert!(matches!(s.unlabel("db-creds", CURRENT, "x", 23).await, Err(SecretError::LabelNeeded { .. })));

    // A plain put moves CURRENT; the version before keeps PREVIOUS, the one before that nothing.
    let v3 = s.put("db-creds", r#"{"user":"gb","password":"three"}"#, &[], "admin", 30).await?;
    let info = s.describe("db-creds").await?;
    assert_eq!(
        labels_of(&info),
        [(v3.id.clone(), vec![CURRENT.to_owned()]), (v2.id.clone(), vec![PREVIOUS.to_owned()]), (v1.id.clone(), vec![])]
    );
    let (got, _) = s.read(&reference("db-creds")?, &Selector::Version(v1.id.clone()), "ci", 31).await?;
    assert_eq!(got.expose(), r#"{"user":"gb","password":"one"}"#);
    assert!(matches!(
        s.read(&reference("db-creds")?, &Selector::Label("AWSPENDING".into()), "ci", 31).await,
        Err(SecretError::NoVersion { .. })
    ));

    // Versions without a label are kept up to a bound.
    for i in 0..15 {
        s.put("db-creds", &format!("v{i}"), &[], "admin", 40 + i).await?;
    }
    let info = s.describe("db-creds").await?;
    assert_eq!(info.versions.iter().filter(|v| v.labels.is_empty()).count(), 10);
    assert_eq!(info.versions.len(), 12);

    // Every read and change is in the audit trail, without a value.
    let trail = s.audit_trail("db-creds", 100).await?;
    assert!(trail.iter().any(|e| e.action == "read" && e.actor == "ci" && e.version.as_deref() == Some(v1.id.as_str())));
    assert!(trail.iter().any(|e| e.action == "label CURRENT" && e.actor == "rotator"));
    assert_eq!(trail.last().map(|e| e.action.as_str()), Some("create"));
    Ok(())
}

#[tokio::test]
async fn references_take_keys_of_json_objects_only() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    s.create("token", "", "plain-text", "admin", 1).await?;
    s.create("conf", "", r#"{"port":3306,"host":"db"}"#, "admin", 1).await?;
    let err = s.read(&reference("token#password")?, &Selector::default(), "ci", 2).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("not a JSON object") && err.contains("`token`"), "{err}");
    assert!(!err.contains("plain-text"), "an error shows the value: {err}");
    assert!(matches!(s.read(&reference("conf#user")?, &Selector::default(), "ci", 2).await, Err(SecretError::NoKey { .. })));
    assert_eq!(s.read(&reference("conf#port")?, &Selector::default(), "ci", 2).await?.0.expose(), "3306");
    assert!(matches!(s.read(&reference("gone")?, &Selector::default(), "ci", 2).await, Err(SecretError::NotFound(_))));
    assert!(reference("a#").is_err() && reference("with space").is_err() && reference("").is_err());
    assert_eq!(reference("db/creds#password")?.to_string(), "db/creds#password");
    assert_eq!(format!("{:?}", s.read(&reference("token")?, &Selector::default(), "ci", 2).await?.0), "Plain(<redacted>)");
    Ok(())
}

#[tokio::test]
async fn callers_may_choose_version_ids_once() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    let first = "00000000-0000-4000-8000-000000000001";
    assert_eq!(s.create_version("api", "", "one", Some(first), "a", 1).await?.id, first);
    let second = "a".repeat(40);
    assert_eq!(s.put_version("api", "two", &[], Some(&second), "a", 2).await?.id, second);
    assert_eq!(s.read(&"api".parse()?, &Selector::Version(first.into()), "a", 3).await?.0.expose(), "one");
    assert!(matches!(s.put_version("api", "three", &[], Some(first), "a", 4).await, Err(SecretError::VersionExists { .. })));
    for bad in ["short", &"x".repeat(65), "with space and more than thirty-two chars"] {
        assert!(matches!(s.put_version("api", "x", &[], Some(bad), "a", 5).await, Err(SecretError::InvalidVersionId(_))), "{bad}");
    }
    assert_eq!(s.describe("api").await?.versions.len(), 2, "refused versions leave nothing behind");
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_with_what_to_do() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    assert!(matches!(s.create("bad name", "", "x", "a", 1).await, Err(SecretError::InvalidName(_))));
    assert!(matches!(s.create("empty", "", "", "a", 1).await, Err(SecretError::Empty)));
    let big = "x".repeat(MAX_VALUE_BYTES + 1);
    assert!(matches!(s.create("big", "", &big, "a", 1).await, Err(SecretError::TooLarge(_))));
    s.create("ok", "", &"x".repeat(MAX_VALUE_BYTES), "a", 1).await?;
    assert!(matches!(s.put("ok", "y", &["bad label!".to_owned()], "a", 2).await, Err(SecretError::InvalidLabel(_))));
    assert!(matches!(s.put("missing", "y", &[], "a", 2).await, Err(SecretError::NotFound(_))));
    assert!(matches!(s.label("ok", CURRENT, "no-such-version", "a", 2).await, Err(SecretError::NoVersion { .. })));
    Ok(())
}

#[tokio::test]
async fn deletion_waits_out_its_recovery_window() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    s.create("old", "", "value", "admin", 0).await?;
    assert!(matches!(s.delete("old", 3, "admin", 10).await, Err(SecretError::RecoveryWindow(3))));
    let purge_at = s.delete("old", 7, "admin", 10).await?;
    assert_eq!(purge_at, 10 + 7 * 86_400);
    let refused = s.read(&reference("old")?, &Selector::default(), "ci", 11).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("is deleted") && refused.contains("berth secret restore old"), "{refused}");
    assert!(matches!(s.put("old", "new", &[], "admin", 11).await, Err(SecretError::Deleted { .. })));
    assert_eq!(s.describe("old").await?.purge_at, Some(purge_at));
    s.restore("old", "admin", 12).await?;
    assert!(matches!(s.restore("old", "admin", 12).await, Err(SecretError::NotDeleted(_))));
    assert_eq!(s.read(&reference("old")?, &Selector::default(), "ci", 13).await?.0.expose(), "value");

    s.delete("old", 7, "admin", 20).await?;
    assert!(s.purge_due(20 + 7 * 86_400 - 1).await?.is_empty());
    assert_eq!(s.purge_due(20 + 7 * 86_400).await?, ["old"]);
    assert!(matches!(s.describe("old").await, Err(SecretError::NotFound(_))));
    Ok(())
}

#[tokio::test]
async fn values_are_sealed_and_the_master_key_is_checked() -> TestResult {
    let f = Fixture::new()?;
    {
        let s = f.open().await?;
        s.create("db-creds", "", r#"{"password":"correct horse battery staple"}"#, "admin", 1).await?;
    }
    // Nothing in the database file shows the value.
    let raw = std::fs::read(f.dir.path().join("state.db"))?;
    let wal = std::fs::read(f.dir.path().join("state.db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!bytes.windows(5).any(|w| w == b"horse"), "the value is in the database in the clear");
    }

    // The same key opens them again; another key, or none, is refused and nothing is reset.
    let s = f.open().await?;
    assert_eq!(s.read(&reference("db-creds#password")?, &Selector::default(), "ci", 2).await?.0.expose(), "correct horse battery staple");
    let other = f.dir.path().join("other.key");
    std::fs::write(&other, format!("{}\n", "ab".repeat(32)))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600))?;
    }
    let wrong = Secrets::open(f.store.clone(), &KeySource::File { path: other, create: false }).await;
    assert!(matches!(wrong, Err(SecretError::WrongMasterKey)));
    std::fs::rename(f.dir.path().join("master.key"), f.dir.path().join("moved.key"))?;
    let missing = f.open().await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(missing.contains("is missing") && missing.contains("restore it"), "{missing}");
    assert!(!f.dir.path().join("master.key").exists(), "a new key was made over existing secrets");
    let by_command = KeySource::Command(format!("cat {}", f.dir.path().join("moved.key").display()));
    let s = Secrets::open(f.store.clone(), &by_command).await?;
    assert_eq!(s.read(&reference("db-creds#password")?, &Selector::default(), "ci", 3).await?.0.expose(), "correct horse battery staple");
    Ok(())
}

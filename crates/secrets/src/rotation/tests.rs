//! The rotation engine with a custom rotator (a shell script) and consumers the test controls:
//! step order, the consumer gates, failures and their retries, cancelling, schedules, and a
//! rotation cut short at each step that finishes after a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_store::{SqliteStore, Store};

use super::*;
use crate::{KeySource, Secrets};

type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Consumers on the version the test sets (`*`: on any, the default).
struct Gate {
    on: Mutex<String>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate { on: Mutex::new("*".into()) }
    }
}

impl Gate {
    fn set(&self, version: &str) {
        *self.on.lock().unwrap_or_else(|p| p.into_inner()) = version.to_owned();
    }
}

#[async_trait::async_trait]
impl Consumers for Gate {
    async fn lagging(&self, _secret: &str, version: &str) -> Vec<String> {
        let on = self.on.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if on == "*" || on == version {
            Vec::new()
        } else {
            vec![format!("service web: 2 instances on {on}")]
        }
    }

    async fn resolve(&self, _host: &str) -> Option<IpAddr> {
        None
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    script: PathBuf,
}

impl Fixture {
    /// A rotator that logs each step to `steps`, fails a step named in `fail` (printing its
    /// input to standard error), and at a step named in `block` waits until `release` exists.
    fn new() -> std::result::Result<Fixture, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
        let d = dir.path().display();
        let script = dir.path().join("rotator");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
input=$(cat)
echo "$1 start" >> {d}/steps
if [ "$(cat {d}/block 2>/dev/null)" = "$1" ]; then
  while [ ! -e {d}/release ]; do sleep 0.02; done
fi
if [ "$(cat {d}/fail 2>/dev/null)" = "$1" ]; then
  echo "cannot do it with $input" >&2
  exit 3
fi
[ "$1" = create_secret ] && echo "value-$(date +%s%N)"
echo "$1 done" >> {d}/steps
exit 0
"#
            ),
        )?;
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(Fixture { dir, store, script })
    }

    async fn open(&self) -> Result<Arc<Secrets>> {
        let source = KeySource::File { path: self.dir.path().join("master.key"), create: true };
        Ok(Arc::new(Secrets::open(self.store.clone(), &source).await?))
    }

    fn config(&self, strategy: Strategy) -> RotationConfig {
        RotationConfig {
            rotator: RotatorKind::Command,
            command: Some(self.script.display().to_string()),
            strategy,
            admin_secret: None,
            schedule: None,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn steps(&self) -> Vec<String> {
        std::fs::read_to_string(self.file("steps")).unwrap_or_default().lines().map(str::to_owned).collect()
    }
}

/// The rotation status of `api-key` (the default when it cannot be read).
async fn now_at(s: &Secrets) -> RotationStatus {
    s.describe("api-key").await.map(|i| status(&i)).unwrap_or_default()
}

fn status(info: &crate::SecretInfo) -> RotationStatus {
    info.rotation.as_ref().map(|r| r.status.clone()).unwrap_or_default()
}

fn current(info: &crate::SecretInfo) -> String {
    info.versions.iter().find(|v| v.labels.iter().any(|l| l == CURRENT)).map(|v| v.id.clone()).unwrap_or_default()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotation_runs_the_four_steps_then_waits_for_consumers() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    let first = s.create("api-key", "", "value-0", "admin", 1).await?;
    let gate = Arc::new(Gate::default());
    gate.set("an older version");
    s.rotate("api-key", Some(f.config(Strategy::SingleUser)), true, "admin", 2).await?;

    // Consumers not on CURRENT hold the rotation before the value is set anywhere.
    let task = tokio::spawn(drive(s.clone(), gate.clone(), "api-key".into()));
    until("the gate before set_secret", async || now_at(&s).await.waiting_for.is_some()).await;
    let st = status(&s.describe("api-key").await?);
    assert_eq!(st.step, Some(Step::SetSecret));
    assert!(st.waiting_for.as_deref().unwrap_or_default().contains("service web"), "{st:?}");
    assert_eq!(f.steps(), ["create_secret start", "create_secret done"]);

    gate.set(&first.id);
    until("the wait after finish_secret", async || now_at(&s).await.waiting_for.is_some_and(|w| w.contains("moving"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info = s.describe("api-key").await?;
    assert_eq!(status(&info).step, Some(Step::AwaitConsumers), "the rotation is done only when consumers are");
    assert_ne!(current(&info), first.id);
    gate.set(&current(&info));
    task.await?;

    let info = s.describe("api-key").await?;
    let st = status(&info);
    assert_eq!((st.step, st.rotations, st.failures), (None, 1, 0), "{st:?}");
    let labels: Vec<Vec<String>> = info.versions.iter().map(|v| v.labels.clone()).collect();
    assert_eq!(labels, [vec![CURRENT.to_owned()], vec![crate::PREVIOUS.to_owned()]], "PENDING is gone");
    let steps: Vec<String> = f.steps().into_iter().filter(|l| l.ends_with("done")).collect();
    assert_eq!(steps, ["create_secret done", "set_secret done", "test_secret done", "finish_secret done"]);
    let (value, _) = s.read(&"api-key".parse()?, &crate::Selector::default(), "t", 3).await?;
    assert!(value.expose().starts_with("value-") && value.expose() != "value-0");
    let trail = s.audit_trail("api-key", 100).await?;
    assert!(trail.iter().any(|a| a.action == "rotated" && a.actor == "rotation"), "{trail:?}");
    Ok(())
}

#[tokio::test]
async fn a_failed_step_keeps_current_records_why_without_values_and_retries() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    let first = s.create("api-key", "", "hunter2-original", "admin", 1).await?;
    std::fs::write(f.file("fail"), "set_secret")?;
    s.rotate("api-key", Some(f.config(Strategy::SingleUser)), true, "admin", 2).await?;
    let gate = Arc::new(Gate::default());
    drive(s.clone(), gate.clone(), "api-key".into()).await;

    let info = s.describe("api-key").await?;
    let st = status(&info);
    assert_eq!(current(&info), first.id, "CURRENT did not move");
    assert_eq!((st.step, st.failures), (Some(Step::SetSecret), 1));
    let why = st.last_error.clone().unwrap_or_default();
    assert!(why.starts_with("set_secret: the rotator failed"), "{why}");
    assert!(why.contains("<redacted>") && !why.contains("hunter2") && !why.contains("value-"), "{why}");
    assert!(st.retry_at.is_some_and(|t| t > crate::now()), "{st:?}");
    // The run loop leaves it until its retry time.
    let runner = tokio::spawn(run(s.clone(), gate.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&s.describe("api-key").await?).failures, 1);
    runner.abort();

    // A second failure waits longer; once the cause is gone the retry finishes.
    drive(s.clone(), gate.clone(), "api-key".into()).await;
    let st = status(&s.describe("api-key").await?);
    assert_eq!(st.failures, 2);
    assert_eq!(backoff(1), 15);
    assert_eq!(backoff(2), 30);
    assert_eq!(backoff(30), 3_600);
    std::fs::remove_file(f.file("fail"))?;
    drive(s.clone(), gate, "api-key".into()).await;
    let info = s.describe("api-key").await?;
    let st = status(&info);
    assert_eq!((st.step, st.rotations, st.failures, st.last_error), (None, 1, 0, None));
    assert_ne!(current(&info), first.id);
    // One new version: the retries reused the PENDING one.
    assert_eq!(info.versions.len(), 2);
    Ok(())
}

/// Each step cut short — the server's task gone and the rotator's process killed, as a kill -9
/// does — then a new server over the same store: the rotation finishes, with one new version.
#[tokio::test]
async fn a_rotation_cut_short_at_any_step_finishes_after_a_restart() -> TestResult {
    for step in ["create_secret", "set_secret", "test_secret", "finish_secret"] {
        let f = Fixture::new()?;
        let s = f.open().await?;
        let first = s.create("api-key", "", "value-0", "admin", 1).await?;
        std::fs::write(f.file("block"), step)?;
        s.rotate("api-key", Some(f.config(Strategy::AlternatingUsers)), true, "admin", 2).await?;
        let gate = Arc::new(Gate::default());
        let task = tokio::spawn(drive(s.clone(), gate.clone(), "api-key".into()));
        until(step, async || f.steps().contains(&format!("{step} start"))).await;
        task.abort();
        let _ = task.await;
        drop(s);

        std::fs::write(f.file("release"), "")?;
        let s = f.open().await?;
        let st = status(&s.describe("api-key").await?);
        assert_eq!(st.step.map(Step::name), Some(step), "the step is recorded before it runs");
        let runner = tokio::spawn(run(s.clone(), gate));
        until("the rotation to finish", async || now_at(&s).await.rotations == 1).await;
        runner.abort();
        let info = s.describe("api-key").await?;
        assert_ne!(current(&info), first.id, "{step}");
        assert_eq!(info.versions.len(), 2, "{step}: one new version, whatever was redone");
        assert!(info.versions.iter().all(|v| !v.labels.iter().any(|l| l == PENDING)), "{step}");
    }
    Ok(())
}

#[tokio::test]
async fn a_version_put_as_pending_is_the_one_rotated_to() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    s.create("api-key", "", "value-0", "admin", 1).await?;
    let mine = s.put("api-key", "chosen-by-hand", &[PENDING.to_owned()], "admin", 2).await?;
    s.rotate("api-key", Some(f.config(Strategy::SingleUser)), true, "admin", 3).await?;
    drive(s.clone(), Arc::new(Gate::default()), "api-key".into()).await;
    let info = s.describe("api-key").await?;
    assert_eq!(current(&info), mine.id);
    assert!(!f.steps().contains(&"create_secret start".to_owned()));
    Ok(())
}

#[tokio::test]
async fn cancelling_stops_what_can_be_stopped_and_the_schedule() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    let first = s.create("api-key", "", "value-0", "admin", 1).await?;
    let gate = Arc::new(Gate::default());
    gate.set("an older version");
    let mut config = f.config(Strategy::AlternatingUsers);
    config.schedule = Some("every 1h".into());
    s.rotate("api-key", Some(config), true, "admin", 2).await?;
    let task = tokio::spawn(drive(s.clone(), gate.clone(), "api-key".into()));
    until("the gate", async || now_at(&s).await.waiting_for.is_some()).await;
    let again = s.rotate("api-key", None, true, "admin", 3).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(again.contains("is being rotated (step set_secret)") && again.contains("cancel-rotation"), "{again}");
    let r = s.cancel_rotation("api-key", "admin", 4).await?;
    assert!(!r.enabled && r.status.step.is_none() && r.status.next_at.is_none(), "{r:?}");
    gate.set("*");
    task.await?;
    let info = s.describe("api-key").await?;
    assert_eq!(current(&info), first.id);
    assert!(info.versions.iter().all(|v| !v.labels.iter().any(|l| l == PENDING)), "{info:?}");
    assert!(!f.steps().iter().any(|l| l.starts_with("set_secret")), "the cancelled rotation stopped at its gate");

    // With one database user, past create_secret the database may have the new password.
    let mut config = f.config(Strategy::SingleUser);
    config.rotator = RotatorKind::Mysql;
    config.command = None;
    s.rotate("api-key", Some(config), true, "admin", 5).await?;
    s.advance("api-key", (Step::CreateSecret, None), 6, |st| st.step = Some(Step::TestSecret)).await?;
    let refused = s.cancel_rotation("api-key", "admin", 7).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("must finish"), "{refused}");
    Ok(())
}

#[tokio::test]
async fn a_schedule_rotates_when_due_and_names_the_next_time() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    s.create("api-key", "", "value-0", "admin", 1).await?;
    let mut config = f.config(Strategy::SingleUser);
    config.schedule = Some("every 1m".into());
    let now = crate::now();
    // Set up two minutes ago: due now.
    let r = s.rotate("api-key", Some(config), false, "admin", now - 120).await?;
    assert!(r.enabled && r.status.step.is_none());
    assert_eq!(r.status.next_at, Some(now - 60));
    let runner = tokio::spawn(run(s.clone(), Arc::new(Gate::default())));
    until("the scheduled rotation", async || now_at(&s).await.rotations == 1).await;
    runner.abort();
    let st = status(&s.describe("api-key").await?);
    let last = st.last_rotated_at.unwrap_or_default();
    assert_eq!(st.next_at, Some(last + 60));
    assert!(s.audit_trail("api-key", 100).await?.iter().any(|a| a.actor == "schedule" && a.action == "rotate"));
    Ok(())
}

#[tokio::test]
async fn configurations_that_cannot_work_are_refused() -> TestResult {
    let f = Fixture::new()?;
    let s = f.open().await?;
    s.create("db", "", r#"{"username":"gb","password":"x"}"#, "admin", 1).await?;
    let none = s.rotate("db", None, true, "admin", 2).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(none.contains("no rotation set up"), "{none}");
    let base =
        RotationConfig { rotator: RotatorKind::Mysql, command: None, strategy: Strategy::SingleUser, admin_secret: None, schedule: None };
    for (config, says) in [
        (RotationConfig { strategy: Strategy::AlternatingUsers, ..base.clone() }, "needs an admin secret"),
        (RotationConfig { admin_secret: Some("db".into()), ..base.clone() }, "another secret"),
        (RotationConfig { schedule: Some("every 10s".into()), ..base.clone() }, "shortest interval is 1 minute"),
        (RotationConfig { rotator: RotatorKind::Command, ..base.clone() }, "needs the executable"),
        (RotationConfig { rotator: RotatorKind::Command, command: Some("rotate.sh".into()), ..base.clone() }, "absolute path"),
        (
            RotationConfig { rotator: RotatorKind::Command, command: Some("/nonexistent/rotate".into()), ..base.clone() },
            "not an executable",
        ),
        (RotationConfig { command: Some(f.script.display().to_string()), ..base.clone() }, "`command` rotator only"),
    ] {
        let e = s.rotate("db", Some(config), true, "admin", 3).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(says), "{e}");
    }
    assert!(s.describe("db").await?.rotation.is_none(), "nothing was stored");
    Ok(())
}

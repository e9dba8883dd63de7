//! The controllers against the fake runtime and a prober that decides health per revision: create,
//! blue/green deploy, automatic rollback, a refused concurrent deploy, replacement of a crashed
//! instance, pause/resume/delete, auto-deploy on push, and recovery of an interrupted deployment
//! (completed when the switch was recorded, started over otherwise).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_controller::{Controller, ControllerError, ControllerSettings, Deps, Operation, Probe, Prober};
use berth_core::service::HealthCheck;
use berth_core::{Digest, OperationStatus, OperationType, ServiceSpec, ServiceStatus};
use berth_router::{RouteBook, RoutingTable};
use berth_runtime::{Call, FakeRuntime, Runtime};
use berth_secrets::{KeySource, Secrets};
use berth_store::{ManifestRecord, PushEvent, SharedStore, SqliteStore, TagWrite};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Healthy unless the instance's revision is listed: `broken` fails, `unprobed` cannot be
/// probed at all (berth out of descriptors).
/// When `table` is set, every probed address the table does not know as a caller is noted in
/// `strangers` (its app could not resolve berth's names or call a private service).
#[derive(Default)]
struct RevisionProber {
    broken: Mutex<HashSet<u32>>,
    unprobed: Mutex<HashSet<u32>>,
    table: Mutex<Option<Arc<RoutingTable>>>,
    strangers: Mutex<Vec<SocketAddr>>,
}

#[async_trait::async_trait]
impl Prober for RevisionProber {
    async fn probe(&self, instance: &str, addr: SocketAddr, _check: &HealthCheck) -> Probe {
        if let Some(t) = self.table.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if t.caller(addr.ip()).is_none() {
                self.strangers.lock().unwrap_or_else(|p| p.into_inner()).push(addr);
            }
        }
        let rev = instance.rsplit('-').nth(1).and_then(|r| r.parse::<u32>().ok()).unwrap_or(0);
        if self.broken.lock().unwrap_or_else(|p| p.into_inner()).contains(&rev) {
            Probe::Fail("GET /healthz answered 503".into())
        } else if self.unprobed.lock().unwrap_or_else(|p| p.into_inner()).contains(&rev) {
            Probe::Unknown("connecting: Too many open files (os error 24)".into())
        } else {
            Probe::Pass
        }
    }
}

struct World {
    dir: tempfile::TempDir,
    store: SharedStore,
    runtime: Arc<FakeRuntime>,
    book: Arc<RouteBook>,
    table: Arc<RoutingTable>,
    prober: Arc<RevisionProber>,
    pushes: tokio::sync::broadcast::Sender<PushEvent>,
}

impl World {
    fn new() -> Result<World> {
        let dir = tempfile::tempdir()?;
        let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
        let table = Arc::new(RoutingTable::new());
        Ok(World {
            dir,
            store,
            runtime: Arc::new(FakeRuntime::new()),
            book: Arc::new(RouteBook::new(table.clone())),
            table,
            prober: Arc::new(RevisionProber::default()),
            pushes: tokio::sync::broadcast::channel(16).0,
        })
    }

    async fn controller(&self) -> Result<Controller> {
        let settings = ControllerSettings {
            startup_deadline: Duration::from_secs(10),
            stop_grace: Duration::from_millis(10),
            startup_probe_every: Duration::from_millis(10),
            sweep_every: Duration::from_millis(200),
            ..ControllerSettings::default()
        };
        let runtime: Arc<dyn Runtime> = self.runtime.clone();
        Ok(Controller::start(Deps {
            store: self.store.clone(),
            runtime,
            book: self.book.clone(),
            prober: self.prober.clone(),
            secrets: Some(self.secrets().await?),
            pushes: Some(self.pushes.subscribe()),
            settings,
        })
        .await?)
    }

    /// The secrets of this world (the same key each time).
    async fn secrets(&self) -> Result<Arc<Secrets>> {
        let key = KeySource::File { path: self.dir.path().join("master.key"), create: true };
        Ok(Arc::new(Secrets::open(self.store.clone(), &key).await?))
    }

    /// Pushes a manifest (`n` makes the digest) and points `tag` at it.
    async fn push(&self, repo: &str, tag: &str, n: u8) -> Result<Digest> {
        self.store.ensure_repository(repo, &Default::default(), 0).await?;
        let m = ManifestRecord {
            repository: repo.into(),
            digest: Digest::sha256_of(&[n]),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 10,
            artifact_type: None,
            subject: None,
            annotations: None,
            references: vec![],
            created_at: 0,
        };
        if let Some(ev) = self.store.put_manifest(&m, Some(TagWrite { tag, immutable: false }), 0).await? {
            let _ = self.pushes.send(ev);
        }
        Ok(m.digest)
    }

    fn upstreams(&self, host: &str) -> Vec<SocketAddr> {
        self.table.lookup(host).map(|r| r.upstreams.iter().map(|u| u.addr).collect()).unwrap_or_default()
    }
}

fn spec(name: &str, image: &str) -> ServiceSpec {
    serde_json::from_value(serde_json::json!({
        "name": name,
        "source": {"image": image},
        "health_check": {"protocol": "HTTP", "path": "/healthz", "interval": 1, "unhealthy_threshold": 1},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_op(c: &Controller, id: &str) -> Result<Operation> {
    for _ in 0..500 {
        let op = c.operation(id).await?;
        if op.status.is_final() {
            return Ok(op);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("operation {id} did not end").into())
}

async fn until<F: Fn() -> bool>(what: &str, f: F) -> Result {
    for _ in 0..500 {
        if f() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("timed out waiting for {what}").into())
}

fn log_text(op: &Operation) -> String {
    op.log.iter().map(|l| l.message.as_str()).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_rolls_back_refuses_replaces_pauses_and_deletes() -> Result {
    let w = World::new()?;
    let v1 = w.push("web", "v1", 1).await?;
    w.push("web", "latest", 1).await?;
    let c = w.controller().await?;

    // Bad input is refused with every problem named; a missing tag says to push first.
    let mut bad = spec("x", "web:latest");
    bad.health_check.interval = 99;
    let err = c.create(bad).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("name `x`") && err.contains("health_check.interval"), "{err}");
    let err = c.create(spec("web-app", "web:nope")).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("has no tag `nope`; push the image first"), "{err}");

    // Create: the first revision records the digest and every tag on it.
    let op = c.create(spec("web-app", "web:latest")).await?;
    assert_eq!(op.kind, OperationType::CreateService);
    let op = wait_op(&c, &op.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let svc = c.get("web-app").await?;
    assert_eq!(svc.status, ServiceStatus::Running);
    assert_eq!(svc.url, "https://web-app.localhost:8443");
    let rev1 = svc.current_revision.ok_or("no revision")?;
    assert_eq!((rev1.id.as_str(), &rev1.doc.digest, rev1.doc.tags.clone()), ("web-app-0001", &v1, vec!["latest".to_string(), "v1".into()]));
    assert_eq!(w.upstreams("web-app.localhost").len(), 1);
    let creates = w.runtime.calls().iter().filter(|c| matches!(c, Call::Create(_))).count();
    assert_eq!(creates, 1, "the create operation ran once");
    // Instances know who they are.
    let created = w.runtime.calls().into_iter().find_map(|c| match c {
        Call::Create(id) => w.runtime.spec(&id),
        _ => None,
    });
    let env: std::collections::HashMap<String, String> = created.ok_or("no create")?.env.into_iter().collect();
    assert_eq!((env.get("BERTH_SERVICE"), env.get("K_REVISION")), (Some(&"web-app".to_string()), Some(&"web-app-0001".to_string())));
    assert!(env.get("BERTH_INSTANCE").is_some_and(|i| i.starts_with("web-app-1-")), "{env:?}");
    assert!(matches!(c.create(spec("Web_App", "web:latest")).await, Err(ControllerError::Exists(_))));

    // A deploy of a new digest: blue/green, the old instance drained and removed.
    let first_addr = w.upstreams("web-app.localhost");
    let v2 = w.push("web", "v2", 2).await?;
    let op = c.deploy("web-app", Some("web:v2")).await?;
    // A second one while it runs is refused, naming the one in progress.
    match c.deploy("web-app", None).await {
        Err(ControllerError::Busy { id, kind, .. }) => assert_eq!((id.as_str(), kind), (op.id.as_str(), OperationType::StartDeployment)),
        other => panic!("expected Busy, got {other:?}"),
    }
    let op = wait_op(&c, &op.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let svc = c.get("web-app").await?;
    assert_eq!(svc.current_revision.as_ref().map(|r| (r.number, r.doc.digest.clone())), Some((2, v2.clone())));
    let now = w.upstreams("web-app.localhost");
    assert_eq!(now.len(), 1);
    assert_ne!(now, first_addr);
    // Revisions keep the tags at deploy time and show where the tags are now.
    w.push("web", "latest", 2).await?;
    let tags: Vec<_> = c.revisions("web-app").await?.into_iter().map(|r| (r.doc.tags, r.tags_now.unwrap_or_default())).collect();
    let strings = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(tags, vec![(strings(&["latest", "v1"]), strings(&["v1"])), (strings(&["v2"]), strings(&["latest", "v2"]))]);

    // A revision that fails its health check rolls back; the old one keeps serving, untouched.
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(3);
    w.push("web", "v3", 3).await?;
    let op = wait_op(&c, &c.deploy("web-app", Some("web:v3")).await?.id).await?;
    assert_eq!(op.status, OperationStatus::RollbackSucceeded, "{}", log_text(&op));
    let log = log_text(&op);
    assert!(log.contains("failed 1 health checks in a row: GET /healthz answered 503") && log.contains("kept serving"), "{log}");
    assert_eq!(w.upstreams("web-app.localhost"), now, "the serving instance was not touched");
    assert_eq!(c.get("web-app").await?.current_revision.map(|r| r.number), Some(2));
    let created_v3: Vec<_> = w
        .runtime
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Create(id) if id.as_str().starts_with("web-app-3-") => Some(id),
            _ => None,
        })
        .collect();
    assert!(!created_v3.is_empty());
    for _ in 0..500 {
        let list = w.runtime.list().await?;
        if !list.iter().any(|i| created_v3.contains(&i.id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for id in &created_v3 {
        assert!(w.runtime.inspect(id).await?.is_none(), "{id} was removed");
    }

    // A crashed instance is replaced.
    let serving = w.runtime.list().await?.into_iter().find(|i| i.address == Some(now[0])).ok_or("serving instance")?;
    w.runtime.crash(&serving.id, 137, false);
    until("a replacement", || {
        let u = w.upstreams("web-app.localhost");
        u.len() == 1 && u != now
    })
    .await?;
    let events = c.events("web-app", None, 20).await?;
    assert!(events.iter().any(|e| e.kind == "instance_replaced" && e.message.contains("exited with code 137")), "{events:?}");

    // Rollback to the first revision by its id.
    let op = wait_op(&c, &c.rollback("web-app", "web-app-0001").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    assert_eq!(c.get("web-app").await?.current_revision.map(|r| r.doc.digest), Some(v1.clone()));

    // Pause keeps the route with a notice and stops everything; resume serves again.
    let op = wait_op(&c, &c.pause("web-app").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded);
    let route = w.table.lookup("web-app.localhost").ok_or("route kept")?;
    assert!(route.paused.as_deref().is_some_and(|m| m.contains("paused")) && route.upstreams.is_empty());
    assert_eq!(c.get("web-app").await?.status, ServiceStatus::Paused);
    assert!(w.runtime.list().await?.is_empty());
    assert!(matches!(c.deploy("web-app", None).await, Err(ControllerError::Conflict(_))));
    let op = wait_op(&c, &c.resume("web-app").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    assert_eq!(c.get("web-app").await?.status, ServiceStatus::Running);
    assert_eq!(w.upstreams("web-app.localhost").len(), 1);
    assert_eq!(c.revisions("web-app").await?.len(), 3);

    // Delete frees everything.
    let op = wait_op(&c, &c.delete("web-app").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded);
    assert!(w.table.lookup("web-app.localhost").is_none());
    assert!(w.runtime.list().await?.is_empty());
    assert!(matches!(c.get("web-app").await, Err(ControllerError::NotFound(_))));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_deploys_pushes_once_and_a_failed_create_is_reported() -> Result {
    let w = World::new()?;
    w.push("api", "latest", 10).await?;
    let c = w.controller().await?;
    wait_op(&c, &c.create(spec("api-svc", "api:latest")).await?.id).await?;

    // A push to the tag deploys it.
    let d11 = w.push("api", "latest", 11).await?;
    let mut serving = None;
    for _ in 0..500 {
        serving = c.get("api-svc").await?.current_revision.map(|r| r.doc.digest);
        if serving.as_ref() == Some(&d11) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving.as_ref(), Some(&d11), "the pushed digest serves");
    // A broken push rolls back and is not retried; pushing the same digest again does nothing.
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(3);
    w.push("api", "latest", 12).await?;
    let mut last = None;
    for _ in 0..500 {
        last = c.operations("api-svc", None, 10).await?.first().map(|o| o.status);
        if last == Some(OperationStatus::RollbackSucceeded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last, Some(OperationStatus::RollbackSucceeded));
    w.push("api", "latest", 12).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ops = c.operations("api-svc", None, 10).await?;
    assert_eq!(ops.len(), 3, "create, deploy, rolled-back deploy: {:?}", ops.iter().map(|o| o.status).collect::<Vec<_>>());
    assert_eq!(c.get("api-svc").await?.current_revision.map(|r| r.doc.digest), Some(d11.clone()));
    // A push of a good digest deploys it; moving the tag to the digest that failed does not, and
    // says so once; moving it back to an older, good digest (a revert) deploys that.
    let d13 = w.push("api", "latest", 13).await?;
    let serving = |c: &Controller| {
        let c = c.clone();
        async move { c.get("api-svc").await.ok().and_then(|s| s.current_revision.map(|r| r.doc.digest)) }
    };
    for _ in 0..500 {
        if serving(&c).await.as_ref() == Some(&d13) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving(&c).await.as_ref(), Some(&d13));
    w.push("api", "latest", 12).await?;
    let mut skipped = Vec::new();
    for _ in 0..500 {
        skipped = c.events("api-svc", None, 50).await?.into_iter().filter(|e| e.kind == "auto_deploy_skipped").collect();
        if !skipped.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(skipped.len() == 1 && skipped[0].message.contains("whose deployment failed"), "{skipped:?}");
    assert_eq!(serving(&c).await.as_ref(), Some(&d13));
    w.push("api", "latest", 11).await?;
    for _ in 0..500 {
        if serving(&c).await.as_ref() == Some(&d11) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(serving(&c).await.as_ref(), Some(&d11), "moving the tag back to an older digest deployed nothing");

    // A first deployment that cannot become healthy: CREATE_FAILED with the reason.
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(1);
    let op = wait_op(&c, &c.create(spec("doomed", "api:latest")).await?.id).await?;
    assert_eq!(op.status, OperationStatus::Failed);
    assert!(log_text(&op).contains("CREATE_FAILED"), "{}", log_text(&op));
    assert_eq!(c.get("doomed").await?.status, ServiceStatus::CreateFailed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_interrupted_by_a_crash_completes_or_starts_over() -> Result {
    for switched in [false, true] {
        let w = World::new()?;
        w.push("web", "v1", 1).await?;
        w.push("web", "v2", 2).await?;
        // A first server deploys revision 1, then starts deploying revision 2 and "crashes":
        // its supervisors are simply abandoned, the state is as the crash left it.
        {
            let c = w.controller().await?;
            wait_op(&c, &c.create(spec("web-app", "web:v1")).await?.id).await?;
            c.shutdown();
        }
        let rev2 =
            serde_json::json!({"spec": spec("web-app", "web:v2"), "repository": "web", "digest": Digest::sha256_of(&[2]), "tags": ["v2"]});
        assert_eq!(w.store.create_revision("web-app", &rev2, 0).await?, 2);
        let mut svc = w.store.get_service("web-app").await?.ok_or("service")?.doc;
        if switched {
            svc["current_revision"] = 2.into();
        }
        svc["status"] = "OPERATION_IN_PROGRESS".into();
        w.store.put_service("web-app", &svc, 0).await?;
        let op = serde_json::json!({"id": "op-crash", "service": "web-app", "type": "START_DEPLOYMENT", "status": "IN_PROGRESS",
            "target_revision": 2, "previous_revision": 1, "log": [], "started_at": 0, "ended_at": null});
        w.store.put_operation("op-crash", "web-app", true, &op, 0).await?;
        let spec2 = berth_runtime::InstanceSpec {
            id: berth_runtime::InstanceId::new("web-app-2-aaaaaa")?,
            labels: vec![("berth.service".into(), "web-app".into()), ("berth.revision".into(), "2".into())],
            image: berth_runtime::ImageRef { repository: "web".into(), digest: Digest::sha256_of(&[2]) },
            entrypoint: None,
            cmd: None,
            env: vec![],
            port: 8080,
            resources: Default::default(),
            user: None,
            read_only_rootfs: false,
            files: Vec::new(),
            init: false,
            network: Default::default(),
        };
        w.runtime.create(spec2.clone()).await?;
        w.runtime.start(&spec2.id).await?;

        // The restarted server never leaves it half-done.
        let c = w.controller().await?;
        let op = wait_op(&c, "op-crash").await?;
        let running: Vec<String> = w.runtime.list().await?.into_iter().map(|i| i.id.to_string()).collect();
        assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
        let log = log_text(&op);
        if switched {
            assert!(log.contains("after the switch; the deployment is complete"), "{log}");
        } else {
            assert!(log.contains("starting the deployment again") && log.contains("revision web-app-0002 serves"), "{log}");
            assert!(!running.contains(&"web-app-2-aaaaaa".to_string()), "the half-started instance was removed: {running:?}");
        }
        until("only revision 2 to run", || {
            futures_util::FutureExt::now_or_never(w.runtime.list())
                .and_then(|r| r.ok())
                .is_some_and(|l| !l.is_empty() && l.iter().all(|i| i.id.as_str().starts_with("web-app-2-")))
        })
        .await?;
        until("the service to be routed", || w.upstreams("web-app.localhost").len() == 1).await?;
        assert_eq!(c.get("web-app").await?.status, ServiceStatus::Running);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_keep_failing_are_reported_as_a_crash_loop_and_backed_off() -> Result {
    let w = World::new()?;
    w.push("web", "v1", 1).await?;
    let c = w.controller().await?;
    wait_op(&c, &c.create(spec("loop-app", "web:v1")).await?.id).await?;
    // The serving revision starts failing its health checks: every replacement fails too.
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(1);
    let mut events = Vec::new();
    for _ in 0..400 {
        events = c.events("loop-app", None, 50).await?;
        if events.iter().any(|e| e.kind == "crash_loop") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let crash = events.iter().find(|e| e.kind == "crash_loop").ok_or_else(|| format!("no crash_loop event in {events:?}"))?;
    assert!(crash.message.contains("keep failing soon after they start") && crash.message.contains("next attempt in"), "{crash:?}");
    assert!(events.iter().filter(|e| e.kind == "instance_replaced").count() >= 3, "{events:?}");
    // Backed off: no new instance is started for a while.
    let creates = || w.runtime.calls().iter().filter(|c| matches!(c, Call::Create(_))).count();
    let before = creates();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(creates(), before, "no instance started during the backoff");
    Ok(())
}

/// A request that kills the instances it reaches, again and again: instances that were serving
/// are replaced at once, with no crash-loop back-off (which would leave the service with no
/// ready instance); and probes berth itself could not make replace nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_instances_that_die_are_replaced_at_once_and_unmade_probes_replace_nothing() -> Result {
    let w = World::new()?;
    w.push("web", "v1", 1).await?;
    let c = w.controller().await?;
    let mut s = spec("dies-app", "web:v1");
    s.autoscaling.min_size = 2;
    wait_op(&c, &c.create(s).await?.id).await?;
    until("two ready instances", || w.upstreams("dies-app.localhost").len() == 2).await?;
    for round in 0..4 {
        let before = w.upstreams("dies-app.localhost");
        for st in w.runtime.list().await? {
            if st.state == berth_runtime::InstanceState::Running {
                w.runtime.crash(&st.id, 137, true);
            }
        }
        until(&format!("two new ready instances (round {round})"), || {
            let now = w.upstreams("dies-app.localhost");
            now.len() == 2 && now.iter().all(|a| !before.contains(a))
        })
        .await?;
    }
    let events = c.events("dies-app", None, 100).await?;
    assert!(!events.iter().any(|e| e.kind == "crash_loop"), "serving instances that died were backed off: {events:?}");

    w.prober.unprobed.lock().unwrap_or_else(|p| p.into_inner()).insert(1);
    let replaced = |events: &[berth_store::ServiceEvent]| events.iter().filter(|e| e.kind == "instance_replaced").count();
    let before = replaced(&c.events("dies-app", None, 100).await?);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(replaced(&c.events("dies-app", None, 100).await?), before, "an instance was replaced because berth could not probe it");
    assert_eq!(w.upstreams("dies-app.localhost").len(), 2);
    Ok(())
}

/// An instance whose delete failed (the host short of resources) is not left behind: the service
/// finds it again and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_delete_failed_is_removed_later() -> Result {
    let w = World::new()?;
    w.push("web", "v1", 1).await?;
    let c = w.controller().await?;
    wait_op(&c, &c.create(spec("tidy-app", "web:v1")).await?.id).await?;
    let first = w.runtime.list().await?.remove(0).id;
    w.runtime.fail_next_delete(&first);
    w.runtime.crash(&first, 1, false);
    until("a replacement", || w.upstreams("tidy-app.localhost").len() == 1).await?;
    for _ in 0..250 {
        if !w.runtime.list().await?.iter().any(|i| i.id == first) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("{first} was left behind after its delete failed").into())
}

/// A change of configuration keeps the serving build (even when the tag has moved on); an update,
/// a pause or a resume refused because another operation runs names it and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_keep_the_serving_digest_and_refusals_leave_nothing() -> Result {
    let w = World::new()?;
    let d1 = w.push("web", "latest", 1).await?;
    let c = w.controller().await?;
    let mut s = spec("conf-app", "web:latest");
    s.source.auto_deploy = Some(false);
    wait_op(&c, &c.create(s.clone()).await?.id).await?;
    w.push("web", "latest", 2).await?;
    s.image_config.env.insert("MODE".into(), "blue".into());
    let op = wait_op(&c, &c.update(s.clone()).await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let svc = c.get("conf-app").await?;
    assert_eq!(svc.current_revision.map(|r| r.doc.digest), Some(d1), "a config change moved the service onto another build");

    // Another operation in progress: refused, named, and no revision left behind.
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(3);
    let slow = c.deploy("conf-app", Some("web:latest")).await?;
    let revisions = c.revisions("conf-app").await?.len();
    s.image_config.env.insert("MODE".into(), "green".into());
    for refused in [c.update(s.clone()).await.err(), c.pause("conf-app").await.err(), c.resume("conf-app").await.err()] {
        let msg = refused.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&slow.id), "the refusal does not name the operation in progress: {msg}");
    }
    assert_eq!(c.revisions("conf-app").await?.len(), revisions, "a refused update left a revision behind");
    wait_op(&c, &slow.id).await?;
    Ok(())
}

/// Env vars from secrets: each revision pins the versions CURRENT when it was made, so its
/// instances all get the same values however CURRENT moves; a new revision takes the new ones.
/// References that do not resolve are refused when the revision is made, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_the_secret_versions_their_revision_pinned() -> Result {
    let w = World::new()?;
    w.push("web", "latest", 1).await?;
    let c = w.controller().await?;
    let secrets = w.secrets().await?;
    secrets.create("db-creds", "", r#"{"user":"gb","password":"one"}"#, "admin", 1).await?;
    secrets.create("plain", "", "not json", "admin", 1).await?;

    let mut s = spec("env-app", "web:latest");
    s.source.auto_deploy = Some(false);
    for (reference, why) in
        [("missing", "secret `missing` does not exist"), ("plain#password", "not a JSON object"), ("db-creds#nope", "no key `nope`")]
    {
        s.image_config.secret_env = [("DB_PASSWORD".to_owned(), reference.to_owned())].into();
        let err = c.create(s.clone()).await.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(why) && err.contains("DB_PASSWORD"), "{reference}: {err}");
        assert!(!err.contains("not json") && !err.contains("one"), "an error shows a value: {err}");
    }
    assert!(c.get("env-app").await.is_err(), "a refused create left a service");

    s.image_config.secret_env =
        [("DB_PASSWORD".to_owned(), "db-creds#password".to_owned()), ("DB_USER".to_owned(), "db-creds#user".to_owned())].into();
    let op = wait_op(&c, &c.create(s.clone()).await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let env_of_newest = || -> Vec<(String, String)> {
        let newest = w.runtime.calls().into_iter().rev().find_map(|call| match call {
            Call::Create(id) => w.runtime.spec(&id),
            _ => None,
        });
        newest.map(|spec| spec.env.into_iter().filter(|(k, _)| k.starts_with("DB_")).collect()).unwrap_or_default()
    };
    assert_eq!(env_of_newest(), [("DB_PASSWORD".to_owned(), "one".to_owned()), ("DB_USER".to_owned(), "gb".to_owned())]);

    // An instance of the serving revision made later (one replacing a crashed one) gets the
    // same pinned version.
    let first = w.upstreams("env-app.localhost");
    let crashed = c.get("env-app").await?.instances.first().map(|i| i.id.clone()).ok_or("no instance")?;
    w.runtime.crash(&berth_runtime::InstanceId::new(crashed)?, 1, false);
    until("a replacement", || {
        let now = w.upstreams("env-app.localhost");
        !now.is_empty() && now != first
    })
    .await?;
    assert_eq!(env_of_newest()[0], ("DB_PASSWORD".to_owned(), "one".to_owned()));

    // CURRENT moves: the service is deployed again, same build, with the new version.
    secrets.put("db-creds", r#"{"user":"gb","password":"two"}"#, &[], "admin", 2).await?;
    let mut followed = None;
    for _ in 0..200 {
        let ops = c.operations("env-app", None, 10).await?;
        if let Some(op) = ops.into_iter().find(|o| log_text(o).contains("secrets moved: `db-creds`")) {
            followed = Some(op);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let op = wait_op(&c, &followed.ok_or("no deployment followed the secret")?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    assert_eq!(env_of_newest()[0], ("DB_PASSWORD".to_owned(), "two".to_owned()));
    let svc = c.get("env-app").await?;
    assert_eq!(svc.current_revision.as_ref().map(|r| r.doc.digest.clone()), c.revision("env-app", 1).await.ok().map(|r| r.doc.digest));

    // A new value that lacks a key the service takes is not followed; an event says why.
    secrets.put("db-creds", r#"{"password":"three"}"#, &[], "admin", 3).await?;
    let mut said = false;
    for _ in 0..200 {
        let events = c.events("env-app", None, 20).await?;
        if events.iter().any(|e| e.kind == "secret_not_followed" && e.message.contains("no key `user`")) {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said, "no event says why the new value was not followed");
    assert_eq!(c.get("env-app").await?.current_revision.map(|r| r.number), svc.current_revision.map(|r| r.number));
    let two = secrets.describe("db-creds").await?.versions[1].id.clone();
    let consumers = c.secret_consumers("db-creds").await?;
    assert!(
        consumers.iter().any(|u| u.service == "env-app" && u.version == two && !u.instances.is_empty()),
        "the serving revision and the version it uses: {consumers:?}"
    );
    assert!(c.secret_consumers("plain").await?.is_empty());
    let trail = secrets.audit_trail("db-creds", 100).await?;
    assert!(trail.iter().any(|e| e.actor == "service env-app" && e.action == "read"), "{trail:?}");

    // What rotation waits for: every instance on the version.
    use berth_secrets::rotation::Consumers;
    assert_eq!(c.lagging("db-creds", &two).await, Vec::<String>::new());
    let lag = c.lagging("db-creds", "a-newer-version").await;
    assert!(lag.iter().any(|l| l.starts_with("service env-app: 1 instance(s)")), "{lag:?}");
    assert!(c.lagging("plain", "any").await.is_empty(), "nothing uses `plain`");

    // Rolling back to revision 1, which pinned version one (a rotation may have retired it):
    // revision 1's build with the versions CURRENT now.
    secrets.label("db-creds", berth_secrets::CURRENT, &two, "admin", 4).await?;
    let op = wait_op(&c, &c.rollback("env-app", "1").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    assert!(log_text(&op).contains("with the secret versions CURRENT now"), "{}", log_text(&op));
    assert_eq!(env_of_newest()[0], ("DB_PASSWORD".to_owned(), "two".to_owned()));
    let serving = c.get("env-app").await?.current_revision.ok_or("nothing serves")?;
    assert!(serving.number > 2, "a new revision: {}", serving.number);
    assert_eq!(serving.doc.secret_versions.get("db-creds"), Some(&two));
    Ok(())
}

/// Every instance a deployment starts is known to the router as a caller from before its app
/// runs until it goes — all of them, not only the last one started — so that its app can resolve
/// berth's names while it is health-checked.
#[tokio::test]
async fn instances_being_brought_up_are_callers_all_at_once() -> Result {
    let w = World::new()?;
    w.push("web", "latest", 1).await?;
    *w.prober.table.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.table.clone());
    let c = w.controller().await?;
    let mut s = spec("two-app", "web:latest");
    s.source.auto_deploy = Some(false);
    s.autoscaling.min_size = 3;
    let op = wait_op(&c, &c.create(s).await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let strangers = w.prober.strangers.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(strangers.is_empty(), "probed while the router did not know them as callers: {strangers:?}");
    // A failed deployment's instances stop being callers.
    w.push("web", "latest", 2).await?;
    w.prober.broken.lock().unwrap_or_else(|p| p.into_inner()).insert(2);
    let op = wait_op(&c, &c.deploy("two-app", None).await?.id).await?;
    assert_ne!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let serving: Vec<SocketAddr> = c.get("two-app").await?.instances.iter().filter_map(|i| i.address.as_deref()?.parse().ok()).collect();
    assert_eq!(serving.len(), 3);
    let started: Vec<String> = log_text(&op).lines().filter_map(|l| l.split(" at ").nth(1).map(str::to_owned)).collect();
    assert!(!started.is_empty(), "{}", log_text(&op));
    for addr in started {
        let addr: SocketAddr = addr.trim().parse()?;
        assert!(w.table.caller(addr.ip()).is_none() || serving.contains(&addr), "{addr} of the failed revision is still a caller");
    }

    // An instance of the previous revision still working on a request is a caller until it is
    // gone: that request may still need a name resolved.
    let held = w.table.lookup("two-app.localhost").ok_or("no route")?.admit(None).map_err(|_| "no upstream")?;
    let old = held.upstream().addr;
    w.push("web", "latest", 3).await?;
    let op = c.deploy("two-app", None).await?;
    until("the switch to the new revision", || {
        let now = w.upstreams("two-app.localhost");
        !now.is_empty() && !now.contains(&old)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.table.caller(old.ip()).is_some(), "a draining instance stopped being a caller");
    drop(held);
    let op = wait_op(&c, &op.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    until("the drained instance to stop being a caller", || w.table.caller(old.ip()).is_none()).await?;
    Ok(())
}

/// A paused service holds no credential: it does not hold a rotation back, and it resumes with
/// the versions CURRENT then, not the ones its revision pinned before.
#[tokio::test]
async fn a_paused_service_resumes_with_the_current_secret_versions() -> Result {
    use berth_secrets::rotation::Consumers;
    let w = World::new()?;
    w.push("web", "latest", 1).await?;
    let c = w.controller().await?;
    let secrets = w.secrets().await?;
    secrets.create("db-creds", "", r#"{"password":"one"}"#, "admin", 1).await?;
    let mut s = spec("paused-app", "web:latest");
    s.source.auto_deploy = Some(false);
    s.image_config.secret_env = [("DB_PASSWORD".to_owned(), "db-creds#password".to_owned())].into();
    assert_eq!(wait_op(&c, &c.create(s).await?.id).await?.status, OperationStatus::Succeeded);
    assert_eq!(wait_op(&c, &c.pause("paused-app").await?.id).await?.status, OperationStatus::Succeeded);
    let two = secrets.put("db-creds", r#"{"password":"two"}"#, &[], "admin", 2).await?;
    assert_eq!(c.lagging("db-creds", &two.id).await, Vec::<String>::new(), "a paused service held the rotation back");

    let op = wait_op(&c, &c.resume("paused-app").await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    assert!(log_text(&op).contains("no longer CURRENT; resuming with revision paused-app-0002"), "{}", log_text(&op));
    let serving = c.get("paused-app").await?.current_revision.ok_or("nothing serves")?;
    assert_eq!((serving.number, serving.doc.secret_versions.get("db-creds")), (2, Some(&two.id)));
    let newest = w.runtime.calls().into_iter().rev().find_map(|call| match call {
        Call::Create(id) => w.runtime.spec(&id),
        _ => None,
    });
    let env: Vec<(String, String)> = newest.ok_or("no instance")?.env.into_iter().filter(|(k, _)| k == "DB_PASSWORD").collect();
    assert_eq!(env, [("DB_PASSWORD".to_owned(), "two".to_owned())]);
    Ok(())
}

/// Files from secrets follow CURRENT in place: the running instance gets the new file, no new
/// instance and no new revision; a path that cannot be a secret file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_from_secrets_follow_current_in_place() -> Result {
    let w = World::new()?;
    w.push("web", "latest", 1).await?;
    let c = w.controller().await?;
    let secrets = w.secrets().await?;
    secrets.create("db-creds", "", r#"{"user":"gb","password":"one"}"#, "admin", 1).await?;

    let mut s = spec("file-app", "web:latest");
    s.source.auto_deploy = Some(false);
    s.image_config.secret_files = [("/etc/db-password".to_owned(), "db-creds#password".to_owned())].into();
    let err = c.create(s.clone()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("/etc/db-password") && err.contains("/etc"), "{err}");
    s.image_config.secret_files = [("/run/secrets/db-password".to_owned(), "db-creds#password".to_owned())].into();
    let op = wait_op(&c, &c.create(s).await?.id).await?;
    assert_eq!(op.status, OperationStatus::Succeeded, "{}", log_text(&op));
    let id = c.get("file-app").await?.instances.first().map(|i| i.id.clone()).ok_or("no instance")?;
    let id = berth_runtime::InstanceId::new(id)?;
    let file = |w: &World| -> Option<Vec<u8>> {
        let spec = w.runtime.spec(&id)?;
        let m = spec.files.into_iter().find(|m| m.dir == "/run/secrets")?;
        m.files.get("db-password").cloned()
    };
    assert_eq!(file(&w).as_deref(), Some(&b"one"[..]));

    secrets.put("db-creds", r#"{"user":"gb","password":"two"}"#, &[], "admin", 2).await?;
    until("the file to follow the secret", || file(&w).as_deref() == Some(&b"two"[..])).await?;
    let creates = w.runtime.calls().into_iter().filter(|c| matches!(c, Call::Create(_))).count();
    assert_eq!(creates, 1, "an instance was made to follow the secret");
    assert_eq!(c.revisions("file-app").await?.len(), 1, "a revision was made to follow the secret");
    let current = secrets.describe("db-creds").await?.versions[0].id.clone();
    let consumers = c.secret_consumers("db-creds").await?;
    assert!(consumers.iter().any(|u| u.service == "file-app" && u.how == "files" && u.version == current), "{consumers:?}");
    // Rotation waits for the files: the version they were written from is the one.
    use berth_secrets::rotation::Consumers;
    let mut lag = c.lagging("db-creds", &current).await;
    for _ in 0..100 {
        if lag.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        lag = c.lagging("db-creds", &current).await;
    }
    assert_eq!(lag, Vec::<String>::new());
    assert_eq!(c.lagging("db-creds", "a-newer-version").await, ["service file-app: files not yet rewritten"]);
    Ok(())
}

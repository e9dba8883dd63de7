//! One task per service: it owns the service's instances — starts them, probes them, routes
//! the healthy ones, replaces the failing ones, follows the autoscaler — and carries out its
//! operations one at a time: blue/green deployments with rollback, pause, resume, delete.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_autoscale::ScalingSettings;
use berth_core::service::host_label;
use berth_core::{Egress, NetworkSpec, OperationStatus, OperationType, ServiceSpec, ServiceStatus, Visibility};
use berth_router::{Leaver, RouteSettings, RouteSpec};
use berth_runtime::{ImageRef, InstanceId, InstanceNetwork, InstanceSpec, InstanceState, Resources, RuntimeEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::health::Probe;
use crate::model::{now, InstanceView, Operation, Revision, ServiceDoc};
use crate::{from_value, load_service, to_value, Command, Shared};

pub(crate) const LABEL_SERVICE: &str = "berth.service";
pub(crate) const LABEL_REVISION: &str = "berth.revision";

/// A failure within this long of an instance's start, before it ever became ready, counts
/// toward a crash loop. An instance that was serving and then died (a crash, a request that ran
/// it out of memory) is replaced at once: backing off would take a service's last ready
/// instances away for nothing.
const EARLY_FAILURE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Unhealthy,
}

#[derive(Debug)]
struct Inst {
    id: InstanceId,
    revision: u32,
    addr: SocketAddr,
    phase: Phase,
    passes: u32,
    failures: u32,
    /// Probes so far, for the start-up cadence.
    probes: u32,
    started: Instant,
    next_check: Instant,
    last_counted_failure: Option<Instant>,
    /// Why it became unhealthy.
    reason: String,
    /// Whether it ever passed its health checks.
    was_ready: bool,
}

impl Inst {
    /// A starting instance, first probed at `next_check`; `started` dates its early failures.
    fn starting(id: InstanceId, revision: u32, addr: SocketAddr, started: Instant, next_check: Instant) -> Inst {
        Inst {
            id,
            revision,
            addr,
            phase: Phase::Starting,
            passes: 0,
            failures: 0,
            probes: 0,
            started,
            next_check,
            last_counted_failure: None,
            reason: String::new(),
            was_ready: false,
        }
    }

    fn view(&self) -> InstanceView {
        InstanceView {
            id: self.id.to_string(),
            revision: self.revision,
            address: Some(self.addr.to_string()),
            state: match self.phase {
                Phase::Starting => "starting",
                Phase::Ready => "ready",
                Phase::Unhealthy => "unhealthy",
            },
        }
    }
}

/// Waits (bounded by `bound`, the request timeout) for requests on `left` to finish, then stops
/// and deletes the instances, which leave `retiring` then (removed or not: the sweep retries).
async fn drain_and_remove(sh: Arc<Shared>, bound: Duration, left: Vec<Leaver>, ids: Vec<InstanceId>, retiring: Retiring) {
    if tokio::time::timeout(bound, futures_util::future::join_all(left.iter().map(|u| u.drained()))).await.is_err() {
        tracing::warn!("instances did not drain within the request timeout; stopping them anyway");
    }
    futures_util::future::join_all(ids.iter().map(|id| remove_instance(&sh, id))).await;
    let mut r = retiring.lock().unwrap_or_else(|p| p.into_inner());
    for id in &ids {
        r.instances.remove(id);
    }
    r.gone += 1;
}

/// What an instance is told about itself, as environment variables: its service, revision and
/// instance (berth's names, and Knative's and Cloud Run's `K_SERVICE` and `K_REVISION`).
fn identity(service: &str, rev: &Revision, instance: &InstanceId) -> [(String, String); 5] {
    [
        ("BERTH_SERVICE".into(), service.to_owned()),
        ("BERTH_REVISION".into(), rev.id.clone()),
        ("BERTH_INSTANCE".into(), instance.to_string()),
        ("K_SERVICE".into(), service.to_owned()),
        ("K_REVISION".into(), rev.id.clone()),
    ]
}

/// Instances on their way out (draining, stopping), which the sweep leaves alone and which stay
/// callers of the router (their requests in flight may still resolve names, call private
/// services) until they are gone; `gone` counts removals, for the supervisor to stop naming
/// them as callers.
#[derive(Default)]
struct RetiringSet {
    instances: HashMap<InstanceId, IpAddr>,
    gone: u64,
}

type Retiring = Arc<Mutex<RetiringSet>>;

/// SIGTERM, the grace period, SIGKILL, then everything the instance held is freed.
async fn remove_instance(sh: &Shared, id: &InstanceId) {
    if let Err(e) = sh.runtime.stop(id, sh.settings.stop_grace).await {
        tracing::debug!(instance = %id, error = %e, "stopping");
    }
    if let Err(e) = sh.runtime.delete(id).await {
        tracing::warn!(instance = %id, error = %e, "deleting the instance failed");
    }
}

struct Supervisor {
    sh: Arc<Shared>,
    name: String,
    busy: Arc<Mutex<Option<(String, OperationType)>>>,
    view: Arc<Mutex<Vec<InstanceView>>>,
    svc: ServiceDoc,
    current: Option<Revision>,
    instances: Vec<Inst>,
    /// Addresses of instances a deployment started and is health-checking, not yet among
    /// `instances`: callers of the router (DNS, private services) from their first moment.
    bringing_up: Vec<IpAddr>,
    /// How many instances the autoscaler wants (within the spec's bounds).
    desired: u32,
    /// Ready addresses last put in the table.
    routed: Vec<SocketAddr>,
    runtime_events: tokio::sync::broadcast::Receiver<RuntimeEvent>,
    /// Start times of recent early failures, for crash-loop backoff.
    early_failures: VecDeque<Instant>,
    /// No new instance before this (crash-loop backoff).
    hold_until: Option<Instant>,
    /// Instances being drained and removed.
    retiring: Retiring,
    /// `retiring.gone` when last seen.
    gone_seen: u64,
    /// When the last sweep for untracked instances ran.
    swept: Instant,
    deleted: bool,
    /// The networks the serving spec names, as stored.
    networks: Vec<NetworkSpec>,
}

pub(crate) async fn run(
    sh: Arc<Shared>,
    name: String,
    mut rx: mpsc::UnboundedReceiver<Command>,
    busy: Arc<Mutex<Option<(String, OperationType)>>>,
    view: Arc<Mutex<Vec<InstanceView>>>,
    first: Option<Operation>,
) {
    let svc = match load_service(&sh.store, &name).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(service = %name, error = %e, "cannot load the service; not supervising it");
            return;
        }
    };
    let runtime_events = sh.runtime.events();
    let mut s = Supervisor {
        sh,
        name,
        busy,
        view,
        svc,
        current: None,
        instances: Vec::new(),
        bringing_up: Vec::new(),
        desired: 1,
        routed: Vec::new(),
        runtime_events,
        early_failures: VecDeque::new(),
        hold_until: None,
        retiring: Retiring::default(),
        gone_seen: 0,
        swept: Instant::now(),
        deleted: false,
        networks: Vec::new(),
    };
    s.recover(first.as_ref().map(|op| op.id.as_str())).await;
    if let Some(op) = first {
        s.carry_out(op).await;
    }
    while !s.deleted {
        let now = Instant::now();
        let wait = s
            .instances
            .iter()
            .filter(|i| i.phase == Phase::Starting)
            .map(|i| i.next_check.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::from_millis(250))
            .max(Duration::from_millis(1));
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Command::Run(op)) => s.carry_out(op).await,
                Some(Command::Scale(n, why)) => s.scale(n, &why).await,
                None => break,
            },
            ev = s.runtime_events.recv() => s.on_runtime_event(ev),
            _ = tokio::time::sleep(wait) => {}
        }
        if !s.deleted {
            s.reconcile().await;
        }
    }
    s.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).remove(&s.name);
}

impl Supervisor {
    // ---- bookkeeping ----

    async fn save(&mut self) {
        match to_value(&self.svc) {
            Ok(doc) => {
                if let Err(e) = self.sh.store.put_service(&self.name, &doc, now()).await {
                    tracing::error!(service = %self.name, error = %e, "saving the service failed");
                }
            }
            Err(e) => tracing::error!(service = %self.name, error = %e, "encoding the service failed"),
        }
    }

    async fn set_status(&mut self, status: ServiceStatus) {
        if self.svc.status != status {
            self.event("status", &format!("{} → {status}", self.svc.status)).await;
            self.svc.status = status;
        }
        self.save().await;
    }

    async fn event(&self, kind: &str, message: &str) {
        tracing::info!(service = %self.name, kind, "{message}");
        if let Err(e) = self.sh.store.add_service_event(&self.name, now(), kind, message).await {
            tracing::warn!(service = %self.name, error = %e, "recording an event failed");
        }
    }

    async fn save_op(&self, op: &Operation) {
        let open = !op.status.is_final();
        match to_value(op) {
            Ok(doc) => {
                if let Err(e) = self.sh.store.put_operation(&op.id, &op.service, open, &doc, op.started_at).await {
                    tracing::error!(operation = %op.id, error = %e, "saving the operation failed");
                }
            }
            Err(e) => tracing::error!(operation = %op.id, error = %e, "encoding the operation failed"),
        }
    }

    async fn finish(&self, op: &mut Operation, status: OperationStatus, message: impl Into<String>) {
        op.say(message);
        op.status = status;
        op.ended_at = Some(now());
        self.save_op(op).await;
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.sh.autodeploy.notify_one();
    }

    fn publish_view(&self) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = self.instances.iter().map(Inst::view).collect();
    }

    async fn load_current(&mut self) {
        self.current = match self.svc.current_revision {
            Some(n) => match self.sh.store.get_revision(&self.name, n).await {
                Ok(Some(r)) => Revision::from_record(&self.name, r).ok(),
                _ => None,
            },
            None => None,
        };
    }

    fn bounds(&self) -> (u32, u32) {
        let a = &self.svc.spec.autoscaling;
        (a.min_size, a.max_size.max(1))
    }

    /// The autoscaler's decision: recorded as an event (the charts mark it) when it changes the
    /// instances wanted.
    async fn scale(&mut self, n: u32, why: &str) {
        let before = self.desired;
        self.scale_to(n);
        if self.desired != before && !self.svc.paused {
            self.event("scaled", why).await;
        }
    }

    fn scale_to(&mut self, n: u32) {
        let (min, max) = self.bounds();
        self.desired = n.clamp(min, max);
    }

    fn configure_autoscaler(&mut self) {
        let a = &self.svc.spec.autoscaling;
        let settings = ScalingSettings {
            max_concurrency: a.max_concurrency,
            min_size: a.min_size,
            max_size: a.max_size,
            ..ScalingSettings::default()
        };
        self.sh.autoscaler.configure(&self.name, settings, self.desired);
    }

    // ---- routing ----

    fn route_settings(&self) -> RouteSettings {
        let spec = &self.svc.spec;
        RouteSettings {
            request_timeout: Duration::from_secs(spec.traffic.request_timeout.into()),
            max_body_bytes: u64::from(spec.traffic.max_body_mb) << 20,
            max_concurrency: spec.autoscaling.max_concurrency as usize,
            h2c: spec.traffic.h2c,
            scale_from_zero: spec.autoscaling.min_size == 0,
            ..RouteSettings::default()
        }
    }

    /// Puts the ready instances (or the paused notice) in the router; returns who left.
    fn route(&mut self) -> Vec<Leaver> {
        self.routed = self.instances.iter().filter(|i| i.phase == Phase::Ready).map(|i| i.addr).collect();
        self.publish_view();
        self.sh.book.set(&self.name, self.route_specs(None))
    }

    /// The service's routes: its public hosts (unless it is private) and `<name>.internal`, to
    /// the instances last routed, with every instance's address as a caller (and `starting`'s,
    /// an instance about to start).
    fn route_specs(&self, starting: Option<IpAddr>) -> Vec<RouteSpec> {
        let retiring: Vec<IpAddr> = self.retiring.lock().unwrap_or_else(|p| p.into_inner()).instances.values().copied().collect();
        let sources: Vec<IpAddr> =
            self.instances.iter().map(|i| i.addr.ip()).chain(self.bringing_up.iter().copied()).chain(retiring).chain(starting).collect();
        if self.svc.current_revision.is_none() && !self.svc.paused && sources.is_empty() {
            return Vec::new();
        }
        // The names of the networks' machines and host endpoints.
        let mut names = std::collections::BTreeMap::new();
        for n in &self.networks {
            names.extend(n.hosts.iter().map(|(h, a)| (format!("{h}.{}.internal", n.name), IpAddr::V4(*a))));
            if let Some(gw) = self.sh.settings.gateway {
                names.extend(n.host_endpoints.keys().map(|e| (format!("{e}.{}.internal", n.name), IpAddr::V4(gw))));
            }
        }
        let label = host_label(&self.name);
        let paused =
            self.svc.paused.then(|| format!("service `{}` is paused; `berth service resume {}` serves it again", self.name, self.name));
        let net = &self.svc.spec.network;
        let routed: Vec<Option<&Inst>> = self.routed.iter().map(|a| self.instances.iter().find(|i| i.addr == *a)).collect();
        let revisions: Vec<u32> = routed.iter().map(|i| i.map_or(0, |i| i.revision)).collect();
        let instances: Vec<String> = routed.iter().map(|i| i.map(|i| i.id.to_string()).unwrap_or_default()).collect();
        let spec = |host: String, internal: bool| RouteSpec {
            host,
            service: self.name.clone(),
            upstreams: self.routed.clone(),
            revisions: revisions.clone(),
            instances: instances.clone(),
            settings: self.route_settings(),
            paused: paused.clone(),
            internal,
            allow_from: None,
            sources: sources.clone(),
            names: names.clone(),
            resolve_public: net.egress == Egress::Public,
        };
        let mut specs: Vec<RouteSpec> = match net.visibility {
            Visibility::Public => self.sh.settings.suffixes.iter().map(|suffix| spec(format!("{label}{suffix}"), false)).collect(),
            Visibility::Private => Vec::new(),
        };
        let allow_from = match (net.visibility, net.allow_from.is_empty()) {
            (Visibility::Public, true) => None,
            _ => Some(net.allow_from.clone()),
        };
        specs.push(RouteSpec { allow_from, ..spec(format!("{label}.internal"), true) });
        specs
    }

    /// Waits (bounded by the request timeout) for requests on `left` to finish, then stops and
    /// deletes `instances`.
    async fn retire(&self, left: Vec<Leaver>, instances: Vec<Inst>) {
        let ids = self.mark_retiring(instances);
        drain_and_remove(self.sh.clone(), self.request_timeout(), left, ids, self.retiring.clone()).await;
    }

    /// Records `instances` as on their way out (so the sweep leaves them to their removal).
    fn mark_retiring(&self, instances: Vec<Inst>) -> Vec<InstanceId> {
        if self.set_aside(&instances) {
            // They stay callers while they drain.
            drop(self.sh.book.set(&self.name, self.route_specs(None)));
        }
        instances.into_iter().map(|i| i.id).collect()
    }

    /// Counts `instances` (no longer among `instances`) as retiring before the routes change, so
    /// that they stay callers throughout; whether any was new.
    fn set_aside(&self, instances: &[Inst]) -> bool {
        let mut r = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
        let before = r.instances.len();
        r.instances.extend(instances.iter().map(|i| (i.id.clone(), i.addr.ip())));
        r.instances.len() != before
    }

    /// Retires in the background: the supervisor goes on serving meanwhile.
    fn retire_later(&self, left: Vec<Leaver>, instances: Vec<Inst>) {
        if left.is_empty() && instances.is_empty() {
            return;
        }
        let ids = self.mark_retiring(instances);
        tokio::spawn(drain_and_remove(self.sh.clone(), self.request_timeout(), left, ids, self.retiring.clone()));
    }

    /// Loads the networks the serving spec names.
    async fn refresh_networks(&mut self) {
        match networks_of(&self.sh, &self.svc.spec).await {
            Ok(n) => self.networks = n,
            Err(e) => tracing::error!(service = %self.name, error = %e, "loading the service's networks"),
        }
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.svc.spec.traffic.request_timeout.into())
    }

    // ---- instances ----

    /// The env vars the revision takes from secrets, at the versions it pinned; each read is in
    /// the secret's audit trail as the service's.
    async fn secret_env(&self, rev: &Revision) -> Result<Vec<(String, String)>, String> {
        let wanted = &rev.doc.spec.image_config.secret_env;
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let secrets = self.sh.secrets.as_ref().ok_or("this server keeps no secrets")?;
        let mut env = Vec::new();
        for (var, reference) in wanted {
            let failed = |e: &dyn std::fmt::Display| format!("{var} from secret `{reference}`: {e}");
            let r: berth_secrets::Reference = reference.parse().map_err(|e| failed(&e))?;
            let version = rev.doc.secret_versions.get(&r.name).ok_or_else(|| failed(&"the revision pinned no version of it"))?;
            let selector = berth_secrets::Selector::Version(version.clone());
            let (value, _) = secrets.read(&r, &selector, &format!("service {}", self.name), now()).await.map_err(|e| failed(&e))?;
            env.push((var.clone(), value.expose().to_owned()));
        }
        Ok(env)
    }

    async fn start_instance(&self, rev: &Revision) -> Result<Inst, String> {
        let spec = &rev.doc.spec;
        let suffix = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let id = InstanceId::new(format!("{}-{}-{suffix}", host_label(&self.name), rev.number)).map_err(|e| e.to_string())?;
        let command = spec.image_config.start_command.as_ref().map(|c| c.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
        let networks = networks_of(&self.sh, spec).await?;
        let mut env: Vec<(String, String)> = spec.image_config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(self.secret_env(rev).await?);
        let files = crate::secret_files(&self.sh, &self.name, spec).await?;
        env.extend(identity(&self.name, rev, &id));
        let instance = InstanceSpec {
            id: id.clone(),
            labels: vec![(LABEL_SERVICE.into(), self.name.clone()), (LABEL_REVISION.into(), rev.number.to_string())],
            image: ImageRef { repository: rev.doc.repository.clone(), digest: rev.doc.digest.clone() },
            entrypoint: command,
            cmd: spec.image_config.start_command.as_ref().map(|_| Vec::new()),
            env,
            port: spec.image_config.port,
            resources: Resources {
                cpu_millis: spec.instance.cpu * 1000 / 1024,
                memory_bytes: u64::from(spec.instance.memory) << 20,
                ..Resources::default()
            },
            user: None,
            read_only_rootfs: false,
            files,
            init: spec.image_config.init,
            network: InstanceNetwork { group: host_label(&self.name), egress: spec.network.egress, networks },
        };
        let created = self.sh.runtime.create(instance).await.map_err(|e| format!("creating instance {id}: {e}"))?;
        // The router knows who calls from its address before the app can call anyone.
        if let Some(addr) = created.address {
            drop(self.sh.book.set(&self.name, self.route_specs(Some(addr.ip()))));
        }
        let started = match self.sh.runtime.start(&id).await {
            Ok(s) => s,
            Err(e) => {
                remove_instance(&self.sh, &id).await;
                return Err(format!("starting instance {id}: {e}"));
            }
        };
        let addr = started.address.or(created.address).ok_or_else(|| format!("instance {id} has no address"))?;
        let now = Instant::now();
        Ok(Inst::starting(id, rev.number, addr, now, now + self.sh.settings.startup_probe_delay(0)))
    }

    /// Probes `inst` once and moves it between phases.
    async fn check(&self, inst: &mut Inst) {
        let hc = &self.svc.spec.health_check;
        let hc = self.current.as_ref().filter(|r| r.number == inst.revision).map(|r| &r.doc.spec.health_check).unwrap_or(hc);
        let interval = Duration::from_secs(hc.interval.into());
        // An exited instance fails at once.
        if let Ok(Some(st)) = self.sh.runtime.inspect(&inst.id).await {
            if let InstanceState::Exited { code, oom_killed } = st.state {
                inst.phase = Phase::Unhealthy;
                inst.reason = if oom_killed { "was killed: out of memory".into() } else { format!("exited with code {code}") };
                return;
            }
        }
        let probe = self.sh.prober.probe(inst.id.as_str(), inst.addr, hc).await;
        let now = Instant::now();
        match (inst.phase, probe) {
            (_, Probe::Pass) => {
                inst.failures = 0;
                inst.passes += 1;
                if inst.phase == Phase::Starting && inst.passes >= hc.healthy_threshold {
                    inst.phase = Phase::Ready;
                    inst.was_ready = true;
                }
            }
            (Phase::Starting, Probe::Refused) => {}
            // berth could not probe (no descriptors or ports left here): the instance is not to blame.
            (_, Probe::Unknown(why)) => tracing::warn!(instance = %inst.id, reason = %why, "health check not made"),
            (_, Probe::Refused) => self.count_failure(inst, hc.unhealthy_threshold, interval, "refused connections".into(), now),
            (_, Probe::Fail(why)) => self.count_failure(inst, hc.unhealthy_threshold, interval, why, now),
        }
        inst.probes += 1;
        inst.next_check = now + if inst.phase == Phase::Starting { self.sh.settings.startup_probe_delay(inst.probes) } else { interval };
    }

    /// Failures count once per interval, so a starting instance probed often is judged at the
    /// configured pace.
    fn count_failure(&self, inst: &mut Inst, threshold: u32, interval: Duration, why: String, now: Instant) {
        inst.passes = 0;
        if inst.last_counted_failure.is_some_and(|t| now.duration_since(t) < interval) {
            return;
        }
        inst.last_counted_failure = Some(now);
        inst.failures += 1;
        if inst.failures >= threshold {
            inst.phase = Phase::Unhealthy;
            inst.reason = format!("failed {} health checks in a row: {why}", inst.failures);
        }
    }

    fn on_runtime_event(&mut self, ev: Result<RuntimeEvent, tokio::sync::broadcast::error::RecvError>) {
        if let Ok(RuntimeEvent::Exited { id, code, oom_killed }) = ev {
            if let Some(inst) = self.instances.iter_mut().find(|i| i.id == id) {
                inst.phase = Phase::Unhealthy;
                inst.reason = if oom_killed { "was killed: out of memory".into() } else { format!("exited with code {code}") };
            }
        }
    }

    /// Removes instances of this service that it no longer tracks (one whose delete failed, say),
    /// so none is ever left running or holding resources behind its back.
    async fn sweep(&mut self) {
        if self.swept.elapsed() < self.sh.settings.sweep_every {
            return;
        }
        self.swept = Instant::now();
        let Ok(list) = self.sh.runtime.list().await else { return };
        let retiring: HashSet<InstanceId> = self.retiring.lock().unwrap_or_else(|p| p.into_inner()).instances.keys().cloned().collect();
        for st in list {
            let ours = st.labels.iter().any(|(k, v)| k == LABEL_SERVICE && v == &self.name);
            if ours && !retiring.contains(&st.id) && !self.instances.iter().any(|i| i.id == st.id) {
                tracing::warn!(service = %self.name, instance = %st.id, "removing an instance the service no longer tracks");
                remove_instance(&self.sh, &st.id).await;
            }
        }
    }

    /// One pass: probe what is due, replace what failed, match the desired count, route.
    async fn reconcile(&mut self) {
        self.sweep().await;
        // Instances removed since: no longer callers.
        let gone = self.retiring.lock().unwrap_or_else(|p| p.into_inner()).gone;
        if gone != self.gone_seen {
            self.gone_seen = gone;
            drop(self.sh.book.set(&self.name, self.route_specs(None)));
        }
        if self.svc.paused || self.current.is_none() {
            return;
        }
        let now = Instant::now();
        let mut due: Vec<Inst> = Vec::new();
        let mut rest = Vec::new();
        for i in self.instances.drain(..) {
            if i.phase != Phase::Unhealthy && i.next_check <= now {
                due.push(i);
            } else {
                rest.push(i);
            }
        }
        {
            let this = &*self;
            futures_util::future::join_all(due.iter_mut().map(|i| this.check(i))).await;
        }
        rest.extend(due);
        self.instances = rest;

        // Replace the failed.
        let failed: Vec<Inst> = {
            let (bad, good): (Vec<Inst>, Vec<Inst>) = self.instances.drain(..).partition(|i| i.phase == Phase::Unhealthy);
            self.instances = good;
            bad
        };
        for inst in &failed {
            self.event("instance_replaced", &format!("instance {} {}; replacing it", inst.id, inst.reason)).await;
            if inst.started.elapsed() < EARLY_FAILURE && !inst.was_ready {
                self.early_failures.push_back(Instant::now());
            }
        }
        while self.early_failures.front().is_some_and(|t| t.elapsed() > Duration::from_secs(120)) {
            self.early_failures.pop_front();
        }
        if !failed.is_empty() && self.early_failures.len() >= 3 {
            let backoff = Duration::from_secs(1 << (self.early_failures.len() - 3).min(6)).min(Duration::from_secs(60));
            self.hold_until = Some(Instant::now() + backoff);
            let reason = failed.last().map(|i| i.reason.clone()).unwrap_or_default();
            self.event(
                "crash_loop",
                &format!("instances keep failing soon after they start (last: {reason}); next attempt in {} s", backoff.as_secs()),
            )
            .await;
        }

        // Match the desired count.
        let live = self.instances.len() as u32;
        let held = self.hold_until.is_some_and(|t| Instant::now() < t);
        if live < self.desired && !held {
            if let Some(rev) = self.current.clone() {
                for _ in live..self.desired {
                    match self.start_instance(&rev).await {
                        Ok(i) => self.instances.push(i),
                        Err(e) => {
                            self.event("instance_failed", &e).await;
                            self.hold_until = Some(Instant::now() + Duration::from_secs(5));
                            break;
                        }
                    }
                }
            }
        }
        let mut extra = Vec::new();
        if live > self.desired && !self.instances.iter().any(|i| i.phase == Phase::Starting) {
            let n = (live - self.desired) as usize;
            // The newest go first.
            self.instances.sort_by_key(|i| i.started);
            extra = self.instances.split_off(self.instances.len() - n);
        }
        let ready: Vec<SocketAddr> = self.instances.iter().filter(|i| i.phase == Phase::Ready).map(|i| i.addr).collect();
        if ready != self.routed || !failed.is_empty() || !extra.is_empty() {
            self.set_aside(&failed);
            self.set_aside(&extra);
            let left = self.route();
            let mut gone = failed;
            gone.extend(extra);
            self.retire_later(left, gone);
        } else {
            self.publish_view();
        }
    }

    // ---- operations ----

    async fn carry_out(&mut self, mut op: Operation) {
        op.status = OperationStatus::InProgress;
        self.save_op(&op).await;
        match op.kind {
            OperationType::CreateService | OperationType::UpdateService | OperationType::StartDeployment => self.deploy(op).await,
            OperationType::PauseService => self.pause(op).await,
            OperationType::ResumeService => self.resume(op).await,
            OperationType::DeleteService => self.delete(op).await,
        }
    }

    /// Starts `n` instances of `rev` and waits until every one is healthy; on failure they are
    /// removed again and the reason returned.
    async fn bring_up(&mut self, rev: &Revision, n: u32, op: &mut Operation) -> Result<Vec<Inst>, String> {
        let mut new = Vec::new();
        for _ in 0..n {
            match self.start_instance(rev).await {
                Ok(i) => {
                    op.say(format!("started instance {} at {}", i.id, i.addr));
                    self.bringing_up.push(i.addr.ip());
                    new.push(i);
                }
                Err(e) => {
                    self.brought_up(false);
                    self.retire_later(Vec::new(), new);
                    return Err(e);
                }
            }
        }
        self.save_op(op).await;
        let deadline = Instant::now() + self.sh.settings.startup_deadline;
        let saved = self.current.clone();
        // Health checks of the new revision use its own configuration.
        self.current = Some(rev.clone());
        let outcome = loop {
            {
                let this = &*self;
                futures_util::future::join_all(new.iter_mut().filter(|i| i.next_check <= Instant::now()).map(|i| this.check(i))).await;
            }
            if let Some(bad) = new.iter().find(|i| i.phase == Phase::Unhealthy) {
                let tail = self.sh.runtime.logs(&bad.id, 0).await.unwrap_or_default();
                let tail: Vec<String> = tail.iter().rev().take(5).rev().cloned().collect();
                let mut why = format!("instance {} {}", bad.id, bad.reason);
                if !tail.is_empty() {
                    why.push_str(&format!("; its last log lines: {}", tail.join(" | ")));
                }
                break Err(why);
            }
            if new.iter().all(|i| i.phase == Phase::Ready) {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(format!("not healthy within {} s", self.sh.settings.startup_deadline.as_secs()));
            }
            let now = Instant::now();
            let next = new.iter().map(|i| i.next_check.saturating_duration_since(now)).min().unwrap_or_default();
            tokio::time::sleep(next.max(Duration::from_millis(1))).await;
        };
        self.current = saved;
        self.brought_up(outcome.is_ok());
        match outcome {
            Ok(()) => Ok(new),
            Err(why) => {
                // They never had traffic: removing them need not hold up the rollback.
                self.retire_later(Vec::new(), new);
                Err(why)
            }
        }
    }

    /// `rev`, or — when it pinned secret versions that are no longer CURRENT (a rotation while
    /// the service was paused may have retired them) — a new revision of its build with the
    /// versions CURRENT now.
    async fn with_current_secrets(&self, rev: Revision, op: &mut Operation) -> Result<Revision, String> {
        if rev.doc.secret_versions.is_empty() {
            return Ok(rev);
        }
        let current = crate::pin_secrets(&self.sh, &rev.doc.spec).await.map_err(|e| e.to_string())?;
        if current == rev.doc.secret_versions {
            return Ok(rev);
        }
        let doc = crate::model::RevisionDoc { secret_versions: current, ..rev.doc.clone() };
        let value = to_value(&doc).map_err(|e| e.to_string())?;
        let number = self.sh.store.create_revision(&self.name, &value, now()).await.map_err(|e| e.to_string())?;
        let record = self.sh.store.get_revision(&self.name, number).await.map_err(|e| e.to_string())?.ok_or("the new revision is gone")?;
        let new = Revision::from_record(&self.name, record).map_err(|e| e.to_string())?;
        op.say(format!(
            "revision {} pinned secret versions that are no longer CURRENT; resuming with revision {}: its build with the versions CURRENT now",
            rev.id, new.id
        ));
        Ok(new)
    }

    /// Ends a bring-up: its instances stop being callers of their own — they become part of
    /// `instances` (`kept`), or go, and then their addresses must not stay callers (another
    /// service's instance may get one next).
    fn brought_up(&mut self, kept: bool) {
        self.bringing_up.clear();
        if !kept {
            drop(self.sh.book.set(&self.name, self.route_specs(None)));
        }
    }

    async fn deploy(&mut self, mut op: Operation) {
        let Some(target) = op.target_revision else {
            self.finish(&mut op, OperationStatus::Failed, "no revision to deploy").await;
            return;
        };
        let rev = match self.sh.store.get_revision(&self.name, target).await {
            Ok(Some(r)) => match Revision::from_record(&self.name, r) {
                Ok(r) => r,
                Err(e) => return self.finish(&mut op, OperationStatus::Failed, e.to_string()).await,
            },
            Ok(None) => return self.finish(&mut op, OperationStatus::Failed, format!("revision {target} does not exist")).await,
            Err(e) => return self.finish(&mut op, OperationStatus::Failed, e.to_string()).await,
        };
        let first = self.svc.current_revision.is_none();
        self.set_status(ServiceStatus::OperationInProgress).await;
        let live = self.instances.iter().filter(|i| i.phase != Phase::Unhealthy).count() as u32;
        let n = live.max(rev.doc.spec.autoscaling.min_size).max(1).min(rev.doc.spec.autoscaling.max_size.max(1));
        op.say(format!("starting {n} instance(s) of revision {} and waiting for them to pass health checks", rev.id));
        self.save_op(&op).await;
        match self.bring_up(&rev, n, &mut op).await {
            Ok(new) => {
                op.say(format!("revision {} is healthy; switching traffic to it", rev.id));
                // Record the switch before making it: after a crash the deployment completes.
                self.svc.current_revision = Some(target);
                self.svc.spec = rev.doc.spec.clone();
                self.refresh_networks().await;
                self.svc.status = ServiceStatus::Running;
                self.save().await;
                self.current = Some(rev.clone());
                let old = std::mem::replace(&mut self.instances, new);
                self.set_aside(&old);
                self.desired = n;
                self.configure_autoscaler();
                let left = self.route();
                if !old.is_empty() {
                    op.say(format!("draining and stopping {} instance(s) of the previous revision", old.len()));
                    self.save_op(&op).await;
                }
                self.retire(left, old).await;
                self.event("deployed", &format!("revision {} serves ({}@{})", rev.id, rev.doc.repository, rev.doc.digest)).await;
                self.set_status(ServiceStatus::Running).await;
                self.finish(&mut op, OperationStatus::Succeeded, format!("revision {} serves", rev.id)).await;
            }
            Err(why) if first => {
                op.say(format!("revision {} failed: {why}", rev.id));
                self.set_status(ServiceStatus::CreateFailed).await;
                self.finish(&mut op, OperationStatus::Failed, "the service has no healthy revision: CREATE_FAILED").await;
            }
            Err(why) => {
                op.status = OperationStatus::RollbackInProgress;
                op.say(format!("revision {} failed: {why}; rolling back", rev.id));
                self.save_op(&op).await;
                self.event("rollback", &format!("revision {} failed: {why}", rev.id)).await;
                self.set_status(ServiceStatus::Running).await;
                let serving = self.current.as_ref().map(|r| r.id.clone()).unwrap_or_default();
                self.finish(
                    &mut op,
                    OperationStatus::RollbackSucceeded,
                    format!("rolled back: revision {serving} kept serving, untouched"),
                )
                .await;
            }
        }
    }

    async fn pause(&mut self, mut op: Operation) {
        self.set_status(ServiceStatus::OperationInProgress).await;
        self.svc.paused = true;
        self.save().await;
        self.sh.autoscaler.remove(&self.name);
        let left = self.route();
        let all = std::mem::take(&mut self.instances);
        op.say(format!("draining and stopping {} instance(s)", all.len()));
        self.save_op(&op).await;
        self.retire(left, all).await;
        // The router keeps the route and answers 503 with the paused notice.
        self.route();
        self.set_status(ServiceStatus::Paused).await;
        self.finish(&mut op, OperationStatus::Succeeded, "paused: configuration, URL and revisions are kept").await;
    }

    async fn resume(&mut self, mut op: Operation) {
        self.set_status(ServiceStatus::OperationInProgress).await;
        let Some(rev) = self.current.clone() else {
            self.set_status(ServiceStatus::Paused).await;
            return self.finish(&mut op, OperationStatus::Failed, "the service has no revision to resume").await;
        };
        let rev = match self.with_current_secrets(rev, &mut op).await {
            Ok(r) => r,
            Err(why) => {
                self.set_status(ServiceStatus::Paused).await;
                return self.finish(&mut op, OperationStatus::Failed, format!("resuming failed: {why}; the service stays paused")).await;
            }
        };
        let n = self.svc.spec.autoscaling.min_size.max(1);
        op.say(format!("starting {n} instance(s) of revision {}", rev.id));
        match self.bring_up(&rev, n, &mut op).await {
            Ok(new) => {
                self.current = Some(rev.clone());
                self.svc.current_revision = Some(rev.number);
                self.instances = new;
                self.svc.paused = false;
                self.svc.status = ServiceStatus::Running;
                self.save().await;
                self.desired = n;
                self.configure_autoscaler();
                self.route();
                self.set_status(ServiceStatus::Running).await;
                self.finish(&mut op, OperationStatus::Succeeded, format!("resumed: revision {} serves", rev.id)).await;
            }
            Err(why) => {
                self.set_status(ServiceStatus::Paused).await;
                self.finish(&mut op, OperationStatus::Failed, format!("resuming failed: {why}; the service stays paused")).await;
            }
        }
    }

    async fn delete(&mut self, mut op: Operation) {
        self.sh.autoscaler.remove(&self.name);
        let mut all = std::mem::take(&mut self.instances);
        // Set aside first, so that retiring them does not bring the routes back.
        self.set_aside(&all);
        let left = self.sh.book.set(&self.name, Vec::new());
        // Instances the supervisor does not track (left over from a crash) go too.
        if let Ok(list) = self.sh.runtime.list().await {
            for st in list {
                if st.labels.iter().any(|(k, v)| k == LABEL_SERVICE && v == &self.name) && !all.iter().any(|i| i.id == st.id) {
                    remove_instance(&self.sh, &st.id).await;
                }
            }
        }
        op.say(format!("draining and stopping {} instance(s)", all.len()));
        self.retire(left, std::mem::take(&mut all)).await;
        match self.sh.store.delete_service(&self.name).await {
            Ok(_) => {
                self.deleted = true;
                self.publish_view();
                let _ = self.sh.store.add_service_event(&self.name, now(), "status", &format!("{} → DELETED", self.svc.status)).await;
                self.finish(&mut op, OperationStatus::Succeeded, "deleted: instances, routes and revisions are gone").await;
            }
            Err(e) => {
                self.set_status(ServiceStatus::DeleteFailed).await;
                self.finish(&mut op, OperationStatus::Failed, format!("deleting the service's records failed: {e}")).await;
            }
        }
    }

    // ---- restart ----

    /// Finishes what a crash interrupted and re-adopts the instances the runtime still runs.
    /// `handed` is an operation the caller carries out next itself.
    async fn recover(&mut self, handed: Option<&str>) {
        self.load_current().await;
        self.refresh_networks().await;
        let open: Vec<Operation> = match self.sh.store.list_operations(Some(&self.name), true, None, 10).await {
            Ok(list) => list.into_iter().filter_map(|r| from_value(r.doc).ok()).collect(),
            Err(e) => {
                tracing::error!(service = %self.name, error = %e, "reading open operations failed");
                Vec::new()
            }
        };
        let mut rerun = Vec::new();
        for mut op in open.into_iter().filter(|op| Some(op.id.as_str()) != handed) {
            match op.kind {
                OperationType::CreateService | OperationType::UpdateService | OperationType::StartDeployment => {
                    if self.svc.current_revision.is_some() && self.svc.current_revision == op.target_revision {
                        if let Some(spec) = self.current.as_ref().map(|r| r.doc.spec.clone()) {
                            self.svc.spec = spec;
                        }
                        self.set_status(if self.svc.paused { ServiceStatus::Paused } else { ServiceStatus::Running }).await;
                        self.finish(&mut op, OperationStatus::Succeeded, "berth restarted after the switch; the deployment is complete")
                            .await;
                    } else {
                        // The switch was not recorded: the old revision (if any) still serves, and
                        // the new one's instances are removed below. Start the deployment over.
                        if op.status != OperationStatus::Pending {
                            op.say("berth restarted before the new revision was serving; starting the deployment again");
                        }
                        rerun.push(op);
                    }
                }
                _ => rerun.push(op),
            }
        }
        // Adopt the current revision's instances; remove every other of this service. Those the
        // router has been serving all along (it outlives the server) stay in its table while
        // they are checked again; the others get traffic once they pass.
        let served: std::collections::HashSet<SocketAddr> = self.sh.book.get(&self.name).into_iter().flat_map(|r| r.upstreams).collect();
        let list = self.sh.runtime.list().await.unwrap_or_default();
        let mut to_retire = Vec::new();
        for st in list {
            if !st.labels.iter().any(|(k, v)| k == LABEL_SERVICE && v == &self.name) {
                continue;
            }
            let rev = st.labels.iter().find(|(k, _)| k == LABEL_REVISION).and_then(|(_, v)| v.parse::<u32>().ok());
            let keep = !self.svc.paused && rev.is_some() && rev == self.svc.current_revision && st.state == InstanceState::Running;
            match (keep, st.address) {
                (true, Some(addr)) => {
                    // Adopted instances are not new: their failures do not count as early.
                    let now = Instant::now();
                    let mut inst = Inst::starting(st.id.clone(), rev.unwrap_or_default(), addr, now - EARLY_FAILURE, now);
                    if served.contains(&addr) {
                        inst.phase = Phase::Ready;
                        inst.was_ready = true;
                    }
                    self.instances.push(inst);
                }
                // Requests a router that outlived the server still has on it finish first.
                (false, Some(addr)) if st.state == InstanceState::Running => to_retire.push((st.id.clone(), addr)),
                _ => remove_instance(&self.sh, &st.id).await,
            }
        }
        if !to_retire.is_empty() {
            let left = to_retire.iter().map(|(_, addr)| self.sh.book.left_earlier(&self.name, *addr)).collect();
            self.retiring.lock().unwrap_or_else(|p| p.into_inner()).instances.extend(to_retire.iter().map(|(id, a)| (id.clone(), a.ip())));
            let ids: Vec<InstanceId> = to_retire.into_iter().map(|(id, _)| id).collect();
            tokio::spawn(drain_and_remove(self.sh.clone(), self.request_timeout(), left, ids, self.retiring.clone()));
        }
        if !self.instances.is_empty() {
            tracing::info!(service = %self.name, count = self.instances.len(), "re-adopted instances");
        }
        if self.svc.status == ServiceStatus::OperationInProgress && rerun.is_empty() && handed.is_none() {
            let status = if self.svc.paused {
                ServiceStatus::Paused
            } else if self.svc.current_revision.is_some() {
                ServiceStatus::Running
            } else {
                ServiceStatus::CreateFailed
            };
            self.set_status(status).await;
        }
        if !self.svc.paused && self.current.is_some() {
            self.desired = self.svc.spec.autoscaling.min_size.max(1).max(self.instances.len() as u32);
            self.configure_autoscaler();
        }
        self.route();
        for op in rerun {
            *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = Some((op.id.clone(), op.kind));
            self.carry_out(op).await;
        }
    }
}

/// The networks `spec` names, as stored.
async fn networks_of(sh: &Shared, spec: &ServiceSpec) -> Result<Vec<NetworkSpec>, String> {
    let mut networks = Vec::new();
    for name in &spec.network.networks {
        let doc = sh.store.get_network(name).await.map_err(|e| format!("loading network `{name}`: {e}"))?;
        let doc = doc.ok_or_else(|| format!("network `{name}` does not exist"))?;
        networks.push(serde_json::from_value(doc.doc).map_err(|e| format!("network `{name}` is malformed: {e}"))?);
    }
    Ok(networks)
}

//! berth's controllers: they converge each service's desired revision to ready, routed
//! instances through the [`Runtime`] trait and the router's [`RouteBook`].
//!
//! Every service has one supervisor task (`supervisor.rs`) that owns its instances, so two
//! reconciles of one service never run at once. A mutation — create, update, deploy, rollback,
//! pause, resume, delete — is an [`Operation`] stored before anything happens and finished by the
//! supervisor; while one runs, another on the same service is **refused** (409) naming it. The
//! auto-deployer (`autodeploy.rs`) follows the registry's pushes; the autoscaler's decisions
//! arrive as scale commands.
//!
//! Crash safety: the serving revision is written to the store before routing switches to it, so
//! after a restart an open deployment is finished (the switch was recorded) or started over (it
//! was not; the old revision kept serving); instances are re-adopted from the runtime's labels and health-checked before
//! they get traffic again.

mod autodeploy;
pub mod health;
mod history;
pub mod model;
mod networks;
mod rotation;
mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_autoscale::{Autoscaler, Load, LoadSource, Scaler};
use berth_core::service::{host_label, ImageSource};
use berth_core::{Digest, OperationType, ServiceSpec, ServiceStatus, SpecError};
use berth_router::{Activator, RouteBook};
use berth_runtime::Runtime;
use berth_store::{SharedStore, StoreError};
use tokio::sync::mpsc;

pub use health::{NetProber, Probe, Prober};
pub use history::{InstanceSeries, Marker, MetricsView, RevisionSeries, SlotView, UsageView};
pub use model::{InstanceView, Operation, Revision, RevisionDoc, SecretConsumer, ServiceDoc, ServiceView};
pub use networks::NetworkView;

use model::{now, parse_revision};

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("service `{0}` does not exist")]
    NotFound(String),
    #[error("a service named `{0}` already exists (service names are compared as DNS labels)")]
    Exists(String),
    #[error(transparent)]
    Invalid(#[from] SpecError),
    #[error("operation {id} ({kind}) is in progress on `{service}`; wait for it (`berth service operations {service}`) and try again")]
    Busy { service: String, id: String, kind: OperationType },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("operation `{0}` does not exist")]
    OperationNotFound(String),
    #[error("network `{0}` does not exist")]
    NetworkNotFound(String),
    #[error("a network named `{0}` already exists")]
    NetworkExists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored state is malformed: {0}")]
    Corrupt(String),
}

pub type Result<T, E = ControllerError> = std::result::Result<T, E>;

/// How the controllers behave; the defaults suit production.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// Services are served at `<name><suffix>` for each suffix (`.localhost`, `.apps.example.com`).
    pub suffixes: Vec<String>,
    /// How URLs are shown: `https://<name>.localhost:<port>`.
    pub url_scheme: String,
    pub url_port: u16,
    /// A new revision must be healthy within this, or the deployment rolls back.
    pub startup_deadline: Duration,
    /// SIGTERM → SIGKILL grace when stopping instances.
    pub stop_grace: Duration,
    /// A starting instance is probed 1, 2, 4 … ms apart, and then this often, until it passes.
    pub startup_probe_every: Duration,
    /// How often a service looks for instances of its own that it no longer tracks (a delete
    /// that failed) and removes them.
    pub sweep_every: Duration,
    /// The instances' gateway, where their network's host endpoints are reached.
    pub gateway: Option<std::net::Ipv4Addr>,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        ControllerSettings {
            suffixes: vec![".localhost".into()],
            url_scheme: "https".into(),
            url_port: 8443,
            startup_deadline: Duration::from_secs(120),
            stop_grace: Duration::from_secs(10),
            startup_probe_every: Duration::from_millis(25),
            sweep_every: Duration::from_secs(30),
            gateway: None,
        }
    }
}

impl ControllerSettings {
    /// The wait before start-up probe number `attempt` (from 0): apps that start in a few
    /// milliseconds are noticed at once, slower ones at `startup_probe_every`.
    pub fn startup_probe_delay(&self, attempt: u32) -> Duration {
        Duration::from_millis(1u64 << attempt.min(16)).min(self.startup_probe_every)
    }
}

/// What the controllers work with.
pub struct Deps {
    pub store: SharedStore,
    pub runtime: Arc<dyn Runtime>,
    pub book: Arc<RouteBook>,
    pub prober: Arc<dyn Prober>,
    /// The secrets services name in `image_config.secret_env`; none: services may name none.
    pub secrets: Option<Arc<berth_secrets::Secrets>>,
    /// Wakes the auto-deployer at once on a push (it also looks every few seconds).
    pub pushes: Option<tokio::sync::broadcast::Receiver<berth_store::PushEvent>>,
    pub settings: ControllerSettings,
}

pub(crate) enum Command {
    /// Carry out an operation (already stored as PENDING).
    Run(Operation),
    /// The autoscaler's decision, and why it was made.
    Scale(u32, String),
}

/// The supervisor of one service, as the rest of the controller reaches it.
struct Handle {
    tx: mpsc::UnboundedSender<Command>,
    /// The operation in progress, if any.
    busy: Arc<Mutex<Option<(String, OperationType)>>>,
    view: Arc<Mutex<Vec<InstanceView>>>,
    task: tokio::task::AbortHandle,
}

pub(crate) struct Shared {
    store: SharedStore,
    runtime: Arc<dyn Runtime>,
    book: Arc<RouteBook>,
    prober: Arc<dyn Prober>,
    secrets: Option<Arc<berth_secrets::Secrets>>,
    settings: ControllerSettings,
    handles: Mutex<HashMap<String, Handle>>,
    autoscaler: Arc<Autoscaler>,
    /// Wakes the auto-deployer (after an operation ends, for instance).
    autodeploy: tokio::sync::Notify,
    /// The autoscaler's and auto-deployer's tasks.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Held while networks change or a spec naming them is stored.
    networks: tokio::sync::Mutex<()>,
    /// Per service, the secret versions its running instances' files were last written from
    /// (every instance, without an error): what rotation waits for.
    files_at: Mutex<HashMap<String, std::collections::BTreeMap<String, String>>>,
    /// Each service's points of the last few minutes, as stored: what lists show without
    /// reading the store.
    recent: Mutex<HashMap<String, Vec<berth_core::metrics::Point>>>,
}

/// Sends the autoscaler's decisions to the supervisors.
struct Relay(std::sync::Weak<Shared>);

impl Scaler for Relay {
    fn scale(&self, service: &str, desired: u32, why: &str) {
        if let Some(sh) = self.0.upgrade() {
            if let Some(h) = sh.handles.lock().unwrap_or_else(|p| p.into_inner()).get(service) {
                let _ = h.tx.send(Command::Scale(desired, why.to_owned()));
            }
        }
    }
}

/// The autoscaler's view of the router: requests in flight and waiting, ready instances.
struct RouterLoad(Arc<RouteBook>);

impl LoadSource for RouterLoad {
    fn load(&self) -> Vec<Load> {
        self.0.load().into_iter().map(|s| Load { service: s.service, concurrency: s.in_flight + s.queued, ready: s.ready as u32 }).collect()
    }
}

/// The router's activator: a request is held for a service with no instance.
struct Wake(Arc<Autoscaler>);

impl Activator for Wake {
    fn activate(&self, service: &str) {
        self.0.poke(service);
    }
}

#[derive(Clone)]
pub struct Controller {
    sh: Arc<Shared>,
    /// Who the operations started through this handle are recorded as made by.
    actor: Option<Arc<str>>,
}

impl Controller {
    /// Loads every service, recovers operations a crash interrupted, re-adopts instances, and
    /// starts the supervisors, the autoscaler and the auto-deployer.
    pub async fn start(deps: Deps) -> Result<Controller> {
        let sh = Arc::new_cyclic(|weak| Shared {
            store: deps.store,
            runtime: deps.runtime,
            book: deps.book,
            prober: deps.prober,
            secrets: deps.secrets,
            settings: deps.settings,
            handles: Mutex::new(HashMap::new()),
            autoscaler: Autoscaler::new(Arc::new(Relay(weak.clone()))),
            autodeploy: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
            networks: tokio::sync::Mutex::new(()),
            files_at: Mutex::new(HashMap::new()),
            recent: Mutex::new(HashMap::new()),
        });
        let controller = Controller { sh: sh.clone(), actor: None };
        for record in sh.store.list_services().await? {
            controller.spawn(&record.key, None);
        }
        let scaler = tokio::spawn(sh.autoscaler.clone().run(Arc::new(RouterLoad(sh.book.clone()))));
        let deployer = tokio::spawn(autodeploy::run(Arc::downgrade(&sh), deps.pushes));
        let history = tokio::spawn(history::run(Arc::downgrade(&sh)));
        sh.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([scaler.abort_handle(), deployer.abort_handle(), history.abort_handle()]);
        Ok(controller)
    }

    /// Stops every controller task where it stands, as a crash would: instances keep running,
    /// and the next start recovers open operations from the store.
    pub fn shutdown(&self) {
        for t in self.sh.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        for (_, h) in self.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            h.task.abort();
        }
    }

    /// For the router: asks for an instance when a request waits for a service that has none.
    pub fn activator(&self) -> Arc<dyn Activator> {
        Arc::new(Wake(self.sh.autoscaler.clone()))
    }

    fn spawn(&self, name: &str, first: Option<Operation>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let busy = Arc::new(Mutex::new(first.as_ref().map(|op| (op.id.clone(), op.kind))));
        let view = Arc::new(Mutex::new(Vec::new()));
        // The handle is in place before the task can look for it.
        let mut handles = self.sh.handles.lock().unwrap_or_else(|p| p.into_inner());
        let task = tokio::spawn(supervisor::run(self.sh.clone(), name.to_owned(), rx, busy.clone(), view.clone(), first));
        handles.insert(name.to_owned(), Handle { tx, busy, view, task: task.abort_handle() });
    }

    /// Marks `name` busy with `op` and hands it to its supervisor; refused while another runs.
    async fn submit(&self, op: Operation) -> Result<Operation> {
        {
            let handles = self.sh.handles.lock().unwrap_or_else(|p| p.into_inner());
            let h = handles.get(&op.service).ok_or_else(|| ControllerError::NotFound(op.service.clone()))?;
            let mut busy = h.busy.lock().unwrap_or_else(|p| p.into_inner());
            refuse_if_busy(&op.service, &busy)?;
            *busy = Some((op.id.clone(), op.kind));
        }
        // The caller checked the service on an earlier read; an operation that ended since (a
        // pause, a resume) may have changed it. Now that no other operation can, check again.
        if requires_state(op.kind) {
            let still = match self.service_doc(&op.service).await {
                Ok(svc) => precondition(&op.service, op.kind, &svc),
                Err(e) => Err(e),
            };
            if let Err(e) = still {
                self.release(&op.service);
                return Err(e);
            }
        }
        if let Err(e) = self.sh.store.put_operation(&op.id, &op.service, true, &to_value(&op)?, op.started_at).await {
            self.release(&op.service);
            return Err(e.into());
        }
        let sent =
            self.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&op.service).map(|h| h.tx.send(Command::Run(op.clone())).is_ok());
        match sent {
            Some(true) => Ok(op),
            _ => {
                self.release(&op.service);
                Err(ControllerError::Conflict(format!("service `{}` is shutting down", op.service)))
            }
        }
    }

    /// `Busy` naming the operation in progress on `service`, if one is.
    fn refuse_while_busy(&self, service: &str) -> Result<()> {
        match self.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).get(service) {
            Some(h) => refuse_if_busy(service, &h.busy.lock().unwrap_or_else(|p| p.into_inner())),
            None => Ok(()),
        }
    }

    fn release(&self, service: &str) {
        if let Some(h) = self.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).get(service) {
            *h.busy.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// This controller, with the operations it starts (and the revisions they make) recorded as
    /// made by `who` (a token's name).
    pub fn acting_as(&self, who: &str) -> Controller {
        Controller { sh: self.sh.clone(), actor: Some(who.into()) }
    }

    /// An operation recorded as made by this handle's actor.
    fn op(&self, service: &str, kind: OperationType, target: Option<u32>, previous: Option<u32>) -> Operation {
        Operation { by: self.actor.as_deref().map(str::to_owned), ..Operation::new(service, kind, target, previous) }
    }

    /// A revision recorded as made by this handle's actor.
    fn by(&self, rev: RevisionDoc) -> RevisionDoc {
        RevisionDoc { by: self.actor.as_deref().map(str::to_owned), ..rev }
    }

    /// Creates a service and deploys its first revision.
    pub async fn create(&self, spec: ServiceSpec) -> Result<Operation> {
        spec.validate()?;
        let _networks = self.sh.networks.lock().await;
        self.check_network_refs(&spec).await?;
        let label = host_label(&spec.name);
        for existing in self.sh.store.list_services().await? {
            if host_label(&existing.key) == label {
                return Err(ControllerError::Exists(existing.key));
            }
        }
        let rev = self.by(resolve(&self.sh, &spec, None).await?);
        let doc = ServiceDoc { spec: spec.clone(), status: ServiceStatus::OperationInProgress, current_revision: None, paused: false };
        match self.sh.store.create_service(&spec.name, &to_value(&doc)?, now()).await {
            Err(StoreError::ServiceExists(n)) => return Err(ControllerError::Exists(n)),
            other => other?,
        }
        let number = self.sh.store.create_revision(&spec.name, &to_value(&rev)?, now()).await?;
        let mut op = self.op(&spec.name, OperationType::CreateService, Some(number), None);
        op.say(format!("created service `{}`; revision {number}: {}@{} ({})", spec.name, rev.repository, rev.digest, tags_text(&rev.tags)));
        self.sh.store.put_operation(&op.id, &op.service, true, &to_value(&op)?, op.started_at).await?;
        self.spawn(&spec.name, Some(op.clone()));
        Ok(op)
    }

    /// Changes a service's configuration: a new revision, deployed blue/green. The digest stays
    /// the serving one unless the image itself changed: a change of configuration never moves a
    /// service onto another build (say, one that was rolled back).
    pub async fn update(&self, spec: ServiceSpec) -> Result<Operation> {
        spec.validate()?;
        let _networks = self.sh.networks.lock().await;
        self.check_network_refs(&spec).await?;
        let svc = self.service_doc(&spec.name).await?;
        precondition(&spec.name, OperationType::UpdateService, &svc)?;
        self.refuse_while_busy(&spec.name)?;
        let rev = match svc.current_revision {
            Some(n) if spec.source.image == svc.spec.source.image => {
                let serving = self.revision(&spec.name, n).await?;
                resolved(&self.sh, &spec, &serving.doc.repository, serving.doc.digest.clone()).await?
            }
            _ => resolve(&self.sh, &spec, None).await?,
        };
        let rev = self.by(rev);
        let number = self.sh.store.create_revision(&spec.name, &to_value(&rev)?, now()).await?;
        let mut op = self.op(&spec.name, OperationType::UpdateService, Some(number), svc.current_revision);
        op.say(format!("updating `{}`; revision {number}: {}@{} ({})", spec.name, rev.repository, rev.digest, tags_text(&rev.tags)));
        self.submit(op).await
    }

    /// Deploys the service's source again (a tag is resolved anew), or `image` (`repo:tag` or
    /// `repo@digest`) with the same configuration.
    pub async fn deploy(&self, name: &str, image: Option<&str>) -> Result<Operation> {
        let svc = self.service_doc(name).await?;
        precondition(name, OperationType::StartDeployment, &svc)?;
        let rev = resolve(&self.sh, &svc.spec, image).await?;
        self.deploy_revision_doc(name, &svc, rev, None).await
    }

    pub(crate) async fn deploy_revision_doc(
        &self,
        name: &str,
        svc: &ServiceDoc,
        rev: RevisionDoc,
        why: Option<String>,
    ) -> Result<Operation> {
        // Refuse before writing a revision nobody will deploy.
        self.refuse_while_busy(name)?;
        let rev = self.by(rev);
        let number = self.sh.store.create_revision(name, &to_value(&rev)?, now()).await?;
        let mut op = self.op(name, OperationType::StartDeployment, Some(number), svc.current_revision);
        if let Some(w) = why {
            op.say(w);
        }
        op.say(format!("deploying revision {number}: {}@{} ({})", rev.repository, rev.digest, tags_text(&rev.tags)));
        self.submit(op).await
    }

    /// Deploys an earlier revision again, exactly: its digest and its configuration — with one
    /// exception: env vars from secrets take the versions CURRENT now when the revision pinned
    /// older ones, which a rotation may have retired since (then it is a new revision of that
    /// revision's build, and the operation says so).
    pub async fn rollback(&self, name: &str, revision: &str) -> Result<Operation> {
        let svc = self.service_doc(name).await?;
        precondition(name, OperationType::StartDeployment, &svc)?;
        let number = parse_revision(name, revision).ok_or_else(|| {
            ControllerError::BadRequest(format!("`{revision}` is not a revision of `{name}` (like `{name}-0001` or `1`)"))
        })?;
        let rev = self.revision(name, number).await?;
        if svc.current_revision == Some(number) && svc.status == ServiceStatus::Running {
            return Err(ControllerError::Conflict(format!("revision {} is already serving", rev.id)));
        }
        if !rev.doc.secret_versions.is_empty() {
            let current = pin_secrets(&self.sh, &rev.doc.spec).await?;
            if current != rev.doc.secret_versions {
                let why = format!(
                    "rolling back to revision {}'s build and configuration with the secret versions CURRENT now (it pinned older ones, which a rotation may have retired)",
                    rev.id
                );
                return self.deploy_revision_doc(name, &svc, RevisionDoc { secret_versions: current, ..rev.doc }, Some(why)).await;
            }
        }
        let mut op = self.op(name, OperationType::StartDeployment, Some(number), svc.current_revision);
        op.say(format!("rolling back to revision {}: {}@{} ({})", rev.id, rev.doc.repository, rev.doc.digest, tags_text(&rev.doc.tags)));
        self.submit(op).await
    }

    pub async fn pause(&self, name: &str) -> Result<Operation> {
        let svc = self.service_doc(name).await?;
        self.refuse_while_busy(name)?;
        precondition(name, OperationType::PauseService, &svc)?;
        self.submit(self.op(name, OperationType::PauseService, None, svc.current_revision)).await
    }

    pub async fn resume(&self, name: &str) -> Result<Operation> {
        let svc = self.service_doc(name).await?;
        self.refuse_while_busy(name)?;
        precondition(name, OperationType::ResumeService, &svc)?;
        self.submit(self.op(name, OperationType::ResumeService, svc.current_revision, svc.current_revision)).await
    }

    pub async fn delete(&self, name: &str) -> Result<Operation> {
        let svc = self.service_doc(name).await?;
        self.submit(self.op(name, OperationType::DeleteService, None, svc.current_revision)).await
    }

    pub(crate) async fn service_doc(&self, name: &str) -> Result<ServiceDoc> {
        load_service(&self.sh.store, name).await
    }

    pub async fn get(&self, name: &str) -> Result<ServiceView> {
        let record = self.sh.store.get_service(name).await?.ok_or_else(|| ControllerError::NotFound(name.to_owned()))?;
        self.view(record, &self.denied().await).await
    }

    /// The runtime's counts of refused connections (none when it cannot say).
    async fn denied(&self) -> Vec<berth_runtime::Denied> {
        self.sh.runtime.denied().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the counts of refused connections");
            Vec::new()
        })
    }

    /// Services in name order after `after`, at most `limit`.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<ServiceView>> {
        let mut out = Vec::new();
        let records = self.sh.store.list_services().await?;
        let denied = self.denied().await;
        for record in records.into_iter().filter(|r| after.is_none_or(|a| r.key.as_str() > a)).take(limit) {
            out.push(self.view(record, &denied).await?);
        }
        Ok(out)
    }

    /// Who uses secret `secret`: per service and revision (the serving one, and any other that
    /// has instances), the version it pinned and its instances.
    pub async fn secret_consumers(&self, secret: &str) -> Result<Vec<SecretConsumer>> {
        let mut out = Vec::new();
        for view in self.list(None, usize::MAX).await? {
            let mut numbers: Vec<u32> =
                view.instances.iter().map(|i| i.revision).chain(view.current_revision.as_ref().map(|r| r.number)).collect();
            // A revision being deployed uses its secrets before it has an instance.
            if view.operation_in_progress.is_some() {
                numbers.extend(self.sh.store.list_revisions(&view.name).await?.last().and_then(|r| r.key.parse::<u32>().ok()));
            }
            numbers.sort_unstable();
            numbers.dedup();
            for number in numbers {
                let rev = self.revision(&view.name, number).await?;
                let instances: Vec<String> = view.instances.iter().filter(|i| i.revision == number).map(|i| i.id.clone()).collect();
                if let Some(version) = rev.doc.secret_versions.get(secret) {
                    out.push(SecretConsumer {
                        service: view.name.clone(),
                        revision: rev.id.clone(),
                        version: version.clone(),
                        how: "env",
                        instances: instances.clone(),
                    });
                }
                // Files follow CURRENT: their version is the one CURRENT now.
                let files_from_it =
                    rev.doc.spec.image_config.secret_files.values().any(|r| berth_core::service::secret_name(r) == Some(secret));
                if let (true, Some(secrets)) = (files_from_it, &self.sh.secrets) {
                    let current =
                        secrets.describe(secret).await.ok().and_then(|i| {
                            i.versions.into_iter().find(|v| v.labels.iter().any(|l| l == berth_secrets::CURRENT)).map(|v| v.id)
                        });
                    if let Some(version) = current {
                        out.push(SecretConsumer { service: view.name.clone(), revision: rev.id.clone(), version, how: "files", instances });
                    }
                }
            }
        }
        Ok(out)
    }

    async fn view(&self, record: berth_store::DocRecord, denied: &[berth_runtime::Denied]) -> Result<ServiceView> {
        let name = record.key.clone();
        let group = host_label(&name);
        let denied = denied.iter().filter(|d| d.group == group).map(|d| (d.destination.clone(), d.count)).collect();
        let doc: ServiceDoc = serde_json::from_value(record.doc).map_err(|e| ControllerError::Corrupt(e.to_string()))?;
        let current = match doc.current_revision {
            Some(n) => Some(self.revision(&name, n).await?),
            None => None,
        };
        let (instances, busy) = match self.sh.handles.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
            Some(h) => (
                h.view.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                h.busy.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.0.clone()),
            ),
            None => (Vec::new(), None),
        };
        Ok(ServiceView {
            url: self.url(&name),
            name,
            status: doc.status,
            spec: doc.spec,
            current_revision: current,
            instances,
            operation_in_progress: busy,
            created_at: record.at,
            denied,
        })
    }

    /// Where the service is reached.
    pub fn url(&self, name: &str) -> String {
        let s = &self.sh.settings;
        let default_port = if s.url_scheme == "https" { 443 } else { 80 };
        let port = if s.url_port == default_port { String::new() } else { format!(":{}", s.url_port) };
        let suffix = s.suffixes.first().map(String::as_str).unwrap_or(".localhost");
        format!("{}://{}{suffix}{port}", s.url_scheme, host_label(name))
    }

    pub async fn revision(&self, name: &str, number: u32) -> Result<Revision> {
        let r = self
            .sh
            .store
            .get_revision(name, number)
            .await?
            .ok_or_else(|| ControllerError::BadRequest(format!("`{name}` has no revision {number}")))?;
        let mut rev = Revision::from_record(name, r)?;
        rev.tags_now = Some(self.sh.store.tags_at(&rev.doc.repository, &rev.doc.digest).await?);
        Ok(rev)
    }

    /// The service's revisions in number order, each with the tags at its digest now.
    pub async fn revisions(&self, name: &str) -> Result<Vec<Revision>> {
        load_service(&self.sh.store, name).await?;
        let mut revs = Vec::new();
        let mut tags: HashMap<(String, Digest), Vec<String>> = HashMap::new();
        for record in self.sh.store.list_revisions(name).await? {
            let mut rev = Revision::from_record(name, record)?;
            let key = (rev.doc.repository.clone(), rev.doc.digest.clone());
            if !tags.contains_key(&key) {
                let now = self.sh.store.tags_at(&key.0, &key.1).await?;
                tags.insert(key.clone(), now);
            }
            rev.tags_now = tags.get(&key).cloned();
            revs.push(rev);
        }
        Ok(revs)
    }

    /// The service's operations, newest first, after the operation `after` in that order.
    pub async fn operations(&self, name: &str, after: Option<&str>, limit: usize) -> Result<Vec<Operation>> {
        self.sh.store.list_operations(Some(name), false, after, limit).await?.into_iter().map(|r| from_value(r.doc)).collect()
    }

    pub async fn operation(&self, id: &str) -> Result<Operation> {
        let r = self.sh.store.get_operation(id).await?.ok_or_else(|| ControllerError::OperationNotFound(id.to_owned()))?;
        from_value(r.doc)
    }

    /// The service's events, newest first, older than the event `before` when given.
    /// The service's metrics history from `from` to `to` (seconds since the Unix epoch) in slots
    /// of `step` seconds (chosen for about 360 slots when not given), with its events as markers.
    /// A deleted service's history stays readable while it is kept.
    pub async fn metrics(&self, name: &str, from: u64, to: u64, step: Option<u64>) -> Result<MetricsView> {
        history::query(&self.sh, name, from, to, step).await
    }

    /// The service's traffic, load and usage over the last `secs` seconds (at most five
    /// minutes) as one slot, from memory; `None` when nothing was recorded in that time.
    pub fn recent(&self, name: &str, secs: u64) -> Option<SlotView> {
        history::recent(&self.sh, name, secs)
    }

    pub async fn events(&self, name: &str, before: Option<i64>, limit: usize) -> Result<Vec<berth_store::ServiceEvent>> {
        Ok(self.sh.store.service_events(name, before, limit).await?)
    }

    /// The last `tail` log lines of each of the service's instances, oldest first, each with its
    /// instance id and its index in that instance's log (for following).
    /// Instances that are gone keep their logs for a while (the runtime's retention): the last
    /// [`RETIRED_SHOWN`] of them are included, and a deleted service's logs stay readable.
    pub async fn logs(&self, name: &str, tail: usize) -> Result<Vec<(String, usize, String)>> {
        let runtime_err = |e: berth_runtime::RuntimeError| ControllerError::Conflict(e.to_string());
        let ours = |labels: &[(String, String)]| labels.iter().any(|(k, v)| k == supervisor::LABEL_SERVICE && v == name);
        let mut ids: Vec<berth_runtime::InstanceId> =
            self.sh.runtime.list().await.map_err(runtime_err)?.into_iter().filter(|i| ours(&i.labels)).map(|i| i.id).collect();
        let retired = self.sh.runtime.retired().await.map_err(runtime_err)?;
        let gone: Vec<berth_runtime::InstanceId> =
            retired.into_iter().filter(|r| ours(&r.labels) && !ids.contains(&r.id)).take(RETIRED_SHOWN).map(|r| r.id).collect();
        ids.extend(gone);
        if ids.is_empty() {
            load_service(&self.sh.store, name).await?;
        }
        let mut out = Vec::new();
        for id in ids {
            let lines = self.sh.runtime.logs(&id, 0).await.unwrap_or_default();
            let skip = lines.len().saturating_sub(tail);
            out.extend(lines.into_iter().enumerate().skip(skip).map(|(i, l)| (id.to_string(), i, l)));
        }
        out.sort_by(|a, b| a.2.cmp(&b.2));
        Ok(out)
    }
}

/// Gone instances whose kept logs a service's logs include.
const RETIRED_SHOWN: usize = 100;

/// `Busy` naming the operation in progress on `service`, if one is.
/// Whether an operation of `kind` may start only on a service in some state ([`precondition`]).
fn requires_state(kind: OperationType) -> bool {
    matches!(
        kind,
        OperationType::StartDeployment | OperationType::UpdateService | OperationType::PauseService | OperationType::ResumeService
    )
}

/// What the service must be for an operation of `kind` to start on it: deployments and updates
/// need it unpaused, a pause needs it RUNNING, a resume PAUSED.
fn precondition(name: &str, kind: OperationType, svc: &ServiceDoc) -> Result<()> {
    match kind {
        OperationType::StartDeployment | OperationType::UpdateService if svc.paused => {
            Err(ControllerError::Conflict(format!("`{name}` is paused; resume it first (`berth service resume {name}`)")))
        }
        OperationType::PauseService if svc.status != ServiceStatus::Running => {
            Err(ControllerError::Conflict(format!("`{name}` is {}; only a RUNNING service can be paused", svc.status)))
        }
        OperationType::ResumeService if svc.status != ServiceStatus::Paused => {
            Err(ControllerError::Conflict(format!("`{name}` is {}, not PAUSED", svc.status)))
        }
        _ => Ok(()),
    }
}

fn refuse_if_busy(service: &str, busy: &Option<(String, OperationType)>) -> Result<()> {
    match busy {
        Some((id, kind)) => Err(ControllerError::Busy { service: service.to_owned(), id: id.clone(), kind: *kind }),
        None => Ok(()),
    }
}

pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| ControllerError::Corrupt(e.to_string()))
}

pub(crate) fn from_value<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ControllerError::Corrupt(e.to_string()))
}

pub(crate) async fn load_service(store: &SharedStore, name: &str) -> Result<ServiceDoc> {
    let record = store.get_service(name).await?.ok_or_else(|| ControllerError::NotFound(name.to_owned()))?;
    from_value(record.doc)
}

fn tags_text(tags: &[String]) -> String {
    if tags.is_empty() {
        "no tags".into()
    } else {
        format!("tags {}", tags.join(", "))
    }
}

/// The revision a deployment of `spec` (or of `image` with its configuration) runs: the digest
/// the image resolves to now, and every tag pointing at it.
pub(crate) async fn resolve(sh: &Shared, spec: &ServiceSpec, image: Option<&str>) -> Result<RevisionDoc> {
    let store = &sh.store;
    let image = image.unwrap_or(&spec.source.image);
    let src = ImageSource::parse(image).map_err(ControllerError::BadRequest)?;
    let repo = src.repository.as_str();
    let digest: Digest = match &src.reference {
        berth_core::Reference::Tag(tag) => store.resolve_tag(repo, tag.as_str()).await?.ok_or_else(|| {
            ControllerError::BadRequest(format!("`{image}`: repository `{repo}` has no tag `{tag}`; push the image first"))
        })?,
        berth_core::Reference::Digest(d) => {
            if store.get_manifest(repo, d).await?.is_none() {
                return Err(ControllerError::BadRequest(format!("`{image}`: repository `{repo}` has no manifest {d}")));
            }
            d.clone()
        }
    };
    resolved(sh, spec, repo, digest).await
}

/// A revision of `spec` running `repo@digest`, with the tags that point at it now.
pub(crate) async fn resolved(sh: &Shared, spec: &ServiceSpec, repo: &str, digest: Digest) -> Result<RevisionDoc> {
    let tags = sh.store.tags_at(repo, &digest).await?;
    let secret_versions = pin_secrets(sh, spec).await?;
    Ok(RevisionDoc { spec: spec.clone(), repository: repo.to_owned(), digest, tags, secret_versions, by: None })
}

/// The directories of files `spec` takes from secrets, with the values CURRENT now; each read is
/// in the secret's audit trail as the service's.
pub(crate) async fn secret_files(sh: &Shared, service: &str, spec: &ServiceSpec) -> Result<Vec<berth_runtime::FileMount>, String> {
    let wanted = &spec.image_config.secret_files;
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let secrets = sh.secrets.as_ref().ok_or("this server keeps no secrets")?;
    let mut dirs: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<u8>>> = std::collections::BTreeMap::new();
    for (path, reference) in wanted {
        let failed = |e: &dyn std::fmt::Display| format!("{path} from secret `{reference}`: {e}");
        let (dir, name) = berth_core::service::secret_file_path(path).map_err(|e| failed(&e))?;
        let r: berth_secrets::Reference = reference.parse().map_err(|e| failed(&e))?;
        let (value, _) =
            secrets.read(&r, &berth_secrets::Selector::default(), &format!("service {service}"), now()).await.map_err(|e| failed(&e))?;
        dirs.entry(dir.to_owned()).or_default().insert(name.to_owned(), value.expose().as_bytes().to_vec());
    }
    Ok(dirs.into_iter().map(|(dir, files)| berth_runtime::FileMount { dir, files }).collect())
}

/// The CURRENT version of every secret `spec` takes env vars from, each reference checked.
pub(crate) async fn pin_secrets(sh: &Shared, spec: &ServiceSpec) -> Result<std::collections::BTreeMap<String, String>> {
    let mut pinned = std::collections::BTreeMap::new();
    if spec.image_config.secret_env.is_empty() && spec.image_config.secret_files.is_empty() {
        return Ok(pinned);
    }
    let secrets = sh.secrets.as_ref().ok_or_else(|| ControllerError::BadRequest("this server keeps no secrets".into()))?;
    for (path, reference) in &spec.image_config.secret_files {
        let bad =
            |e: berth_secrets::SecretError| ControllerError::BadRequest(format!("image_config.secret_files: {path}={reference}: {e}"));
        secrets.pin(&reference.parse().map_err(bad)?).await.map_err(bad)?;
    }
    for (var, reference) in &spec.image_config.secret_env {
        let bad = |e: berth_secrets::SecretError| ControllerError::BadRequest(format!("image_config.secret_env: {var}={reference}: {e}"));
        let r: berth_secrets::Reference = reference.parse().map_err(bad)?;
        let version = secrets.pin(&r).await.map_err(bad)?;
        pinned.insert(r.name, version);
    }
    Ok(pinned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_start_only_on_a_service_in_their_state() {
        let svc = |status: ServiceStatus, paused: bool| -> ServiceDoc {
            let spec: ServiceSpec = serde_json::from_value(serde_json::json!({"name": "web-app", "source": {"image": "web:1"}}))
                .unwrap_or_else(|e| panic!("{e}"));
            ServiceDoc { spec, status, current_revision: Some(1), paused }
        };
        let (running, paused) = (svc(ServiceStatus::Running, false), svc(ServiceStatus::Paused, true));
        for kind in [OperationType::StartDeployment, OperationType::UpdateService, OperationType::ResumeService] {
            assert!(requires_state(kind));
            let (on_running, on_paused) = (precondition("web-app", kind, &running), precondition("web-app", kind, &paused));
            assert_eq!(
                (on_running.is_ok(), on_paused.is_ok()),
                (kind != OperationType::ResumeService, kind == OperationType::ResumeService)
            );
        }
        assert!(precondition("web-app", OperationType::PauseService, &running).is_ok());
        assert!(
            matches!(precondition("web-app", OperationType::PauseService, &paused), Err(ControllerError::Conflict(m)) if m.contains("RUNNING"))
        );
        assert!(!requires_state(OperationType::CreateService) && !requires_state(OperationType::DeleteService));
    }
}

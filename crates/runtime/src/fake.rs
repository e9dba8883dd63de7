//! [`FakeRuntime`]: an in-memory [`Runtime`] that records every call and simulates lifecycles,
//! for controller tests. Tests can make instances crash or fail to start.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::{
    Denied, FileMount, InstanceId, InstanceSpec, InstanceState, InstanceStatus, Result, RetiredInstance, Runtime, RuntimeError,
    RuntimeEvent, Usage,
};

/// A recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Create(InstanceId),
    Start(InstanceId),
    Stop(InstanceId, Duration),
    Delete(InstanceId),
}

struct Inner {
    instances: BTreeMap<InstanceId, (InstanceSpec, InstanceStatus)>,
    calls: Vec<Call>,
    fail_start: HashSet<InstanceId>,
    fail_delete: HashSet<InstanceId>,
    retired: Vec<RetiredInstance>,
    next_ip: u32,
}

pub struct FakeRuntime {
    inner: Mutex<Inner>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        let inner = Inner {
            instances: BTreeMap::new(),
            calls: Vec::new(),
            fail_start: HashSet::new(),
            fail_delete: HashSet::new(),
            retired: Vec::new(),
            next_ip: 2,
        };
        FakeRuntime { inner: Mutex::new(inner), events: broadcast::channel(256).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Makes the next start of `id` exit at once with code 1.
    pub fn fail_next_start(&self, id: &InstanceId) {
        self.lock().fail_start.insert(id.clone());
    }

    /// The spec instance `id` was created with, while it exists.
    pub fn spec(&self, id: &InstanceId) -> Option<InstanceSpec> {
        self.lock().instances.get(id).map(|(spec, _)| spec.clone())
    }

    /// The next delete of `id` fails (the host short of resources, say), leaving it in place.
    pub fn fail_next_delete(&self, id: &InstanceId) {
        self.lock().fail_delete.insert(id.clone());
    }

    /// Simulates the instance dying on its own.
    pub fn crash(&self, id: &InstanceId, code: i32, oom_killed: bool) {
        let mut inner = self.lock();
        if let Some((_, st)) = inner.instances.get_mut(id) {
            st.state = InstanceState::Exited { code, oom_killed };
            let _ = self.events.send(RuntimeEvent::Exited { id: id.clone(), code, oom_killed });
        }
    }
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn create(&self, spec: InstanceSpec) -> Result<InstanceStatus> {
        let mut inner = self.lock();
        inner.calls.push(Call::Create(spec.id.clone()));
        if let Some((existing, st)) = inner.instances.get(&spec.id) {
            if existing == &spec {
                return Ok(st.clone());
            }
            return Err(RuntimeError::InvalidState {
                id: spec.id.clone(),
                state: "created with another spec".into(),
                hint: "delete it first",
            });
        }
        let n = inner.next_ip;
        inner.next_ip += 1;
        let ip = Ipv4Addr::new(10, 88, (n >> 8) as u8, n as u8);
        let st = InstanceStatus {
            id: spec.id.clone(),
            labels: spec.labels.clone(),
            image: spec.image.clone(),
            state: InstanceState::Created,
            address: Some(SocketAddr::from((ip, spec.port))),
        };
        inner.instances.insert(spec.id.clone(), (spec, st.clone()));
        Ok(st)
    }

    async fn start(&self, id: &InstanceId) -> Result<InstanceStatus> {
        let mut inner = self.lock();
        inner.calls.push(Call::Start(id.clone()));
        let fail = inner.fail_start.remove(id);
        let (_, st) = inner.instances.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        if st.state == InstanceState::Running {
            return Ok(st.clone());
        }
        st.state = InstanceState::Running;
        let _ = self.events.send(RuntimeEvent::Started { id: id.clone() });
        if fail {
            st.state = InstanceState::Exited { code: 1, oom_killed: false };
            let _ = self.events.send(RuntimeEvent::Exited { id: id.clone(), code: 1, oom_killed: false });
        }
        Ok(st.clone())
    }

    async fn stop(&self, id: &InstanceId, grace: Duration) -> Result<InstanceStatus> {
        let mut inner = self.lock();
        inner.calls.push(Call::Stop(id.clone(), grace));
        let (_, st) = inner.instances.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        if st.state == InstanceState::Running {
            // A well-behaved app exits on SIGTERM: 128 + 15.
            st.state = InstanceState::Exited { code: 143, oom_killed: false };
            let _ = self.events.send(RuntimeEvent::Exited { id: id.clone(), code: 143, oom_killed: false });
        }
        Ok(st.clone())
    }

    async fn delete(&self, id: &InstanceId) -> Result<()> {
        let mut inner = self.lock();
        inner.calls.push(Call::Delete(id.clone()));
        if inner.fail_delete.remove(id) {
            return Err(RuntimeError::Backend(format!("deleting {id}: Too many open files (os error 24)")));
        }
        if let Some((spec, _)) = inner.instances.remove(id) {
            inner.retired.insert(0, RetiredInstance { id: id.clone(), labels: spec.labels, deleted_at: 0 });
        }
        Ok(())
    }

    async fn inspect(&self, id: &InstanceId) -> Result<Option<InstanceStatus>> {
        Ok(self.lock().instances.get(id).map(|(_, st)| st.clone()))
    }

    async fn list(&self) -> Result<Vec<InstanceStatus>> {
        Ok(self.lock().instances.values().map(|(_, st)| st.clone()).collect())
    }

    async fn logs(&self, id: &InstanceId, since: usize) -> Result<Vec<String>> {
        let inner = self.lock();
        if !inner.instances.contains_key(id) && !inner.retired.iter().any(|r| &r.id == id) {
            return Err(RuntimeError::NotFound(id.clone()));
        }
        Ok(vec![format!("fake log line for {id}")].into_iter().skip(since).collect())
    }

    async fn retired(&self) -> Result<Vec<RetiredInstance>> {
        Ok(self.lock().retired.clone())
    }

    async fn denied(&self) -> Result<Vec<Denied>> {
        Ok(Vec::new())
    }

    /// A running fake instance uses 10 ms of CPU per call made to the fake so far, and 16 MiB.
    async fn usage(&self, id: &InstanceId) -> Result<Option<Usage>> {
        let inner = self.lock();
        let running = inner.instances.get(id).is_some_and(|(_, st)| st.state == InstanceState::Running);
        Ok(running.then(|| Usage { cpu_micros: inner.calls.len() as u64 * 10_000, memory_bytes: 16 << 20 }))
    }

    /// A fake host has no routes: only the fake's own instance CIDR conflicts.
    async fn check_network(&self, network: &berth_core::NetworkSpec) -> Result<()> {
        let own = berth_core::Cidr::new(Ipv4Addr::new(10, 88, 0, 0), 16);
        if network.cidr.overlaps(&own) {
            return Err(RuntimeError::Conflict(format!("cidr {} overlaps the instance CIDR {own}", network.cidr)));
        }
        Ok(())
    }

    /// Replaces the files in the spec it keeps (what [`FakeRuntime::spec`] then shows).
    async fn update_files(&self, id: &InstanceId, files: Vec<FileMount>) -> Result<()> {
        let mut inner = self.lock();
        let (spec, _) = inner.instances.get_mut(id).ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
        for new in files {
            if let Some(m) = spec.files.iter_mut().find(|m| m.dir == new.dir) {
                m.files = new.files;
            }
        }
        Ok(())
    }

    fn events(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageRef, Resources};

    fn spec(id: &str) -> Result<InstanceSpec> {
        Ok(InstanceSpec {
            id: InstanceId::new(id)?,
            labels: vec![("service".into(), "web".into())],
            image: ImageRef { repository: "web".into(), digest: berth_core::Digest::sha256_of(b"m") },
            entrypoint: None,
            cmd: None,
            env: vec![],
            port: 8080,
            resources: Resources::default(),
            user: None,
            read_only_rootfs: false,
            files: Vec::new(),
            init: false,
            network: Default::default(),
        })
    }

    #[tokio::test]
    async fn lifecycle_is_idempotent_and_recorded() -> Result<()> {
        let rt = FakeRuntime::new();
        let mut events = rt.events();
        let s = spec("web-1")?;
        let id = s.id.clone();
        let a = rt.create(s.clone()).await?;
        assert_eq!(rt.create(s).await?, a, "create is idempotent");
        assert_eq!(rt.start(&id).await?.state, InstanceState::Running);
        rt.start(&id).await?;
        assert_eq!(events.recv().await.ok(), Some(RuntimeEvent::Started { id: id.clone() }));
        let stopped = rt.stop(&id, Duration::from_secs(1)).await?;
        assert_eq!(stopped.state, InstanceState::Exited { code: 143, oom_killed: false });
        rt.delete(&id).await?;
        rt.delete(&id).await?;
        assert_eq!(rt.inspect(&id).await?, None);
        assert_eq!(rt.calls().len(), 7);
        Ok(())
    }

    #[tokio::test]
    async fn failures_can_be_injected() -> Result<()> {
        let rt = FakeRuntime::new();
        let s = spec("web-2")?;
        let id = s.id.clone();
        rt.create(s).await?;
        rt.fail_next_start(&id);
        assert_eq!(rt.start(&id).await?.state, InstanceState::Exited { code: 1, oom_killed: false });
        rt.start(&id).await?;
        rt.crash(&id, 137, true);
        assert_eq!(rt.inspect(&id).await?.map(|s| s.state.to_string()), Some("OOM-killed".into()));
        assert!(InstanceId::new("Bad_ID").is_err());
        Ok(())
    }
}

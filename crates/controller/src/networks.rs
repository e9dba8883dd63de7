//! Private networks as desired state: created and deleted here, checked against each other and
//! against what the runtime finds on its host; services may name only networks that exist, and
//! a network some service names cannot be deleted.

use berth_core::network::{NetworkSpec, NetworkSpecError};
use berth_core::ServiceSpec;
use berth_store::StoreError;
use serde::{Deserialize, Serialize};

use crate::model::{now, RevisionDoc, ServiceDoc};
use crate::{from_value, to_value, Controller, ControllerError, Result};

/// A network as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkView {
    #[serde(flatten)]
    pub spec: NetworkSpec,
    /// Services attached to it.
    pub services: Vec<String>,
    pub created_at: i64,
}

impl From<NetworkSpecError> for ControllerError {
    fn from(e: NetworkSpecError) -> Self {
        ControllerError::BadRequest(e.to_string())
    }
}

impl Controller {
    /// Creates a network after checking it against the others and the host.
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkView> {
        spec.validate()?;
        let _guard = self.sh.networks.lock().await;
        let others = self.network_specs().await?;
        if let Some(taken) = others.iter().find(|o| o.name == spec.name) {
            return Err(ControllerError::NetworkExists(taken.name.clone()));
        }
        let mut problems = Vec::new();
        for o in &others {
            if o.cidr.overlaps(&spec.cidr) {
                problems.push(format!("cidr {} overlaps network `{}` ({})", spec.cidr, o.name, o.cidr));
            }
            if let (Some(a), Some(b)) = (&spec.attach, &o.attach) {
                if a.device() == b.device() {
                    problems.push(format!("`{}` is already attached to network `{}`", a.device(), o.name));
                }
            }
            for (name, target) in &spec.host_endpoints {
                for (other_name, other_target) in &o.host_endpoints {
                    if target.port() == other_target.port() {
                        problems.push(format!(
                            "host endpoint `{name}` takes port {}, which network `{}` gives to `{other_name}` ({other_target}); instances reach every host endpoint on the gateway address, so ports must differ",
                            target.port(),
                            o.name
                        ));
                    }
                }
            }
        }
        let mut ports = std::collections::BTreeMap::new();
        for (name, target) in &spec.host_endpoints {
            if let Some(first) = ports.insert(target.port(), name) {
                problems.push(format!("host endpoints `{first}` and `{name}` both take port {}; ports must differ", target.port()));
            }
        }
        if let Err(e) = self.sh.runtime.check_network(&spec).await {
            problems.push(e.to_string());
        }
        if !problems.is_empty() {
            return Err(ControllerError::Conflict(format!("network `{}` cannot be created: {}", spec.name, problems.join("; "))));
        }
        let at = now();
        match self.sh.store.create_network(&spec.name, &to_value(&spec)?, at).await {
            Err(StoreError::NetworkExists(n)) => return Err(ControllerError::NetworkExists(n)),
            other => other?,
        }
        tracing::info!(network = %spec.name, cidr = %spec.cidr, "network created");
        Ok(NetworkView { spec, services: Vec::new(), created_at: at })
    }

    /// Deletes a network no service is attached to.
    pub async fn delete_network(&self, name: &str) -> Result<()> {
        let _guard = self.sh.networks.lock().await;
        if self.sh.store.get_network(name).await?.is_none() {
            return Err(ControllerError::NetworkNotFound(name.to_owned()));
        }
        let users = self.attached(name).await?;
        if !users.is_empty() {
            return Err(ControllerError::Conflict(format!(
                "network `{name}` is in use by {}; detach them first (`berth service update <name> --no-network {name}`) or delete them",
                users.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        self.sh.store.delete_network(name).await?;
        tracing::info!(network = %name, "network deleted");
        Ok(())
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkView> {
        let r = self.sh.store.get_network(name).await?.ok_or_else(|| ControllerError::NetworkNotFound(name.to_owned()))?;
        Ok(NetworkView { spec: from_value(r.doc)?, services: self.attached(name).await?, created_at: r.at })
    }

    pub async fn list_networks(&self) -> Result<Vec<NetworkView>> {
        let mut out = Vec::new();
        for r in self.sh.store.list_networks().await? {
            let services = self.attached(&r.key).await?;
            out.push(NetworkView { spec: from_value(r.doc)?, services, created_at: r.at });
        }
        Ok(out)
    }

    async fn network_specs(&self) -> Result<Vec<NetworkSpec>> {
        self.sh.store.list_networks().await?.into_iter().map(|r| from_value(r.doc)).collect()
    }

    /// Services whose spec — the serving one or their newest revision's, which an operation
    /// may be deploying — names network `name`.
    async fn attached(&self, name: &str) -> Result<Vec<String>> {
        let names = |spec: &ServiceSpec| spec.network.networks.iter().any(|n| n == name);
        let mut out = Vec::new();
        for r in self.sh.store.list_services().await? {
            let doc: ServiceDoc = from_value(r.doc)?;
            let newest = match self.sh.store.list_revisions(&r.key).await?.pop() {
                Some(rev) => Some(from_value::<RevisionDoc>(rev.doc)?.spec),
                None => None,
            };
            if names(&doc.spec) || newest.as_ref().is_some_and(names) {
                out.push(r.key);
            }
        }
        Ok(out)
    }

    /// Refuses a spec naming a network that does not exist. The caller holds the networks lock
    /// until the spec is stored, so the network cannot be deleted in between.
    pub(crate) async fn check_network_refs(&self, spec: &ServiceSpec) -> Result<()> {
        let known = self.network_specs().await?;
        let missing: Vec<String> =
            spec.network.networks.iter().filter(|n| !known.iter().any(|k| &k.name == *n)).map(|n| format!("`{n}`")).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ControllerError::BadRequest(format!(
                "network.networks: no network named {}; create it first (`berth network create`) or see `berth network list`",
                missing.join(", ")
            )))
        }
    }
}

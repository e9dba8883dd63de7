//! What secret rotation needs of the services: who does not use a version yet, and the
//! addresses of the names only berth resolves (`<host>.<network>.internal`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::Controller;

#[async_trait::async_trait]
impl berth_secrets::rotation::Consumers for Controller {
    /// A service (not paused) lags when an instance of it — draining ones too, which still hold connections —
    /// runs a revision that pinned another version of `secret` for its env vars; when its serving
    /// revision pinned another version (its next instance, from zero, would start with it); or
    /// when its running instances' files from the secret were not yet rewritten to `version`.
    async fn lagging(&self, secret: &str, version: &str) -> Vec<String> {
        let views = match self.list(None, usize::MAX).await {
            Ok(v) => v,
            Err(e) => return vec![format!("the services cannot be read: {e}")],
        };
        let mut out = Vec::new();
        // A paused service holds no instance, so no credential: it does not hold a rotation back.
        for view in views.into_iter().filter(|v| v.status != berth_core::ServiceStatus::Paused) {
            let mut pinned: BTreeMap<u32, Option<String>> = BTreeMap::new();
            for number in view.instances.iter().map(|i| i.revision).chain(view.current_revision.as_ref().map(|r| r.number)) {
                if let std::collections::btree_map::Entry::Vacant(e) = pinned.entry(number) {
                    e.insert(self.revision(&view.name, number).await.ok().and_then(|r| r.doc.secret_versions.get(secret).cloned()));
                }
            }
            let old = |n: u32| pinned.get(&n).and_then(Option::as_deref).is_some_and(|v| v != version);
            let holding = view.instances.iter().filter(|i| old(i.revision)).count();
            if holding > 0 {
                out.push(format!("service {}: {holding} instance(s) with an older version in env vars", view.name));
            } else if view.current_revision.as_ref().is_some_and(|r| old(r.number)) {
                out.push(format!("service {}: its serving revision has an older version in env vars", view.name));
            }
            let files_from_it = view.spec.image_config.secret_files.values().any(|r| berth_core::service::secret_name(r) == Some(secret));
            let running = view.instances.iter().any(|i| i.state != "draining");
            if files_from_it && running {
                let written =
                    self.sh.files_at.lock().unwrap_or_else(|p| p.into_inner()).get(&view.name).and_then(|m| m.get(secret).cloned());
                if written.as_deref() != Some(version) {
                    out.push(format!("service {}: files not yet rewritten", view.name));
                }
            }
        }
        out
    }

    /// `<host>.<network>.internal`: a host named in a network's spec.
    async fn resolve(&self, host: &str) -> Option<IpAddr> {
        let (host, network) = host.strip_suffix(".internal")?.split_once('.')?;
        let network = self.get_network(network).await.ok()?;
        network.spec.hosts.get(host).map(|ip| IpAddr::V4(*ip))
    }
}

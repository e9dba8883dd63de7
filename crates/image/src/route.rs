//! Choosing where an image comes from by its name: `registry.example.com/team/web` and
//! `127.0.0.1:5000/web` are pulled from that registry over the network; a plain `team/web` is
//! berth's own registry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use berth_core::Digest;

use crate::pull::{ImageSource, PullError};
use crate::remote::RemoteRegistry;

/// Splits `host/rest` when the first component names a registry (has a `.` or `:`, or is
/// `localhost`), as Docker does.
pub fn split_registry(repository: &str) -> Option<(&str, &str)> {
    let (first, rest) = repository.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some((first, rest))
}

fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

/// Routes each repository to berth's own registry or to the remote registry its name names.
pub struct SourceRouter {
    local: Arc<dyn ImageSource>,
    /// Registries reached over plain HTTP besides loopback ones.
    insecure: Vec<String>,
    remotes: Mutex<HashMap<String, Arc<RemoteRegistry>>>,
}

impl SourceRouter {
    pub fn new(local: Arc<dyn ImageSource>, insecure: Vec<String>) -> SourceRouter {
        SourceRouter { local, insecure, remotes: Mutex::new(HashMap::new()) }
    }

    fn route<'a>(&self, repository: &'a str) -> (Arc<dyn ImageSource>, &'a str) {
        match split_registry(repository) {
            None => (self.local.clone(), repository),
            Some((host, rest)) => {
                let mut remotes = self.remotes.lock().unwrap_or_else(|p| p.into_inner());
                let insecure = is_loopback(host) || self.insecure.iter().any(|h| h == host);
                let r = remotes.entry(host.to_owned()).or_insert_with(|| Arc::new(RemoteRegistry::new(host, insecure, None))).clone();
                (r, rest)
            }
        }
    }
}

#[async_trait::async_trait]
impl ImageSource for SourceRouter {
    async fn manifest(&self, repository: &str, reference: &str) -> Result<(String, Vec<u8>), PullError> {
        let (source, repo) = self.route(repository);
        source.manifest(repo, reference).await
    }

    async fn blob(&self, repository: &str, digest: &Digest, dest: &Path) -> Result<(), PullError> {
        let (source, repo) = self.route(repository);
        source.blob(repo, digest, dest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_a_host_are_remote() {
        assert_eq!(split_registry("web"), None);
        assert_eq!(split_registry("team/web"), None);
        assert_eq!(split_registry("registry.example.com/team/web"), Some(("registry.example.com", "team/web")));
        assert_eq!(split_registry("127.0.0.1:5000/web"), Some(("127.0.0.1:5000", "web")));
        assert_eq!(split_registry("localhost/web"), Some(("localhost", "web")));
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost") && !is_loopback("registry.example.com"));
    }
}

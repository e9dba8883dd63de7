//! Lifecycle rules and garbage collection. A collection first applies every repository's
//! lifecycle rules, then deletes blobs no manifest in any repository references and that are
//! older than the grace period, then discards upload sessions idle past their expiry.
//!
//! Safety: candidates are computed without locks, then re-checked under the registry's
//! exclusive gc lock, which manifest writes hold shared; a blob younger than the grace period is
//! never a candidate, so uploads whose manifest has not arrived yet survive.

use std::collections::HashSet;
use std::time::SystemTime;

use berth_core::lifecycle::{self, LifecycleAction, ManifestFacts};
use berth_core::Digest;
use serde::Serialize;

use crate::{now, Registry, RegistryError};

/// What a collection deleted, or would delete with `dry_run`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub lifecycle: Vec<LifecycleDeletion>,
    pub blobs: Vec<CollectedBlob>,
    pub bytes: u64,
    pub uploads: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LifecycleDeletion {
    pub repository: String,
    /// `tag` or `manifest`.
    pub kind: &'static str,
    pub target: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CollectedBlob {
    pub digest: Digest,
    pub size: u64,
}

impl Registry {
    /// Runs lifecycle rules and collects unreferenced blobs and stale uploads.
    pub async fn collect_garbage(&self, dry_run: bool) -> Result<GcReport, RegistryError> {
        let mut report = GcReport { dry_run, ..GcReport::default() };
        let mut doomed: HashSet<(String, Digest)> = HashSet::new();
        for repo in self.all_repositories().await? {
            if repo.lifecycle.is_empty() {
                continue;
            }
            let facts = self.manifest_facts(&repo.name).await?;
            for action in lifecycle::plan(&repo.lifecycle, &facts, now()) {
                let (kind, target) = match &action {
                    LifecycleAction::DeleteTag(t) => ("tag", t.clone()),
                    LifecycleAction::DeleteManifest(d) => ("manifest", d.to_string()),
                };
                if !dry_run {
                    match &action {
                        LifecycleAction::DeleteTag(t) => self.store.delete_tag(&repo.name, t).await?,
                        LifecycleAction::DeleteManifest(d) => self.store.delete_manifest(&repo.name, d).await?,
                    };
                    tracing::info!(repository = %repo.name, kind, target = %target, "lifecycle rule deleted");
                } else if let LifecycleAction::DeleteManifest(d) = &action {
                    doomed.insert((repo.name.clone(), d.clone()));
                }
                report.lifecycle.push(LifecycleDeletion { repository: repo.name.clone(), kind, target });
            }
        }

        let grace_cutoff = SystemTime::now().checked_sub(self.config.gc_grace).unwrap_or(SystemTime::UNIX_EPOCH);
        let referenced = self.referenced(&doomed).await?;
        let candidates: Vec<_> =
            self.blobs.list().await?.into_iter().filter(|b| b.modified < grace_cutoff && !referenced.contains(&b.digest)).collect();
        if dry_run {
            report.blobs = candidates.into_iter().map(|b| CollectedBlob { digest: b.digest, size: b.size }).collect();
        } else if !candidates.is_empty() {
            let _exclusive = self.gc_lock.write().await;
            let referenced = self.referenced(&doomed).await?;
            for b in candidates.into_iter().filter(|b| !referenced.contains(&b.digest)) {
                self.store.forget_blob(&b.digest).await?;
                if self.blobs.delete(&b.digest).await? {
                    tracing::info!(digest = %b.digest, size = b.size, "collected blob");
                    report.blobs.push(CollectedBlob { digest: b.digest, size: b.size });
                }
            }
        }
        report.bytes = report.blobs.iter().map(|b| b.size).sum();

        let upload_cutoff = SystemTime::now().checked_sub(self.config.upload_expiry).unwrap_or(SystemTime::UNIX_EPOCH);
        for u in self.blobs.list_uploads().await? {
            if u.started_at < upload_cutoff {
                if !dry_run {
                    self.blobs.cancel(&u.id).await?;
                }
                report.uploads.push(u.id);
            }
        }
        if !dry_run {
            self.close_uploads(report.uploads.iter().map(String::as_str)).await;
        }
        Ok(report)
    }

    async fn all_repositories(&self) -> Result<Vec<berth_store::RepositoryRecord>, RegistryError> {
        let mut out = Vec::new();
        loop {
            let page = self.store.list_repositories(out.last().map(|r: &berth_store::RepositoryRecord| r.name.as_str()), 500).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    async fn manifest_facts(&self, repository: &str) -> Result<Vec<ManifestFacts>, RegistryError> {
        let tags = self.store.list_tags(repository).await?;
        let manifests = self.store.list_manifests(repository).await?;
        Ok(manifests
            .into_iter()
            .map(|m| {
                let children = if crate::manifest::is_index(&m.media_type) { m.references.clone() } else { Vec::new() };
                ManifestFacts {
                    tags: tags.iter().filter(|t| t.digest == m.digest).map(|t| (t.tag.clone(), t.updated_at)).collect(),
                    digest: m.digest,
                    created_at: m.created_at,
                    children,
                    subject: m.subject,
                }
            })
            .collect())
    }

    /// Every digest a manifest needs, in every repository, ignoring manifests in `doomed`.
    async fn referenced(&self, doomed: &HashSet<(String, Digest)>) -> Result<HashSet<Digest>, RegistryError> {
        let mut set = HashSet::new();
        for repo in self.all_repositories().await? {
            for m in self.store.list_manifests(&repo.name).await? {
                if doomed.contains(&(repo.name.clone(), m.digest.clone())) {
                    continue;
                }
                set.insert(m.digest);
                set.extend(m.references);
            }
        }
        Ok(set)
    }
}

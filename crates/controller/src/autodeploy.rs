//! Auto-deploy: a service with `auto_deploy` on `repo:tag` follows every move of that tag to a
//! digest other than the serving one — a new push, and a revert by moving the tag back to an
//! older digest alike. Pushes wake it at once; it also looks every few seconds and at start, so
//! pushes of new digests made while berth was down are caught up. A digest whose deployment
//! failed (rolled back) is not tried again, and an event says so once; the same digest pushed
//! again does nothing; a deploy by hand of another image is left alone until the tag moves; a
//! service busy with another operation is retried when that one ends. It also follows secrets:
//! a service whose env vars come from secrets whose CURRENT version moved is deployed again with
//! the new versions (see [`follow_secrets`]); a change of a secret wakes it at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_core::service::ImageSource;
use berth_core::{Digest, OperationStatus, ServiceStatus};
use berth_store::PushEvent;
use tokio::sync::broadcast;

use crate::model::{Operation, Revision, RevisionDoc, ServiceDoc};
use crate::{from_value, resolved, Controller, ControllerError, Shared};

pub(crate) async fn run(sh: Weak<Shared>, mut pushes: Option<broadcast::Receiver<PushEvent>>) {
    let mut state = Watch::default();
    let mut secret_changes = sh.upgrade().and_then(|s| s.secrets.as_ref().map(|x| x.changes()));
    loop {
        let Some(shared) = sh.upgrade() else { return };
        if let Err(e) = pass(&shared, &mut state).await {
            tracing::warn!(error = %e, "auto-deploy pass failed");
        }
        if let Err(e) = follow_secrets(&shared, &mut state).await {
            tracing::warn!(error = %e, "following secrets failed");
        }
        if let Err(e) = refresh_files(&shared, &mut state).await {
            tracing::warn!(error = %e, "refreshing files from secrets failed");
        }
        let wake = shared.autodeploy.notified();
        tokio::select! {
            _ = wake => {}
            _ = async {
                match secret_changes.as_mut() {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = async {
                match pushes.as_mut() {
                    Some(rx) => {
                        if let Err(broadcast::error::RecvError::Closed) = rx.recv().await {
                            std::future::pending::<()>().await
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            } => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// What auto-deploy remembers between passes.
#[derive(Default)]
struct Watch {
    /// The digest each service's tag pointed at when last acted on: a different one is a move.
    seen: HashMap<String, Digest>,
    /// Failed digests already reported, so the event is said once.
    reported: HashSet<(String, Digest)>,
    /// The secret versions each service was last moved to (or failed to move to): each is
    /// tried once; a deployment of them that failed is not tried again until they change.
    secrets_tried: HashMap<String, BTreeMap<String, String>>,
    /// The secret versions each service's instances' files were last written from.
    files_written: HashMap<String, BTreeMap<String, String>>,
}

/// Files from secrets follow CURRENT in place: when a version a service's files come from is no
/// longer CURRENT, every running instance of the service gets the new files (one directory at
/// once), with no restart. At start every instance's files are written once more.
async fn refresh_files(sh: &Arc<Shared>, state: &mut Watch) -> Result<(), ControllerError> {
    let Some(secrets) = &sh.secrets else { return Ok(()) };
    let mut running = None;
    for record in sh.store.list_services().await? {
        let name = record.key.clone();
        let svc: ServiceDoc = from_value(record.doc)?;
        let wanted = &svc.spec.image_config.secret_files;
        if wanted.is_empty() {
            continue;
        }
        // The versions CURRENT now, found without reading a value.
        let mut now = BTreeMap::new();
        for reference in wanted.values() {
            if let Ok(r) = reference.parse::<berth_secrets::Reference>() {
                let version = secrets.pin(&r).await.unwrap_or_default();
                now.insert(r.name, version);
            }
        }
        if state.files_written.get(&name) == Some(&now) {
            continue;
        }
        let mounts = match crate::secret_files(sh, &name, &svc.spec).await {
            Ok(m) => m,
            Err(e) => {
                sh.store
                    .add_service_event(&name, crate::model::now(), "secret_not_followed", &format!("{e}; the files stay as they are"))
                    .await?;
                state.files_written.insert(name, now);
                continue;
            }
        };
        if running.is_none() {
            running = Some(sh.runtime.list().await.map_err(|e| ControllerError::Conflict(e.to_string()))?);
        }
        let ours = running.iter().flatten().filter(|i| {
            i.state == berth_runtime::InstanceState::Running
                && i.labels.iter().any(|(k, v)| k == crate::supervisor::LABEL_SERVICE && *v == name)
        });
        let mut all = true;
        for inst in ours {
            if let Err(e) = sh.runtime.update_files(&inst.id, mounts.clone()).await {
                all = false;
                tracing::warn!(service = %name, instance = %inst.id, error = %e, "updating an instance's files from secrets failed");
            }
        }
        // An instance that could not be updated is tried again at the next pass.
        if all {
            tracing::info!(service = %name, "files from secrets written");
            sh.files_at.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), now.clone());
            state.files_written.insert(name, now);
        }
    }
    Ok(())
}

/// A service whose serving revision pinned secret versions other than those CURRENT now gets a
/// new revision of the same build with the new versions, deployed blue/green: health-gated, and
/// rolled back to the revision holding the old ones on failure. A reference that no longer
/// resolves (a deleted secret, a key the new value lacks) is reported once as an event, and the
/// service keeps what it runs.
async fn follow_secrets(sh: &Arc<Shared>, state: &mut Watch) -> Result<(), ControllerError> {
    if sh.secrets.is_none() {
        return Ok(());
    }
    let controller = Controller { sh: sh.clone(), actor: Some("a secret's new version".into()) };
    for record in sh.store.list_services().await? {
        let name = record.key.clone();
        let svc: ServiceDoc = from_value(record.doc)?;
        if svc.spec.image_config.secret_env.is_empty() || svc.paused || svc.status != ServiceStatus::Running {
            continue;
        }
        let Some(number) = svc.current_revision else { continue };
        let Some(serving) = sh.store.get_revision(&name, number).await? else { continue };
        let serving = Revision::from_record(&name, serving)?;
        let now = match crate::pin_secrets(sh, &svc.spec).await {
            Ok(now) => now,
            Err(e) => {
                let key = BTreeMap::from([("error".to_owned(), e.to_string())]);
                if state.secrets_tried.insert(name.clone(), key.clone()).as_ref() != Some(&key) {
                    sh.store
                        .add_service_event(
                            &name,
                            crate::model::now(),
                            "secret_not_followed",
                            &format!("{e}; the service keeps the versions it runs"),
                        )
                        .await?;
                }
                continue;
            }
        };
        if now == serving.doc.secret_versions || state.secrets_tried.get(&name) == Some(&now) {
            continue;
        }
        let moved: Vec<String> = now
            .iter()
            .filter(|(secret, version)| serving.doc.secret_versions.get(*secret) != Some(version))
            .map(|(secret, version)| format!("`{secret}` to version {version}"))
            .collect();
        let why = format!("secrets moved: {}", moved.join(", "));
        let rev = RevisionDoc { secret_versions: now.clone(), ..serving.doc.clone() };
        match controller.deploy_revision_doc(&name, &svc, rev, Some(why)).await {
            Ok(op) => {
                tracing::info!(service = %name, operation = %op.id, "deploying new secret versions");
                state.secrets_tried.insert(name, now);
            }
            // Tried again after the operation in progress.
            Err(ControllerError::Busy { .. }) => {}
            Err(e) => tracing::warn!(service = %name, error = %e, "deploying new secret versions could not start"),
        }
    }
    Ok(())
}

async fn pass(sh: &Arc<Shared>, state: &mut Watch) -> Result<(), ControllerError> {
    let controller = Controller { sh: sh.clone(), actor: Some("auto-deploy".into()) };
    for record in sh.store.list_services().await? {
        let name = record.key.clone();
        let svc: ServiceDoc = from_value(record.doc)?;
        if !svc.spec.auto_deploy() || svc.paused || !matches!(svc.status, ServiceStatus::Running | ServiceStatus::CreateFailed) {
            continue;
        }
        let Ok(src) = ImageSource::parse(&svc.spec.source.image) else { continue };
        let Some(tag) = src.tag() else { continue };
        let repo = src.repository.as_str();
        let Some(digest) = sh.store.resolve_tag(repo, tag).await? else { continue };
        let revisions: Vec<Revision> =
            sh.store.list_revisions(&name).await?.into_iter().filter_map(|r| Revision::from_record(&name, r).ok()).collect();
        let serving = svc.current_revision.and_then(|n| revisions.iter().find(|r| r.number == n)).map(|r| &r.doc.digest);
        let moved = state.seen.get(&name).is_some_and(|prev| prev != &digest);
        let new_digest = !revisions.iter().any(|r| r.doc.digest == digest);
        if serving == Some(&digest) || !(moved || new_digest) {
            state.seen.insert(name, digest);
            continue;
        }
        if let Some(failed) = failed_revision(sh, &name, &revisions, &digest).await? {
            state.seen.insert(name.clone(), digest.clone());
            if state.reported.insert((name.clone(), digest.clone())) {
                let message = format!(
                    "{repo}:{tag} points at {digest}, whose deployment failed (revision {failed}); not deploying it again: push a fix, or `berth service deploy {name}` to try anyway"
                );
                sh.store.add_service_event(&name, crate::model::now(), "auto_deploy_skipped", &message).await?;
            }
            continue;
        }
        let rev = resolved(sh, &svc.spec, repo, digest.clone()).await?;
        let why = format!("auto-deploy: {repo}:{tag} now points at {digest}");
        match controller.deploy_revision_doc(&name, &svc, rev, Some(why)).await {
            Ok(op) => {
                tracing::info!(service = %name, operation = %op.id, "auto-deploy started");
                state.seen.insert(name, digest);
            }
            // Tried again after the operation in progress.
            Err(ControllerError::Busy { .. }) => {}
            Err(e) => tracing::warn!(service = %name, error = %e, "auto-deploy could not start"),
        }
    }
    Ok(())
}

/// The number of a revision of `digest` whose deployment failed and was not followed by one that
/// succeeded, if any.
async fn failed_revision(sh: &Shared, service: &str, revisions: &[Revision], digest: &Digest) -> Result<Option<u32>, ControllerError> {
    let of_digest: HashSet<u32> = revisions.iter().filter(|r| &r.doc.digest == digest).map(|r| r.number).collect();
    if of_digest.is_empty() {
        return Ok(None);
    }
    // Newest first: the latest outcome for this digest decides.
    for record in sh.store.list_operations(Some(service), false, None, 200).await? {
        let op: Operation = from_value(record.doc)?;
        let Some(target) = op.target_revision.filter(|t| of_digest.contains(t)) else { continue };
        match op.status {
            OperationStatus::Succeeded => return Ok(None),
            OperationStatus::Failed | OperationStatus::RollbackSucceeded | OperationStatus::RollbackFailed => return Ok(Some(target)),
            _ => {}
        }
    }
    Ok(None)
}

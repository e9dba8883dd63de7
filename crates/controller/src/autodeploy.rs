//! Auto-deploy: a service with `auto_deploy` on `repo:tag` deploys every new digest pushed to
//! that tag. Pushes wake it at once; it also looks every few seconds and at start, so pushes
//! made while berth was down are caught up. A digest that already has a revision of the service
//! is not deployed again, so the same digest pushed again does nothing and a broken push that
//! rolled back is not retried; a service busy with another operation is retried when that one
//! ends.

use std::sync::{Arc, Weak};
use std::time::Duration;

use berth_core::service::ImageSource;
use berth_core::ServiceStatus;
use berth_store::PushEvent;
use tokio::sync::broadcast;

use crate::model::{Revision, ServiceDoc};
use crate::{from_value, resolved, Controller, ControllerError, Shared};

pub(crate) async fn run(sh: Weak<Shared>, mut pushes: Option<broadcast::Receiver<PushEvent>>) {
    loop {
        let Some(shared) = sh.upgrade() else { return };
        if let Err(e) = pass(&shared).await {
            tracing::warn!(error = %e, "auto-deploy pass failed");
        }
        let wake = shared.autodeploy.notified();
        tokio::select! {
            _ = wake => {}
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

async fn pass(sh: &Arc<Shared>) -> Result<(), ControllerError> {
    let controller = Controller { sh: sh.clone() };
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
        let known = sh.store.list_revisions(&name).await?.into_iter().filter_map(|r| Revision::from_record(&name, r).ok());
        if known.into_iter().any(|r| r.doc.digest == digest) {
            continue;
        }
        let rev = resolved(&sh.store, &svc.spec, repo, digest.clone()).await?;
        let why = format!("auto-deploy: {repo}:{tag} now points at {digest}");
        match controller.deploy_revision_doc(&name, &svc, rev, Some(why)).await {
            Ok(op) => tracing::info!(service = %name, operation = %op.id, "auto-deploy started"),
            Err(ControllerError::Busy { .. }) => {}
            Err(e) => tracing::warn!(service = %name, error = %e, "auto-deploy could not start"),
        }
    }
    Ok(())
}

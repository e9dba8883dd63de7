//! Push events: every manifest push or tag move is published on the in-process stream and
//! recorded in the store, so a subscriber that starts late catches up.

use std::sync::Arc;

use berth_core::{Reference, TagPolicy};
use berth_registry::{FsBlobStore, Registry, RegistryConfig};
use berth_store::{SharedStore, SqliteStore};
use bytes::Bytes;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn manifest(config: &str, marker: u8) -> Bytes {
    Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[],"annotations":{{"marker":"{marker}"}}}}"#
    ))
}

#[tokio::test]
async fn pushes_are_streamed_and_recorded() -> Result {
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
    let blobs = Arc::new(FsBlobStore::open(&dir.path().join("blobs"))?);
    let reg = Registry::new(store.clone(), blobs.clone(), RegistryConfig::default());
    reg.create_repository("web", TagPolicy::default()).await?;
    // The config blob, pushed through the upload protocol's store calls.
    let config = berth_core::Digest::sha256_of(b"{}");
    let id = reg.blobs().create_upload("web").await?;
    reg.blobs().append(&id, None, Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(b"{}"))]))).await?;
    reg.blobs().finish(&id, &config, Some(2)).await?;
    store.link_blob("web", &config, 2, 0).await?;

    let mut live = reg.subscribe();
    let latest: Reference = "latest".parse()?;
    let first = reg.put_manifest("web", &latest, None, manifest(&config.to_string(), 1)).await?;
    let second = reg.put_manifest("web", &latest, None, manifest(&config.to_string(), 2)).await?;
    // The same manifest again moves nothing and says nothing.
    reg.put_manifest("web", &latest, None, manifest(&config.to_string(), 2)).await?;

    let e1 = live.recv().await?;
    let e2 = live.recv().await?;
    assert_eq!((e1.tag.as_deref(), &e1.digest, e1.previous_digest.as_ref()), (Some("latest"), &first.digest, None));
    assert_eq!((e2.tag.as_deref(), &e2.digest, e2.previous_digest.as_ref()), (Some("latest"), &second.digest, Some(&first.digest)));
    assert!(live.try_recv().is_err(), "an identical push published an event");

    // A consumer that restarts catches up from the store, from any point.
    drop(reg);
    let reg = Registry::new(store, blobs, RegistryConfig::default());
    let recorded = reg.events(Some("web"), 0, 100).await?;
    assert_eq!(recorded, vec![e1.clone(), e2.clone()]);
    assert_eq!(reg.events(None, e1.id, 100).await?, vec![e2]);
    Ok(())
}

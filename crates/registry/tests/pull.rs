//! The runtime's view of the registry: images built without Docker, pulled in-process into the
//! layer cache, by tag, by digest and through a multi-platform index.

use std::sync::Arc;

use berth_core::{Digest, Reference, TagPolicy};
use berth_image::build::{build_from_dir, BuiltImage, ImageSettings};
use berth_image::LayerCache;
use berth_registry::{FsBlobStore, Registry, RegistryConfig};
use berth_store::{SharedStore, SqliteStore};
use bytes::Bytes;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn push(reg: &Registry, store: &SharedStore, repo: &str, tag: &str, img: &BuiltImage) -> Result<Digest> {
    for b in std::iter::once(&img.config).chain(&img.layers) {
        let id = reg.blobs().create_upload(repo).await?;
        reg.blobs().append(&id, None, Box::pin(futures_util::stream::iter([Ok(Bytes::from(b.data.clone()))]))).await?;
        reg.blobs().finish(&id, &b.digest, None).await?;
        store.link_blob(repo, &b.digest, b.data.len() as u64, 0).await?;
    }
    let r: Reference = tag.parse()?;
    Ok(reg.put_manifest(repo, &r, Some(img.manifest.media_type), Bytes::from(img.manifest.data.clone())).await?.digest)
}

#[tokio::test]
async fn pulls_from_the_registry_in_process() -> Result {
    let dir = tempfile::tempdir()?;
    let store: SharedStore = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
    let reg = Registry::new(store.clone(), Arc::new(FsBlobStore::open(&dir.path().join("blobs"))?), RegistryConfig::default());
    reg.create_repository("app", TagPolicy::default()).await?;

    let src = tempfile::tempdir()?;
    std::fs::create_dir_all(src.path().join("app"))?;
    std::fs::write(src.path().join("app/server"), b"binary")?;
    let settings =
        ImageSettings { entrypoint: vec!["/app/server".into()], port: Some(9000), user: Some("1000".into()), ..Default::default() };
    let img = build_from_dir(src.path(), &settings)?;
    let digest = push(&reg, &store, "app", "v1", &img).await?;

    let cache = LayerCache::open(&dir.path().join("cache"))?;
    let tmp = dir.path().join("tmp");
    let pulled = berth_image::pull(&reg, &cache, "app", "v1", &tmp, Default::default()).await?;
    assert_eq!(pulled.digest, digest);
    assert_eq!(pulled.config.entrypoint, ["/app/server"]);
    assert_eq!(pulled.config.exposed_ports, [9000]);
    assert_eq!(pulled.config.user.as_deref(), Some("1000"));
    assert_eq!(std::fs::read(pulled.layer_dirs[0].join("app/server"))?, b"binary");

    // By digest, the same; the layer is not unpacked twice.
    let again = berth_image::pull(&reg, &cache, "app", &digest.to_string(), &tmp, Default::default()).await?;
    assert_eq!(again.layers, pulled.layers);

    // Through an index: this host's platform is picked.
    let (os, arch) = berth_image::pull::host_platform();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": img.manifest.data.len(), "platform": {"os": os, "architecture": arch}}]});
    let r: Reference = "multi".parse()?;
    reg.put_manifest("app", &r, Some("application/vnd.oci.image.index.v1+json"), Bytes::from(index.to_string())).await?;
    assert_eq!(berth_image::pull(&reg, &cache, "app", "multi", &tmp, Default::default()).await?.digest, digest);

    // Missing things are named.
    let err =
        berth_image::pull(&reg, &cache, "app", "nope", &tmp, Default::default()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("tag `nope` is not in repository `app`"), "{err}");
    let other = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest.to_string(), "size": 1, "platform": {"os": "linux", "architecture": "s390x"}}]});
    let r: Reference = "s390x".parse()?;
    reg.put_manifest("app", &r, None, Bytes::from(other.to_string())).await?;
    let err =
        berth_image::pull(&reg, &cache, "app", "s390x", &tmp, Default::default()).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains(&format!("has no manifest for linux/{arch}")), "{err}");
    Ok(())
}
